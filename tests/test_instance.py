"""Issue 16: one active bot per database, with real `cercle run` processes on a real Synapse.

- SQLite: a second process on the same database is refused at once, with a French message.
- PostgreSQL: a second process waits (its /health says `standby`), and takes over within 30 s of
  a `kill -9` of the first: same device, every command answered exactly once.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from sqlalchemy.engine import make_url

from bot.config import Config, CptsConfig, HttpConfig, MatrixConfig, StorageConfig, SyncConfig, write_config
from bot.local_synapse import free_port
from domain.clock import SystemClock
from rooms.directory import upsert_professional
from storage.instance import InstanceBusy, InstanceLock, advisory_key
from storage.repositories import open_store
from tests.clinician import Clinician
from tests.conftest import POSTGRES_BASE, _fresh_postgres_schema, _postgres_answers

ROOT = Path(__file__).resolve().parent.parent
CERCLE = [sys.executable, "-m", "bot.cli"]


# --- the lock alone (no homeserver) ------------------------------------------------------------------
async def test_sqlite_lock_refuses_a_second_holder_and_frees_on_release(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'cercle.db'}"
    first = await InstanceLock.acquire(url, "@cercle:test")
    with pytest.raises(InstanceBusy, match="une autre instance de Cercle utilise déjà la base"):
        await InstanceLock.acquire(url, "@cercle:test")
    await first.release()
    again = await InstanceLock.acquire(url, "@cercle:test")
    await again.release()


async def test_postgres_lock_waits_then_takes_over(request):
    if not _postgres_answers():
        pytest.skip("PostgreSQL ne répond pas sur 127.0.0.1:5432")
    url = _fresh_postgres_schema(request)
    first = await InstanceLock.acquire(url, "@cercle:test")
    waited = []
    second = asyncio.create_task(InstanceLock.acquire(url, "@cercle:test", on_wait=lambda: waited.append(1),
                                                      poll_s=0.1))
    await asyncio.sleep(0.5)
    assert not second.done() and waited == [1]
    other_bot = await InstanceLock.acquire(url, "@autre:test")  # another CPTS's bot on the same schema
    await first.release()
    lock = await asyncio.wait_for(second, 5)
    await lock.release()
    await other_bot.release()


# --- real processes ----------------------------------------------------------------------------------
def write_bot_config(path: Path, synapse_url: str, user_id: str, password: str, data_dir: Path,
                     database_url: str | None = None) -> None:
    write_config(path, Config(
        matrix=MatrixConfig(homeserver=synapse_url, user_id=user_id, password=password),
        storage=StorageConfig(data_dir=data_dir, database_url=database_url),
        cpts=CptsConfig(name="CPTS de test"), sync=SyncConfig(timeout_ms=1000),
        http=HttpConfig(listen="127.0.0.1:0")))
    path.chmod(0o600)


def cercle_run(config: Path, port: int, log: Path, **env_vars) -> subprocess.Popen:
    env = {**os.environ, "CERCLE_HTTP_LISTEN": f"127.0.0.1:{port}", "PYTHONPATH": str(ROOT), **env_vars}
    # Logs go to stderr; stdout is for the operator (the recovery key is printed there, once).
    out, err = open(log.with_suffix(".out"), "ab"), open(log, "ab")
    return subprocess.Popen([*CERCLE, "run", "--config", str(config)], stdout=out, stderr=err, cwd=ROOT, env=env)


async def health(port: int) -> tuple[int | None, dict]:
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{port}/health", timeout=aiohttp.ClientTimeout(total=5)) as r:
                return r.status, json.loads(await r.text())
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return None, {}


async def wait_status(port: int, status: str, timeout: float, proc: subprocess.Popen, log: Path) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"le processus s'est arrêté ({proc.returncode}) :\n{log.read_text()[-3000:]}")
        _, body = await health(port)
        if body.get("status") == status:
            return time.monotonic() - start
        await asyncio.sleep(0.2)
    raise AssertionError(f"/health n'a pas dit {status} en {timeout:.0f} s : {body}\n{log.read_text()[-3000:]}")


async def devices(homeserver: str, token: str) -> set[str]:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{homeserver}/_matrix/client/v3/devices", headers={"Authorization": f"Bearer {token}"}) as r:
            return {d["device_id"] for d in (await r.json())["devices"]}


def kill(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def enrol(database_url: str, key: Path, user_id: str) -> tuple[str, str]:
    """Put `user_id` in the directory; returns the bot's (device id, access token)."""
    store = await open_store(database_url, key, create_key=False)
    try:
        now = SystemClock().now()
        async with store.session.begin() as session:
            await upsert_professional(session, user_id=user_id, display_name="Dr Test",
                                      profession="medecin_generaliste", roles=[], now=now,
                                      communes=["Brétigny-sur-Orge"], cotisation_until=now + timedelta(days=365))
        return await store.get_state("device_id"), await store.get_secret("access_token")
    finally:
        await store.close()


