"""Writing the files ``mimamori provision`` makes (secrets, broker configuration, certificates)."""

from __future__ import annotations

import os
from pathlib import Path


def write_file(path: Path, text: str, mode: int) -> None:
    """Atomically (temp file + rename), created with ``mode`` so a secret is never briefly readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed it; never widened beyond ``mode``
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
