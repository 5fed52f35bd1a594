"""Atomic file writes; secrets are created 0600 from the first byte."""
from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path


def is_special(path: Path) -> bool:
    """An existing target that is not a regular file (``/dev/null``, a FIFO,
    a terminal): written into, never renamed over. A rename would replace
    the device node itself (as root, /dev/null became a plain file)."""
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return False


def write_atomic(path: Path, data: bytes, *, private: bool = False, like: os.stat_result | None = None) -> None:
    """``like``: the new file gets that stat's mode and group, and its owner
    when this process can give it (root), as when replacing a file others
    write to; a group this process may not give raises PermissionError."""
    if is_special(path):
        with open(path, "wb") as fh:
            fh.write(data)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh, unguessable name, created, never followed: the folder may be
    # writable by someone a root caller must not be tricked into writing for.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600 if private or like is not None else 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            if like is not None:  # owner (root only) and group first: chown clears setuid bits
                os.fchown(fh.fileno(), like.st_uid if os.geteuid() == 0 else -1, like.st_gid)
                os.fchmod(fh.fileno(), stat.S_IMODE(like.st_mode))
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
