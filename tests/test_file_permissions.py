"""Secrets on disk are private to the account running Cercle (issue 8).

`cercle up` writes the bot's config (its password), demo.json (demo passwords), the storage key,
the databases, the nio store, and Synapse's config (registration_shared_secret: whoever reads
it can register an admin), signing key, media store and log. None of it may be readable by
group or others, and files left loose by an older run are tightened at start.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bot.local_synapse import free_port
from tests.test_cli import start_up, stop, wait_ready

pytestmark = pytest.mark.synapse


def loose_paths(root: Path) -> list[str]:
    """Every file readable/writable by group or others, every directory others can enter or list."""
    offending = []
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        too_open = mode & 0o077 if path.is_dir() else mode & 0o066
        if too_open:
            offending.append(f"{path.relative_to(root.parent)} {oct(mode)}")
    return offending


async def test_cercle_up_leaves_no_file_readable_by_others(tmp_path):
    data_dir = tmp_path / "demo"
    # An older run, before this fix, left its files open to everyone.
    old_umask = os.umask(0o022)
    try:
        (data_dir / "bot").mkdir(parents=True)
        (data_dir / "synapse").mkdir()
        (data_dir / "demo.json").write_text("{}")
        (data_dir / "synapse" / "homeserver.stderr").write_text("")
    finally:
        os.umask(old_umask)
    assert loose_paths(data_dir)

    proc = start_up(data_dir, free_port())
    try:
        await wait_ready(proc)
        running = loose_paths(data_dir)
    finally:
        assert stop(proc) == 0
    names = {p.relative_to(data_dir).as_posix() for p in data_dir.rglob("*")}
    assert {"cercle.toml", "demo.json", "bot/storage.key", "synapse/homeserver.json", "synapse/signing.key",
            "synapse/homeserver.db", "synapse/homeserver.log", "synapse/media"} <= names, sorted(names)
    assert any(n.startswith("bot/nio-store/") for n in names), sorted(names)
    offending = sorted(set(running) | set(loose_paths(data_dir)))
    assert not offending, "accessibles au groupe ou aux autres :\n" + "\n".join(offending)
