"""Member-side onboarding (SPEC §3, §5): keys are generated here and never
leave the member; the admin only ever sees a join request of public keys.
The matching key travels member to member, encrypted and signed, with
fingerprints and the key's check value confirmed out of band, so the operator
relaying it can neither read it nor plant one of its own."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select

from alliance import audit_entry, checkpoint, matching_key, merkle, paillier, pki, signing, trust
from alliance._internal.files import write_atomic
from alliance.errors import CryptoError, InvalidInput, Refused, UsageError
from alliance.v1 import alliance_pb2 as pb
from alliance_member.home import MemberConfig, MemberHome
from alliance_member import feed as feed_mod
from alliance_member.gateway_client import GatewayClient


KEY_FILES = ("tls.key", "ed25519.key", "x25519.key", "paillier.key", "join-request.bin")


@dataclass(frozen=True)
class KeygenResult:
    join_request: Path
    fingerprint: str


def keygen(
    home_dir: Path, *, member_id: str, name: str, role: str, endpoint: str, listen: str, gateway: str,
    db_url: str | None = None, paillier_bits: int = paillier.MIN_KEY_BITS,
) -> KeygenResult:
    home = MemberHome(home_dir)
    if home.signing_key.exists():
        raise UsageError(f"{home_dir} already holds member keys; refusing to overwrite them")
    if role not in ("member", "auditor"):
        raise UsageError("role must be member or auditor")
    # Everything is checked and built in memory first; files are written only
    # then, and removed again if writing fails: no half-made home (SPEC §2).
    pki.check_member_id(member_id)
    if not name.strip():
        raise InvalidInput("--name must not be empty")
    keys = pki.generate_member_keys()
    paillier_n = b""
    priv = None
    if role == "member":
        pub, priv = paillier.generate_keypair(paillier_bits)
        paillier_n = pub.to_bytes()
    request = pki.make_join_request(
        member_id=member_id, name=name, role=role, endpoint=endpoint if role == "member" else "",
        keys=keys, paillier_n=paillier_n,
    )
    body = pki.verify_join_request(request)
    created_home = not home_dir.exists()
    before = set(home_dir.iterdir()) if not created_home else set()
    try:
        home_dir.mkdir(parents=True, exist_ok=True)
        if priv is not None:
            write_atomic(home.paillier_key, priv.to_json_bytes(), private=True)
        keys.save(home_dir)  # tls.key, ed25519.key, x25519.key, all 0600
        write_atomic(home.join_request, request.SerializeToString())
        home.write_config(MemberConfig(member_id=member_id, name=name, role=role, endpoint=endpoint,
                                       listen=listen, gateway=gateway, db_url=db_url))
    except BaseException:
        if created_home:
            shutil.rmtree(home_dir, ignore_errors=True)
        else:
            for path in set(home_dir.iterdir()) - before:
                path.unlink(missing_ok=True)
        raise
    return KeygenResult(home.join_request, pki.format_fingerprint(pki.join_request_fingerprint(body)))


def own_fingerprint(home: MemberHome) -> bytes:
    body = pki.verify_join_request(home.join_request.read_bytes())
    return pki.join_request_fingerprint(body)


def rotate_keys(home_dir: Path, *, paillier_bits: int = paillier.MIN_KEY_BITS) -> KeygenResult:
    """Start a key rotation: fresh keys in the home's ``rotation/`` folder and
    a join request endorsed by the current Ed25519 key, which members'
    pins require (SPEC §5). The current keys stay in use until `member join`
    installs the new credential; the matching key and the book are kept."""
    home = MemberHome(home_dir)
    if not home.is_joined():
        raise UsageError(f"{home_dir} has not joined yet; `alliance member keygen` is for new keys")
    pending = home.pending_rotation
    if pending.path.exists():
        raise UsageError(f"a key rotation is already pending in {pending.path}; finish it with `alliance member join` or remove that folder")
    cfg = home.config()
    keys = pki.generate_member_keys()
    paillier_n = b""
    pending.path.mkdir(mode=0o700)
    if cfg.role == "member":
        pub, priv = paillier.generate_keypair(paillier_bits)
        write_atomic(pending.paillier_key, priv.to_json_bytes(), private=True)
        paillier_n = pub.to_bytes()
    keys.save(pending.path)
    request = pki.make_join_request(
        member_id=cfg.member_id, name=cfg.name, role=cfg.role, endpoint=cfg.endpoint if cfg.role == "member" else "",
        keys=keys, paillier_n=paillier_n, previous_ed25519_key=pki.load_ed25519_private_pem(home.signing_key),
    )
    write_atomic(pending.join_request, request.SerializeToString())
    body = pki.verify_join_request(request)
    return KeygenResult(pending.join_request, pki.format_fingerprint(pki.join_request_fingerprint(body)))


def _install_rotated_keys(home: MemberHome) -> None:
    """Swap the pending keys in; the old ones move to ``retired/<old serial>/``
    (kept, never reused) so nothing is lost if a step fails midway."""
    pending = home.pending_rotation
    old_serial = pb.CredentialBody.FromString(pb.Credential.FromString(home.credential.read_bytes()).body).serial
    retired = home.path / "retired" / str(old_serial)
    retired.mkdir(parents=True, exist_ok=True, mode=0o700)
    for done in (home.credential, home.tls_cert):
        shutil.copy2(done, retired / done.name)
    for name in KEY_FILES:
        if (home.path / name).exists():
            os.replace(home.path / name, retired / name)
        if (pending.path / name).exists():
            os.replace(pending.path / name, home.path / name)
    pending.path.rmdir()


def join(home_dir: Path, bundle: bytes) -> pb.CredentialBody:
    """Install the credential bundle from `admin member add`, after checking
    that it is CA-signed and binds exactly this home's keys."""
    home = MemberHome(home_dir)
    cfg = home.config()
    try:
        data = json.loads(bundle)
        credential = base64.b64decode(data["credential"], validate=True)
        ca_cert = x509.load_pem_x509_certificate(data["ca_cert"].encode())
        tls_cert = x509.load_pem_x509_certificate(data["tls_cert"].encode())
        gateway, log_verifier = str(data["gateway"]), str(data["log_verifier"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"not a credential bundle from `alliance admin member add`: {exc}") from None
    body = pki.verify_credential(credential, ca_cert)
    if body.member_id != cfg.member_id:
        raise CryptoError(f"bundle is for member {body.member_id!r}, this home is {cfg.member_id!r}")
    keys = home
    if home.pending_rotation.join_request.exists() and body.member_fingerprint == own_fingerprint(home.pending_rotation):
        keys = home.pending_rotation  # the credential for a rotation this home started
    elif body.member_fingerprint != own_fingerprint(home):
        raise CryptoError("the credential does not bind this home's keys (fingerprint differs)")
    own_tls_public = pki.load_private_pem(keys.tls_key).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    cert_public = tls_cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if cert_public != own_tls_public or pki.cert_sha256(tls_cert) != body.tls_cert_sha256:
        raise CryptoError("the TLS certificate in the bundle is not for this home's TLS key")
    if keys is not home:
        _install_rotated_keys(home)
    pki.write_cert_pem(home.ca_cert, ca_cert)
    pki.write_cert_pem(home.tls_cert, tls_cert)
    write_atomic(home.log_verifier, (log_verifier + "\n").encode())
    write_atomic(home.credential, credential)
    cfg.gateway = gateway
    home.write_config(cfg)
    return body


def create_matching_key(home_dir: Path, *, epoch: int = 1) -> matching_key.MatchingKey:
    home = MemberHome(home_dir)
    home.config()  # keys first: `alliance member keygen`
    if home.matching_key.exists():
        current = matching_key.load(home.matching_key)
        if epoch <= current.epoch:
            raise UsageError(f"a matching key of epoch {current.epoch} is installed; a new one needs a higher epoch")
    mk = matching_key.create(epoch)
    matching_key.save(home.matching_key, mk, overwrite=True)
    return mk


def share_matching_key(home_dir: Path, *, recipient_id: str, recipient_fingerprint: str) -> None:
    """Encrypt this member's matching key to a newcomer whose fingerprint was
    confirmed out of band, and hand the ciphertext to the gateway to relay.
    SPEC §5.1: the newcomer becomes one of this member's roots, is sponsored
    first, and gets the key only once the `member_sponsored` entry is proven
    in the log and the newcomer is trusted in this member's view of it."""
    home = MemberHome(home_dir)
    cfg = home.config()
    home.require_matching_key()
    mk = matching_key.load(home.matching_key)
    body, _ = sponsor(home_dir, recipient_id=recipient_id, recipient_fingerprint=recipient_fingerprint, root="share")
    _require_trusted(home, body, recipient_id)
    share = matching_key.seal_share(
        mk, sender_id=cfg.member_id, sender_ed25519_key=pki.load_ed25519_private_pem(home.signing_key),
        recipient_id=recipient_id, recipient_x25519_public=body.x25519_public_key, now=int(time.time()),
    )
    with GatewayClient(home) as client:
        client.post_key_share(share)


def _confirmed_credential(home: MemberHome, member_id: str, fingerprint_text: str) -> tuple[pb.Credential, pb.CredentialBody]:
    """A member's current credential from the gateway (a courier only): CA
    signature, role, and the fingerprint recomputed from its keys equal to
    the one confirmed out of band."""
    with GatewayClient(home) as client:
        cred = client.member_credential(member_id)
    body = pki.verify_credential(cred, pki.load_cert_pem(home.ca_cert))
    if body.member_id != member_id or body.role != pb.ROLE_MEMBER:
        raise Refused(f"{member_id!r} is not a member", reason="not_a_member")
    if trust.fingerprint_of(body) != pki.parse_fingerprint(fingerprint_text):
        raise Refused(
            f"{member_id}'s credential has fingerprint {pki.format_fingerprint(trust.fingerprint_of(body))}, "
            "not the one confirmed out of band", reason="fingerprint_mismatch",
        )
    return cred, body


def sponsor(home_dir: Path, *, recipient_id: str, recipient_fingerprint: str, root: str | None = None) -> tuple[pb.CredentialBody, dict]:
    """`alliance member sponsor`: vouch for a member whose fingerprint was
    confirmed out of band. Signs the sponsorship, has it logged, and checks
    the returned entry is exactly it, included in a checkpoint signed by the
    pinned log key and consistent with the feed this member holds.
    ``root``: also record the member as a root (`share`)."""
    home = MemberHome(home_dir)
    cfg = home.config()
    if recipient_id == cfg.member_id:
        raise UsageError("a member cannot sponsor itself")
    cred, body = _confirmed_credential(home, recipient_id, recipient_fingerprint)
    engine = _engine(home)
    if root is not None:
        feed_mod.add_root(engine, recipient_id, trust.fingerprint_of(body), root)
    signed_body = pb.SponsorshipBody(newcomer_id=recipient_id, newcomer_fingerprint=trust.fingerprint_of(body),
                                     sponsor_id=cfg.member_id, time_ms=int(time.time() * 1000)).SerializeToString()
    request = pb.SignedSponsorship(body=signed_body, signature=signing.sign(
        pki.load_ed25519_private_pem(home.signing_key), signing.SPONSORSHIP, signed_body))
    with GatewayClient(home) as client:
        response = client.post_sponsorship(request)
    entry = _check_logged(home, response, kind="member_sponsored", statement_field="sponsorship", statement=signed_body)
    _require_in_feed(home, engine, response.entry)
    return body, entry


def _require_in_feed(home: MemberHome, engine, proven: pb.ProvenEntry) -> None:  # type: ignore[no-untyped-def]
    """Bring this member's feed up to date (consistency with what it kept)
    and find the logged statement in it."""
    with GatewayClient(home) as client:
        open_feed(home, client, engine=engine).refresh()
    with engine.connect() as conn:
        row = conn.execute(select(feed_mod.membership_feed.c.data).where(feed_mod.membership_feed.c.seq == proven.index)).first()
    if row is None or bytes(row.data) != bytes(proven.data):
        raise CryptoError("the logged statement is not in this member's proven view of the membership feed")


def announce_matching_key(home_dir: Path) -> dict:
    """Founding member: log `matching_key_created` for the installed key
    (SPEC §6.4; the root of every chain an auditor follows)."""
    home = MemberHome(home_dir)
    cfg = home.config()
    home.require_joined()
    home.require_matching_key()
    mk = matching_key.load(home.matching_key)
    own = pki.verify_credential(home.credential.read_bytes(), pki.load_cert_pem(home.ca_cert))
    signed_body = pb.MatchingKeyCreatedBody(founder_id=cfg.member_id, founder_fingerprint=trust.fingerprint_of(own), epoch=mk.epoch,
                                            check_value=matching_key.check_value(mk.key), time_ms=int(time.time() * 1000)).SerializeToString()
    request = pb.SignedMatchingKeyCreated(body=signed_body, signature=signing.sign(
        pki.load_ed25519_private_pem(home.signing_key), signing.MATCHING_KEY_CREATED, signed_body))
    with GatewayClient(home) as client:
        response = client.post_matching_key_created(request)
    entry = _check_logged(home, response, kind="matching_key_created", statement_field="statement", statement=signed_body)
    _require_in_feed(home, _engine(home), response.entry)
    return entry


def _check_logged(home: MemberHome, response: pb.LoggedStatementResponse, *, kind: str, statement_field: str, statement: bytes) -> dict:
    """The statement is in the log: the entry holds exactly it, and its
    inclusion proof verifies against a checkpoint signed by the pinned log
    key."""
    verifier = checkpoint.parse_verifier_key(home.log_verifier.read_text(encoding="utf-8").strip())
    cp = checkpoint.open_checkpoint(response.checkpoint, verifier)
    data = bytes(response.entry.data)
    entry = audit_entry.decode(data, index=response.entry.index)
    if entry.get("kind") != kind or entry.get(statement_field) != statement.hex():
        raise CryptoError(f"the gateway's {kind} entry is not the statement this member signed")
    merkle.verify_inclusion(merkle.leaf_hash(data), response.entry.index, cp.size, list(response.entry.inclusion_proof), cp.root_hash)
    return entry


def _engine(home: MemberHome):  # type: ignore[no-untyped-def]
    from alliance import db
    from alliance_member import store

    engine = db.make_engine(home.db_url())
    store.create_schema(engine)
    feed_mod.create_schema(engine)
    return engine


def own_fingerprints(home: MemberHome) -> set[bytes]:
    """Fingerprints of every credential this home requested: current,
    retired by rotations, and a pending rotation's."""
    found: set[bytes] = set()
    retired = home.path / "retired"
    paths = [home.join_request, home.pending_rotation.join_request]
    paths += sorted(retired.glob("*/join-request.bin")) if retired.exists() else []
    for path in paths:
        if path.exists():
            found.add(_join_request_fingerprint(path.read_bytes()))
    return found


_JOIN_FINGERPRINTS: dict[bytes, bytes] = {}


def _join_request_fingerprint(data: bytes) -> bytes:
    """Verifying a join request (CSR parse, signatures) cost ≈ 1 ms and ran on
    every trust decision (each answer, each query's receipts): remembered by
    the SHA-256 of the exact bytes, which still are read every time."""
    digest = hashlib.sha256(data).digest()
    fp = _JOIN_FINGERPRINTS.get(digest)
    if fp is None:
        fp = pki.join_request_fingerprint(pki.verify_join_request(data))
        _JOIN_FINGERPRINTS[digest] = fp
    return fp


def open_feed(home: MemberHome, client: GatewayClient | None = None, *, engine=None):  # type: ignore[no-untyped-def]
    """This member's membership feed, following the gateway of its home:
    checkpoints signed by the log key pinned at join, trust decisions resting
    on those a witness quorum cosigned too (SPEC §5.1, §6.1). Each kept
    checkpoint is registered as used, so this member's witness never
    cosigns a checkpoint inconsistent with it."""
    from alliance_member import witness

    engine = engine or _engine(home)
    verifier = checkpoint.parse_verifier_key(home.log_verifier.read_text(encoding="utf-8").strip())
    source = (lambda: client) if client is not None else (lambda: GatewayClient(home))
    return feed_mod.MembershipFeed(engine, source, feed_mod.pinned_log_key(verifier), member_id=home.config().member_id,
                                   own_fingerprints=lambda: own_fingerprints(home),
                                   on_kept=lambda note: witness.register_used(home, note, "feed"))


def _require_trusted(home: MemberHome, body: pb.CredentialBody, member_id: str) -> None:
    """Key shares go to, and come from, members trusted in this member's own
    freshly proven view of the log (SPEC §5.1)."""
    with GatewayClient(home) as client:
        feed = open_feed(home, client)
        feed.refresh()
        cred = client.member_credential(member_id)
    decision = feed.decide(cred.SerializeToString())
    if pb.CredentialBody.FromString(cred.body) != body:
        raise Refused(f"{member_id}'s credential changed meanwhile; try again", reason="credential_changed")
    if decision != "trusted":
        raise Refused(f"{member_id} is not trusted in this member's view of the log ({decision})", reason=decision)


def install_matching_key(home_dir: Path, *, sender_id: str, sender_fingerprint: str, check_value: str) -> matching_key.MatchingKey:
    """Open the newest share from ``sender_id``; refuse unless the sender's
    fingerprint and the key's published check value match what was confirmed
    out of band."""
    home = MemberHome(home_dir)
    cfg = home.config()
    expected_check = matching_key.parse_check_value(check_value)
    sender_cred, sender = _confirmed_credential(home, sender_id, sender_fingerprint)
    feed_mod.add_root(_engine(home), sender_id, trust.fingerprint_of(sender), "install")
    _require_trusted(home, sender, sender_id)
    with GatewayClient(home) as client:
        shares = client.key_shares()
    candidates = [s for s in shares if pb.MatchingKeyShareBody.FromString(s.body).sender_id == sender_id]
    if not candidates:
        raise Refused(f"no matching-key share from {sender_id} is waiting at the gateway", reason="no_share")
    mk = matching_key.open_share(
        candidates[-1], recipient_id=cfg.member_id, recipient_x25519_key=pki.load_x25519_private_pem(home.x25519_key),
        sender_ed25519_public=sender.ed25519_public_key, expected_check_value=expected_check,
    )
    if home.matching_key.exists() and matching_key.load(home.matching_key).epoch > mk.epoch:
        raise Refused("the shared key is older than the installed one", reason="old_epoch")
    matching_key.save(home.matching_key, mk, overwrite=True)
    # The newcomer confirmed the sender's fingerprint out of band too: it vouches for it in the log, so
    # sponsorship runs both ways along every key hand-over and each member's trust reaches every other
    # member through the chain of hand-overs (SPEC §5.1), not only the newcomer's own subtree.
    sponsor(home_dir, recipient_id=sender_id, recipient_fingerprint=sender_fingerprint)
    return mk