@pytest.mark.synapse
async def test_a_second_process_on_sqlite_is_refused_and_json_logs_hold_no_secret(synapse, register, tmp_path):
    bot_user, bot_password = register("cercle")
    dr_user, dr_password = register("dr")
    stranger, stranger_password = register("inconnu")
    config = tmp_path / "cercle.toml"
    write_bot_config(config, synapse.url, bot_user, bot_password, tmp_path / "bot")
    port, log = free_port(), tmp_path / "first.log"
    first = cercle_run(config, port, log, CERCLE_LOG_FORMAT="json")
    dr = None
    try:
        await wait_status(port, "ok", 60, first, log)
        second = subprocess.run([*CERCLE, "run", "--config", str(config)], capture_output=True, text=True,
                                cwd=ROOT, timeout=60, env={**os.environ, "CERCLE_HTTP_LISTEN": "127.0.0.1:0"})
        assert second.returncode == 3
        assert "une autre instance de Cercle utilise déjà la base" in second.stderr
        assert f"processus {first.pid}" in second.stderr
        assert first.poll() is None and (await health(port))[1]["status"] == "ok"  # the first one serves on

        # JSON lines: a command with a recognisable body goes through; nothing secret comes out.
        _, token = await enrol(f"sqlite+aiosqlite:///{tmp_path / 'bot' / 'cercle.db'}",
                               tmp_path / "bot" / "storage.key", dr_user)
        dr = await Clinician.login(synapse.url, dr_user, dr_password, tmp_path / "dr")
        room = await dr.create_room(invite=[bot_user])
        await dr.wait_joined(room, bot_user, timeout=30)
        sent = await dr.send_text(room, "!aide zorglubien")
        await dr.wait_for_message(room, sender=bot_user, predicate=lambda m: m.in_reply_to() == sent, timeout=30)
        # Someone outside the directory invites the bot: a log line that names them (pseudonymised).
        await dr.close()
        dr = await Clinician.login(synapse.url, stranger, stranger_password, tmp_path / "stranger")
        await dr.create_room(invite=[bot_user])
        for _ in range(100):
            if "refusée (hors annuaire)" in log.read_text():
                break
            await asyncio.sleep(0.2)
    finally:
        if dr is not None:
            await dr.close()
        kill(first)
    lines = log.read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert any("session" in e["message"] or "connexion" in e["message"] for e in entries)
    assert {"ts", "level", "logger", "message"} <= set(entries[0])
    text = log.read_text()
    refused = [e["message"] for e in entries if "hors annuaire" in e["message"]]
    assert refused and refused[0].startswith("invitation de @#"), refused
    assert stranger.split(":")[1] in refused[0]  # the server part stays: it says which CPTS
    for secret in (token, bot_password, dr_password, "zorglubien", bot_user, dr_user, stranger):
        assert secret not in text, secret


@pytest.mark.synapse
async def test_the_standby_takes_over_after_kill_9_with_the_same_device_and_no_double_reply(
        synapse, register, tmp_path, request):
    if not _postgres_answers():
        pytest.skip("PostgreSQL ne répond pas sur 127.0.0.1:5432")
    database_url = _fresh_postgres_schema(request)
    bot_user, bot_password = register("cercle")
    dr_user, dr_password = register("dr")
    data_dir = tmp_path / "shared"  # the shared volume: storage key and crypto store
    config = tmp_path / "cercle.toml"
    write_bot_config(config, synapse.url, bot_user, bot_password, data_dir, database_url)
    port_a, port_b = free_port(), free_port()
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    a = cercle_run(config, port_a, log_a)
    b = dr = None
    try:
        await wait_status(port_a, "ok", 60, a, log_a)
        device, token = await enrol(database_url, data_dir / "storage.key", dr_user)

        devices_before = await devices(synapse.url, token)
        assert device in devices_before
        b = cercle_run(config, port_b, log_b)
        await wait_status(port_b, "standby", 60, b, log_b)
        assert (await health(port_b))[0] == 200

        dr = await Clinician.login(synapse.url, dr_user, dr_password, tmp_path / "dr")
        room = await dr.create_room(invite=[bot_user])
        await dr.wait_joined(room, bot_user, timeout=30)
        first = await dr.send_text(room, "!aide")
        await dr.wait_for_message(room, sender=bot_user, predicate=lambda m: m.in_reply_to() == first, timeout=30)

        # A burst, and the active process killed in the middle of it; more while nobody serves.
        sent = [await dr.send_text(room, f"!aide {name}") for name in ("aide", "patient", "demande")]
        a.send_signal(signal.SIGKILL)
        a.wait(10)
        killed_at = time.monotonic()
        sent += [await dr.send_text(room, "!aide alerte")]
        await wait_status(port_b, "ok", 30, b, log_b)
        took = time.monotonic() - killed_at
        assert took <= 30, f"relais en {took:.1f} s"
        sent += [await dr.send_text(room, "!aide aide")]
        for event_id in sent:
            await dr.wait_for_message(room, sender=bot_user, predicate=lambda m, e=event_id: m.in_reply_to() == e,
                                      timeout=40)
        await asyncio.sleep(3)  # room for a duplicate to show up
        for event_id in [first, *sent]:
            replies = [m for m in dr.messages(room) if m.in_reply_to() == event_id]
            assert len(replies) == 1, (event_id, [r.body[:40] for r in replies])

        store = await open_store(database_url, data_dir / "storage.key", create_key=False)
        try:
            assert await store.get_state("device_id") == device
        finally:
            await store.close()
        assert await devices(synapse.url, token) == devices_before  # no new device (registration made one)
        print(f"relais : /health ok {took:.1f} s après le kill -9")

        # The active process loses its lock's session (e.g. the DBA ends it): it stops rather than
        # go on beside a standby that could now take the lock.
        key = advisory_key(make_url(database_url).database, make_url(database_url).query["search_path"], bot_user)
        conn = await asyncpg.connect(POSTGRES_BASE.replace("postgresql+asyncpg", "postgresql"))
        try:
            ended = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND classid = $1 AND objid = $2 AND objsubid = 1", (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF)
        finally:
            await conn.close()
        assert ended == 1
        assert await asyncio.get_running_loop().run_in_executor(None, b.wait, 30) == 1
        assert "connexion du verrou d'instance perdue" in log_b.read_text()
    finally:
        if dr is not None:
            await dr.close()
        kill(a)
        kill(b)
