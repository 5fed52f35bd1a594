"""`alliance member screen --resume` (SPEC §12): a batch cut off by a gateway
restart is finished by a second run that skips every subject already in the
output file, so each subject ends up in it exactly once.

The gateway side is a stand-in Querier (the CLI's only contact with the
network), which fails like a restarting gateway after k subjects."""
from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from alliance import identity, synthetic
from alliance.errors import AllianceError, Unreachable
from alliance_cli.main import cli
from alliance_member import querier as querier_mod

N = 9


class RestartingGateway:
    """Answers subjects one by one; the first run dies after ``fail_after``."""

    fail_after: int | None = None
    sent: list[int] = []

    def __init__(self, home: Path, *, db_url: str | None = None) -> None:
        pass

    def screen(self, subjects: Iterable[tuple[int, Any]], **_: Any) -> Iterator[tuple[int, dict[str, Any] | AllianceError]]:
        for count, (line, subject) in enumerate(subjects):
            if RestartingGateway.fail_after is not None and count == RestartingGateway.fail_after:
                raise Unreachable("gateway unavailable (restarting)")
            RestartingGateway.sent.append(line)
            if isinstance(subject, AllianceError):
                yield line, subject
            else:
                yield line, {"query_id": f"q{line}", "report": {"id": subject.canonical_id[-4:]}}

    def close(self) -> None:
        pass


@pytest.fixture
def batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setattr(querier_mod, "Querier", RestartingGateway)
    RestartingGateway.fail_after, RestartingGateway.sent = None, []
    rng = random.Random(5)
    ids = [synthetic.generate_resident_id(rng) for _ in range(N)]
    lines = ["id_type,id_number", *(f"RESIDENT_ID,{i}" for i in ids)]
    lines.insert(4, "RESIDENT_ID,123")  # a bad row (line 5) is a subject too: its error is written once
    src = tmp_path / "subjects.csv"
    src.write_text("\n".join(lines) + "\n")
    expected = {n: identity.masked_id(i) for n, i in zip([2, 3, 4, *range(6, N + 3)], ids)}
    expected[5] = "*" * 3
    return {"input": src, "output": tmp_path / "out.jsonl", "expected": expected, "home": tmp_path / "home"}


def screen(batch: dict[str, Any], *extra: str) -> Any:
    args = ["member", "screen", "--home", str(batch["home"]), "--input", str(batch["input"]), "--purpose", "LOAN_APPROVAL",
            "--consent-id", "C-1", "--consent-sha256", "ab" * 32, "--output", str(batch["output"]), *extra]
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def output_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_a_screen_cut_off_by_a_gateway_restart_resumes_and_every_subject_is_there_once(batch) -> None:  # type: ignore[no-untyped-def]
    k = 4
    RestartingGateway.fail_after = k
    first = screen(batch)
    assert first.exit_code == 5, first.output
    assert len(output_lines(batch["output"])) == k

    RestartingGateway.fail_after, RestartingGateway.sent = None, []
    second = screen(batch, "--resume")
    assert second.exit_code == 3, second.output  # the bad row's error, written in the first run, stays a failure
    rows = output_lines(batch["output"])
    assert sorted(r["line"] for r in rows) == sorted(batch["expected"])  # every subject exactly once
    assert {r["line"]: r["subject"] for r in rows} == batch["expected"]
    assert sorted(RestartingGateway.sent) == sorted(batch["expected"])[k:]  # nothing already done was sent again
    assert f"{N + 1 - k} screened, 0 failed, {k} already in the output (1 of them failed)" in second.output

    RestartingGateway.sent = []
    third = screen(batch, "--resume")  # all done: nothing is sent, nothing is added
    assert RestartingGateway.sent == [] and len(output_lines(batch["output"])) == N + 1
    assert third.exit_code == 3, third.output  # still a batch with a failed row
    assert f"0 screened, 0 failed, {N + 1} already in the output (1 of them failed)" in third.output


def test_resume_cuts_a_torn_last_line_and_screens_that_subject_again(batch) -> None:  # type: ignore[no-untyped-def]
    screen(batch)
    rows = batch["output"].read_text().splitlines(keepends=True)
    batch["output"].write_text("".join(rows[:3]) + rows[3][:10])  # died mid-write of the 4th
    RestartingGateway.sent = []
    screen(batch, "--resume")
    assert RestartingGateway.sent[0] == json.loads(rows[3])["line"]
    assert sorted(r["line"] for r in output_lines(batch["output"])) == sorted(batch["expected"])


def test_resume_refuses_an_output_from_another_input(batch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    batch["output"].write_text(json.dumps({"line": 2, "subject": "1101**********0000", "report": {}}) + "\n")
    RestartingGateway.sent = []
    result = screen(batch, "--resume")
    assert result.exit_code == 2 and "another input file" in result.output
    assert RestartingGateway.sent == []  # refused before anything was sent
    no_output = CliRunner().invoke(cli, ["member", "screen", "--home", str(tmp_path), "--input", str(batch["input"]),
                                         "--purpose", "LOAN_APPROVAL", "--consent-id", "C", "--consent-sha256", "ab" * 32,
                                         "--resume"])
    assert no_output.exit_code == 2 and "--resume needs --output" in no_output.output


def test_without_resume_the_output_is_rewritten(batch) -> None:  # type: ignore[no-untyped-def]
    screen(batch)
    screen(batch)
    assert len(output_lines(batch["output"])) == N + 1
