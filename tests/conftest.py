"""Shared fixtures: one real Synapse per test session, database URLs for SQLite and PostgreSQL."""
from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import os
import socket
import uuid

import pytest

from bot.local_synapse import LocalSynapse

_user_counter = itertools.count(1)


@pytest.fixture(scope="session")
def synapse(tmp_path_factory) -> LocalSynapse:
    """A real Synapse on a free loopback port, SQLite in a temp dir, rate limits lifted."""
    server = LocalSynapse.prepare(tmp_path_factory.mktemp("synapse"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def register(synapse):
    """register(prefix) -> (user_id, password): a fresh account on the test homeserver."""

    def _register(prefix: str = "user", displayname: str | None = None) -> tuple[str, str]:
        localpart = f"{prefix}{next(_user_counter)}_{uuid.uuid4().hex[:6]}"
        password = f"pw-{uuid.uuid4().hex}"
        return synapse.register(localpart, password, displayname=displayname), password

    return _register


def _postgres_answers(host: str = "127.0.0.1", port: int = 5432) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


POSTGRES_BASE = os.environ.get("CERCLE_TEST_POSTGRES", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """Every storage test runs on SQLite and on PostgreSQL (a fresh schema each time)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'cercle.db'}"
    if not _postgres_answers():
        pytest.skip("PostgreSQL ne répond pas sur 127.0.0.1:5432 : tests PostgreSQL ignorés")
    return _fresh_postgres_schema(request)


def _fresh_postgres_schema(request) -> str:
    """An isolated schema per test, dropped afterwards, so tests never see each other's rows."""
    import asyncpg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    dsn = POSTGRES_BASE.replace("postgresql+asyncpg", "postgresql")

    async def run(sql: str):
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def execute(sql: str) -> None:
        # Its own loop in a thread: callers may be inside a running event loop (async fixtures).
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, run(sql)).result()

    execute(f'CREATE SCHEMA "{schema}"')
    request.addfinalizer(lambda: execute(f'DROP SCHEMA "{schema}" CASCADE'))
    sep = "&" if "?" in POSTGRES_BASE else "?"
    # storage.engine turns `search_path` into an asyncpg server setting.
    return f"{POSTGRES_BASE}{sep}search_path={schema}"


@pytest.fixture
async def harness(synapse, register, tmp_path):
    """A running Cercle bot on the test Synapse, with its own data directory."""
    from tests.bot_harness import BotHarness

    bot_user, bot_password = register("cercle")
    h = BotHarness(synapse.url, bot_user, bot_password, tmp_path / "bot")
    await h.start()
    yield h
    await h.stop()


@pytest.fixture
async def people(synapse, register, tmp_path, harness):
    """people(prefix, profession, name=…, enrol=…) -> a logged-in E2EE clinician (in the directory by default)."""
    from tests.clinician import Clinician

    opened = []

    async def make(prefix="dr", profession="medecin_generaliste", name=None, enrol=True, roles=None):
        user_id, password = register(prefix)
        if enrol:
            await harness.enrol(user_id, profession, name=name, roles=roles)
        c = await Clinician.login(synapse.url, user_id, password, tmp_path / f"store-{prefix}-{len(opened)}")
        opened.append(c)
        return c

    yield make
    for c in opened:
        await c.close()
