#!/usr/bin/env python3
"""Mutation check of the report rules (issue 12): shift each boundary of SPEC §4
by one (and a few other plausible slips), run the report-rule tests against each
mutant, and show that at least one test fails for every one.

    .venv/bin/python tools/mutation_check.py [-k NAME] [--fuzz | --migrations]

Each mutant is applied to the source file in place and restored in a `finally`
(the original bytes are put back even on Ctrl-C); the script refuses to start
when a target file has uncommitted changes, so nothing of yours is lost.
Exit status 0 when every mutant was killed, 1 otherwise."""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ["tests/test_report_rules.py"]


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...] = tuple(TESTS)


MUTANTS = [
    Mutant("30d window one day longer", "alliance/report.py", "window_start(as_of, 30)", "window_start(as_of, 31)"),
    Mutant("30d window one day shorter", "alliance/report.py", "window_start(as_of, 30)", "window_start(as_of, 29)"),
    Mutant("90d window one day longer", "alliance/report.py", "window_start(as_of, 90)", "window_start(as_of, 91)"),
    Mutant("90d window one day shorter", "alliance/report.py", "window_start(as_of, 90)", "window_start(as_of, 89)"),
    Mutant("windows exclusive of D (days, not days-1)", "alliance/report.py", "timedelta(days=days - 1)", "timedelta(days=days)"),
    Mutant("30d start exclusive", "alliance/report.py", "if start30 <= loan.opened_on", "if start30 < loan.opened_on"),
    Mutant("90d start exclusive", "alliance/report.py", "if start90 <= loan.opened_on", "if start90 < loan.opened_on"),
    Mutant("dpd_1_30 uses <", "alliance/report.py", "if overdue_days <= 30:", "if overdue_days < 30:"),
    Mutant("dpd_31_60 uses <", "alliance/report.py", "if overdue_days <= 60:", "if overdue_days < 60:"),
    Mutant("dpd_61_90 uses <", "alliance/report.py", "if overdue_days <= 90:", "if overdue_days < 90:"),
    Mutant("overdue from 2 days", "alliance/report.py", "if loan.overdue_days >= 1:", "if loan.overdue_days >= 2:"),
    Mutant("loans opened on D ignored", "alliance/report.py", "if loan.opened_on > as_of:", "if loan.opened_on >= as_of:"),
    Mutant("loans opened after D counted", "alliance/report.py", "if loan.opened_on > as_of:", "if False:"),
    Mutant("flags raised on D ignored", "alliance/report.py", "flag.flagged_on > as_of", "flag.flagged_on >= as_of"),
    Mutant("flags raised after D counted", "alliance/report.py", " or flag.flagged_on > as_of", ""),
    Mutant("CLEARED flags counted", "alliance/report.py", 'flag.status != "ACTIVE" or ', ""),
    Mutant("scores given on D ignored", "alliance/report.py", "score.scored_on <= as_of", "score.scored_on < as_of"),
    Mutant("scores given after D counted", "alliance/report.py", "score.scored_on <= as_of", "True"),
    Mutant("average truncated", "alliance/report.py", "(score_sum * 20 + scored_lenders) // (2 * scored_lenders)",
           "(score_sum * 10) // scored_lenders"),
    Mutant("average with float round()", "alliance/report.py", "(score_sum * 20 + scored_lenders) // (2 * scored_lenders)",
           "int(round(score_sum * 10 / scored_lenders))"),
    Mutant("average rounds half-down", "alliance/report.py", "(score_sum * 20 + scored_lenders) // (2 * scored_lenders)",
           "(score_sum * 20 + scored_lenders - 1) // (2 * scored_lenders)"),
    Mutant("written-off amount not summed", "alliance/report.py", 'f["written_off_amount_fen"] += loan.balance_fen',
           'f["written_off_amount_fen"] += 0'),
    Mutant("check_plausible allows one too many", "alliance/report.py", "if sums[FIELD_INDEX[name]] > members_summed:",
           "if sums[FIELD_INDEX[name]] > members_summed + 1:"),
    Mutant("check_plausible skips scored_lenders", "alliance/report.py", '    "scored_lenders",\n)', ")"),
    Mutant("querier k check k=1", "member_node/answer_checks.py", "MIN_SUMMANDS = 2", "MIN_SUMMANDS = 1"),
    Mutant("querier trusts members_answered", "member_node/answer_checks.py",
           "if len(receipts) != len(response.answers) or len(receipts) != response.members_answered:", "if False:"),
    Mutant("querier ignores who was asked", "member_node/answer_checks.py",
           "if not receipts <= set(response.asked_member_ids) or len(response.asked_member_ids) != response.members_asked:",
           "if False:"),
]

