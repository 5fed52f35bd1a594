"""alliance._internal.files: atomic writes that never rename over a device."""
from __future__ import annotations

import os
import stat

from alliance._internal.files import write_atomic


def test_write_atomic_replaces_a_regular_file_whole(tmp_path) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "out.bin"
    target.write_bytes(b"old contents, longer than the new")
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"], "no temp file left"


def test_write_atomic_writes_into_a_fifo_never_renames_over_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`--out /dev/null` as root must not turn /dev/null into a plain file; a
    FIFO stands in for the device."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        write_atomic(fifo, b"bundle bytes")
        assert stat.S_ISFIFO(os.stat(fifo).st_mode)
        assert os.read(reader, 100) == b"bundle bytes"
    finally:
        os.close(reader)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_write_atomic_like_keeps_the_replaced_files_mode(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A file other processes write to (receipt checkpoints) keeps its mode
    when replaced; without ``like`` a new file is 0644 (0600 if private)."""
    path = tmp_path / "shared.jsonl"
    path.write_bytes(b"old\n")
    os.chmod(path, 0o664)
    write_atomic(path, b"new\n", like=os.stat(path))
    assert path.read_bytes() == b"new\n" and stat.S_IMODE(os.stat(path).st_mode) == 0o664
    write_atomic(path, b"plain\n")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
