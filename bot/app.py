"""The bot process: login once, sync, record, dispatch, send; deadlines woken by APScheduler.

Data flow (each arrow is a committed transaction):
  sync response -> inbox rows + sync token -> handler (state + outbox rows + inbox mark) -> sends
A crash between two arrows loses nothing and repeats nothing: pending inbox rows are handled at
the next start, and outbox rows are sent with their stored transaction id (deduplicated by the
homeserver if the previous send had in fact gone through).

`Bot` is a facade over three parts, each with its own declared state, composed here:
  intake: SyncIntake (bot/sync.py)       sync -> inbox rows, room keys that arrive late
  outbox: OutboxSender (bot/outbox.py)   outbox rows -> homeserver
  deadlines: DeadlineRunner (bot/deadlines.py)   deadline rows -> handlers
It keeps the login, the inbox worker (inbox row -> dispatch) and the identity at start.
"""
from __future__ import annotations

import asyncio
import logging

from nio import AsyncClient, AsyncClientConfig, LoginResponse
from nio.store import DefaultStore

from bot.config import Config
from bot.coordination import ensure_coordinator_room
from bot.cross_signing import CrossSigningClient
from bot.deadlines import DeadlineRunner
from bot.dispatch import command_context, dispatch
from bot.identity import cross_signing_client, ensure_identity
from bot.metrics import Metrics
from bot.outbox import OutboxSender
from bot.sync import HomeserverWatch, SyncIntake, homeserver_unreachable
from bot.wiring import Wiring, compose
from commands.registry import CommandRegistry
from domain.clock import Clock
from rooms.context import CommandContext
from rooms.messages import render
from rooms.services import Services
from storage.repositories import Store, open_store

log = logging.getLogger("cercle")


class BotError(Exception):
    pass


class CryptoStore(DefaultStore):
    """nio's key store, without the write nio makes at every sync: it saves the set of rooms that
    turned encrypted in that sync even when the set is empty, reading the account row each time
    (more than half of nio's own work per sync on a command's path, profiled for issue 11)."""

    def save_encrypted_rooms(self, rooms):
        if rooms:
            super().save_encrypted_rooms(rooms)


