"""Operator actions behind `alliance admin`: create the alliance, admit and
manage members. Every membership change is written to the audit log in the
same transaction as the registry change (SPEC §6), so a member can watch the
log for any credential issued in its name."""
from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, and_, func, insert, select, update

from alliance import checkpoint, db, migrations, pki
from alliance.errors import InvalidInput, Refused, UsageError
from alliance.policy import Policy
from alliance.v1 import alliance_pb2 as pb
from alliance_gateway import audit_log, policy_store, schema
from alliance_gateway.home import AdminConfig, AdminHome, GatewayConfig, GatewayHome, resolve_db_url

CREDENTIAL_VALIDITY = timedelta(days=365)
STATUSES = ("active", "suspended", "revoked")


@dataclass(frozen=True)
class InitResult:
    admin_home: Path
    gateway_home: Path
    db_url: str
    log_verifier: str


def init_alliance(
    admin_dir: Path,
    gateway_dir: Path,
    *,
    alliance_name: str,
    listen: str,
    gateway_endpoint: str,
    hosts: tuple[str, ...],
    db_url: str | None = None,
    default_quota: int = 10_000,
    deadline_ms: int = 2000,
    k_min: int = 2,
    local: bool = False,
    ca_passphrase: bytes | None = None,
) -> InitResult:
    """Create the CA (admin home), the gateway's TLS and log keys (gateway
    home, without the CA key) and the registry database.

    ``local``: a local/demo alliance on one machine; the CA then adds
    ``localhost``/``127.0.0.1`` to every certificate it issues (SPEC §5.2
    allows them nowhere else). ``ca_passphrase``: encrypt the CA key at rest
    (SPEC §5.4); every later ``admin`` command that signs needs it."""
    admin, gateway = AdminHome(admin_dir), GatewayHome(gateway_dir)
    if admin.ca_key.exists():
        raise UsageError(f"{admin_dir} already holds an alliance CA; refusing to overwrite it")
    if k_min < 2:
        raise UsageError("k must be at least 2: a report over one member would disclose that member's figures")
    if ca_passphrase is not None and not ca_passphrase:
        raise InvalidInput("the CA passphrase must not be empty")
    if local:
        hosts = tuple(dict.fromkeys((*hosts, *pki.LOOPBACK_NAMES)))
    admin_dir.mkdir(parents=True, exist_ok=True)
    gateway_dir.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = pki.create_ca(f"{alliance_name} alliance CA")
    pki.write_private_pem(admin.ca_key, ca_key, password=ca_passphrase)
    pki.write_cert_pem(admin.ca_cert, ca_cert)
    pki.write_cert_pem(gateway.ca_cert, ca_cert)
    tls_key = pki.new_tls_key()
    now = datetime.now(timezone.utc)
    tls_cert = pki.issue_tls_certificate(
        ca_key, ca_cert, tls_key.public_key(), member_id="gateway", role="gateway", hosts=hosts,
        not_before=now - timedelta(minutes=5), not_after=now + CREDENTIAL_VALIDITY,
    )
    pki.write_private_pem(gateway.tls_key, tls_key)
    pki.write_cert_pem(gateway.tls_cert, tls_cert)
    log_key = Ed25519PrivateKey.generate()
    pki.write_private_pem(gateway.log_key, log_key)
    origin = f"{alliance_name}/audit-log"
    verifier = checkpoint.verifier_key(origin, log_key.public_key())
    gateway.log_verifier.write_text(verifier + "\n", encoding="utf-8")
    url = resolve_db_url(db_url, None, gateway.default_db)
    gateway.write_config(
        GatewayConfig(listen=listen, db_url=url, log_origin=origin, log_key_name=origin,
                      k_min=k_min, deadline_ms=deadline_ms, default_daily_quota=default_quota)
    )
    admin.write_config(
        AdminConfig(alliance_name=alliance_name, gateway_home=str(gateway_dir.resolve()), db_url=url,
                    gateway_endpoint=gateway_endpoint, default_daily_quota=default_quota, local_names=local)
    )
    engine = db.make_engine(url, durable=True)
    schema.create_schema(engine)
    with engine.begin() as conn:
        audit_log.start_v2(conn, deadline_ms=deadline_ms)  # a new log is a v2 log from its first entry
    engine.dispose()
    return InitResult(admin_dir, gateway_dir, url, verifier)


