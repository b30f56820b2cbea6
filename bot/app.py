"""The bot process: login once, sync, record, dispatch, send; deadlines woken by APScheduler.

Data flow (each arrow is a committed transaction):
  sync response -> inbox rows + sync token -> handler (state + outbox rows + inbox mark) -> sends
A crash between two arrows loses nothing and repeats nothing: pending inbox rows are handled at
the next start, and outbox rows are sent with their stored transaction id (deduplicated by the
homeserver if the previous send had in fact gone through).
"""
from __future__ import annotations

import asyncio
import logging
import random
from datetime import datetime

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
    RoomLeaveResponse,
    RoomMemberEvent,
    RoomMessageFile,
    RoomMessagesError,
    RoomMessageText,
    RoomRedactResponse,
    RoomSendResponse,
    SyncError,
    SyncResponse,
    UnknownEvent,
    UnknownToDeviceEvent,
)

from bot.config import Config
from commands.context import CommandContext
from commands.registry import CommandRegistry
from domain.clock import Clock
from rooms.patients import PENDING_ROOM
from storage.repositories import IncomingEvent, Store

log = logging.getLogger("cercle")

WITHHELD = "m.room_key.withheld"
COMMANDS_STATE = "org.matrix.msc4332.commands"
TRANSIENT_ERRORS = {"M_LIMIT_EXCEEDED", "M_UNKNOWN", None}


