"""What a querying member checks of the answers before it decrypts a sum
(SPEC §1 property 3, §5.4, §10): at least k = 2 summands, each an asked
member's, counted from the signed answer receipts; the book status a validly
signed answer carries; and the report's `coverage` over the answering
members. The answer signatures themselves are checked by
:meth:`alliance_member.querier.Querier.check_answers` against the trust it
keeps."""
from __future__ import annotations

from datetime import date

from alliance import book_status
from alliance.errors import AllianceError, CryptoError
from alliance.policy import Policy
from alliance.v1 import alliance_pb2 as pb
from alliance_member.receipts import logged_entry

MIN_SUMMANDS = 2


def check_answer_count(response: pb.GatewayQueryResponse) -> int:
    """Never decrypt a sum over fewer than k = 2 members (SPEC §1 property
    3), whatever the gateway claims: count the signed answer receipts."""
    receipts = {r.member_id for r in response.answers}
    if len(receipts) != len(response.answers) or len(receipts) != response.members_answered:
        raise CryptoError("gateway response: answer receipts do not match members_answered")
    if not receipts <= set(response.asked_member_ids) or len(response.asked_member_ids) != response.members_asked:
        raise CryptoError("gateway response: an answering member was not asked")
    if len(receipts) < MIN_SUMMANDS:
        raise CryptoError(f"gateway returned a sum over {len(receipts)} member(s); at least {MIN_SUMMANDS} are required")
    return len(receipts)


def answer_status(receipt: pb.AnswerReceipt) -> "book_status.BookStatus | None":
    """The status a validly signed answer carries; None when it carries none
    or one that does not parse or name its member (counted as stale)."""
    if not receipt.book_status:
        return None
    try:
        return book_status.check_answer_status(receipt.book_status, receipt.member_id)
    except AllianceError:
        return None


def coverage_of(signed: pb.SignedQuery, response: pb.GatewayQueryResponse,
                statuses: dict[str, "book_status.BookStatus | None"]) -> book_status.Coverage:
    """SPEC §10 `coverage` over the answering members, from the statuses in
    their validly signed answers (a receipt without one counts as stale),
    judged on the report's as-of date by the `max_book_age_days` the logged
    entry states (the policy default for an entry of an older gateway)."""
    body = pb.QueryRequestBody.FromString(signed.body)
    reference = date.fromisoformat(body.as_of)
    max_age = Policy().max_book_age_days
    try:
        stated = logged_entry(response.audit.entry).get("querier_book") or {}
        if isinstance(stated.get("max_book_age_days"), int) and not isinstance(stated["max_book_age_days"], bool):
            max_age = stated["max_book_age_days"]
    except (ValueError, AttributeError):
        pass
    return book_status.coverage([statuses.get(r.member_id) for r in response.answers], reference, max_age)


__all__ = ["MIN_SUMMANDS", "answer_status", "check_answer_count", "coverage_of"]
