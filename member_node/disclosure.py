"""`alliance member disclose` (SPEC §11): the member's monthly figures from its
own book, signed and logged at the gateway.

The figures come from the book as it stands (each loan's latest state),
counting loans opened up to the month's last day (alliance.disclosure has the
definitions). The gateway's answer is checked before success is reported: the
logged entry holds exactly our statement and signature, under a checkpoint
signed by the log key, with a valid inclusion proof."""
from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, select

from alliance import checkpoint, db, disclosure, merkle, pki
from alliance.errors import CryptoError, UsageError
from alliance.v1 import alliance_pb2 as pb
from alliance_member import store
from alliance_member.home import MemberHome

SHANGHAI = ZoneInfo("Asia/Shanghai")


class DisclosureSink(Protocol):
    def post_disclosure(self, signed: pb.SignedDisclosure) -> pb.LoggedStatementResponse: ...
    def close(self) -> None: ...


def book_loans(engine: Engine) -> list[disclosure.Loan]:
    """Every loan row of the book (streamed from the store, so only the
    fields the figures need are held)."""
    c = store.loans.c
    with engine.connect() as conn:
        rows = conn.execute(select(c.subject_token, c.principal_fen, c.balance_fen, c.opened_on, c.status, c.overdue_days))
        return [disclosure.Loan(bytes(r.subject_token), r.principal_fen, r.balance_fen, r.opened_on, r.status, r.overdue_days)
                for r in rows]


def month_has_ended(month: str, now_ms: int) -> bool:
    _, last = disclosure.parse_month(month)
    return datetime.fromtimestamp(now_ms / 1000, tz=SHANGHAI).date() > last


def disclose(home_dir: Path, month: str, *, db_url: str | None = None, client: DisclosureSink | None = None,
             clock: Any = time.time) -> dict[str, Any]:
    """Compute, sign, submit, and check the gateway logged exactly this."""
    home = MemberHome(home_dir)
    cfg = home.config()
    if cfg.role != "member":
        raise UsageError(f"{home_dir} is an {cfg.role} home; only members disclose")
    if not home.is_joined():
        raise UsageError(f"{home_dir} has not joined the alliance yet (run `alliance member join`)")
    disclosure.parse_month(month)
    now_ms = int(clock() * 1000)
    if not month_has_ended(month, now_ms):
        raise UsageError(f"month {month} has not ended yet (Asia/Shanghai): a month is disclosed as of its last day, "
                         "in the first days of the next month")
    credential = pki.verify_credential(home.credential.read_bytes(), pki.load_cert_pem(home.ca_cert))
    signing_key = pki.load_ed25519_private_pem(home.signing_key)
    verifier = checkpoint.parse_verifier_key(home.log_verifier.read_text(encoding="utf-8").strip())
    engine = db.make_engine(home.db_url(db_url))
    try:
        store.create_schema(engine)
        figures = disclosure.compute(book_loans(engine), month)
    finally:
        engine.dispose()
    statement = disclosure.Statement(cfg.member_id, month, credential.serial, now_ms, figures)
    disclosure.check_figures(statement.figures)  # what the gateway and every auditor will check
    body, signature = disclosure.sign(signing_key, statement)
    if client is None:
        from alliance_member.gateway_client import GatewayClient

        client = GatewayClient(home)
    try:
        response = client.post_disclosure(pb.SignedDisclosure(body=body, signature=signature))
    finally:
        client.close()
    entry = check_logged(response, body, signature, verifier)
    return {"member_id": cfg.member_id, "month": month, "figures": figures, "made_at_ms": now_ms,
            "credential_serial": credential.serial,
            "audit": {"leaf_index": response.entry.index, "time": entry["time"], "checkpoint": response.checkpoint}}


def check_logged(response: pb.LoggedStatementResponse, body: bytes, signature: bytes, verifier: Any) -> dict[str, Any]:
    """The logged entry is our statement, and it is in the signed tree."""
    cp = checkpoint.open_checkpoint(response.checkpoint, verifier)
    try:
        entry = json.loads(response.entry.data)
    except ValueError:
        raise CryptoError("the gateway's disclosure entry is not JSON") from None
    if (not isinstance(entry, dict) or entry.get("kind") != "disclosure" or entry.get("body") != body.hex()
            or entry.get("signature") != signature.hex() or entry.get("seq") != response.entry.index):
        raise CryptoError("the gateway logged something other than this disclosure")
    merkle.verify_inclusion(merkle.leaf_hash(response.entry.data), response.entry.index, cp.size,
                            list(response.entry.inclusion_proof), cp.root_hash)
    return entry
