"""The session-signing secret of a single-process deployment, kept under DATA_DIR.

Without ``SIGHTLINE_WEB__SECRET_KEY``, a fresh random key per start would sign everyone
out at every restart. The key is made once, written owner-only (0600) and linked into
place atomically, so two processes starting together agree on one key.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

FILE = "session.secret"


def session_secret(data_dir: Path) -> str:
    """The persisted key, made on first use (again if the file was left empty)."""
    path = data_dir / FILE
    if not path.exists() or not path.read_text().strip():
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = data_dir / f".{FILE}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, secrets.token_hex(32).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            if path.exists():
                os.replace(tmp, path)  # an empty file: replace it
            else:
                os.link(tmp, path)  # fails if another process linked its key first
        except FileExistsError:
            pass
        except OSError:
            # No hard links on this file system (some network and FUSE mounts): rename,
            # which may replace a key another process made a moment ago (rare, harmless
            # beyond signing its first sessions out).
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        path.chmod(0o600)  # copied in with a wider mode: nobody else may read it
    return path.read_text().strip()
