"""The member's signed book status (SPEC §10): made from the loan book, kept
in the home (``book_status.json``, the exact signed bytes) so the serving
node puts the newest one in every answer, and sent to the gateway at
`member serve` start and after each loans import.

Book date: the newest ``updated_on`` among the member's loans that is not
later than its own today (Asia/Shanghai), so neither re-importing an old file
(import time is not a loan update) nor a future-dated row makes a book fresh.
A status that cannot be sent (gateway unreachable) is still saved; the next
`member serve` start makes and sends a new one."""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, Callable
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, func, select

from alliance import book_status, db, pki
from alliance.errors import AllianceError
from alliance.v1 import alliance_pb2 as pb
from alliance_member import store
from alliance_member.home import MemberHome

log = logging.getLogger("alliance.member")
SHANGHAI = ZoneInfo("Asia/Shanghai")
FILE_NAME = "book_status.json"
SEND_TIMEOUT_S = 5.0


def today_shanghai(now_s: float) -> date:
    return datetime.fromtimestamp(now_s, tz=SHANGHAI).date()


def book_of(engine: Engine, today: date) -> tuple[date | None, int]:
    """(newest updated_on not after ``today`` or None, number of loans)."""
    c = store.loans.c
    with engine.connect() as conn:
        newest = conn.execute(select(func.max(c.updated_on)).where(c.updated_on <= today)).scalar()
        count = conn.execute(select(func.count()).select_from(store.loans)).scalar_one()
    if newest is not None and not isinstance(newest, date):
        newest = date.fromisoformat(str(newest))
    if count == 0:
        newest = None
    elif newest is None:  # every row is future-dated: the book states no usable date
        newest = None
    return newest, count


def _path(home: MemberHome) -> Path:
    return Path(home.path) / FILE_NAME


def make(home: MemberHome, engine: Engine, *, clock: Callable[[], float] = time.time) -> tuple[bytes, bytes]:
    """Sign the book's current status and save it in the home; (body, signature)."""
    cfg = home.config()
    credential = pki.verify_credential(home.credential.read_bytes(), pki.load_cert_pem(home.ca_cert))
    now = clock()
    newest, loans = book_of(engine, today_shanghai(now))
    loans_counted = loans if newest is not None else 0  # a book with no dated loan is treated as empty
    status = book_status.BookStatus(cfg.member_id, credential.serial, newest, loans_counted, int(now * 1000))
    body, signature = book_status.sign(pki.load_ed25519_private_pem(home.signing_key), status)
    tmp = _path(home).with_suffix(".tmp")
    tmp.write_text(json.dumps({"body": body.hex(), "signature": signature.hex()}), encoding="utf-8")
    os.replace(tmp, _path(home))
    return body, signature


@dataclass(frozen=True)
class SendResult:
    status: book_status.BookStatus
    sent: bool
    error: str | None = None
    leaf_index: int | None = None

    def line(self) -> str:
        s = self.status
        what = (f"book status: book date {s.book_date.isoformat()}, {s.loans} loan(s)" if s.book_date
                else "book status: no loans")
        if self.sent:
            return f"{what}; logged by the gateway at entry {self.leaf_index}"
        return f"{what}; could not be sent to the gateway ({self.error}); it is sent again when `alliance member serve` starts"


def send(home: MemberHome, body: bytes, signature: bytes, *, client: Any = None) -> SendResult:
    """Post the status; never raises for an unreachable or refusing gateway."""
    status = book_status.parse(body)
    own = client is None
    try:
        if client is None:
            from alliance_member.gateway_client import GatewayClient

            client = GatewayClient(home, timeout_s=SEND_TIMEOUT_S)
        response = client.post_book_status(pb.SignedBookStatus(body=body, signature=signature))
        return SendResult(status, True, leaf_index=response.entry.index)
    except AllianceError as exc:
        return SendResult(status, False, str(exc))
    finally:
        if own and client is not None:
            client.close()


def refresh(home_dir: Path, *, db_url: str | None = None, client: Any = None) -> SendResult | None:
    """After an import (or at serve start): make, save and send the status.
    None when the home has not joined (nothing to sign with yet)."""
    home = MemberHome(home_dir)
    if home.config().role != "member" or not home.is_joined():
        return None
    engine = db.make_engine(home.db_url(db_url))
    try:
        store.create_schema(engine)
        body, signature = make(home, engine)
    finally:
        engine.dispose()
    return send(home, body, signature, client=client)


class StatusSource:
    """The saved status's exact bytes for every answer; re-read when the file
    changes (an import in another process saves a new one)."""

    def __init__(self, home_dir: Path) -> None:
        self.path = Path(home_dir) / FILE_NAME
        self._mtime: int | None = None
        self._body = b""
        self._lock = threading.Lock()

    def __call__(self) -> bytes:
        with self._lock:
            try:
                mtime = self.path.stat().st_mtime_ns
            except FileNotFoundError:
                return b""
            if mtime != self._mtime:
                try:
                    self._body = bytes.fromhex(json.loads(self.path.read_text(encoding="utf-8"))["body"])
                except (OSError, ValueError, KeyError, TypeError):
                    log.warning("unreadable %s: answers carry no book status until it is rewritten", self.path)
                    self._body = b""
                self._mtime = mtime
            return self._body
