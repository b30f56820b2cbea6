"""Engine creation and Alembic migrations, applied at every start."""
from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from storage import sqlite_inline
from storage.private import private_dir, tighten

MIGRATIONS = Path(__file__).parent / "migrations"


def make_engine(url: str) -> AsyncEngine:
    parsed = make_url(url)
    connect_args: dict = {}
    if parsed.get_backend_name() == "postgresql":
        # `?search_path=x` selects a schema (the tests give each test its own).
        search_path = parsed.query.get("search_path")
        if search_path:
            parsed = parsed.difference_update_query(["search_path"])
            connect_args["server_settings"] = {"search_path": search_path}
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        database = Path(parsed.database)
        private_dir(database.parent)
        # SQLite gives its -wal and -shm files the database file's mode: create that one 0600.
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT, 0o600))
        tighten(*(database.with_name(database.name + suffix) for suffix in ("", "-wal", "-shm")), recursive=False)
    # A server may drop idle connections (PostgreSQL restarts, proxies): ping those at checkout. A
    # SQLite file cannot go away under the process; the ping would be one more thread hop per session.
    options: dict = {}
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        # One connection, run in the loop's thread (storage/sqlite_inline.py). One, because SQLite
        # has one writer anyway, and because a commit can yield to the loop (SQLAlchemy closes a
        # session in a task of its own): a second connection's write would then wait for the lock
        # in the loop's thread, where the first one can never finish. Sessions queue for it instead.
        options.update(async_creator=sqlite_inline.creator(parsed.database, uri=parsed.query.get("uri") == "true"),
                       pool_size=1, max_overflow=0)
    engine = create_async_engine(parsed, connect_args=connect_args,
                                 pool_pre_ping=parsed.get_backend_name() != "sqlite", **options)
    if parsed.get_backend_name() == "sqlite":
        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # With WAL, NORMAL syncs at checkpoints, not at each commit: a crash of the process loses
            # nothing; a power cut may lose the last commits, never half of one. Every transaction
            # stays whole (an event with its sync token, a fired deadline with its messages), and an
            # outbox send repeated after such a loss keeps its transaction id (deduplicated).
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=5000")
            cur.close()
    return engine


def _alembic_config(connection):
    # Imported here: Alembic (0.4 s) is for the bot's start, not for `cercle status` (issue 11).
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


async def migrate(engine: AsyncEngine) -> None:
    from alembic import command

    async with engine.begin() as conn:
        await conn.run_sync(lambda sync_conn: command.upgrade(_alembic_config(sync_conn), "head"))


def latest_revision() -> str:
    """The newest migration's id, from the file names (`0011_dialogues.py` -> '0011'), without
    loading Alembic; tests/test_storage.py checks it is Alembic's head."""
    return max(p.name.split("_", 1)[0] for p in (MIGRATIONS / "versions").glob("[0-9]*_*.py"))


async def schema_revision(engine: AsyncEngine) -> str | None:
    """The migration the database is at (None: never migrated)."""
    async with engine.connect() as conn:
        try:
            return (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
        except Exception:  # no such table
            return None


def sessionmaker(engine: AsyncEngine, **kwargs) -> async_sessionmaker:
    return async_sessionmaker(engine, expire_on_commit=False, **kwargs)
