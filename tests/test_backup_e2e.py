"""Issue 16: `cercle backup` while the bot runs, the machine wiped, `cercle restore` onto a fresh data
directory: the same device comes back, reads what was written meanwhile in an old room, answers
there, and `cercle status` shows the identity verified. On a real Synapse, real E2EE clients."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from bot.backup import create_backup, restore_backup
from bot.config import Config, MatrixConfig, StorageConfig, load_config, write_config
from bot.status import status
from storage.backup import BackupError, seal, unseal
from storage.repositories import open_store
from tests.bot_harness import BotHarness
from tests.clinician import Clinician
from tests.conftest import _fresh_postgres_schema, _postgres_answers

ROOT = Path(__file__).resolve().parent.parent
CERCLE = [sys.executable, "-m", "bot.cli"]
PASSPHRASE = "cheval agrafe pile correcte"


def cercle(*args: str, passphrase: str = PASSPHRASE) -> subprocess.CompletedProcess:
    return subprocess.run([*CERCLE, *args], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "CERCLE_BACKUP_PASSPHRASE": passphrase, "PYTHONPATH": str(ROOT)})


def test_the_archive_opens_only_with_its_passphrase():
    blob = seal(b"contenu", PASSPHRASE)
    assert unseal(blob, PASSPHRASE) == b"contenu"
    with pytest.raises(BackupError, match="phrase de passe incorrecte"):
        unseal(blob, PASSPHRASE + "!")
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(BackupError, match="altérée"):
        unseal(tampered, PASSPHRASE)
    with pytest.raises(BackupError, match="pas une sauvegarde"):
        unseal(b"PK\x03\x04 un zip", PASSPHRASE)
    with pytest.raises(BackupError, match="trop courte"):
        seal(b"x", "court")


@pytest.mark.synapse
async def test_backup_wipe_restore_keeps_the_device_and_answers_in_an_old_room(synapse, register, tmp_path):
    bot_user, bot_password = register("cercle")
    dr_user, dr_password = register("dr")
    data_dir = tmp_path / "machine" / "bot"
    config_path = tmp_path / "machine" / "cercle.toml"
    h = BotHarness(synapse.url, bot_user, bot_password, data_dir)
    await h.start()
    dr = None
    try:
        await h.enrol(dr_user)
        config_path.parent.mkdir(parents=True, exist_ok=True)
        write_config(config_path, h.config())
        dr = await Clinician.login(synapse.url, dr_user, dr_password, tmp_path / "dr")
        room = await dr.create_room(invite=[bot_user])
        await dr.wait_joined(room, bot_user, timeout=30)
        first = await dr.send_text(room, "!aide")
        await dr.wait_for_message(room, sender=bot_user, predicate=lambda m: m.in_reply_to() == first, timeout=30)
        device = h.bot.device_id

        archive = tmp_path / "sauvegarde.cercle"
        done = cercle("backup", str(archive), "--config", str(config_path))  # the bot runs meanwhile
        assert done.returncode == 0, done.stderr
        assert "Sauvegarde écrite" in done.stdout and device in done.stdout
        assert archive.stat().st_mode & 0o077 == 0
        for secret in (bot_password.encode(), b"[matrix]", b"SQLite format 3"):
            assert secret not in archive.read_bytes()  # nothing readable without the passphrase

        await h.stop()
        while_down = await dr.send_text(room, "!aide aide")  # written while the machine is gone
        shutil.rmtree(tmp_path / "machine")  # the machine is gone: data, key, crypto store, config

        wrong = cercle("restore", str(archive), "--config", str(config_path), passphrase="pas la bonne phrase")
        assert wrong.returncode == 4 and "phrase de passe incorrecte" in wrong.stderr
        assert not config_path.exists()
        done = cercle("restore", str(archive), "--config", str(config_path))
        assert done.returncode == 0, done.stderr
        assert f"appareil {device}" in done.stdout
        again = cercle("restore", str(archive), "--config", str(config_path))
        assert again.returncode == 4 and "la destination n'est pas vide" in again.stderr

        await h.start()
        assert h.bot.device_id == device, "the restored bot must be the same device"
        reply = await dr.wait_for_message(room, sender=bot_user, predicate=lambda m: m.in_reply_to() == while_down,
                                          timeout=40)
        assert reply.encrypted and "!aide" in reply.body
        after = await dr.send_text(room, "!aide")
        await dr.wait_for_message(room, sender=bot_user, predicate=lambda m: m.in_reply_to() == after, timeout=30)
        assert len([m for m in dr.messages(room) if m.in_reply_to() == first]) == 1  # no replay of the old one
        report = await status(load_config(config_path, environ={}))
        assert f"Appareil        : {device}" in report
        assert "oui, chaîne de signatures vérifiée" in report
    finally:
        if dr is not None:
            await dr.close()
        await h.stop()


async def test_backup_and_restore_on_postgresql(tmp_path, request):
    """pg_dump of the bot's schema into the archive, psql back into an emptied schema."""
    if not _postgres_answers():
        pytest.skip("PostgreSQL ne répond pas sur 127.0.0.1:5432")
    url = _fresh_postgres_schema(request)
    config = Config(matrix=MatrixConfig(homeserver="http://127.0.0.1:9", user_id="@cercle:test", password="x"),
                    storage=StorageConfig(data_dir=tmp_path / "bot", database_url=url))
    config_path = tmp_path / "cercle.toml"
    write_config(config_path, config)
    store = await open_store(url, config.storage.key_path())
    await store.set_state("device_id", "DEVICEPG")
    await store.set_secret("access_token", "syt_secret")
    await store.close()
    archive = tmp_path / "pg.cercle"
    assert "DEVICEPG" in await create_backup(config, config_path, archive, PASSPHRASE)

    schema = url.rsplit("search_path=", 1)[1]
    store = await open_store(url, config.storage.key_path())
    async with store.session.begin() as s:  # the database is lost: an empty schema is what is left
        await s.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await s.execute(text(f'CREATE SCHEMA "{schema}"'))
    await store.close()
    shutil.rmtree(tmp_path / "bot")
    with pytest.raises(BackupError, match="phrase de passe incorrecte"):
        await restore_backup(archive, config_path, "une autre phrase de passe", environ={})
    assert "DEVICEPG" in await restore_backup(archive, config_path, PASSPHRASE, environ={})
    store = await open_store(url, config.storage.key_path(), create_key=False)
    try:
        assert await store.get_secret("access_token") == "syt_secret"  # sealed with the restored key
    finally:
        await store.close()