class Bot:
    def __init__(self, config: Config, store: Store, clock: Clock, client: AsyncClient, password: str,
                 wiring: Wiring, metrics: Metrics | None = None):
        self.config = config
        self.metrics = metrics or Metrics()  # bot/metrics.py, served by bot/health.py
        self.store = store
        self.clock = clock
        self.client = client
        self.password = password
        self.user_id: str = config.matrix.user_id
        self.services: Services = wiring.services  # what every handler gets (bot/wiring.py)
        self.registry: CommandRegistry = wiring.registry
        self.reaction_handlers: dict[str, object] = wiring.reaction_handlers
        self.poll_handlers: dict[str, object] = wiring.poll_handlers
        self.reply_handlers: dict[str, object] = wiring.reply_handlers
        self._at_start = wiring.at_start  # what the use-case modules plan at each start (their AT_START)
        self.homeserver = HomeserverWatch()  # shared by the three parts: one log line per change
        self._wake_worker = asyncio.Event()  # the inbox worker's doorbell
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.identity_status: str | None = None
        self.identity_warning: str | None = None
        self.outbox = OutboxSender(config, store, client, clock, self.homeserver, self._wake_worker.set,
                                   self._cross_signing, self.metrics)
        self.intake = SyncIntake(config, store, client, clock, self.services, self.homeserver,
                                 self._wake_worker.set, self.outbox.rooms_changed, self.metrics)
        self.deadlines = DeadlineRunner(store, clock, self.services, wiring.deadline_handlers, self.outbox.flush,
                                        metrics=self.metrics)

    # --- startup ---------------------------------------------------------------------------
    @classmethod
    async def open(cls, config: Config, clock: Clock, registry: CommandRegistry | None = None,
                   store: Store | None = None, metrics: Metrics | None = None) -> "Bot":
        data_dir = config.storage.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        if store is None:
            store = await open_store(config.storage.url(), config.storage.key_path())
        nio_store = data_dir / "nio-store"
        nio_store.mkdir(exist_ok=True)
        password = config.matrix.resolved_password()
        client = AsyncClient(
            config.matrix.homeserver, config.matrix.user_id, store_path=str(nio_store),
            config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False, store=CryptoStore,
                                     pickle_key=store.cipher.derive("nio-pickle-key"),
                                     max_limit_exceeded=0, max_timeouts=0),
        )
        bot = cls(config, store, clock, client, password, compose(config, store, clock, registry), metrics)
        await bot._login_once()
        return bot

    async def _login_once(self) -> None:
        """Reuse the stored device and token; a password login happens once in the bot's life.

        A new device at each start would break encryption for everyone (room keys are shared per
        device), so if the token is revoked we log in again *with the same device id*.
        """
        device_id = await self.store.get_state("device_id")
        token = await self.store.get_secret("access_token")
        if device_id and token:
            self.client.restore_login(self.user_id, device_id, token)
            whoami = await self.client.whoami()
            if getattr(whoami, "device_id", None) == device_id:
                log.info("session reprise : %s, appareil %s", self.user_id, device_id)
                return
            log.warning("jeton refusé par le serveur, reconnexion sur le même appareil %s", device_id)
            self.client.device_id = device_id
        response = await self.client.login(self.password, device_name=self.config.matrix.device_name)
        if not isinstance(response, LoginResponse):
            raise BotError(f"connexion refusée pour {self.user_id} : {getattr(response, 'message', response)}")
        if device_id and response.device_id != device_id:
            raise BotError("le serveur a créé un nouvel appareil : refusé pour ne pas casser le chiffrement")
        await self.store.set_state("device_id", response.device_id)
        await self.store.set_secret("access_token", response.access_token)
        log.info("première connexion : appareil %s créé", response.device_id)

    @property
    def device_id(self) -> str:
        return self.client.device_id

    def _cross_signing(self) -> CrossSigningClient:
        return cross_signing_client(self.config.matrix.homeserver, self.client, self.password)

    # --- run / stop --------------------------------------------------------------------------
    async def run(self) -> None:
        """Run until stop(): the sync loop, the inbox worker and the deadline scheduler."""
        self._stop.clear()
        if self.config.cpts.coordinator_room or await self.store.get_state("coordinator_room"):
            await ensure_coordinator_room(self)
        async with self.store.session.begin() as session:  # e.g. the next monthly report, the quarterly post
            for hook in self._at_start:
                await hook(session, self.services, self.clock.now())
        self.deadlines.start()
        self._tasks = [asyncio.create_task(self.intake.run(self._stop), name="sync"),
                       asyncio.create_task(self._worker_loop(), name="worker"),
                       asyncio.create_task(self.deadlines.run(self._stop), name="deadlines")]
        self._wake_worker.set()
        try:  # cancelled at any point (kill, shutdown), the loops above die with this task
            await self._ensure_identity_after_first_sync()
            await self.fire_due_deadlines()  # overdue timers fire at once after a downtime
            await self._stop.wait()
        finally:
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self.deadlines.shutdown()
            self.outbox.cancel_retry()
            await self.outbox.stop_pump()

    async def _ensure_identity_after_first_sync(self) -> None:
        try:
            await asyncio.wait_for(self.synced_once.wait(), 60)
            for attempt in range(5):
                # The device keys must be on the server before the device can be signed; the sync
                # loop may be uploading them right now.
                for _ in range(300):
                    if self.client.olm is not None and self.client.olm.account.shared:
                        break
                    await asyncio.sleep(0.1)
                outcome = await ensure_identity(self.store, self.client, self._cross_signing())
                if outcome.status != "error":
                    self.identity_warning = outcome.warning
                    self.identity_status = outcome.status  # last: whoever waits on it sees the whole outcome
                    break
                await asyncio.sleep(2 * (attempt + 1))
            else:
                self.identity_status = "error"
            room = self.services.coordinator_room
            if self.identity_warning and room:
                async with self.store.session.begin() as session:
                    self.store.queue(session, "message", room, render(self.identity_warning), self.clock.now())
                self._wake_worker.set()
        except asyncio.TimeoutError:
            log.error("pas de première synchronisation : signature croisée reportée au prochain démarrage")
        except Exception:  # the bot still serves; `cercle status` shows the device is not signed
            log.exception("signature croisée impossible à ce démarrage")
            self.identity_status = "error"

    async def stop(self) -> None:
        self._stop.set()

    async def close(self) -> None:
        await self.client.close()
        await self.store.close()

    # --- inbox worker ----------------------------------------------------------------------------
    async def _worker_loop(self) -> None:
        while not self._stop.is_set():
            await self._wake_worker.wait()
            self._wake_worker.clear()
            try:
                await self.process_inbox()
                await self._deadlines_touched()
                await self.flush_outbox()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if homeserver_unreachable(e):
                    self.homeserver.failed(e)  # once per outage; the sync loop says when it is back
                else:
                    log.exception("erreur du traitement des événements")
                await asyncio.sleep(1)
                self._wake_worker.set()

    async def _deadlines_touched(self) -> None:
        """A handler added or moved a deadline: re-arm the wake-up, and fire at once what is
        already due (e.g. the pool rung after the MT declined). Nothing touched, nothing read."""
        touched = self.store.take_touched_deadline()
        if touched is None:
            return
        if touched <= self.clock.now():
            await self.fire_due_deadlines()  # re-arms the wake-up itself
        else:
            await self.schedule_wakeup()

    async def process_inbox(self) -> None:
        """Handle pending events until none is left; the inbox is read again only when the sync
        recorded something meanwhile (or a batch was full)."""
        limit = 200
        while True:
            changes = self.store.inbox_changes
            pending = await self.store.pending_events(limit=limit)
            for event in pending:
                if await dispatch(self, event):  # a command: its answer's send closes the reply latency
                    self.metrics.awaiting_reply(event.event_id, event.origin_ts)
                # Its answer leaves now, in the background, while the next event is handled; the
                # yield lets that send reach the wire first (the store's calls do not yield).
                self.outbox.kick()
                await asyncio.sleep(0)
            if len(pending) < limit and self.store.inbox_changes == changes:
                await self.outbox.settle()
                return

    def context(self, session, room_id: str, room_kind: str, sender: str, event_id: str) -> CommandContext:
        return command_context(self.services, session, room_id, room_kind, sender, event_id)

    # --- what the CLI and the tests use, delegated to the parts ----------------------------------
    @property
    def synced_once(self) -> asyncio.Event:
        return self.intake.synced_once

    async def sync_once(self) -> None:
        await self.intake.sync_once()

    async def flush_outbox(self) -> int:
        return await self.outbox.flush()

    @property
    def outbox_waiting(self) -> int:
        return self.outbox.waiting

    @property
    def member_reads(self) -> int:
        return self.outbox.member_reads

    def mark_members_dirty(self, room_id: str) -> None:
        self.outbox.mark_members_dirty(room_id)

    @property
    def deadline_handlers(self) -> dict:
        return self.deadlines.handlers

    async def fire_due_deadlines(self) -> int:
        return await self.deadlines.fire_due()

    async def schedule_wakeup(self, retry_in: float | None = None) -> None:
        await self.deadlines.schedule_wakeup(retry_in)

    def wake_deadlines(self) -> None:
        self.deadlines.wake()
