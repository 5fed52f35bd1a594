"""`alliance audit monthly-report` (SPEC §11): the alliance operations report
for one month, from the audit log alone.

The log is fetched and checked as the other auditor tools do
(alliance_auditor.verify: every entry against a signed checkpoint consistent
with the ones this auditor kept); then every disclosure's signature is
checked against the member's credential key of the time
(alliance.monthly_report), and one that fails refuses the report."""
from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

from alliance import monthly_report
from alliance_auditor import log_source
from alliance_auditor.log_source import LogSource
from alliance_auditor.state import AuditorState
from alliance_auditor.verify import verified_entries
from alliance_member.home import MemberHome


def build(home: MemberHome | Path | str, month: str, *, client: LogSource | None = None,
          clock: Any = time.time) -> dict[str, Any]:
    state = AuditorState(home)
    collector = monthly_report.Collector(state.ca_cert, month)
    with log_source.opened(state.home, client) as source:
        cp = verified_entries(state, source, collector.add)
    log = {"origin": cp.origin, "tree_size": cp.size, "root_hash": base64.b64encode(cp.root_hash).decode("ascii")}
    return collector.build(generated_at_ms=int(clock() * 1000), log=log)
