"""The .proto files are the source of truth: checked-in stubs must match what
the pinned grpcio-tools generates from them."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_stubs_are_fresh() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_proto.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_stub_check_detects_staleness(tmp_path: Path) -> None:
    """The check itself can fail: a proto with an extra field is stale against the stubs."""
    import shutil

    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "proto", copy / "proto")
    shutil.copytree(ROOT / "alliance" / "v1", copy / "alliance" / "v1")
    shutil.copytree(ROOT / "tools", copy / "tools", ignore=shutil.ignore_patterns("__pycache__"))
    proto = copy / "proto" / "alliance" / "v1" / "alliance.proto"
    proto.write_text(proto.read_text().replace("message GetCheckpointRequest {}", "message GetCheckpointRequest { uint32 extra = 1; }"))
    result = subprocess.run([sys.executable, str(copy / "tools" / "gen_proto.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 1
    assert "stale" in result.stderr
