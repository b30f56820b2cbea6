"""The operator's HTTP endpoints in the bot process (aiohttp): GET /health and GET /metrics.

Started before the bot opens (so a standby waiting for the lock answers `standby`) and stopped
after it closes. Nothing here reads a message, a patient or a user id.

/health, JSON, with the HTTP status a load balancer or a supervisor reads:
  200 {"status": "ok"}        synced within http.sync_max_age_s, database answers, no send older
                              than http.outbox_max_age_s
  200 {"status": "standby"}   waiting for the active process's lock (PostgreSQL hot standby)
  503 {"status": "starting" | "error", "reasons": [...]}  French reasons, one per failed check
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime, timezone

from aiohttp import web

from bot.config import ConfigError, HttpConfig
from bot.metrics import Metrics
from storage.ops import oldest_pending_send

log = logging.getLogger("cercle")

DB_CHECK_S = 5.0


class OpsServer:
    def __init__(self, http: HttpConfig, metrics: Metrics):
        self.http = http
        self.metrics = metrics
        self.role = "starting"  # starting -> standby -> active -> stopping
        self.bot = None  # the running Bot, once it is open (bot.app.Bot; not imported: app imports nothing of here)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    # --- lifecycle --------------------------------------------------------------------------
    async def start(self) -> str:
        """Listen on http.listen (port 0: a free one); returns the base URL."""
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)  # scrapes every 15 s would flood the log
        await self._runner.setup()
        host, port = self.http.host_port()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            raise ConfigError(f"http.listen : impossible d'écouter sur {self.http.listen} ({e.strerror})") from None
        self.port = site._server.sockets[0].getsockname()[1]
        url = f"http://{host if ':' not in host else f'[{host}]'}:{self.port}"
        log.info("santé et métriques : %s/health, %s/metrics", url, url)
        return url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def standby(self) -> None:
        self.role = "standby"
        self.metrics.active.set(0)

    def serving(self, bot) -> None:
        self.bot = bot
        self.role = "active"
        self.metrics.active.set(1)

    def stopping(self) -> None:
        self.role = "stopping"
        self.metrics.active.set(0)

    # --- handlers ---------------------------------------------------------------------------
    async def _health(self, request: web.Request) -> web.Response:
        status, body = await self.health()
        return web.json_response(body, status=status, dumps=lambda v: json.dumps(v, ensure_ascii=False))

    async def health(self) -> tuple[int, dict]:
        if self.role == "standby":
            return 200, {"status": "standby"}
        if self.role != "active" or self.bot is None:
            return 503, {"status": self.role, "reasons": ["le bot démarre ou s'arrête"]}
        bot = self.bot
        reasons = []
        if bot.homeserver.down:
            reasons.append("serveur d'accueil injoignable")
        last = bot.intake.last_sync_at
        if last is None:
            reasons.append("pas encore de synchronisation")
        elif time.monotonic() - last > self.http.sync_max_age_s:
            reasons.append(f"pas de synchronisation réussie depuis {time.monotonic() - last:.0f} s")
        try:
            oldest = await asyncio.wait_for(_oldest_pending_send(bot.store), DB_CHECK_S)
        except Exception as e:  # timeout, connection refused: the database does not answer
            reasons.append(f"base de données sans réponse ({type(e).__name__})")
        else:
            if oldest > self.http.outbox_max_age_s:
                reasons.append(f"envoi en attente depuis {oldest:.0f} s")
        if reasons:
            return 503, {"status": "error", "reasons": reasons}
        return 200, {"status": "ok"}

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.bot is not None and self.role == "active":
            self.metrics.homeserver_up.set(0 if self.bot.homeserver.down else 1)
            try:
                await asyncio.wait_for(self.metrics.refresh(self.bot.store), DB_CHECK_S)
            except Exception as e:  # the counters still go out; the gauges keep their last values
                log.warning("métriques de la base non lues (%s)", type(e).__name__)
        return web.Response(body=self.metrics.exposition(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def _oldest_pending_send(store) -> float:
    """Age in seconds of the oldest pending send (0 when none); one query, so also the database check."""
    oldest = await oldest_pending_send(store)
    return 0.0 if oldest is None else max(0.0, (datetime.now(timezone.utc) - oldest).total_seconds())
