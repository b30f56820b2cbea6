"""`cercle backup <file>` / `cercle restore <file>`: the three things that must be saved together.

The database (the bot's state, its sync token, its device id and access token, sealed), the
storage key (without which the database's sealed fields are noise) and nio's crypto store (the
device's Olm account and the room keys: without it, a new device and unreadable history). Plus
the config file, and the password file it names. One archive, encrypted with a passphrase.

Order of the copies, when the bot runs meanwhile: the database first, the crypto store second.
The restored bot then syncs again from the database's older token (events already known are
ignored) with a crypto store at least as recent (room keys received in between are kept; the
other order could lose keys the server has already deleted).

What a restore cannot undo: the device's one-time keys published after the backup are unknown
to the restored store, so a peer that starts a new Olm session with one of those fails once and
retries (Element does). Back up daily; restore only onto a stopped bot.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy.engine import make_url

from bot.config import Config, load_config
from storage.backup import (
    BackupError,
    copy_tree_consistently,
    pg_dump,
    pg_restore,
    seal,
    sqlite_copy,
    unseal,
)
from storage.instance import InstanceBusy, InstanceLock
from storage.private import private_dir
from storage.repositories import open_store

SQLITE_MEMBER = "database.sqlite"
PG_MEMBER = "database.sql"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o600, int(datetime.now(timezone.utc).timestamp())
    tar.addfile(info, io.BytesIO(data))


def _is_sqlite(config: Config) -> bool:
    return make_url(config.storage.url()).get_backend_name() == "sqlite"


async def create_backup(config: Config, config_path: Path | None, out: Path, passphrase: str) -> str:
    """Write the encrypted archive to `out` (0600); returns a one-line French summary."""
    key_path = config.storage.key_path()
    if not key_path.exists():
        raise BackupError(f"clé de stockage introuvable : {key_path} (le bot a-t-il déjà démarré ?)")
    store = await open_store(config.storage.url(), key_path, create_key=False)
    try:
        device_id = await store.get_state("device_id")
    finally:
        await store.close()
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tmp = Path(tmp)
        # 1. the database, 2. the crypto store (see the module's docstring for why in this order)
        if _is_sqlite(config):
            sqlite_copy(Path(make_url(config.storage.url()).database), tmp / SQLITE_MEMBER)
            tar.add(tmp / SQLITE_MEMBER, SQLITE_MEMBER)
        else:
            _add(tar, PG_MEMBER, pg_dump(config.storage.url()))
        nio_store = config.storage.data_dir / "nio-store"
        if nio_store.exists():
            copy_tree_consistently(nio_store, tmp / "nio-store")
            tar.add(tmp / "nio-store", "nio-store")
        _add(tar, "storage.key", key_path.read_bytes())
        if config_path is not None and Path(config_path).exists():
            _add(tar, "cercle.toml", Path(config_path).read_bytes())
        if config.matrix.password_file and Path(config.matrix.password_file).exists():
            _add(tar, "password", Path(config.matrix.password_file).read_bytes())
        manifest = {"format": 1, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "user_id": config.matrix.user_id, "device_id": device_id,
                    "database": "sqlite" if _is_sqlite(config) else "postgresql"}
        _add(tar, "manifest.json", json.dumps(manifest, ensure_ascii=False).encode())
    blob = seal(buffer.getvalue(), passphrase)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(blob)
    return (f"Sauvegarde écrite : {out} ({len(blob) / 1e6:.1f} Mo), appareil {device_id} de "
            f"{config.matrix.user_id}. Conservez la phrase de passe à part : sans elle, rien n'est lisible.")


def _refuse_if_not_empty(config: Config) -> None:
    data_dir = config.storage.data_dir
    present = [p for p in (config.storage.key_path(), data_dir / "nio-store", data_dir / "cercle.db") if p.exists()]
    if present:
        raise BackupError(f"la destination n'est pas vide ({', '.join(str(p) for p in present)}) : "
                          "restaurez sur un répertoire de données neuf (déplacez l'ancien d'abord)")


async def restore_backup(archive: Path, config_path: Path, passphrase: str,
                         environ: dict[str, str] | None = None) -> str:
    """Restore onto a fresh data directory (and database); returns a French summary."""
    data = unseal(Path(archive).read_bytes(), passphrase)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
        manifest = json.loads(tar.extractfile("manifest.json").read())
        config_path = Path(config_path)
        if not config_path.exists():
            if "cercle.toml" not in members:
                raise BackupError(f"{config_path} absent et la sauvegarde ne contient pas de configuration")
            private_dir(config_path.parent)
            fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(tar.extractfile("cercle.toml").read())
        config = load_config(config_path, environ=environ)
        if config.matrix.user_id != manifest["user_id"]:
            raise BackupError(f"la sauvegarde est celle de {manifest['user_id']}, la configuration celle de "
                              f"{config.matrix.user_id}")
        _refuse_if_not_empty(config)
        private_dir(config.storage.data_dir)
        try:  # no bot may run on the target while it is written (PostgreSQL: no waiting here)
            lock = await InstanceLock.acquire(config.storage.url(), config.matrix.user_id, on_wait=_busy)
        except InstanceBusy as e:
            raise BackupError(f"un bot tourne sur la destination : arrêtez-le d'abord ({e})") from None
        try:
            if SQLITE_MEMBER in members:
                if not _is_sqlite(config):
                    raise BackupError("sauvegarde SQLite, configuration PostgreSQL : convertissez la base à part")
                with tempfile.TemporaryDirectory() as tmp:
                    tar.extract(SQLITE_MEMBER, tmp, filter="data")
                    sqlite_copy(Path(tmp) / SQLITE_MEMBER, Path(make_url(config.storage.url()).database))
            else:
                if _is_sqlite(config):
                    raise BackupError("sauvegarde PostgreSQL, configuration SQLite : indiquez storage.database_url")
                pg_restore(config.storage.url(), tar.extractfile(PG_MEMBER).read())
            nio_members = [m for m in tar.getmembers() if m.name.startswith("nio-store")]
            tar.extractall(config.storage.data_dir, members=nio_members, filter="data")
            key_path = config.storage.key_path()
            private_dir(key_path.parent)
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(tar.extractfile("storage.key").read())
            if "password" in members and config.matrix.password_file and not config.matrix.password_file.exists():
                private_dir(config.matrix.password_file.parent)
                fd = os.open(config.matrix.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(tar.extractfile("password").read())
        finally:
            await lock.release()
    store = await open_store(config.storage.url(), config.storage.key_path(), create_key=False)
    try:  # the sealed fields open with the restored key, and the device is the saved one
        device_id = await store.get_state("device_id")
        await store.get_secret("access_token")
    finally:
        await store.close()
    return (f"Restauration terminée : {config.matrix.user_id}, appareil {device_id} (sauvegarde du "
            f"{manifest['created_at']}). Lancez `cercle run --config {config_path}`, puis `cercle status`.")


def _busy() -> None:
    raise InstanceBusy("verrou d'instance déjà pris")
