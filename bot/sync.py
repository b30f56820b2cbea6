"""The intake: homeserver sync -> IncomingEvent rows (collect, gap filling, event mapping), the
crypto housekeeping between syncs, and the retry of events recorded before their room key.

Also the homeserver's reachability watch, shared by the sync loop, the outbox and the worker.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

import aiohttp
from nio import (
    AsyncClient,
    EncryptionError,
    Event,
    InviteMemberEvent,
    MegolmEvent,
    ReactionEvent,
    RoomEncryptedFile,
    RoomMemberEvent,
    RoomMessageFile,
    RoomMessagesError,
    RoomMessageText,
    SyncError,
    SyncResponse,
    UnknownEvent,
    UnknownToDeviceEvent,
)

from bot.config import Config
from bot.dispatch import request_key_from_sender, tell_undecryptable
from bot.metrics import Metrics
from domain.clock import Clock, wall_ms
from domain.polls import poll_response
from rooms.services import Services
from storage.repositories import IncomingEvent, Store

log = logging.getLogger("cercle")

WAITING_BATCH = 200  # events waiting for their room key, tried per pass

WITHHELD = "m.room_key.withheld"
TOKEN_WRITE_S = 60.0  # a quiet bot still stores its sync token this often (bounds a replay after a crash)


class SyncFailed(Exception):
    """The homeserver answered the sync with an error."""


def homeserver_unreachable(error: BaseException) -> bool:
    """A failure of the connection to the homeserver (refused, reset, timed out), not a bug."""
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

    def __init__(self, monotonic: Callable[[], float] | None = None):
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


class SyncIntake:
    """Turns each sync response into recorded inbox rows; rings `wake_worker` when there is work,
    and tells `members_changed` which rooms' membership a sync changed (the outbox retries them)."""

    def __init__(self, config: Config, store: Store, client: AsyncClient, clock: Clock, services: Services,
                 homeserver: HomeserverWatch, wake_worker: Callable[[], None],
                 members_changed: Callable[[set[str]], None], metrics: Metrics | None = None):
        self.store = store
        self.metrics = metrics or Metrics()
        self.last_sync_at: float | None = None  # monotonic instant of the last successful sync
        self.client = client
        self.clock = clock
        self.services = services  # to tell a sender, once, that their message stayed unreadable
        self.homeserver = homeserver
        self.user_id: str = config.matrix.user_id
        self._sync = config.sync
        self._wake_worker = wake_worker
        self._members_changed = members_changed
        self.synced_once = asyncio.Event()
        self._key_wait_deadline_ms: int | None = None  # earliest give-up among events waiting for a key
        self._key_requested: set[str] = set()  # waiting events whose key was asked for since this start
        self._none_waiting = False  # no event waits for its key (false until a read shows it)
        # Read once, then kept here: the stored token and every room's join instant (rooms are never
        # deleted and a room's joined_ts never changes once written, so the copy cannot go stale).
        self._loaded = False
        self._token: str | None = None  # the token of the last sync, stored or not yet
        self._token_stored_at = 0.0  # monotonic instant of the last write of the token
        self._joined_ts: dict[str, int] = {}
        self.sync_filter: dict = {
            "room": {
                # Lazy-loaded members and a short timeline: the bot sits in thousands of rooms.
                "state": {"lazy_load_members": True},
                "timeline": {"limit": config.sync.timeline_limit},
                "ephemeral": {"not_types": ["*"]},
                "account_data": {"not_types": ["*"]},
            },
            "presence": {"not_types": ["*"]},
        }

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 1.0
        while not stop.is_set():
            try:
                attempt = self.homeserver.attempt()
                await self.sync_once()
                self.metrics.sync_duration.observe(time.monotonic() - attempt)
                self.homeserver.reachable(attempt)
                backoff = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as e:  # homeserver unreachable, 5xx, timeouts: retry with backoff
                self.metrics.sync_failures.inc()
                if homeserver_unreachable(e) or isinstance(e, SyncFailed):
                    self.homeserver.failed(e)
                    log.debug("synchronisation impossible : nouvel essai dans %.0f s", backoff)
                else:
                    log.warning("synchronisation impossible (%s) : nouvel essai dans %.0f s", e, backoff)
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, self._sync.max_backoff_s)

    async def sync_once(self) -> None:
        if not self._loaded:
            self._token = await self.store.get_state("sync_token")
            self._joined_ts = await self.store.rooms_joined_ts()  # one query, not one per room
            self._token_stored_at = time.monotonic()
            self._loaded = True
        since = self._token
        first = since is None
        # A start resumes from the stored token like any sync (what nio's store_sync_tokens does),
        # without full_state: the answer then grows with what happened while the bot was down, not
        # with its rooms (issue 11). nio keeps no room list on disk, so a room quiet since has no
        # MatrixRoom: the outbox reads its state when the bot first writes there (OutboxSender.room).
        starting = not self.synced_once.is_set()
        timeout = self._sync.timeout_ms
        if self._key_wait_deadline_ms is not None:
            timeout = max(0, min(timeout, self._key_wait_deadline_ms - wall_ms()))
        response = await self.client.sync(
            timeout=0 if starting else timeout, sync_filter=self.sync_filter, since=since)
        if isinstance(response, SyncError) or not isinstance(response, SyncResponse):
            raise SyncFailed(getattr(response, "message", str(response)))
        if self.client.olm is not None:
            # nio re-queries a changed device list only for members of the rooms it holds; since a
            # start holds only the rooms that had news, any user whose keys it has is re-queried.
            self.client.olm.add_changed_users(set(response.device_list.changed) & self.client.olm.tracked_users)
        await self._crypto_housekeeping()
        now = self.clock.now()
        events = await self._collect(response, first=first)
        new = 0
        if self._must_store(events, response, first):
            new = await self.store.record_sync(events, response.next_batch, now)
            if any(e.status == "waiting_key" for e in events):
                self._none_waiting = False
            self._token_stored_at = time.monotonic()
        self._token = response.next_batch  # only once recorded: a failed write syncs again from `since`
        changed = {room_id for room_id, info in response.rooms.join.items()
                   if any(isinstance(ev, RoomMemberEvent) for ev in (*info.state, *info.timeline.events))}
        if changed:  # e.g. the recipient of a waiting direct message joined: try it now
            self._members_changed(changed)
        if new or changed:
            self._wake_worker()
        try:
            await self.retry_waiting_keys()
        except Exception:  # never let it stop the sync: the waiting events stay recorded
            log.exception("nouvel essai de déchiffrement impossible")
        self.last_sync_at = time.monotonic()
        self.metrics.last_sync.set_to_current_time()
        self.synced_once.set()

    def _must_store(self, events: list[IncomingEvent], response: SyncResponse, first: bool) -> bool:
        """Whether this sync is written (its events and its token, in one transaction).

        A sync that brought nothing to record is not: its token stays in memory and goes out with the
        next sync that has events, or after TOKEN_WRITE_S. The guarantee "an event is recorded before
        the stored token moves past it" still holds, because the stored token only ever moves in the
        transaction that records the events of every sync up to it: syncs skipped since the stored
        token recorded nothing. After a crash the bot syncs again from the stored token; the homeserver
        sends those syncs' events again, and they give nothing to record again, or, if they now do
        (e.g. a room key arrived), are recorded then; known event ids are ignored. Always written:
        the first token (a restart without any would take everything since for backlog and drop it),
        and a sync with to-device events (room keys: the server deletes them once a later token is
        used, so nio's store and ours move together instead of relying on nio ignoring a replay).
        """
        return (bool(events) or first or bool(response.to_device_events)
                or time.monotonic() - self._token_stored_at >= TOKEN_WRITE_S)

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
            joined_ts = self._joined_ts.get(room_id)
            if joined_ts is None:
                # Recorded since the start (invite handler, room creation), or a room we did not
                # join through the invite handler (e.g. created by `cercle up`): theirs stands.
                joined_ts = (await self.store.add_room_if_absent(room_id, "other", now_ms)).joined_ts
                self._joined_ts[room_id] = joined_ts
            if first:
                continue  # the backlog from before the bot's first sync is not addressed to it
            timeline = list(info.timeline.events)
            # A cut timeline may hide events for the bot, unless it starts before the bot's join: a
            # room joined while the bot was down (its whole history is older) costs no request.
            if (info.timeline.limited and info.timeline.prev_batch
                    and not (timeline and timeline[0].server_timestamp < joined_ts)):
                timeline = await self._fill_gap(room_id, info.timeline.prev_batch, joined_ts) + timeline
            for ev in timeline:
                item = self._incoming(room_id, ev, joined_ts)
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
        vote = poll_response(ev.type, ev.source.get("content", {})) if isinstance(ev, UnknownEvent) else None
        if vote is not None:
            return IncomingEvent(ev.event_id, room_id, ev.sender, "poll_response", ev.server_timestamp,
                                 {"poll": vote[0], "answers": vote[1]})
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
        if self._none_waiting:
            return  # known from the last pass and the syncs since: no read per sync (issue 11)
        waiting = await self.store.waiting_key_events(limit=WAITING_BATCH)
        deadline = None
        still_waiting = len(waiting) >= WAITING_BATCH  # more beyond this batch
        for event in waiting:
            decrypted = await self.decrypt_later(event)
            if decrypted is not None:
                if await self.store.key_arrived(event.event_id, decrypted.kind, decrypted.payload):
                    log.info("clé reçue, événement %s déchiffré", event.event_id)
                    self._wake_worker()
                continue
            give_up = (event.waiting_since_ms or 0) + int(self._sync.key_wait_s * 1000)
            withheld = await self.store.is_known_event(
                f"withheld:{event.session_id}:{event.sender}")  # the sender was told why (handle_withheld)
            if withheld or wall_ms() >= give_up:
                async with self.store.session.begin() as session:
                    if await self.store.give_up_waiting(session, event.event_id, self.clock.now(),
                                                        "clé refusée" if withheld else "clé non reçue"):
                        if not withheld:
                            self.metrics.undecryptable.inc()
                            await tell_undecryptable(self.services, session, event)
                self._wake_worker()
                continue
            deadline = give_up if deadline is None else min(deadline, give_up)
            still_waiting = True
            if event.event_id not in self._key_requested:
                self._key_requested.add(event.event_id)
                try:
                    await request_key_from_sender(self.client, event)
                except Exception as e:  # best effort: the key usually comes by itself
                    log.info("demande de clé non envoyée : %s", e)
        self._key_wait_deadline_ms = deadline
        self._none_waiting = not still_waiting

    async def decrypt_later(self, event: IncomingEvent) -> IncomingEvent | None:
        """The undecryptable `event` as the event it is, if its room key is here now; else None.

        Decrypted but nothing to act on (e.g. a notice): kind `ignored`, handled as nothing."""
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
        joined_ts = self._joined_ts.get(event.room_id)
        if joined_ts is None:
            record = await self.store.get_room(event.room_id)
            joined_ts = record.joined_ts if record else 0
        item = self._incoming(event.room_id, decrypted, joined_ts)
        return item or IncomingEvent(event.event_id, event.room_id, event.sender, "ignored", event.origin_ts, {})
