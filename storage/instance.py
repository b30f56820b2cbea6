"""One active bot per database: a lock taken before anything else opens.

Two processes on one database would both sync, both answer and both fire the deadlines (the
inbox's primary key stops an event being recorded twice, not two workers handling the same
pending row at once), and would share one Matrix device, whose crypto store is a file.

- SQLite: an exclusive `flock` on `<database>.lock`. A second process is refused at once, with a
  French message: SQLite is for one machine, there is no standby to offer.
- PostgreSQL: a session advisory lock, held by a connection of its own for the process's whole
  life. A second process waits on it (hot standby) and takes over when the first one's session
  ends: a `kill -9` or a dead machine closes its connection and PostgreSQL releases the lock
  (at once for a killed process; for a machine gone silent, after the lock connection's TCP
  keepalives: 10 s idle, then 3 probes 5 s apart, so about 25 s).
  The key is derived from the bot's account and the schema, so bots of several CPTS may share
  one PostgreSQL.
"""
from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

log = logging.getLogger("cercle")

POLL_S = 1.0  # the standby asks for the lock this often (the takeover's delay, at most)
WATCH_S = 5.0  # the active process checks its lock connection this often


# PostgreSQL down, restarting, or the session ended by an administrator.
_TRANSIENT = (OSError, asyncpg.CannotConnectNowError, asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError,
              asyncpg.exceptions.OperatorInterventionError)


class InstanceBusy(Exception):
    """Another process holds this database (French message for the operator)."""

    exit_code = 3  # `cercle run`'s exit status


class InstanceLock:
    def __init__(self, kind: str, release: Callable[[], object], watch=None):
        self.kind = kind
        self._release = release
        self._watch = watch

    @classmethod
    async def acquire(cls, database_url: str, owner: str, on_wait: Callable[[], None] | None = None,
                      poll_s: float = POLL_S) -> "InstanceLock":
        url = make_url(database_url)
        if url.get_backend_name() == "sqlite":
            if not url.database or url.database == ":memory:":
                return cls("sqlite", lambda: None)  # a private in-memory database: nothing to share
            return cls._sqlite(Path(url.database))
        if url.get_backend_name() == "postgresql":
            return await cls._postgres(url, owner, on_wait, poll_s)
        raise InstanceBusy(f"base de données non prise en charge : {url.get_backend_name()}")

    # --- SQLite ------------------------------------------------------------------------------
    @classmethod
    def _sqlite(cls, database: Path) -> "InstanceLock":
        path = database.with_name(database.name + ".lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise InstanceBusy(
                f"une autre instance de Cercle utilise déjà la base {database} (processus {holder}). "
                "Deux bots sur la même base répondraient deux fois à chaque message : arrêtez l'autre "
                "instance d'abord. Pour une instance de secours qui prend le relais, utilisez PostgreSQL "
                "(voir « Exploitation » dans le README).") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())

        def release() -> None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

        return cls("sqlite", release)

    # --- PostgreSQL --------------------------------------------------------------------------
    @classmethod
    async def _postgres(cls, url, owner: str, on_wait, poll_s: float) -> "InstanceLock":
        schema = url.query.get("search_path", "")
        key = advisory_key(url.database or "", schema, owner)
        dsn = url.set(drivername="postgresql").difference_update_query(["search_path"])
        waiting = False
        while True:  # a standby outlives a PostgreSQL restart: it reconnects and waits on
            conn = None
            try:
                conn = await asyncpg.connect(
                    dsn.render_as_string(hide_password=False),
                    server_settings={"application_name": "cercle-instance-lock", "tcp_keepalives_idle": "10",
                                     "tcp_keepalives_interval": "5", "tcp_keepalives_count": "3"})
                while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
                    if not waiting:
                        waiting = True
                        log.warning("une autre instance de Cercle est active sur cette base : en attente "
                                    "(instance de secours), relais dès qu'elle s'arrête")
                        if on_wait:
                            on_wait()
                    await asyncio.sleep(poll_s)
                break
            except _TRANSIENT as e:  # a wrong password or database name is not retried: it stops here
                if conn is not None:
                    conn.terminate()
                log.warning("PostgreSQL injoignable pour le verrou d'instance (%s) : nouvel essai dans 5 s",
                            type(e).__name__)
                await asyncio.sleep(5)
            except BaseException:
                if conn is not None:
                    conn.terminate()
                raise
        if waiting:
            log.warning("verrou obtenu : cette instance prend le relais")

        async def watch() -> None:
            """Returns when the lock's connection is lost: the lock may be another's by now."""
            while True:
                await asyncio.sleep(WATCH_S)
                try:
                    await asyncio.wait_for(conn.fetchval("SELECT 1"), WATCH_S)
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    log.error("connexion du verrou d'instance perdue (%s) : arrêt pour laisser la main",
                              type(e).__name__)
                    return

        async def release() -> None:
            try:
                await asyncio.wait_for(conn.close(), 5)
            except Exception:
                conn.terminate()

        return cls("postgresql", release, watch)

    async def watch(self) -> None:
        """Completes if the lock is lost (PostgreSQL); never for SQLite (the flock cannot be lost)."""
        if self._watch is None:
            await asyncio.Event().wait()
        await self._watch()

    async def release(self) -> None:
        outcome = self._release()
        if asyncio.iscoroutine(outcome):
            await outcome


def advisory_key(database: str, schema: str, owner: str) -> int:
    """A signed 64-bit key, stable across processes and machines (hash() is salted per process)."""
    digest = hashlib.sha256(f"cercle:{database}:{schema}:{owner}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)