# Crash and half-write mutants, caught by the fuzz tests (tests/test_fuzz.py;
# FUZZ_EXAMPLES sets the examples per target). `--fuzz` selects these.
FUZZ = "tests/test_fuzz.py"
FUZZ_MUTANTS = [
    Mutant("uds1: impossible date escapes as ValueError", "alliance/uds1/fields.py",
           "            try:\n                return date.fromisoformat(text)\n            except ValueError:\n"
           "                raise _Bad(f\"{text} is not a real date\") from None",
           "            return date.fromisoformat(text)", (FUZZ + "::test_fuzz_uds1_rows",)),
    Mutant("import: invalid rows committed anyway", "member_node/importer.py",
           "            if result.rows_rejected and not skip_invalid:\n                raise _Rollback()",
           "            pass", (FUZZ + "::test_fuzz_import_is_all_or_nothing",)),
    Mutant("identity: check character not checked", "alliance/identity.py", "    if given != expected:", "    if False:",
           (FUZZ + "::test_fuzz_identity_single_substitution_is_always_refused",)),
    Mutant("protocol: as_of range unchecked (member overflows)", "alliance/protocol.py",
           "    if not AS_OF_EARLIEST <= as_of <= AS_OF_LATEST:", "    if False:",
           (FUZZ + "::test_fuzz_member_resigned_queries", FUZZ + "::test_fuzz_gateway_resigned_queries")),
    Mutant("protocol: bad query id raises ValueError", "alliance/protocol.py",
           "        raise Refused(\"query_id must be 32 lowercase hex characters\", reason=\"malformed_request\")",
           "        raise ValueError(\"query_id\")", (FUZZ + "::test_fuzz_member_rpc_bytes", FUZZ + "::test_fuzz_member_resigned_queries")),
    Mutant("gateway: inclusion proof errors escape", "gateway/service.py",
           "            return pb.Proof(hashes=self.log.inclusion_proof(request.index, request.tree_size))\n"
           "        except Exception as exc:",
           "            return pb.Proof(hashes=self.log.inclusion_proof(request.index, request.tree_size))\n"
           "        except ZeroDivisionError as exc:", (FUZZ + "::test_fuzz_gateway_rpc_bytes",)),
]

# Schema-migration slips (SPEC §12), caught by tests/test_migrations.py (run
# under tools/with_postgres.sh to cover PostgreSQL too). `--migrations` selects these.
MIGRATIONS = ("tests/test_migrations.py",)
GW_V2 = "gateway/migrations/versions/gw_0002_v2.py"
MB_V2 = "member_node/migrations/versions/mb_0002_v2.py"
MIGRATION_MUTANTS = [
    Mutant("member v2 revision drops a column", MB_V2,
           '            sa.Column("witnessed_at_ms", sa.BigInteger, nullable=True),\n', "", MIGRATIONS),
    Mutant("member v2 revision: a nullable column NOT NULL", MB_V2,
           'sa.Column("witnessed_at_ms", sa.BigInteger, nullable=True)', 'sa.Column("witnessed_at_ms", sa.BigInteger, nullable=False)',
           MIGRATIONS),
    Mutant("gateway v2 revision forgets an index", GW_V2,
           '        op.create_index("ix_cosignatures_member", "cosignatures", ["member_id", "size"])\n', "", MIGRATIONS),
    Mutant("gateway v2 revision: a column one type off", GW_V2,
           'sa.Column("cut_at_ms", sa.BigInteger, nullable=False)', 'sa.Column("cut_at_ms", sa.Integer, nullable=False)', MIGRATIONS),
    Mutant("a model column added without a revision", "member_node/store.py",
           '    Column("details", String(8192), nullable=False),  # canonical JSON\n',
           '    Column("details", String(8192), nullable=False),  # canonical JSON\n    Column("severity", String(16), nullable=True),\n',
           MIGRATIONS),
    Mutant("a v1 database not stamped at the baseline", "alliance/migrations.py",
           "                command.stamp(cfg, kind.baseline)", "                pass", MIGRATIONS),
    Mutant("an older database taken as current", "alliance/migrations.py",
           "        return self.revision == self.head", "        return self.revision is not None or bool(self.tables)", MIGRATIONS),
]


def _clean(path: Path) -> bool:
    out = subprocess.run(["git", "status", "--porcelain", "--", str(path)], cwd=ROOT, capture_output=True, text=True)
    return out.returncode == 0 and out.stdout.strip() == ""


def run_mutant(m: Mutant, python: str) -> tuple[bool, str, float]:
    path = ROOT / m.path
    original = path.read_bytes()
    text = original.decode("utf-8")
    if text.count(m.old) != 1:
        return False, f"mutation site not found exactly once ({text.count(m.old)}x): update this script", 0.0
    started = time.monotonic()
    try:
        path.write_text(text.replace(m.old, m.new), encoding="utf-8")
        out = subprocess.run([python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:logging", *m.tests],
                             cwd=ROOT, capture_output=True, text=True, timeout=900)
    finally:
        path.write_bytes(original)
    failed = [line.split(" ")[1] for line in out.stdout.splitlines() if line.startswith("FAILED ")]
    killed = out.returncode == 1 and bool(failed)
    return killed, (failed[0] if failed else f"pytest exit {out.returncode}"), time.monotonic() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", help="only mutants whose name contains this")
    ap.add_argument("--fuzz", action="store_true", help="the crash/half-write mutants against the fuzz tests")
    ap.add_argument("--migrations", action="store_true", help="the schema-migration mutants against tests/test_migrations.py")
    args = ap.parse_args()
    chosen = FUZZ_MUTANTS if args.fuzz else MIGRATION_MUTANTS if args.migrations else MUTANTS
    mutants = [m for m in chosen if not args.k or args.k in m.name]
    dirty = sorted({m.path for m in mutants if not _clean(ROOT / m.path)})
    if dirty:
        print(f"refusing: uncommitted changes in {', '.join(dirty)}", file=sys.stderr)
        return 2
    base = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:logging",
                           *dict.fromkeys(t for m in mutants for t in m.tests)], cwd=ROOT, capture_output=True, text=True)
    if base.returncode != 0:
        print("the unmutated code fails the tests; fix that first\n" + base.stdout[-2000:], file=sys.stderr)
        return 2
    survivors = 0
    for m in mutants:
        killed, detail, secs = run_mutant(m, sys.executable)
        survivors += not killed
        print(f"{'KILLED  ' if killed else 'SURVIVED'} {m.name:45s} {m.path:24s} {secs:5.1f}s  {detail}")
    print(f"{len(mutants) - survivors}/{len(mutants)} mutants killed")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
