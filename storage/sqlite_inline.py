"""SQLite for the async engine without a thread hop per call: the aiosqlite interface, run inline.

aiosqlite runs each call (cursor, execute, fetch, close, commit) in its own thread and wakes the
event loop for the answer: 11 to 12 hand-overs for the transaction that records a sync, about
0.5 ms each on a shared 2-core machine, while the statements themselves take microseconds
(profiled for issue 11: 6.5 ms per recorded sync, 1.9 ms inline). Here the same calls run in the
event loop's thread, on one connection (storage.engine: SQLite has one writer anyway). What that
asks of the callers:

- a transaction holds the one connection until it ends: no network wait inside one (the outbox
  design already forbids it: a handler writes rows, the sends happen after the commit), and no
  second session opened while one is held (it would wait for the connection, and fail after the
  pool's 30 s);
- a long read blocks the loop for its duration: the quarter's bordereau over 1,000,000 ledger
  lines, 1.3 s once a quarter; `!indicateurs` over a year, under 0.7 s (bench/bordereau.py,
  bench/indicateurs.py, measured with aiosqlite). On PostgreSQL nothing of this applies.

SQLAlchemy's aiosqlite dialect drives this through its `async_creator` hook: everything above
the connection (dialect, SQL compilation, types, pool) is SQLAlchemy's own.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any


class InlineCursor:
    """aiosqlite.Cursor's coroutine methods over a sqlite3 cursor, run at once."""

    __slots__ = ("_cursor",)

    def __init__(self, cursor: sqlite3.Cursor):
        self._cursor = cursor

    async def __aenter__(self) -> "InlineCursor":
        return self

    async def __aexit__(self, *exc) -> None:
        self._cursor.close()

    def __aiter__(self):
        return self

    async def __anext__(self):
        row = self._cursor.fetchone()
        if row is None:
            raise StopAsyncIteration
        return row

    async def execute(self, sql: str, parameters: Sequence[Any] | dict | None = None) -> "InlineCursor":
        if parameters is None:
            self._cursor.execute(sql)
        else:
            self._cursor.execute(sql, parameters)
        return self

    async def executemany(self, sql: str, parameters) -> "InlineCursor":
        self._cursor.executemany(sql, parameters)
        return self

    async def fetchone(self):
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None):
        return self._cursor.fetchmany(size) if size is not None else self._cursor.fetchmany()

    async def fetchall(self):
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()

    @property
    def description(self):
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self):
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value


class InlineConnection:
    """aiosqlite.Connection's interface as SQLAlchemy's aiosqlite adapter uses it."""

    def __init__(self, connection: sqlite3.Connection):
        self._connection = connection  # the adapter checks it before commit and rollback

    def cursor(self) -> InlineCursor:
        return InlineCursor(self._connection.cursor())

    async def execute(self, sql: str, parameters=None) -> InlineCursor:
        return await self.cursor().execute(sql, parameters)

    async def commit(self) -> None:
        self._connection.commit()

    async def rollback(self) -> None:
        self._connection.rollback()

    async def close(self) -> None:
        self.stop()

    def stop(self) -> None:  # the adapter's forced close (aiosqlite ≥ 0.22)
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def create_function(self, *args, **kwargs) -> None:
        self._connection.create_function(*args, **kwargs)

    @property
    def isolation_level(self):  # read by the adapter; Cercle never sets one (the driver's default)
        return self._connection.isolation_level


def creator(database: str, uri: bool = False):
    """The `async_creator` for create_async_engine: a coroutine function giving a connection."""

    async def connect() -> InlineConnection:
        # check_same_thread off as SQLAlchemy's pysqlite dialect sets it: the pool may close a
        # connection from the garbage collector's thread.
        return InlineConnection(sqlite3.connect(database, uri=uri, check_same_thread=False))

    return connect
