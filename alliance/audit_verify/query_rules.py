"""The checks of query and precheck entries against the membership replayed
so far: every accepted query carries a valid querier signature by the
credential current at the time, consent, at least k answers each signed by
its member, and passed every gateway check that can be re-derived; every
refusal's reason must fit what the entry shows. Version 2 entries are also
judged by the rules they state (freshness), the answering-set pins and the
cross-entry checks of the :class:`Ledger`."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from alliance import protocol, signing
from alliance.audit_verify import books
from alliance.audit_verify.fields import (
    CREDENTIAL_SLACK_S,
    INQUIRY_WINDOW_MS,
    STATE_GRACE_MS,
    Bad,
    day_start_ms,
    utc_timestamp,
)
from alliance.audit_verify.ledger import DAILY, MONITORING, Ledger
from alliance.audit_verify.membership import Credential, Member, Membership, during
from alliance.audit_verify.pins import Pin, Pins
from alliance.audit_verify.query_entry import Query, check_fan_out, parse_query
from alliance.audit_verify.reasons import (
    KNOWN_REASONS,
    PARSE_REASONS,
    REASON_RULES,
    REASONS_AFTER_SIGNATURE,
    REASONS_BEFORE_PARSE,
    REASONS_WITH_MEMBERS_ASKED,
    V1_REASONS,
)
from alliance.audit_verify.signatures import SignatureJob
from alliance.policy import MONITORING_PURPOSE
from alliance.audit_verify.sponsorship import Chains
from alliance.audit_verify.v2_rules import Rules
from alliance.errors import Refused
from alliance.v1 import alliance_pb2 as pb


@dataclass
class V2:
    """What a log that became version 2 adds: its rules and the pins."""

    rules: Rules
    pins: Pins


class QueryRules:
    """Judges each query entry; keeps the counters, quota usage and the
    inquiry index as the gateway keeps them. ``check`` returns the signature
    jobs the entry needs."""

    def __init__(self, membership: Membership, ledger: Ledger) -> None:
        self.membership = membership
        self.ledger = ledger
        self.v2: V2 | None = None  # set at the log's v2_started entry
        self.chains: Chains | None = None  # sponsorship chains (v2 queries must come from a trusted credential)
        self.books = books.Books(membership)  # SPEC §10: logged book statuses
        self.members = membership.members
        self.by_serial = membership.by_serial
        self.tokens: dict[bytes, list[tuple[int, str, str | None, bool]]] = {}  # (received, querier, purpose, v2)
        self.accepted = 0
        self.refused = 0
        self.refusals: Counter[str] = Counter()
        self.unverified: Counter[str] = Counter()

    def check(self, seq: int, e: dict[str, Any]) -> list[SignatureJob]:
        v2 = self.v2
        q = parse_query(seq, e, v2.rules if v2 else None)
        if q.oversized and q.reason != "malformed_request":
            raise Bad(f"fields are listed as oversized, but the entry is not refused malformed_request ({q.reason})")
        # Sizes are checked before anything is parsed: an oversized request was never parsed.
        body, parse_reason = (None, None) if q.oversized else self._parse_body(q)
        self._check_copies(q, body, parse_reason)
        check_fan_out(q)
        if (q.v2 and q.asked and q.outcome == "refused" and q.reason not in REASONS_WITH_MEMBERS_ASKED
                and not (q.reason == "malformed_request" and q.kind == "precheck" and not q.oversized)):
            # e.g. an `unauthenticated` entry listing members asked: it would count against the named querier's
            # quota (§5.4) without its signature, and holds no query id for the one-entry-per-id rule
            raise Bad(f"refused {q.reason} with members asked, but the gateway refuses that before asking any member")
        querier = self.members.get(q.querier_id)
        pin = v2.pins.live(q.copies["subject_token_sha256"], q.received_ms) if v2 else None
        if q.outcome == "accepted":
            jobs = self._accepted(q, body, querier, pin)
        else:
            jobs = self._refused(q, body, parse_reason, querier, pin)
        if body is not None:
            jobs.extend(self._answer_jobs(q, body))
        if v2 is not None:
            self.books.judge(q, self.ledger)  # SPEC §10: stale_book, and no accepted query from a stale book
            self._answer_set(q, v2.pins, pin)
            if q.asked and q.reason != "too_few_members":  # the fanned_out rule: it reached the members
                self.ledger.fanned_out(seq, q.querier_id, q.received_ms, _pool(q))
        self.ledger.query_id(seq, q.copies["query_id"], used=q.outcome == "accepted" or bool(q.asked), reason=q.reason, v2=q.v2)
        self._account(q, body, querier)
        return jobs

    def _answer_set(self, q: Query, pins: Pins, pin: Pin | None) -> None:
        """An accepted entry takes (or is held to) the token's pin, and states
        it; a refusal states the live pin it was judged under, or null."""
        if q.outcome == "accepted":
            token = q.copies["subject_token_sha256"]
            assert token is not None  # an accepted entry's body parsed
            pin = pins.take(q.seq, token, q.querier_id, q.answered, q.received_ms)
        elif q.answer_set is None and q.reason != "answer_set_changed":
            return
        if pin is None or q.answer_set != pin.members:
            expected = "null" if pin is None else ", ".join(pin.members)
            raise Bad(f"answer_set {q.answer_set!r} is not the pinned set for the token ({expected})")

    @staticmethod
    def _parse_body(q: Query) -> tuple[pb.QueryRequestBody | None, str | None]:
        """The body as the gateway parsed it, or the reason it refused it."""
        try:
            return protocol.parse_body(pb.SignedQuery(body=q.body_bytes)), None
        except Refused as exc:
            return None, exc.reason

    @staticmethod
    def _check_copies(q: Query, body: pb.QueryRequestBody | None, parse_reason: str | None) -> None:
        """The convenience copies (purpose, consent, ...) must say what the
        querier signed, or be null where the gateway never parsed the body."""
        if body is None or q.reason in REASONS_BEFORE_PARSE:
            if any(v is not None for v in q.copies.values()):
                raise Bad("request fields are filled in although the gateway never parsed the request")
            return
        signed = {"query_id": body.query_id, "subject_token_sha256": body.subject_token_sha256.hex(),
                  "purpose": protocol.purpose_name(body.purpose), "consent_id": body.consent_id,
                  "consent_sha256": body.consent_sha256.hex()}
        for name, value in signed.items():
            if q.copies[name] != value:
                raise Bad(f"{name} {q.copies[name]!r} is not the signed request's {value!r}")

    def _credential_for(self, q: Query, body: pb.QueryRequestBody) -> Credential | None:
        cred = self.by_serial.get(body.credential_serial)
        return cred if cred is not None and cred.member_id == q.querier_id else None

    def _querier_job(self, q: Query, cred: Credential, expected: bool) -> SignatureJob:
        complaint = ("the querier's signature over the request does not verify" if expected
                     else "reason bad_signature does not fit: the querier's signature verifies")
        return q.seq, (cred.ed25519,), signing.QUERY_REQUEST + q.body_bytes, q.signature, expected, complaint

    def _accepted(self, q: Query, body: pb.QueryRequestBody | None, querier: Member | None,
                  pin: Pin | None) -> list[SignatureJob]:
        """Everything the gateway must have checked before answering."""
        if q.reason is not None:
            raise Bad("an accepted query carries a refusal reason")
        if querier is None or querier.role != "member":
            raise Bad(f"querier {q.querier_id} is not a member")
        if "active" not in during(querier.status, q.window_start, q.received_ms):
            raise Bad(f"querier {q.querier_id} was {querier.status[-1][1]}, yet its query was accepted")
        if body is None:
            raise Bad("the accepted request does not parse as a valid signed query body")
        if protocol.mode_name(body.mode) != q.kind:
            raise Bad(f"a {protocol.mode_name(body.mode)} request was accepted as a {q.kind}")
        if body.querier_id != q.querier_id:
            raise Bad(f"the request names querier {body.querier_id!r}, the entry {q.querier_id!r}")
        cred = self._credential_for(q, body)
        if cred is None:
            raise Bad(f"the request names credential serial {body.credential_serial}, which was never issued to {q.querier_id}")
        current = {c.serial for c in during(querier.credentials, q.window_start, q.received_ms)}
        if cred.serial not in current:
            raise Bad(f"the request names credential serial {cred.serial}, but {q.querier_id}'s current serial was {max(current)}")
        if q.v2 and self.chains is not None:
            self.chains.require_sponsored(q.querier_id, cred)
        if q.v2 and _pool(q) == MONITORING and not any(
                p.monitoring for p in self.ledger.policy_during(q.received_ms - STATE_GRACE_MS, q.received_ms)):
            raise Bad("a POST_LOAN_MONITORING query was accepted while the logged policy had monitoring off (SPEC §9)")
        if not cred.not_before - CREDENTIAL_SLACK_S <= q.received_ms // 1000 < cred.not_after + CREDENTIAL_SLACK_S:
            raise Bad(f"querier credential serial {cred.serial} was not valid at {utc_timestamp(q.received_ms)}")
        if q.rules is None and abs(q.received_ms - body.timestamp_ms) > protocol.FRESHNESS_MS:
            raise Bad("the request timestamp is more than 5 minutes from its receipt")
        if q.rules is not None and abs(q.received_ms - body.timestamp_ms) > q.rules.freshness_ms:
            raise Bad(f"the request timestamp is more than rules.freshness_ms = {q.rules.freshness_ms} ms from its receipt")
        if body.paillier_key_fingerprint != cred.paillier_fingerprint:
            raise Bad("the request's Paillier key is not the querier's registered key")
        quotas = during(querier.quota, q.window_start, q.received_ms)
        if not q.v2 and None not in quotas and querier.accepted_since(day_start_ms(q.received_ms)) >= max(quotas):
            raise Bad(f"querier {q.querier_id} had used its daily quota of {max(quotas)}, yet the query was accepted")
        if q.k_min < 2:
            raise Bad(f"k_min {q.k_min} is below 2")
        if len(q.answered) < q.k_min:
            raise Bad(f"accepted with {len(q.answered)} answer(s); at least k_min = {q.k_min} are required")
        if q.kind == "precheck" and len(q.answered) != len(q.asked):
            raise Bad(f"precheck accepted with {len(q.answered)} of {len(q.asked)} asked members answering")
        self._check_asked(q, querier, pinned=pin is not None)
        self._check_inquiries(q, body)
        return [self._querier_job(q, cred, True)]

    def _check_asked(self, q: Query, querier: Member, *, pinned: bool) -> None:
        """Those asked were active members; no member active throughout the
        window before the query was left out (its debts would be hidden) --
        unless the token is pinned: then the pin says who is asked."""
        for member_id in q.asked:
            member = self.members.get(member_id)
            if member is None or member.role != "member" or "active" not in during(member.status, q.window_start):
                raise Bad(f"asked {member_id}, which was not an active member")
        if pinned:
            return
        for member in self.members.values():
            if (member.role == "member" and member.member_id != querier.member_id and member.member_id not in q.asked
                    and member.first_ms <= q.window_start and during(member.status, q.window_start, q.received_ms) == {"active"}):
                raise Bad(f"member {member.member_id} was active but not asked")

    def _check_inquiries(self, q: Query, body: pb.QueryRequestBody) -> None:
        """inquiries_30d may not exceed what the log itself supports."""
        since = q.received_ms - INQUIRY_WINDOW_MS
        # v2 (SPEC §4): only applications count; a v1 entry of any purpose may have counted then
        others = {who for when, who, purpose, v2 in self.tokens.get(body.subject_token_sha256, ())
                  if who != q.querier_id and since <= when < q.received_ms and (not q.v2 or not v2 or purpose == APPLICATION)}
        if q.inquiries_30d > len(others):
            raise Bad(f"inquiries_30d is {q.inquiries_30d}, but the log shows {len(others)} other querier(s) in 30 days")

    def _refused(self, q: Query, body: pb.QueryRequestBody | None, parse_reason: str | None,
                 querier: Member | None, pin: Pin | None) -> list[SignatureJob]:
        """The stated reason must fit the entry; a refusal raised after the
        signature check must carry a valid querier signature (or the
        operator could log refusals in a member's name)."""
        reason = q.reason
        if reason is None:
            raise Bad("a refused query has no reason")
        if reason not in (KNOWN_REASONS if q.v2 else V1_REASONS):
            raise Bad(f"reason {reason!r} is not one the gateway gives" + (" in a version 1 entry" if reason in KNOWN_REASONS else ""))
        jobs: list[SignatureJob] = []
        cred = self._credential_for(q, body) if body is not None else None
        if reason in REASONS_AFTER_SIGNATURE:
            if cred is None:
                raise Bad(f"reason {reason} comes after the signature check, but the request names no credential of {q.querier_id}")
            jobs.append(self._querier_job(q, cred, True))
        if reason == "bad_signature":
            if cred is None:
                raise Bad(f"reason bad_signature does not fit: the request names no credential of {q.querier_id}")
            jobs.append(self._querier_job(q, cred, False))
            fits: bool | None = True
        else:
            fits = self._reason_fits(q, body, parse_reason, querier, cred, pin)
        if fits is False:
            raise Bad(f"reason {reason} does not fit the entry ({REASON_RULES[reason]})")
        if fits is None:
            self.unverified[reason] += 1
        return jobs

    def _reason_fits(self, q: Query, body: pb.QueryRequestBody | None, parse_reason: str | None,
                     querier: Member | None, cred: Credential | None, pin: Pin | None) -> bool | None:
        """True: re-derived (or, in a v2 entry, left to the ledger's checks
        across the log); False: contradicted; None: cannot be re-derived."""
        reason = q.reason
        if q.oversized:  # a v2 malformed_request for fields over their bounds
            return all(item.over_bound for item in q.oversized)
        is_member = querier is not None and querier.role == "member"
        if reason in ("wrong_role", "unknown_member"):
            return not is_member
        if reason in ("member_suspended", "member_revoked"):
            return querier is not None and reason.removeprefix("member_") in during(querier.status, q.window_start, q.received_ms)
        if reason in PARSE_REASONS and parse_reason is not None:
            return parse_reason == reason
        if body is None:
            return False  # every other reason comes after the body parsed
        if reason == "malformed_request":
            if protocol.mode_name(body.mode) != q.kind:
                return True
            return None if q.kind == "precheck" else False  # a garbled Enc(x) needs the querier's key to show
        if reason == "querier_mismatch":
            return body.querier_id != q.querier_id
        if reason == "stale_credential":
            return querier is not None and any(
                c.serial != body.credential_serial for c in during(querier.credentials, q.window_start, q.received_ms))
        if reason == "stale_timestamp":
            return abs(q.received_ms - body.timestamp_ms) > (q.rules.freshness_ms if q.rules else protocol.FRESHNESS_MS)
        if reason == "foreign_key":
            return cred is not None and body.paillier_key_fingerprint != cred.paillier_fingerprint
        if reason == "quota_exceeded" and q.v2:
            self.ledger.quota_refusal(q.seq, q.querier_id, q.received_ms, _pool(q))  # needs the fanned-out entries around it
            return True
        if reason == "stale_book":
            return q.querier_book is not None  # what it states is judged by Books.judge
        if reason == "monitoring_disabled":
            return _pool(q) == MONITORING and any(
                not p.monitoring for p in self.ledger.policy_during(q.received_ms - STATE_GRACE_MS, q.received_ms))
        if reason == "replayed_query_id":
            return not q.asked  # the original, anywhere in the log, is the ledger's check
        if reason == "answer_set_changed":
            return pin is not None and sorted(q.answered) != pin.less(q.querier_id)
        if reason == "quota_exceeded":
            quotas = during(querier.quota, q.window_start, q.received_ms) if querier else {None}
            known = [x for x in quotas if x is not None]
            if known and querier is not None and querier.accepted_since(day_start_ms(q.received_ms)) >= min(known):
                return True
            return None if None in quotas else False  # a quota the log never stated may have been lower
        if reason == "too_few_members":
            return len(q.asked) < q.k_min
        if reason == "too_few_answers":
            return len(q.asked) >= q.k_min > len(q.answered)
        if reason == "incomplete_precheck":
            return q.kind == "precheck" and q.k_min <= len(q.answered) < len(q.asked)
        return None  # unauthenticated, token_mismatch: nothing in the entry shows them

    def _answer_jobs(self, q: Query, body: pb.QueryRequestBody) -> list[SignatureJob]:
        """Each recorded answer must be signed by its member's key of the
        time, over (query id, SHA-256 of the request body, SHA-256 of the ciphertext)."""
        if not q.answers:
            return []
        digest = signing.sha256(q.body_bytes)
        # Every message is (query id, request digest, ciphertext SHA-256), length-prefixed; only the last
        # 32 bytes differ between answers, so the official encoding is built once and its prefix reused.
        first = signing.MEMBER_ANSWER + signing.member_answer_message(body.query_id, digest, q.answers[0][1])
        prefix = first[: -len(q.answers[0][1])]
        jobs = []
        for member_id, ciphertext_sha256, signature, status in q.answers:
            member = self.members.get(member_id)
            if member is None or member.role != "member":
                raise Bad(f"answer from {member_id}, which is not a member")
            if status:  # SPEC §10: the answer's book status is covered by its signature (a fourth part)
                books.check_answer_status(status, member_id)
                message = signing.MEMBER_ANSWER + signing.member_answer_message(body.query_id, digest, ciphertext_sha256,
                                                                                signing.sha256(status))
            else:
                message = prefix + ciphertext_sha256
            jobs.append((q.seq, member.keys_since(q.window_start), message, signature, True, member.bad_answer))
        return jobs

    def _account(self, q: Query, body: pb.QueryRequestBody | None, querier: Member | None) -> None:
        """Counters, quota usage and the inquiry index, as the gateway keeps them."""
        if q.outcome == "refused":
            self.refused += 1
            self.refusals[q.reason or "?"] += 1
            return
        self.accepted += 1
        assert querier is not None and body is not None  # accepted entries passed _accepted
        day = day_start_ms(q.received_ms)
        querier.accepted_by_day[day] = querier.accepted_by_day.get(day, 0) + 1
        self.tokens.setdefault(body.subject_token_sha256, []).append((q.received_ms, q.querier_id, q.copies["purpose"], q.v2))


APPLICATION = "LOAN_APPROVAL"  # SPEC §4: the only purpose inquiries_30d counts (v2)


def _pool(q: Query) -> str:
    """Which daily quota a v2 entry draws on (SPEC §9)."""
    return MONITORING if q.v2 and q.copies["purpose"] == MONITORING_PURPOSE else DAILY