class Admin:
    """Registry operations for an initialised admin home."""

    def __init__(self, admin_dir: Path, *, db_url: str | None = None, ca_passphrase: bytes | None = None,
                 check_schema: bool = True) -> None:
        """``check_schema``: refuse a database older than this release
        (SchemaOutdated); only :meth:`upgrade_db` goes without."""
        self.home = AdminHome(admin_dir)
        self.ca_passphrase = ca_passphrase
        self.config = self.home.config()
        self.engine: Engine = db.make_engine(db_url or self.config.db_url, durable=True)
        if check_schema:
            schema.create_schema(self.engine, admin_dir)

    def add(self, join_request: bytes, *, daily_quota: int | None = None, expected_role: str | None = None) -> bytes:
        """Check a join request, register the member, log the issued
        credential, and return the credential bundle for `member join`."""
        try:
            request = pb.JoinRequest.FromString(join_request)
        except Exception:  # noqa: BLE001
            raise InvalidInput("not a join request file (expected the join-request.bin of `alliance member keygen`)") from None
        body = pki.verify_join_request(request)
        role = pb.Role.Name(body.role).removeprefix("ROLE_").lower()
        if expected_role is not None and role != expected_role:
            raise InvalidInput(f"this join request is for role {role!r}, not {expected_role!r}")
        ca_key = pki.load_ca_key(self.home.ca_key, self.ca_passphrase)
        ca_cert = pki.load_cert_pem(self.home.ca_cert)
        now = datetime.now(timezone.utc)
        # SPEC §5.2: only the names the member asked for (its endpoint host);
        # loopback names only in a local/demo alliance.
        hosts: tuple[str, ...] = (body.endpoint.rsplit(":", 1)[0],) if body.endpoint else ()
        if self.config.local_names:
            hosts = tuple(dict.fromkeys((*hosts, *pki.LOOPBACK_NAMES)))
        csr = x509.load_der_x509_csr(body.tls_csr_der)
        tls_cert = pki.issue_tls_certificate(
            ca_key, ca_cert, csr.public_key(), member_id=body.member_id, role=role, hosts=hosts,
            not_before=now - timedelta(minutes=5), not_after=now + CREDENTIAL_VALIDITY,
            local=self.config.local_names,
        )
        quota = daily_quota if daily_quota is not None else self.config.default_daily_quota
        with self.engine.begin() as conn:
            existing = conn.execute(select(schema.members).where(schema.members.c.member_id == body.member_id)).first()
            if existing is not None and not request.predecessor_signature:
                raise Refused(
                    f"member {body.member_id!r} already exists; new keys need a rotation request signed by its current key",
                    reason="member_exists",
                )
            if existing is not None:
                if existing.status == "revoked":
                    raise Refused(f"member {body.member_id!r} is revoked; revocation is final", reason="revoked")
                # Members would refuse a credential their pin does not endorse; the CA must not issue one.
                pki.verify_join_rotation(request, bytes(existing.ed25519_public_key))
            elif request.predecessor_signature:
                raise InvalidInput(f"{body.member_id!r} is not a member yet; a key-rotation request needs an existing member")
            elif role == "member":
                _check_room_for_a_member(conn)
            serial = (conn.execute(select(func.max(schema.members.c.credential_serial))).scalar() or 0) + 1
            credential = pki.issue_credential(
                ca_key=ca_key, join_body=body, tls_cert=tls_cert, serial=serial,
                not_before=int((now - timedelta(minutes=5)).timestamp()), not_after=int((now + CREDENTIAL_VALIDITY).timestamp()),
                predecessor_signature=request.predecessor_signature,
            )
            cred_body = pb.CredentialBody.FromString(credential.body)
            row = dict(
                name=body.name, role=role, status="active", endpoint=body.endpoint,
                credential=credential.SerializeToString(), credential_serial=serial,
                fingerprint=cred_body.member_fingerprint, ed25519_public_key=body.ed25519_public_key,
                paillier_n=body.paillier_n, tls_cert_sha256=cred_body.tls_cert_sha256,
                daily_quota=quota if existing is None else existing.daily_quota,
                updated_at_ms=_now_ms(),
            )
            if existing is None:
                conn.execute(insert(schema.members).values(member_id=body.member_id, **row))
            else:
                conn.execute(update(schema.members).where(schema.members.c.member_id == body.member_id).values(**row))
            version = audit_log.entry_version(conn)
            audit_log.append(conn, lambda seq, when: {
                "v": version, "kind": "credential_issued", "seq": seq, "time": when,
                "member_id": body.member_id, "name": body.name, "role": role, "serial": serial,
                "endpoint": body.endpoint, "fingerprint": cred_body.member_fingerprint.hex(),
                "credential": credential.SerializeToString().hex(), "daily_quota": row["daily_quota"],
            })
        gateway = GatewayHome(Path(self.config.gateway_home))
        return make_bundle(credential, tls_cert, ca_cert, self.config.gateway_endpoint,
                           gateway.log_verifier.read_text(encoding="utf-8").strip())

    def set_status(self, member_id: str, status: str) -> None:
        if status not in STATUSES:
            raise UsageError(f"status must be one of {STATUSES}")
        with self.engine.begin() as conn:
            current = self._get(conn, member_id)
            if current.status == status:  # the same status for every "already": a usage error (exit 2)
                raise UsageError(f"member {member_id} is already {status}")
            if current.status == "revoked":
                raise Refused(f"member {member_id} is revoked; revocation is final", reason="revoked")
            conn.execute(update(schema.members).where(schema.members.c.member_id == member_id)
                         .values(status=status, updated_at_ms=_now_ms()))
            kind = {"active": "member_resumed", "suspended": "member_suspended", "revoked": "member_revoked"}[status]
            version = audit_log.entry_version(conn)
            audit_log.append(conn, lambda seq, when: {"v": version, "kind": kind, "seq": seq, "time": when, "member_id": member_id})

    def set_quota(self, member_id: str, daily_quota: int) -> None:
        if daily_quota < 0:
            raise UsageError("the daily quota must be ≥ 0")
        with self.engine.begin() as conn:
            self._get(conn, member_id)
            conn.execute(update(schema.members).where(schema.members.c.member_id == member_id)
                         .values(daily_quota=daily_quota, updated_at_ms=_now_ms()))
            version = audit_log.entry_version(conn)
            audit_log.append(conn, lambda seq, when: {
                "v": version, "kind": "quota_changed", "seq": seq, "time": when, "member_id": member_id, "daily_quota": daily_quota,
            })

    def policy_show(self) -> Policy:
        with self.engine.connect() as conn:
            return policy_store.load(conn)

    def policy_set(self, key: str, value: str) -> tuple[Policy, int]:
        """Change one setting; logged as `policy_changed` (SPEC §9, §10)."""
        with self.engine.begin() as conn:
            if audit_log.v2_started_seq(conn) is None:
                raise UsageError("the alliance policy needs a v2 log: run `alliance admin db upgrade` first")
            policy = policy_store.load(conn).with_setting(key, value)
            seq = policy_store.store(conn, policy, {key: getattr(policy, key)})
        return policy, seq

    def upgrade_db(self) -> dict[str, Any]:
        """SPEC §6.4, §12: bring the database to this release's schema
        (Alembic: a v1 database is stamped at the baseline, then upgraded),
        then the log to v2 (a `v2_started` entry, after which v2 rules apply),
        and give a v1 gateway certificate the reserved gateway name v2
        clients check (§5.2), for the gateway's existing key. Idempotent."""
        gateway = GatewayHome(Path(self.config.gateway_home))
        gateway_cfg = gateway.config()
        migrated = migrations.upgrade(self.engine, schema.SCHEMA)
        with self.engine.begin() as conn:
            before = audit_log.v2_started_seq(conn)
            seq = audit_log.start_v2(conn, deadline_ms=gateway_cfg.deadline_ms)
        return {"schema": migrated, "v2_started_seq": seq, "already_v2": before is not None,
                "gateway_certificate_reissued": self._renew_gateway_cert(gateway)}

    def _renew_gateway_cert(self, gateway: GatewayHome) -> bool:
        cert = pki.load_cert_pem(gateway.tls_cert)
        try:
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
        except x509.ExtensionNotFound:
            names = []
        if pki.GATEWAY_TLS_NAME in names:
            return False
        hosts = tuple(h for h in names if not pki.is_reserved_host(h))
        try:
            hosts += tuple(str(ip) for ip in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                           .get_values_for_type(x509.IPAddress))
        except x509.ExtensionNotFound:
            pass
        tls_key = pki.load_ec_private_pem(gateway.tls_key)
        now = datetime.now(timezone.utc)
        renewed = pki.issue_tls_certificate(
            pki.load_ca_key(self.home.ca_key, self.ca_passphrase), pki.load_cert_pem(self.home.ca_cert), tls_key.public_key(),
            member_id="gateway", role="gateway", hosts=hosts, not_before=now - timedelta(minutes=5), not_after=now + CREDENTIAL_VALIDITY)
        pki.write_cert_pem(gateway.tls_cert, renewed)
        return True

    def list(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(schema.members).order_by(schema.members.c.member_id)).all()
            books = _books(conn)
        return [_public_view(r, books.get(r.member_id)) for r in rows]

    def show(self, member_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return _public_view(self._get(conn, member_id), _books(conn).get(member_id))

    @staticmethod
    def _get(conn: Any, member_id: str) -> Any:
        row = conn.execute(select(schema.members).where(schema.members.c.member_id == member_id)).first()
        if row is None:
            raise InvalidInput(f"no member {member_id!r}")
        return row


def _books(conn: Any) -> dict[str, Any]:
    """Each member's latest logged book status (SPEC §10)."""
    return {r.member_id: r for r in conn.execute(select(schema.book_status)).all()}


def _public_view(row: Any, book: Any = None) -> dict[str, Any]:
    """``book``: the member's latest logged book status row, if any: its
    book date (null: no loans, or no status logged) and loan count (null:
    no status logged)."""
    return {
        "member_id": row.member_id,
        "name": row.name,
        "role": row.role,
        "status": row.status,
        "endpoint": row.endpoint,
        "credential_serial": row.credential_serial,
        "fingerprint": pki.format_fingerprint(bytes(row.fingerprint)),
        "daily_quota": row.daily_quota,
        "book_date": book.book_date if book is not None else None,
        "book_loans": book.loans if book is not None else None,
    }


def make_bundle(credential: pb.Credential, tls_cert: Any, ca_cert: Any, gateway_endpoint: str, log_verifier: str) -> bytes:
    """What `member join` installs: public material only."""
    return json.dumps({
        "credential": base64.b64encode(credential.SerializeToString()).decode(),
        "tls_cert": pki.cert_pem(tls_cert).decode(),
        "ca_cert": pki.cert_pem(ca_cert).decode(),
        "gateway": gateway_endpoint,
        "log_verifier": log_verifier,
    }, indent=2).encode()


def _now_ms() -> int:
    return int(time.time() * 1000)


# A witnessed checkpoint carries the log's signature and one cosignature per
# member (SPEC §6.1); verifiers read at most checkpoint.MAX_SIGNATURES lines.
MAX_MEMBERS = checkpoint.MAX_SIGNATURES - 1


def _check_room_for_a_member(conn: Any) -> None:
    """Refuse the member past MAX_MEMBERS: its alliance's witnessed
    checkpoints would outgrow what every member reads, and members would
    quietly stop trusting any."""
    members = schema.members.c
    count = conn.execute(select(func.count()).select_from(schema.members)
                         .where(and_(members.role == "member", members.status != "revoked"))).scalar_one()
    if count >= MAX_MEMBERS:
        raise Refused(f"the alliance has {count} members, the most its witnessed checkpoints can carry "
                      f"({MAX_MEMBERS}: one cosignature each beside the log's, at most {checkpoint.MAX_SIGNATURES} lines)",
                      reason="alliance_full")

