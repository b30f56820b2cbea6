"""Files only the account running Cercle may read: secrets, databases, logs (issue 8).

The process umask does most of the work (files 0600, directories 0700, Synapse included since
it inherits it); the helpers below also cover files written where no umask was set (library use,
tests) and tighten what an older run left open.
"""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077


def restrict_umask() -> int:
    """Everything this process creates from now on is private; returns the previous umask."""
    return os.umask(PRIVATE_UMASK)


def private_dir(path: Path) -> Path:
    """Create `path` as 0700 if missing. An existing directory is left as it is: it may be a
    shared parent such as /tmp (use tighten() on directories that belong to Cercle)."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o700, exist_ok=True)
        _tighten_one(path)  # mkdir's mode is filtered by the umask, never widened: this is a no-op or a fix
    return path


def write_private(path: Path, data: str | bytes) -> None:
    """Write a file that is 0600 from its first byte (also when it already existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(data)


def tighten(*paths: Path, recursive: bool = True) -> None:
    """Remove group and other permissions from Cercle's own files (left by a run before this fix)."""
    for root in map(Path, paths):
        if not root.exists() or root.is_symlink():
            continue
        _tighten_one(root)
        if recursive and root.is_dir():
            for dirpath, dirnames, filenames in os.walk(root):
                for name in (*dirnames, *filenames):
                    _tighten_one(Path(dirpath) / name)


def _tighten_one(path: Path) -> None:
    try:
        if path.is_symlink():
            return
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            path.chmod(mode & ~0o077)
    except OSError as e:  # not ours, read-only mount…: say so, do not stop the start
        log.warning("permissions de %s non restreintes : %s", path, e.strerror)
