"""The bot process: login once, sync, record, dispatch, send; deadlines woken by APScheduler.

Data flow (each arrow is a committed transaction):
  sync response -> inbox rows + sync token -> handler (state + outbox rows + inbox mark) -> sends
A crash between two arrows loses nothing and repeats nothing: pending inbox rows are handled at
the next start, and outbox rows are sent with their stored transaction id (deduplicated by the
homeserver if the previous send had in fact gone through).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import aiohttp
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from nio import (
    AsyncClient,
    AsyncClientConfig,
    InviteMemberEvent,
    LocalProtocolError,
    LoginResponse,
    MegolmEvent,
    ReactionEvent,
    RoomEncryptedFile,
    RoomInviteResponse,
    RoomLeaveResponse,
    RoomMemberEvent,
    RoomMessageFile,
    RoomMessagesError,
    RoomMessageText,
    RoomPutStateResponse,
    RoomRedactResponse,
    RoomSendResponse,
    SyncError,
    SyncResponse,
    UnknownEvent,
    UnknownToDeviceEvent,
)

from bot.config import Config
from bot.coordination import ensure_coordinator_room
from bot.dispatch import dispatch, request_key_from_sender, tell_undecryptable
from bot.identity import ensure_identity
from bot.room_creation import RoomLookupError, create_patient_room, find_created_room
from bot.trust import TrustCache
from bot.trust import apply as apply_trust_policy
from bot.wiring import Wiring, compose
from commands.registry import CommandRegistry
from domain.clock import Clock, wall_ms, wall_now
from rooms import patients
from rooms.context import CommandContext
from rooms.messages import render
from rooms.patients import PENDING_ROOM
from rooms.services import Services
from storage.models import RoomRecord
from storage.repositories import IncomingEvent, Store, open_store

log = logging.getLogger("cercle")

WITHHELD = "m.room_key.withheld"
COMMANDS_STATE = "org.matrix.msc4332.commands"
TRANSIENT_ERRORS = {"M_LIMIT_EXCEEDED", "M_UNKNOWN", None}
CREATION_KEY = "org.cercle.creation_key"  # in m.room.create: ties a room to its creation attempt
INVITED = "invité, pas encore dans la conversation"
DEADLINE_POLL_S = 60.0  # the deadline loop looks at the rows at least this often, whatever happens
DEADLINE_RETRY_S = 5.0  # a deadline whose handler failed is tried again after this


class BotError(Exception):
    pass


def homeserver_unreachable(error: BaseException) -> bool:
    """A failure of the connection to the homeserver (refused, reset, timed out), not a bug."""
    import aiohttp

    return isinstance(error, (aiohttp.ClientError, asyncio.TimeoutError, TimeoutError, ConnectionError, OSError))


def _duree(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class HomeserverWatch:
    """Logs the homeserver's reachability once per change, not once (with a traceback) per retry:
    an outage of an hour would otherwise write thousands of identical lines."""

    def __init__(self, monotonic=None):
        import time

        self._monotonic = monotonic or time.monotonic
        self.down_since: float | None = None

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def failed(self, error: BaseException) -> None:
        if self.down_since is None:
            self.down_since = self._monotonic()
            log.warning("serveur d'accueil injoignable (%s: %s) : nouveaux essais en arrière-plan",
                        type(error).__name__, error)
        else:
            log.debug("serveur d'accueil toujours injoignable (%s)", type(error).__name__)

    def attempt(self) -> float:
        """Mark the start of a request; pass it to reachable() when that request succeeded."""
        return self._monotonic()

    def reachable(self, attempt: float | None = None) -> None:
        # An answer to a request sent before the failure (a long poll) says nothing of now.
        if self.down_since is not None and (attempt is None or attempt >= self.down_since):
            outage = self._monotonic() - self.down_since
            self.down_since = None
            log.warning("serveur d'accueil de nouveau joignable après %s d'interruption", _duree(outage))


class Bot:
    def __init__(self, config: Config, store: Store, clock: Clock, client: AsyncClient, password: str,
                 wiring: Wiring):
        self.config = config
        self.store = store
        self.clock = clock
        self.client = client
        self.password = password
        self.user_id = config.matrix.user_id
        self.services: Services = wiring.services  # what every handler gets (bot/wiring.py)
        self.registry: CommandRegistry = wiring.registry
        self.reaction_handlers: dict[str, object] = wiring.reaction_handlers
        self.deadline_handlers: dict[str, object] = wiring.deadline_handlers
        self.trust_cache = TrustCache()  # bot.trust: devices already judged, per user
        self._wake_worker = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._members_dirty: set[str] = set()  # rooms where the bot invited someone its sync has not seen
        self._rooms_changed: set[str] = set()  # rooms whose membership a sync changed since the last flush
        self._direct_rooms: dict[str, str] = {}  # professional -> the bot's direct chat with them
        self._retry_timer: asyncio.TimerHandle | None = None
        self._deadline_due = asyncio.Event()
        self._deadline_lock = asyncio.Lock()
        self.member_reads = 0  # member lists read from the server (tests check it stays small)
        self.senders = {"message": self._send_message, "direct": self._send_direct, "state": self._send_state,
                        "pin": self._send_pin, "invite": self._send_invite, "kick": self._send_kick,
                        "leave": self._send_leave, "redact": self._send_redact,
                        "create_room": self._send_create_room}
        self.outbox_waiting = 0
        self._key_wait_deadline_ms: int | None = None  # earliest give-up among events waiting for a key
        self._key_requested: set[str] = set()  # waiting events whose key was asked for since this start
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.scheduler: AsyncIOScheduler | None = None
        self.synced_once = asyncio.Event()
        self.homeserver = HomeserverWatch()
        self.identity_status: str | None = None
        self.identity_warning: str | None = None
        self.sync_filter = {
            "room": {
                # Lazy-loaded members and a short timeline: the bot sits in thousands of rooms.
                "state": {"lazy_load_members": True},
                "timeline": {"limit": config.sync.timeline_limit},
                "ephemeral": {"not_types": ["*"]},
                "account_data": {"not_types": ["*"]},
            },
            "presence": {"not_types": ["*"]},
        }

    # --- startup ---------------------------------------------------------------------------
    @classmethod
    async def open(cls, config: Config, clock: Clock, registry: CommandRegistry | None = None,
                   store: Store | None = None) -> "Bot":
        data_dir = config.storage.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        if store is None:
            store = await open_store(config.storage.url(), config.storage.key_path())
        nio_store = data_dir / "nio-store"
        nio_store.mkdir(exist_ok=True)
        password = config.matrix.resolved_password()
        client = AsyncClient(
            config.matrix.homeserver, config.matrix.user_id, store_path=str(nio_store),
            config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False,
                                     pickle_key=store.cipher.derive("nio-pickle-key"),
                                     max_limit_exceeded=0, max_timeouts=0),
        )
        bot = cls(config, store, clock, client, password, compose(config, store, clock, registry))
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

    # --- run / stop --------------------------------------------------------------------------
    async def run(self) -> None:
        """Run until stop(): the sync loop, the inbox worker and the deadline scheduler."""
        self._stop.clear()
        if self.config.cpts.coordinator_room or await self.store.get_state("coordinator_room"):
            await ensure_coordinator_room(self)
        self.scheduler = AsyncIOScheduler(timezone="UTC")
        self.scheduler.start()
        self._tasks = [asyncio.create_task(self._sync_loop(), name="sync"),
                       asyncio.create_task(self._worker_loop(), name="worker"),
                       asyncio.create_task(self._deadline_loop(), name="deadlines")]
        self._wake_worker.set()
        try:  # cancelled at any point (kill, shutdown), the loops above die with this task
            await self._ensure_identity_after_first_sync()
            await self.fire_due_deadlines()  # overdue timers fire at once after a downtime
            await self._stop.wait()
        finally:
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self.scheduler.shutdown(wait=False)
            if self._retry_timer is not None:
                self._retry_timer.cancel()
                self._retry_timer = None

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
                if await ensure_identity(self) != "error":
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

    # --- sync ----------------------------------------------------------------------------------
    async def _sync_loop(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            try:
                attempt = self.homeserver.attempt()
                await self.sync_once()
                self.homeserver.reachable(attempt)
                backoff = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as e:  # homeserver unreachable, 5xx, timeouts: retry with backoff
                if homeserver_unreachable(e) or isinstance(e, BotError):
                    self.homeserver.failed(e)
                    log.debug("synchronisation impossible : nouvel essai dans %.0f s", backoff)
                else:
                    log.warning("synchronisation impossible (%s) : nouvel essai dans %.0f s", e, backoff)
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, self.config.sync.max_backoff_s)

    async def sync_once(self) -> None:
        since = await self.store.get_state("sync_token")
        first = since is None
        # After a start, the full state (every room, members lazy-loaded): nio keeps no room list
        # on disk, and the bot must be able to write in a room that has been quiet since.
        starting = not self.synced_once.is_set()
        timeout = self.config.sync.timeout_ms
        if self._key_wait_deadline_ms is not None:
            timeout = max(0, min(timeout, self._key_wait_deadline_ms - wall_ms()))
        response = await self.client.sync(
            timeout=0 if starting else timeout, sync_filter=self.sync_filter,
            since=since, full_state=starting)
        if isinstance(response, SyncError) or not isinstance(response, SyncResponse):
            raise BotError(getattr(response, "message", str(response)))
        await self._crypto_housekeeping()
        now = self.clock.now()
        events = await self._collect(response, first=first)
        new = await self.store.record_sync(events, response.next_batch, now)
        changed = {room_id for room_id, info in response.rooms.join.items()
                   if any(isinstance(ev, RoomMemberEvent) for ev in (*info.state, *info.timeline.events))}
        if changed:  # e.g. the recipient of a waiting direct message joined: try it now
            self._rooms_changed |= changed
        if new or changed:
            self._wake_worker.set()
        try:
            await self.retry_waiting_keys()
        except Exception:  # never let it stop the sync: the waiting events stay recorded
            log.exception("nouvel essai de déchiffrement impossible")
        self.synced_once.set()

    async def _crypto_housekeeping(self) -> None:
        """What nio's sync_forever does between syncs: keys and to-device traffic."""
        if self.client.should_upload_keys:
            await self.client.keys_upload()
        if self.client.should_query_keys:
            await self.client.keys_query()
        if self.client.should_claim_keys:
            await self.client.keys_claim(self.client.get_users_for_key_claiming())
        await self.client.send_to_device_messages()

    async def _collect(self, response: SyncResponse, *, first: bool) -> list[IncomingEvent]:
        now_ms = wall_ms()
        events: list[IncomingEvent] = []
        for room_id, info in response.rooms.invite.items():
            inviter, is_direct = None, False
            for ev in info.invite_state:
                if isinstance(ev, InviteMemberEvent) and ev.state_key == self.user_id:
                    inviter = ev.sender
                    is_direct = bool(ev.content.get("is_direct"))
            if inviter:
                events.append(IncomingEvent(f"invite:{room_id}:{now_ms}", room_id, inviter, "invite", now_ms,
                                            {"is_direct": is_direct}))
        for room_id, info in response.rooms.join.items():
            record = await self.store.get_room(room_id)
            if record is None:
                # A room we did not join through the invite handler (e.g. created by `cercle up`).
                record = await self.store.add_room_if_absent(room_id, "other", now_ms)
            if first:
                continue  # the backlog from before the bot's first sync is not addressed to it
            timeline = list(info.timeline.events)
            if info.timeline.limited and info.timeline.prev_batch:
                timeline = await self._fill_gap(room_id, info.timeline.prev_batch, record.joined_ts) + timeline
            for ev in timeline:
                item = self._incoming(room_id, ev, record.joined_ts)
                if item:
                    events.append(item)
        for ev in response.to_device_events:
            if isinstance(ev, UnknownToDeviceEvent) and ev.type == WITHHELD:
                content = ev.source.get("content", {})
                room_id = content.get("room_id")
                if room_id:
                    key = f"withheld:{content.get('session_id')}:{ev.sender}"
                    events.append(IncomingEvent(key, room_id, ev.sender, "withheld", now_ms, content))
        return events

    async def _fill_gap(self, room_id: str, prev_batch: str, joined_ts: int) -> list:
        """The timeline was cut (many messages while the bot was down): page back until known ground."""
        older: list = []
        token = prev_batch
        for _ in range(50):  # bounded: 50 pages of 100 events
            page = await self.client.room_messages(room_id, start=token, limit=100)
            if isinstance(page, RoomMessagesError) or not page.chunk:
                break
            stop = False
            for ev in page.chunk:  # newest first
                if ev.server_timestamp < joined_ts or await self.store.is_known_event(ev.event_id):
                    stop = True
                    break
                older.append(ev)
            if stop or not page.end:
                break
            token = page.end
        older.reverse()
        return older

    def _incoming(self, room_id: str, ev, joined_ts: int) -> IncomingEvent | None:
        if ev.sender == self.user_id or ev.server_timestamp < joined_ts:
            return None
        if isinstance(ev, RoomMessageText):  # m.text only: notices are other bots' output
            content = dict(ev.source.get("content", {}))
            return IncomingEvent(ev.event_id, room_id, ev.sender, "message", ev.server_timestamp,
                                 {"body": ev.body, "content": content, "encrypted": ev.decrypted})
        if isinstance(ev, (RoomMessageFile, RoomEncryptedFile)):
            content = dict(ev.source.get("content", {}))
            return IncomingEvent(ev.event_id, room_id, ev.sender, "file", ev.server_timestamp,
                                 {"body": ev.body, "content": content})
        if isinstance(ev, MegolmEvent):  # its key may arrive a moment later: it waits (retry_waiting_keys)
            return IncomingEvent(ev.event_id, room_id, ev.sender, "undecryptable", ev.server_timestamp,
                                 {"source": ev.source, "session_id": ev.session_id, "device_id": ev.device_id},
                                 status="waiting_key", session_id=ev.session_id, waiting_since_ms=wall_ms())
        if isinstance(ev, ReactionEvent):
            return IncomingEvent(ev.event_id, room_id, ev.sender, "reaction", ev.server_timestamp,
                                 {"key": ev.key, "reacts_to": ev.reacts_to})
        if isinstance(ev, RoomMemberEvent) and ev.membership in ("leave", "ban"):
            # Someone left: the bot must not stay alone with people outside the directory.
            return IncomingEvent(ev.event_id, room_id, ev.sender, "membership", ev.server_timestamp,
                                 {"user_id": ev.state_key, "membership": ev.membership})
        if isinstance(ev, UnknownEvent) and ev.type == "m.reaction":
            rel = ev.source.get("content", {}).get("m.relates_to", {})
            return IncomingEvent(ev.event_id, room_id, ev.sender, "reaction", ev.server_timestamp,
                                 {"key": rel.get("key"), "reacts_to": rel.get("event_id")})
        return None

    # --- events waiting for their room key ------------------------------------------------------
    async def retry_waiting_keys(self) -> None:
        """Decrypt again the events recorded before their room key; give up after key_wait_s.

        nio stores a room key when its to-device event arrives but never retries the events it
        could not decrypt. They are few and decryption is local, so each sync tries them all: a
        decrypted one becomes a pending event of its real kind (handled once, like any other); one
        whose wait is over is marked failed and its sender told once, in the same transaction.
        """

        waiting = await self.store.waiting_key_events()
        deadline = None
        for event in waiting:
            decrypted = await self.decrypt_later(event)
            if decrypted is not None:
                if await self.store.key_arrived(event.event_id, decrypted.kind, decrypted.payload):
                    log.info("clé reçue, événement %s déchiffré", event.event_id)
                    self._wake_worker.set()
                continue
            give_up = (event.waiting_since_ms or 0) + int(self.config.sync.key_wait_s * 1000)
            withheld = await self.store.is_known_event(
                f"withheld:{event.session_id}:{event.sender}")  # the sender was told why (handle_withheld)
            if withheld or wall_ms() >= give_up:
                async with self.store.session.begin() as session:
                    if await self.store.give_up_waiting(session, event.event_id, self.clock.now(),
                                                        "clé refusée" if withheld else "clé non reçue"):
                        if not withheld:
                            await tell_undecryptable(self, session, event)
                self._wake_worker.set()
                continue
            deadline = give_up if deadline is None else min(deadline, give_up)
            if event.event_id not in self._key_requested:
                self._key_requested.add(event.event_id)
                try:
                    await request_key_from_sender(self, event)
                except Exception as e:  # best effort: the key usually comes by itself
                    log.info("demande de clé non envoyée : %s", e)
        self._key_wait_deadline_ms = deadline

    async def decrypt_later(self, event: IncomingEvent) -> IncomingEvent | None:
        """The undecryptable `event` as the event it is, if its room key is here now; else None.

        Decrypted but nothing to act on (e.g. a notice): kind `ignored`, handled as nothing."""
        from nio import EncryptionError, Event

        if self.client.olm is None or "source" not in event.payload:
            return None
        encrypted = Event.parse_encrypted_event(event.payload["source"])
        if not isinstance(encrypted, MegolmEvent):
            return None
        encrypted.room_id = event.room_id
        try:
            decrypted = self.client.decrypt_event(encrypted)
        except EncryptionError:
            return None
        record = await self.store.get_room(event.room_id)
        item = self._incoming(event.room_id, decrypted, record.joined_ts if record else 0)
        return item or IncomingEvent(event.event_id, event.room_id, event.sender, "ignored", event.origin_ts, {})

    # --- inbox worker ----------------------------------------------------------------------------
    async def _worker_loop(self) -> None:
        while not self._stop.is_set():
            await self._wake_worker.wait()
            self._wake_worker.clear()
            try:
                await self.process_inbox()
                await self.fire_due_deadlines()  # e.g. a rung due "now" after a decline
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

    async def process_inbox(self) -> None:
        while True:
            pending = await self.store.pending_events()
            if not pending:
                return
            for event in pending:
                await dispatch(self, event)
                await self.flush_outbox()

    def context(self, session, room_id: str, room_kind: str, sender: str, event_id: str) -> CommandContext:
        return CommandContext(services=self.services, session=session, room_id=room_id, room_kind=room_kind,
                              sender=sender, event_id=event_id, now=self.clock.now())

    # --- outbox --------------------------------------------------------------------------------
    async def flush_outbox(self) -> int:
        """Send what can be sent, in order per room; returns how many items are left waiting.

        An item that cannot go yet (room not synced, recipient not joined, homeserver busy) holds
        back the later items of the same room only, never the other rooms. It is tried again
        after its own backoff (doubling, capped, stored in its row so that a restart resumes it
        instead of retrying everything in a loop), or at once when a sync shows its room changed.
        """
        async with self._flush_lock:
            changed, self._rooms_changed = self._rooms_changed, set()
            tried: set[int] = set()
            blocked: set[str] = set()
            outage = False
            while not outage:
                batch = [(i, c) for i, c in await self.store.pending_outbox(limit=500) if i.id not in tried]
                if not batch:
                    break
                now = wall_now()
                for item, content in batch:
                    tried.add(item.id)
                    key = self._outbox_key(item, content)
                    if key in blocked:
                        continue
                    if (item.next_attempt_at is not None and item.next_attempt_at > now
                            and await self._target_room(item, content) not in changed):
                        blocked.add(key)  # backing off: the later items of this room wait behind it
                        continue
                    outcome = await self._send(item, content)
                    if isinstance(outcome, Later):
                        blocked.add(key)
                        await self._note_retry(item, outcome)
                        if outcome.outage:  # the homeserver is unreachable: no use trying other rooms
                            outage = True
                            break
            backlog = await self.store.outbox_backlog()
        self.outbox_waiting = len(backlog)
        await self._watch_backlog(backlog)
        return len(backlog)

    @staticmethod
    def _outbox_key(item, content: dict) -> str:
        return f"direct:{content['user_id']}" if item.action == "direct" else item.room_id

    async def _target_room(self, item, content: dict) -> str | None:
        return await self._known_direct_room(content["user_id"]) if item.action == "direct" else item.room_id

    async def _note_retry(self, item, later: "Later") -> None:
        attempts = (item.attempts or 0) + 1
        delivery = self.config.delivery
        delay = min(delivery.retry_max_s, delivery.retry_base_s * 2 ** min(attempts - 1, 30))
        if later.after_s:
            delay = max(delay, later.after_s)
        now = wall_now()
        # During an outage the homeserver watch has said it once; each retry is only debug detail.
        (log.debug if later.outage or self.homeserver.down else log.info)(
            "envoi %s reporté (essai %d, prochain dans %.0f s) : %s", item.id, attempts, delay, later.reason)
        await self.store.outbox_retry(item.id, attempts=attempts, next_attempt_at=now + timedelta(seconds=delay),
                                      first_try_at=item.first_try_at or now, last_error=later.reason)

    async def _watch_backlog(self, backlog: list) -> None:
        """Report an item stuck too long (once: log here, and `cercle status`), and arm one timer
        for the earliest retry: one timer in all, never one more per pass."""
        if not backlog:
            return
        now = wall_now()
        stuck_after = timedelta(seconds=self.config.delivery.stuck_after_s)
        for item in backlog:
            if item.first_try_at and item.stuck_reported_at is None and now - item.first_try_at >= stuck_after:
                log.warning("envoi bloqué depuis %s : n°%d (%s, %s, %s), %d essais, dernière raison : %s",
                            f"{item.first_try_at:%d/%m/%Y %H:%M:%S} UTC", item.id, item.action,
                            item.room_id or "conversation directe", item.ref or "-", item.attempts, item.last_error)
                await self.store.outbox_stuck_reported(item.id, now)
        nexts = [i.next_attempt_at for i in backlog]
        at = now + timedelta(seconds=self.config.delivery.retry_base_s) if None in nexts else min(nexts)
        self._arm_retry(max(0.05, (at - now).total_seconds()))

    def _arm_retry(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        if self._retry_timer is not None:
            if self._retry_timer.when() <= when + 0.01:
                return  # an earlier (or equal) wake-up is already armed
            self._retry_timer.cancel()

        def due() -> None:
            self._retry_timer = None
            self._wake_worker.set()

        self._retry_timer = loop.call_at(when, due)

    async def _send(self, item, content: dict) -> "bool | Later":
        """One attempt: True (sent, recorded), False (refused for good, recorded) or Later."""
        sender = self.senders.get(item.action)
        if sender is None:
            await self.store.outbox_done(item.id, self.clock.now(), error=f"action inconnue {item.action}")
            return False
        if item.room_id.startswith(PENDING_ROOM) and item.action != "create_room":
            room_id = await self.store.created_room_id(item.room_id)
            if room_id is None:
                return Later("salon en cours de création")  # the create_room item comes first
            item.room_id = room_id  # the row itself was rewritten when the room was recorded
        try:
            outcome = await sender(item, content)
        except LocalProtocolError as e:  # e.g. the room is not synced yet
            return Later(f"local : {str(e)[:120]}")
        except KeyError:  # nio: the room's group session was replaced by a sync mid-share
            return Later("session de groupe renouvelée")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            return Later(f"serveur injoignable ({type(e).__name__})", outage=True)
        if isinstance(outcome, (bool, Later)):
            return outcome
        return await self._refused(item, outcome)

    async def _refused(self, item, response) -> "bool | Later":
        """The homeserver said no: wait and retry if that may change, else record the failure."""
        errcode = getattr(response, "status_code", None)
        message = getattr(response, "message", "") or ""
        if errcode in TRANSIENT_ERRORS:
            after = getattr(response, "retry_after_ms", None)
            return Later(f"{errcode or 'erreur serveur'} : {message[:120]}", after_s=after / 1000 if after else None)
        log.error("envoi refusé dans %s : %s %s", item.room_id or "conversation directe", errcode, message)
        await self.store.outbox_done(item.id, self.clock.now(), error=f"{errcode}: {message}")
        return False

    async def _done(self, item, response, ok_type) -> "bool | object":
        if isinstance(response, ok_type):
            await self.store.outbox_done(item.id, self.clock.now(), event_id=getattr(response, "event_id", None))
            return True
        return response

    # One small sender per action: a new action is one entry in Bot.senders.
    async def _send_message(self, item, content: dict):
        await self._prepare_room_keys(item.room_id)
        response = await self.client.room_send(item.room_id, "m.room.message", content,
                                               tx_id=item.txn_id, ignore_unverified_devices=True)
        return await self._done(item, response, RoomSendResponse)

    async def _send_direct(self, item, content: dict):
        user_id = content["user_id"]
        room_id = await self._direct_room(user_id)
        if room_id is None:
            return Later("conversation directe pas encore créée")
        room = self.client.rooms.get(room_id)
        if room is None:
            return Later("conversation directe pas encore synchronisée")
        # The server is the truth for membership: after a start the sync lazy-loads members, so
        # someone who never spoke in the chat is missing from room.users until we ask.
        if not await self._ensure_members(room_id):
            return Later("membres de la conversation illisibles")
        if user_id not in room.users:  # they left the chat, or declined it
            if item.last_error == INVITED:
                return Later(INVITED)  # invited once for this message; `cercle status` shows it if it lasts
            response = await self.client.room_invite(room_id, user_id)
            self.mark_members_dirty(room_id)
            if not isinstance(response, RoomInviteResponse) and not already_in_room(response):
                return response
            if not already_in_room(response):
                return Later(INVITED)
            if not await self._ensure_members(room_id) or user_id not in room.users:
                return Later("membre annoncé présent mais introuvable")
        if user_id in room.invited_users:
            return Later(INVITED)  # keys shared before they join would not reach their devices
        await self._prepare_room_keys(room_id)
        response = await self.client.room_send(room_id, "m.room.message", content["content"],
                                               tx_id=item.txn_id, ignore_unverified_devices=True)
        return await self._done(item, response, RoomSendResponse)

    async def _send_state(self, item, content: dict):
        room = self.client.rooms.get(item.room_id)
        if room is None:
            return Later("salon pas encore synchronisé")  # to know our power level
        if content.get("optional") and not await self.may_send_state(room, content["type"]):
            await self.store.outbox_done(item.id, self.clock.now(), error="pas le droit d'envoyer cet état ici")
            return False
        response = await self.client.room_put_state(item.room_id, content["type"], content["content"],
                                                    state_key=content.get("state_key", ""))
        return await self._done(item, response, RoomPutStateResponse)

    async def _send_pin(self, item, content: dict):
        event_ids = await self.store.outbox_event_ids(content["ref"])
        if not event_ids:
            return Later("message à épingler pas encore envoyé")
        response = await self.client.room_put_state(item.room_id, "m.room.pinned_events", {"pinned": event_ids})
        return await self._done(item, response, RoomPutStateResponse)

    async def _send_invite(self, item, content: dict):
        response = await self.client.room_invite(item.room_id, content["user_id"])
        self.mark_members_dirty(item.room_id)
        if isinstance(response, RoomInviteResponse) or already_in_room(response):
            await self.store.outbox_done(item.id, self.clock.now())
            return True
        return response

    async def _send_kick(self, item, content: dict):
        await self.client.room_kick(item.room_id, content["user_id"], content.get("reason"))
        self.mark_members_dirty(item.room_id)
        await self.store.outbox_done(item.id, self.clock.now())

    async def _send_leave(self, item, content: dict):
        return await self._done(item, await self.client.room_leave(item.room_id), RoomLeaveResponse)

    async def _send_redact(self, item, content: dict):
        response = await self.client.room_redact(item.room_id, content["event_id"], content.get("reason"),
                                                 tx_id=item.txn_id)
        return await self._done(item, response, RoomRedactResponse)

    async def _send_create_room(self, item, content: dict) -> "bool | Later":
        """Create a room exactly once, even if the bot dies between room_create and recording it.

        The attempt is committed before room_create, and the room carries its creation key
        (rooms.patients.CREATION_STATE): after a crash, the next attempt finds the room among the
        bot's rooms instead of creating a second one. The transaction that records the room also
        points every item queued against `pending:<key>` at the real room id.
        """
        from nio import RoomCreateError

        key, now = content["key"], self.clock.now()
        attempt = f"creation:{key}"
        started = await self.store.get_state(attempt)
        room_id = None
        if started is not None:
            try:
                room_id = await find_created_room(self, key)
            except RoomLookupError as e:
                log.warning("recherche du salon %s impossible (%s) : nouvel essai", key, e)
                return Later(f"recherche du salon {key} impossible")
        if room_id is None:
            started = str(wall_ms())
            await self.store.set_state(attempt, started)
            response = await create_patient_room(self, key, content["code"], content["invite"])
            if isinstance(response, RoomCreateError):
                if response.status_code in TRANSIENT_ERRORS:
                    log.warning("création du salon %s reportée : %s", key, response.message)
                    return Later(f"création du salon reportée : {response.message}")
                log.error("création du salon %s refusée : %s %s", key, response.status_code, response.message)
                async with self.store.session.begin() as session:
                    await self.store.creation_failed(session, item.room_id, now,
                                                     f"{response.status_code}: {response.message}")
                    await patients.abandon_patient_room(session, content["code"], now)
                    await self.store.delete_state(attempt, session=session)
                    if content.get("notify"):
                        self.store.queue(session, "message", content["notify"], render(
                            f"❌ Le salon du cercle {content['code']} n'a pas pu être créé : le serveur Matrix "
                            f"a refusé ({response.status_code}). Relancez `!patient nouveau`, et prévenez les "
                            "coordinateurs si cela se reproduit."), now)
                return False
            room_id = response.room_id
        self.mark_members_dirty(room_id)
        async with self.store.session.begin() as session:
            await patients.record_patient_room(session, content["code"], room_id)
            await self.store.save_room(room_id, content.get("kind", "patient"), int(started), created=True,
                                       session=session)
            await self.store.room_exists(session, item.id, item.room_id, room_id, now)
            await self.store.delete_state(attempt, session=session)
        log.info("salon %s créé : %s", key, room_id)
        return True

    def mark_members_dirty(self, room_id: str) -> None:
        """The bot changed the room's members: read them from the server before the next send."""
        self._members_dirty.add(room_id)

    async def _ensure_members(self, room_id: str) -> bool:
        """Load the room's members (joined and invited) from the server, once per room until the
        bot itself changes them; the sync keeps them current afterwards. False if unreadable."""
        from nio import Event, RoomGetStateResponse, RoomMemberEvent

        room = self.client.rooms.get(room_id)
        if room is None:
            return False
        if room.members_synced and room_id not in self._members_dirty:
            return True
        self._members_dirty.discard(room_id)  # a change made while we read is marked again
        state = await self.client.room_get_state(room_id)
        if not isinstance(state, RoomGetStateResponse):
            self._members_dirty.add(room_id)
            return False
        self.member_reads += 1
        for source in state.events:
            if source.get("type") == "m.room.member":
                event = Event.parse_event(source)
                if isinstance(event, RoomMemberEvent):
                    room.handle_membership(event)
        room.members_synced = True
        if room.encrypted and self.client.olm is not None:
            self.client.olm.update_tracked_users(room)
        return True

    async def _prepare_room_keys(self, room_id: str) -> None:
        """Make sure the next message's room key reaches every current device, invitees included.

        nio rotates its outbound session only when its own sync shows a membership or device
        change; right after the bot invited someone, its sync has not seen it yet. So: re-read the
        members where the bot invited someone, then rotate if a current device was not covered.
        """
        room = self.client.rooms.get(room_id)
        if room is None or not room.encrypted:
            return
        if not await self._ensure_members(room_id):
            raise LocalProtocolError("membres du salon illisibles")
        if self.client.should_query_keys:
            await self.client.keys_query()
        await self._apply_trust_policy(room_id)
        session = self.client.olm.outbound_group_sessions.get(room_id)
        if session is None or not session.shared:
            return
        covered = session.users_shared_with | session.users_ignored
        wanted = {(u, d.id) for u in room.users for d in self.client.device_store.active_user_devices(u)
                  if not d.blacklisted}
        departed = {u for u, _ in session.users_shared_with} - set(room.users)
        if wanted - covered or departed:
            self.client.invalidate_outbound_session(room_id)

    # --- direct chats ------------------------------------------------------------------------------
    async def _known_direct_room(self, user_id: str) -> str | None:
        if user_id in self._direct_rooms:
            return self._direct_rooms[user_id]
        from sqlalchemy import select

        async with self.store.session() as session:
            found = await session.scalar(select(RoomRecord.room_id).where(
                RoomRecord.kind == "direct", RoomRecord.direct_with == user_id).order_by(RoomRecord.joined_ts))
        if found:
            self._direct_rooms[user_id] = found
        return found

    async def _direct_room(self, user_id: str) -> str | None:
        """The bot's direct chat with a professional, created (encrypted) the first time.

        Idempotent across crashes: a creation key is recorded *before* asking the server, and
        the room carries it in its state; if the key is still there at the next attempt, the
        previous one may have created the room without recording it (crash, lost answer), so
        the bot looks for it among its joined rooms before creating another.
        """
        found = await self._known_direct_room(user_id)
        if found:
            return found
        marker = "direct_creation:" + hashlib.sha256(user_id.encode()).hexdigest()[:40]
        key = await self.store.get_state(marker)
        if key:
            found = await self._find_created_room(key)
            if found:
                log.info("conversation directe retrouvée après une création interrompue : %s", found)
                await self._record_direct(found, user_id, marker)
                return found
        else:
            key = uuid.uuid4().hex
            await self.store.set_state(marker, key)
        from nio import Api, RoomCreateResponse, RoomPreset

        method, path, data = Api.room_create(
            self.client.access_token, is_direct=True, invite=[user_id], preset=RoomPreset.trusted_private_chat,
            initial_state=[{"type": "m.room.encryption", "state_key": "",
                            "content": {"algorithm": "m.megolm.v1.aes-sha2"}}])
        # The key goes in the creation event itself (nio's room_create cannot put it there): the
        # first event of the room, so it is readable as soon as the bot is in the room at all.
        body = json.loads(data)
        body["creation_content"][CREATION_KEY] = key
        response = await self.client._send(RoomCreateResponse, method, path, json.dumps(body))
        if not isinstance(response, RoomCreateResponse):
            log.warning("conversation directe avec %s impossible : %s", user_id, response.message)
            return None
        await self._record_direct(response.room_id, user_id, marker)
        return response.room_id

    async def _find_created_room(self, key: str) -> str | None:
        """The joined room created with this creation key, if any (the bot never writes m.direct;
        the key in the room's creation event is what ties a room to the interrupted creation)."""
        from nio import JoinedRoomsResponse, RoomGetStateEventResponse

        joined = await self.client.joined_rooms()
        if not isinstance(joined, JoinedRoomsResponse):
            # Not knowing is not "absent": creating now could make a second chat.
            raise LocalProtocolError("liste des salons rejoints illisible")
        kinds = {r.room_id: r.kind for r in await self.store.rooms()}
        for room_id in joined.rooms:
            if kinds.get(room_id) in ("patient", "coordination", "direct"):
                continue
            event = await self.client.room_get_state_event(room_id, "m.room.create")
            if isinstance(event, RoomGetStateEventResponse) and event.content.get(CREATION_KEY) == key:
                return room_id
        return None

    async def _record_direct(self, room_id: str, user_id: str, marker: str) -> None:
        from sqlalchemy.exc import IntegrityError

        for attempt in range(2):
            try:
                async with self.store.session.begin() as session:
                    await self.store.save_room(room_id, "direct", wall_ms(), direct_with=user_id, created=True,
                                               session=session)
                    await self.store.delete_state(marker, session=session)
                break
            except IntegrityError:  # the sync recorded the room at the same moment: update its row
                if attempt:
                    raise
        self._direct_rooms[user_id] = room_id

    async def may_send_state(self, room, event_type: str) -> bool:
        # nio predates room version 12, where creators have every power without being listed.
        return (await self.store.bot_created(room.room_id)
                or room.power_levels.can_user_send_state(self.user_id, event_type))

    async def _apply_trust_policy(self, room_id: str) -> None:
        """Hook for bot.trust (cross-signed devices verified, others per configuration)."""
        try:
            await apply_trust_policy(self, room_id)
        except Exception as e:
            if homeserver_unreachable(e):
                self.homeserver.failed(e)
            if self.config.trust.unverified_devices == "cross_signed_only":
                raise LocalProtocolError(f"vérification des appareils impossible ({e})")  # fail closed, retry
            if not self.homeserver.down:
                log.warning("vérification des appareils impossible (%s) : envoi à tous les appareils", e)

    # --- deadlines ---------------------------------------------------------------------------------
    # APScheduler only wakes the bot at the next due instant; the deadline rows are the truth.
    # Its job does nothing but set an event and return, so it can never be "skipped: maximum
    # number of running instances reached" while a pass runs (that lost a red flag's relance for
    # hours): the pass itself runs in _deadline_loop, and every pass re-arms the next wake-up in
    # a `finally`. A slow poll in that loop is the last safety net.
    async def schedule_wakeup(self, retry_in: float | None = None) -> None:
        if self.scheduler is None or not self.scheduler.running:
            return
        delays = [] if retry_in is None else [retry_in]
        nxt = await self.store.next_deadline()
        if nxt is not None:
            delay = self.clock.real_seconds_until(nxt)
            if delay != float("inf"):
                delays.append(delay)
        if not delays:
            return
        run_at = datetime.now(timezone.utc) + timedelta(seconds=min(delays))
        self.scheduler.add_job(self._scheduler_wake, "date", run_date=run_at, id="wake",
                               replace_existing=True, misfire_grace_time=None, coalesce=True,
                               max_instances=10)  # it only sets an event: overlapping runs are harmless

    async def _scheduler_wake(self) -> None:
        self._deadline_due.set()

    def wake_deadlines(self) -> None:
        """Fire what is due now, in the bot's own deadline loop (what the scheduler does)."""
        self._deadline_due.set()

    async def _deadline_loop(self) -> None:
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._deadline_due.wait(), DEADLINE_POLL_S)
            except asyncio.TimeoutError:
                pass
            self._deadline_due.clear()
            try:
                await self.fire_due_deadlines()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("erreur du traitement des échéances")
                await asyncio.sleep(1)
                self._deadline_due.set()

    async def fire_due_deadlines(self) -> int:
        """Fire every due deadline once: its state change and messages commit together.

        Single-flight: the worker loop, the deadline loop and run() may ask at the same time;
        they take turns, and a pass loops until nothing is due, so whoever asked returns with
        everything due at its call fired.
        """
        fired = 0
        async with self._deadline_lock:
            retry_soon = False
            try:
                failures: dict[int, int] = {}
                while True:
                    due = [d for d in await self.store.due_deadlines(self.clock.now())
                           if failures.get(d.id, 0) < 3]
                    if not due:
                        break
                    for deadline in due:
                        outcome = await self._fire_one(deadline)
                        if outcome is None:
                            failures[deadline.id] = failures.get(deadline.id, 0) + 1
                            retry_soon = True
                        elif outcome:
                            fired += 1
            finally:
                await self.schedule_wakeup(retry_in=DEADLINE_RETRY_S if retry_soon else None)
        await self.flush_outbox()
        return fired

    async def _fire_one(self, deadline) -> bool | None:
        """True if fired here, False if someone else did (or no handler), None to try again."""
        from sqlalchemy.orm.exc import StaleDataError

        handler = self.deadline_handlers.get(deadline.kind)
        try:
            async with self.store.session.begin() as session:
                if not await self.store.take_deadline(session, deadline.id, self.clock.now()):
                    return False
                if handler is None:
                    log.error("échéance %s sans traitement (%s)", deadline.kind, deadline.ref)
                    return False
                ctx = self.context(session, deadline.payload.get("room_id", ""), "timer", self.user_id,
                                   f"deadline:{deadline.id}")
                await handler(ctx, deadline)
                return True
        except StaleDataError:  # an answer changed the request meanwhile: still pending, tried again
            log.info("échéance %s reportée (conflit d'écriture)", deadline.ref)
            return None
        except asyncio.CancelledError:
            raise
        except Exception:  # still pending: tried again shortly, the other deadlines go on
            log.exception("échéance %s (%s) en erreur", deadline.kind, deadline.ref)
            return None


@dataclass
class Later:
    """Not sent yet; try again after the item's backoff (or the server's retry-after)."""

    reason: str
    after_s: float | None = None
    outage: bool = False


def already_in_room(response) -> bool:
    return "already in the room" in str(getattr(response, "message", "") or "")