def wall_ms() -> int:
    """Real time in ms, to compare with server timestamps (the injectable clock is domain time)."""
    import time

    return int(time.time() * 1000)


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
    def __init__(self, config: Config, store: Store, clock: Clock, registry: CommandRegistry,
                 client: AsyncClient, password: str):
        self.config = config
        self.store = store
        self.clock = clock
        self.registry = registry
        self.client = client
        self.password = password
        self.user_id = config.matrix.user_id
        self.reaction_handlers: dict[str, object] = {}
        self.deadline_handlers: dict[str, object] = {}
        self.start_hooks: list = []
        self.directory = None  # set by rooms.directory when the directory feature is wired
        self._wake_worker = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._members_dirty: set[str] = set()  # rooms where the bot invited someone its sync has not seen
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
        from storage.repositories import open_store

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
        if registry is None:
            from commands import build_registry

            registry = build_registry()
        bot = cls(config, store, clock, registry, client, password)
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
        for hook in self.start_hooks:
            await hook(self)
        self.scheduler = AsyncIOScheduler(timezone="UTC")
        self.scheduler.start()
        self._tasks = [asyncio.create_task(self._sync_loop(), name="sync"),
                       asyncio.create_task(self._worker_loop(), name="worker")]
        self._wake_worker.set()
        await self._ensure_identity_after_first_sync()
        await self.fire_due_deadlines()  # overdue timers fire at once after a downtime
        try:
            await self._stop.wait()
        finally:
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self.scheduler.shutdown(wait=False)

    async def _ensure_identity_after_first_sync(self) -> None:
        from bot.identity import ensure_identity

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
            room = getattr(self, "coordinator_room", None)
            if self.identity_warning and room:
                from bot.messages import render

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
        if new:
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
                record = await self.store.save_room(room_id, "other", now_ms)
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
        from bot.dispatch import request_key_from_sender, tell_undecryptable

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
        from bot.dispatch import dispatch

        while True:
            pending = await self.store.pending_events()
            if not pending:
                return
            for event in pending:
                await dispatch(self, event)
                await self.flush_outbox()

    def context(self, session, room_id: str, room_kind: str, sender: str, event_id: str) -> CommandContext:
        return CommandContext(bot=self, session=session, room_id=room_id, room_kind=room_kind,
                              sender=sender, event_id=event_id, now=self.clock.now())

    # --- outbox --------------------------------------------------------------------------------
    async def flush_outbox(self) -> int:
        """Send what can be sent, in order per room; returns how many items are left waiting.

        An item that cannot go yet (room not synced, recipient not joined, homeserver busy) holds
        back the later items of the same room only, never the other rooms.
        """
        blocked: set[str] = set()
        async with self._flush_lock:
            done_ids: set[int] = set()
            while True:
                items = [(i, c) for i, c in await self.store.pending_outbox(limit=500) if i.id not in done_ids]
                sendable = [(i, c) for i, c in items if self._outbox_key(i, c) not in blocked]
                if not sendable:
                    break
                for item, content in sendable:
                    key = self._outbox_key(item, content)
                    if key in blocked:
                        continue
                    ok = await self._send(item, content)
                    if ok is None:
                        blocked.add(key)
                    done_ids.add(item.id)
            waiting = len([1 for i, c in await self.store.pending_outbox(limit=500)])
        self.outbox_waiting = waiting
        if waiting:
            asyncio.get_running_loop().call_later(2, self._wake_worker.set)
        return waiting

    @staticmethod
    def _outbox_key(item, content: dict) -> str:
        return f"direct:{content['user_id']}" if item.action == "direct" else item.room_id

    async def _send(self, item, content: dict) -> bool | None:
        now = self.clock.now()
        if item.room_id.startswith(PENDING_ROOM) and item.action != "create_room":
            room_id = await self.store.created_room_id(item.room_id)
            if room_id is None:
                return None  # its room is not created yet (the create_room item comes first)
            item.room_id = room_id  # the row itself was rewritten when the room was recorded
        try:
            if item.action == "create_room":
                return await self._send_create_room(item, content)
            if item.action == "message":
                await self._prepare_room_keys(item.room_id)
                response = await self.client.room_send(item.room_id, "m.room.message", content,
                                                       tx_id=item.txn_id, ignore_unverified_devices=True)
                if isinstance(response, RoomSendResponse):
                    await self.store.outbox_done(item.id, now, event_id=response.event_id)
                    return True
            elif item.action == "direct":
                user_id = content["user_id"]
                room_id = await self._direct_room(user_id)
                room = self.client.rooms.get(room_id) if room_id else None
                if room is None:
                    return None  # just created: wait for the sync that brings it
                if user_id not in room.users:  # they left the chat: invite them back once
                    await self.client.room_invite(room_id, user_id)
                    self._members_dirty.add(room_id)
                    return None
                if user_id in room.invited_users:
                    return None  # wait until they joined: keys shared before would not reach their devices
                await self._prepare_room_keys(room_id)
                response = await self.client.room_send(room_id, "m.room.message", content["content"],
                                                       tx_id=item.txn_id, ignore_unverified_devices=True)
                if isinstance(response, RoomSendResponse):
                    await self.store.outbox_done(item.id, now, event_id=response.event_id)
                    return True
            elif item.action == "state":
                room = self.client.rooms.get(item.room_id)
                if room is None:
                    return None  # wait until the room is synced to know our power level
                if content.get("optional") and not await self.may_send_state(room, content["type"]):
                    await self.store.outbox_done(item.id, now, error="pas le droit d'envoyer cet état ici")
                    return False
                response = await self.client.room_put_state(item.room_id, content["type"], content["content"],
                                                            state_key=content.get("state_key", ""))
                if hasattr(response, "event_id"):
                    await self.store.outbox_done(item.id, now, event_id=response.event_id)
                    return True
            elif item.action == "pin":
                event_ids = await self.store.outbox_event_ids(content["ref"])
                if not event_ids:
                    return None  # the message to pin has not gone out yet
                response = await self.client.room_put_state(item.room_id, "m.room.pinned_events",
                                                            {"pinned": event_ids})
                if hasattr(response, "event_id"):
                    await self.store.outbox_done(item.id, now, event_id=response.event_id)
                    return True
            elif item.action == "invite":
                response = await self.client.room_invite(item.room_id, content["user_id"])
                self._members_dirty.add(item.room_id)
                if not hasattr(response, "status_code") or "already in the room" in str(getattr(response, "message", "")):
                    await self.store.outbox_done(item.id, now)
                    return True
            elif item.action == "leave":
                response = await self.client.room_leave(item.room_id)
                if isinstance(response, RoomLeaveResponse):
                    await self.store.outbox_done(item.id, now)
                    return True
            elif item.action == "redact":
                response = await self.client.room_redact(item.room_id, content["event_id"], content.get("reason"),
                                                         tx_id=item.txn_id)
                if isinstance(response, RoomRedactResponse):
                    await self.store.outbox_done(item.id, now, event_id=response.event_id)
                    return True
            elif item.action == "kick":
                response = await self.client.room_kick(item.room_id, content["user_id"], content.get("reason"))
                await self.store.outbox_done(item.id, now)
                return True
            else:
                await self.store.outbox_done(item.id, now, error=f"action inconnue {item.action}")
                return False
        except LocalProtocolError as e:  # e.g. the room is not synced yet
            (log.debug if self.homeserver.down else log.info)("envoi reporté (%s)", e)
            return None
        except KeyError as e:  # nio: the room's group session was replaced by a sync mid-share
            log.info("envoi reporté, session de groupe renouvelée (%s)", e)
            return None
        errcode = getattr(response, "status_code", None)
        if errcode in TRANSIENT_ERRORS:
            (log.debug if self.homeserver.down else log.warning)(
                "envoi reporté dans %s : %s", item.room_id, getattr(response, "message", response))
            return None
        log.error("envoi refusé dans %s : %s %s", item.room_id, errcode, getattr(response, "message", ""))
        await self.store.outbox_done(item.id, now, error=f"{errcode}: {getattr(response, 'message', '')}")
        return False

    async def _send_create_room(self, item, content: dict) -> bool | None:
        """Create a room exactly once, even if the bot dies between room_create and recording it.

        The attempt is committed before room_create, and the room carries its creation key
        (rooms.patients.CREATION_STATE): after a crash, the next attempt finds the room among the
        bot's rooms instead of creating a second one. The transaction that records the room also
        points every item queued against `pending:<key>` at the real room id.
        """
        from nio import RoomCreateError

        from rooms import patients

        key, now = content["key"], self.clock.now()
        attempt = f"creation:{key}"
        started = await self.store.get_state(attempt)
        room_id = None
        if started is not None:
            try:
                room_id = await patients.find_created_room(self, key)
            except patients.RoomLookupError as e:
                log.warning("recherche du salon %s impossible (%s) : nouvel essai", key, e)
                return None
        if room_id is None:
            started = str(wall_ms())
            await self.store.set_state(attempt, started)
            response = await patients.create_patient_room(self, key, content["code"], content["invite"])
            if isinstance(response, RoomCreateError):
                if response.status_code in TRANSIENT_ERRORS:
                    log.warning("création du salon %s reportée : %s", key, response.message)
                    return None
                log.error("création du salon %s refusée : %s %s", key, response.status_code, response.message)
                async with self.store.session.begin() as session:
                    await self.store.creation_failed(session, item.room_id, now,
                                                     f"{response.status_code}: {response.message}")
                    await patients.abandon_patient_room(session, content["code"], now)
                    await self.store.clear_state(attempt, session)
                    if content.get("notify"):
                        from bot.messages import render

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
            await self.store.clear_state(attempt, session)
        log.info("salon %s créé : %s", key, room_id)
        return True

    def mark_members_dirty(self, room_id: str) -> None:
        self._members_dirty.add(room_id)

    async def _prepare_room_keys(self, room_id: str) -> None:
        """Make sure the next message's room key reaches every current device, invitees included.

        nio rotates its outbound session only when its own sync shows a membership or device
        change; right after the bot invited someone, its sync has not seen it yet. So: re-read the
        members where the bot invited someone, then rotate if a current device was not covered.
        """
        from nio import Event, RoomGetStateResponse, RoomMemberEvent

        room = self.client.rooms.get(room_id)
        if room is None or not room.encrypted:
            return
        if room_id in self._members_dirty:
            state = await self.client.room_get_state(room_id)
            if isinstance(state, RoomGetStateResponse):
                for source in state.events:
                    if source.get("type") == "m.room.member":
                        event = Event.parse_event(source)
                        if isinstance(event, RoomMemberEvent):
                            room.handle_membership(event)
                room.members_synced = True
                self.client.olm.update_tracked_users(room)
                self._members_dirty.discard(room_id)
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

    async def _direct_room(self, user_id: str) -> str | None:
        """The bot's direct chat with a professional, created (encrypted) the first time."""
        from sqlalchemy import select

        from storage.models import RoomRecord

        async with self.store.session() as session:
            found = await session.scalar(select(RoomRecord.room_id).where(
                RoomRecord.kind == "direct", RoomRecord.direct_with == user_id))
        if found:
            return found
        from nio import RoomCreateError, RoomPreset

        response = await self.client.room_create(
            is_direct=True, invite=[user_id], preset=RoomPreset.trusted_private_chat,
            initial_state=[{"type": "m.room.encryption", "state_key": "",
                            "content": {"algorithm": "m.megolm.v1.aes-sha2"}}])
        if isinstance(response, RoomCreateError):
            log.warning("conversation directe avec %s impossible : %s", user_id, response.message)
            return None
        await self.store.save_room(response.room_id, "direct", wall_ms(),
                                   direct_with=user_id, created=True)
        return response.room_id

    async def may_send_state(self, room, event_type: str) -> bool:
        # nio predates room version 12, where creators have every power without being listed.
        return (await self.store.bot_created(room.room_id)
                or room.power_levels.can_user_send_state(self.user_id, event_type))

    async def _apply_trust_policy(self, room_id: str) -> None:
        """Hook for bot.trust (cross-signed devices verified, others per configuration)."""
        from bot import trust

        try:
            await trust.apply(self, room_id)
        except Exception as e:
            if homeserver_unreachable(e):
                self.homeserver.failed(e)
            if self.config.trust.unverified_devices == "cross_signed_only":
                raise LocalProtocolError(f"vérification des appareils impossible ({e})")  # fail closed, retry
            if not self.homeserver.down:
                log.warning("vérification des appareils impossible (%s) : envoi à tous les appareils", e)

    # --- deadlines ---------------------------------------------------------------------------------
    async def schedule_wakeup(self) -> None:
        """APScheduler only wakes the bot at the next due instant; the deadline rows are the truth."""
        if self.scheduler is None:
            return
        nxt = await self.store.next_deadline()
        if nxt is None:
            return
        delay = self.clock.real_seconds_until(nxt)
        if delay == float("inf"):
            return
        from datetime import timedelta, timezone

        run_at = datetime.now(timezone.utc) + timedelta(seconds=delay)
        self.scheduler.add_job(self.fire_due_deadlines, "date", run_date=run_at, id="wake",
                               replace_existing=True, misfire_grace_time=None)

    async def fire_due_deadlines(self) -> int:
        """Fire every due deadline once: its state change and messages commit together."""
        from sqlalchemy.orm.exc import StaleDataError

        fired = 0
        for deadline in await self.store.due_deadlines(self.clock.now()):
            handler = self.deadline_handlers.get(deadline.kind)
            try:
                async with self.store.session.begin() as session:
                    if not await self.store.take_deadline(session, deadline.id, self.clock.now()):
                        continue
                    if handler is None:
                        log.error("échéance %s sans traitement (%s)", deadline.kind, deadline.ref)
                        continue
                    ctx = self.context(session, deadline.payload.get("room_id", ""), "timer", self.user_id,
                                       f"deadline:{deadline.id}")
                    await handler(ctx, deadline)
                    fired += 1
            except StaleDataError:  # an answer changed the request meanwhile: still pending, fires next pass
                log.info("échéance %s reportée (conflit d'écriture)", deadline.ref)
                self._wake_worker.set()
        await self.flush_outbox()
        await self.schedule_wakeup()
        return fired
