"""`alliance audit watch` (SPEC §7): certificate-transparency style
monitoring of one member's credentials — every credential issued in its
name, each judged against the expected fingerprint, the previous key's
endorsement and the CA signature."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography import x509

from alliance import pki
from alliance.errors import CryptoError
from alliance.v1 import alliance_pb2 as pb
from alliance_auditor import log_source
from alliance_auditor.log_source import LogSource
from alliance_auditor.state import AuditorState
from alliance_auditor.verify import verified_entries
from alliance_member.home import MemberHome


def watch(home: MemberHome | Path | str, member_id: str, expected_fingerprint: str | bytes | None = None, *,
          since: int = 0, client: LogSource | None = None) -> list[dict[str, Any]]:
    """Every credential issued in ``member_id``'s name (from entry ``since``
    on), each judged: ``alert`` is true when its fingerprint is not the
    expected one, when it changes the member's keys without the previous
    key's endorsement, or when the CA signature fails. As in certificate
    transparency, the member learns of any credential the CA issued for it."""
    pki.check_member_id(member_id)
    expected = _fingerprint(expected_fingerprint)
    state = AuditorState(home)
    found: list[tuple[int, dict[str, Any]]] = []

    def collect(seq: int, entry: dict[str, Any]) -> None:
        if entry["kind"] == "credential_issued" and entry.get("member_id") == member_id:
            found.append((seq, entry))

    with log_source.opened(state.home, client) as source:
        verified_entries(state, source, collect)
    alerts, pin = [], None
    for seq, entry in found:
        alert, pin = _judge_credential(state.ca_cert, seq, entry, pin, expected)
        if seq >= since:
            alerts.append(alert)
    return alerts


def _fingerprint(value: str | bytes | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return pki.parse_fingerprint(value)


def _judge_credential(ca_cert: x509.Certificate, seq: int, entry: dict[str, Any], pin: pki.Pin | None,
                      expected: bytes | None) -> tuple[dict[str, Any], pki.Pin | None]:
    alert = {
        "seq": seq, "time": entry.get("time"), "member_id": entry.get("member_id"), "name": entry.get("name"),
        "role": entry.get("role"), "serial": entry.get("serial"), "endpoint": entry.get("endpoint"),
        "fingerprint": None, "keys": None, "expected": None, "alert": False, "why": [],
    }
    try:
        cred = pb.Credential.FromString(bytes.fromhex(entry.get("credential", "")))
        when = datetime.strptime(entry["time"][:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
        body = pki.verify_credential(cred, ca_cert, now=int(when.timestamp()))
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with it, the member must hear of it
        alert.update(alert=True, keys="invalid", why=[f"the credential does not verify under the alliance CA: {exc}"])
        return alert, pin
    alert["fingerprint"] = pki.format_fingerprint(body.member_fingerprint)
    try:
        alert["keys"], new_pin = pki.check_pin(pin, cred, body)
    except CryptoError as exc:
        alert.update(keys="unendorsed", alert=True)
        alert["why"].append(f"new keys not endorsed by the member's previous key: {exc}")
        new_pin = pin
    if expected is not None:
        alert["expected"] = body.member_fingerprint == expected
        if not alert["expected"]:
            alert["alert"] = True
            alert["why"].append(f"fingerprint {alert['fingerprint']} is not the expected {pki.format_fingerprint(expected)}")
    return alert, new_pin


__all__ = ["watch"]
