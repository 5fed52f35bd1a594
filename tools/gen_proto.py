"""Regenerate the Python gRPC stubs from proto/ (the source of truth).

    python tools/gen_proto.py          # rewrite alliance/v1/*_pb2*.py
    python tools/gen_proto.py --check  # exit 1 if the checked-in stubs are stale
"""
from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTOS = sorted(PROTO_ROOT.rglob("*.proto"))
OUTPUTS = ("alliance_pb2.py", "alliance_pb2.pyi", "alliance_pb2_grpc.py")


def generate(out_dir: Path) -> None:
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p) for p in PROTOS],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    opts = parser.parse_args()
    if not opts.check:
        generate(ROOT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = [
            name
            for name in OUTPUTS
            if not (ROOT / "alliance/v1" / name).exists()
            or not filecmp.cmp(Path(tmp) / "alliance/v1" / name, ROOT / "alliance/v1" / name, shallow=False)
        ]
    if stale:
        print("stale generated stubs: " + ", ".join(stale) + " (run `./dev proto`)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
