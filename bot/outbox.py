"""The outbox sender: outbox rows -> homeserver, one small sender per action, in a table.

An item is sent with its stored transaction id (the homeserver deduplicates a send that had in
fact gone through before a crash). Before the first write in a room since the start, and where the
bot changed its members, the room's state is read from the server (OutboxSender.room: a start
does not sync every room's state); the room key is rotated if a current device was not covered;
the trust policy (bot.trust) decides which devices get it.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

import aiohttp
from nio import (
    AsyncClient,
    Event,
    LocalProtocolError,
    MatrixRoom,
    RoomCreateError,
    RoomCreateResponse,
    RoomGetStateResponse,
    RoomInviteResponse,
    RoomKickResponse,
    RoomLeaveResponse,
    RoomMemberEvent,
    RoomPutStateResponse,
    RoomRedactResponse,
    RoomSendResponse,
    UploadResponse,
)
from nio.crypto.attachments import encrypt_attachment
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from bot.config import Config
from bot.cross_signing import CrossSigningClient
from bot.metrics import Metrics
from bot.room_creation import (
    RoomLookupError,
    check_not_under_way,
    create_direct_room,
    create_patient_room,
    find_created_room,
)
from bot.sync import HomeserverWatch, homeserver_unreachable
from bot.trust import TrustCache
from bot.trust import apply as apply_trust_policy
from domain.clock import Clock, wall_ms, wall_now
from domain.polls import POLL_END, poll_end_content
from rooms import patients
from rooms.messages import render
from rooms.patients import PENDING_ROOM
from storage.models import RoomRecord
from storage.repositories import Store

log = logging.getLogger("cercle")

TRANSIENT_ERRORS = {"M_LIMIT_EXCEEDED", "M_UNKNOWN", None}
INVITED = "invité, pas encore dans la conversation"


@dataclass
class Later:
    """Not sent yet; try again after the item's backoff (or the server's retry-after)."""

    reason: str
    after_s: float | None = None
    outage: bool = False


def _says(response, phrase: str) -> bool:
    return phrase in str(getattr(response, "message", "") or "")


def already_in_room(response) -> bool:
    return _says(response, "already in the room")


def not_in_room(response) -> bool:
    """Synapse's answer to kicking someone who already left (or was already kicked)."""
    return _says(response, "not in the room")


Sender = Callable[[object, dict], Awaitable["bool | Later | object"]]


class OutboxSender:
    def __init__(self, config: Config, store: Store, client: AsyncClient, clock: Clock,
                 homeserver: HomeserverWatch, wake_worker: Callable[[], None],
                 cross_signing: Callable[[], CrossSigningClient], metrics: Metrics | None = None):
        self.store = store
        self.metrics = metrics or Metrics()
        self.client = client
        self.clock = clock
        self.homeserver = homeserver
        self.user_id: str = config.matrix.user_id
        self._delivery = config.delivery
        self._strict_trust: bool = config.trust.unverified_devices == "cross_signed_only"
        self._wake_worker = wake_worker  # rung when the earliest retry is due
        self._cross_signing = cross_signing
        self.trust_cache = TrustCache()  # bot.trust: devices already judged, per user
        self._flush_lock = asyncio.Lock()
        # Room keys are prepared (device lists, trust, Olm sessions claimed, key shared) one room at
        # a time, even when sends to several rooms run at once: nio's share of a group session
        # claims one-time keys and creates Olm sessions, which two rooms must not do together.
        self._keys_lock = asyncio.Lock()
        self._pump: asyncio.Task | None = None  # the background flush started by kick()
        self._pump_again = False
        self._members_dirty: set[str] = set()  # rooms where the bot invited someone its sync has not seen
        self._rooms_changed: set[str] = set()  # rooms whose membership a sync changed since the last flush
        self._direct_rooms: dict[str, str] = {}  # professional -> the bot's direct chat with them
        self._retry_timer: asyncio.TimerHandle | None = None
        self.member_reads = 0  # member lists read from the server (tests check it stays small)
        self.waiting = 0  # items left after the last flush
        self._backlog_empty = False  # known only after a full read: the first flush reads
        self._seen_by_full_read: set[int] = set()
        # One small sender per action: a new action is one entry here.
        self.senders: dict[str, Sender] = {
            "message": self._send_message, "direct": self._send_direct, "state": self._send_state,
            "pin": self._send_pin, "invite": self._send_invite, "kick": self._send_kick,
            "leave": self._send_leave, "redact": self._send_redact, "create_room": self._send_create_room,
            "event": self._send_event, "poll_end": self._send_poll_end, "file": self._send_file}

    def rooms_changed(self, room_ids: set[str]) -> None:
        """A sync changed these rooms' membership: their waiting items are tried at the next flush."""
        self._rooms_changed |= room_ids

    def mark_members_dirty(self, room_id: str) -> None:
        """The bot changed the room's members: read them from the server before the next send."""
        self._members_dirty.add(room_id)

    def cancel_retry(self) -> None:
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None

    # --- flush -----------------------------------------------------------------------------------
    async def flush(self, full: bool = False) -> int:
        """Send what can be sent, in order per room; returns how many items are left waiting.

        Reads the outbox back only when something is waiting, at the first flush, and when asked
        (`full`: the deadline runner's periodic pass, a safety net for rows another process wrote).

        An item that cannot go yet (room not synced, recipient not joined, homeserver busy) holds
        back the later items of the same room only, never the other rooms. It is tried again
        after its own backoff (doubling, capped, stored in its row so that a restart resumes it
        instead of retrying everything in a loop), or at once when a sync shows its room changed.
        """
        async with self._flush_lock:
            fresh = self.store.take_committed_outbox()
            if self._backlog_empty and not full:
                # The usual case: nothing was waiting, so send exactly what was just committed,
                # in commit order, without reading the outbox back (issue 11).
                fresh = [(i, c) for i, c in fresh if i.id not in self._seen_by_full_read]
                self._seen_by_full_read.clear()
                if not fresh:
                    return 0
                try:
                    if await self._send_batch(fresh, set(), set(), set()) == 0:
                        return 0
                except Exception:
                    self._backlog_empty = False  # the items after the failure: the next flush reads them
                    raise
            changed, self._rooms_changed = self._rooms_changed, set()
            tried: set[int] = set()
            blocked: set[str] = set()
            while True:
                batch = [(i, c) for i, c in await self.store.pending_outbox(limit=500) if i.id not in tried]
                if not batch or await self._send_batch(batch, tried, blocked, changed) is None:
                    break
            backlog = await self.store.outbox_backlog()
            # Items committed while this read ran are in both the read and the memory queue.
            self._seen_by_full_read = tried
            self._backlog_empty = not backlog
        self.waiting = len(backlog)
        await self._watch_backlog(backlog)
        return len(backlog)

    def kick(self) -> None:
        """Start sending what was just committed, in the background, and return at once: the
        inbox worker goes on with the next event while this answer is on the wire. Kicked while a
        flush runs, another follows it and takes everything committed meanwhile (in parallel
        across rooms). `settle()` waits until they are done."""
        if self._pump is not None and not self._pump.done():
            self._pump_again = True
            return
        self._pump_again = False
        self._pump = asyncio.create_task(self._pump_loop(), name="outbox")

    async def _pump_loop(self) -> None:
        while True:
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # as the worker loop would: say it, and let the worker try again
                if homeserver_unreachable(e):
                    self.homeserver.failed(e)
                else:
                    log.exception("erreur d'envoi")
                self._arm_retry(1.0)
                return
            if not self._pump_again:
                return
            self._pump_again = False

    async def settle(self) -> None:
        """Wait for the background sends started by kick()."""
        while self._pump is not None and not self._pump.done():
            await asyncio.shield(self._pump)

    async def stop_pump(self) -> None:
        """At shutdown: the background sends end here, before the client and the store close, so
        that no send of this instance outlives it (a restart in the same process would otherwise
        run two senders at once)."""
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
            self._pump = None

    async def _send_batch(self, batch, tried: set[int], blocked: set[str], changed: set[str]) -> int | None:
        """Send in order within each room, rooms in parallel (delivery.parallel_rooms at once), an
        item that must wait holding back the later ones of its room; returns how many were held
        back, or None when the homeserver is unreachable (stop trying)."""
        queues: dict[str, list] = {}
        for item, content in batch:
            queues.setdefault(self._order_key(item, content), []).append((item, content))
        if len(queues) == 1:
            return await self._send_queue(batch, tried, blocked, changed)
        slots = asyncio.Semaphore(self._delivery.parallel_rooms)

        async def one_room(queue):
            async with slots:
                return await self._send_queue(queue, tried, blocked, changed)

        outcomes = await asyncio.gather(*(one_room(q) for q in queues.values()), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return None if None in outcomes else sum(outcomes)

    def _order_key(self, item, content: dict) -> str:
        """What keeps its order: a room; a direct message goes with its chat once that is known."""
        if item.action == "direct":
            return self._direct_rooms.get(content["user_id"]) or self._outbox_key(item, content)
        return item.room_id

    async def _send_queue(self, batch, tried: set[int], blocked: set[str], changed: set[str]) -> int | None:
        now = wall_now()
        held = 0
        for item, content in batch:
            tried.add(item.id)
            key = self._outbox_key(item, content)
            if key in blocked:
                held += 1
                continue
            if (item.next_attempt_at is not None and item.next_attempt_at > now
                    and await self._target_room(item, content) not in changed):
                blocked.add(key)  # backing off: the later items of this room wait behind it
                held += 1
                continue
            outcome = await self._send(item, content)
            if isinstance(outcome, Later):
                blocked.add(key)
                held += 1
                self._backlog_empty = False
                await self._note_retry(item, outcome)
                if outcome.outage:  # the homeserver is unreachable: no use trying other rooms
                    return None
        return held

    @staticmethod
    def _outbox_key(item, content: dict) -> str:
        return f"direct:{content['user_id']}" if item.action == "direct" else item.room_id

    async def _target_room(self, item, content: dict) -> str | None:
        return await self._known_direct_room(content["user_id"]) if item.action == "direct" else item.room_id

    async def _note_retry(self, item, later: Later) -> None:
        attempts = (item.attempts or 0) + 1
        delivery = self._delivery
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
        stuck_after = timedelta(seconds=self._delivery.stuck_after_s)
        for item in backlog:
            if item.first_try_at and item.stuck_reported_at is None and now - item.first_try_at >= stuck_after:
                log.warning("envoi bloqué depuis %s : n°%d (%s, %s, %s), %d essais, dernière raison : %s",
                            f"{item.first_try_at:%d/%m/%Y %H:%M:%S} UTC", item.id, item.action,
                            item.room_id or "conversation directe", item.ref or "-", item.attempts, item.last_error)
                await self.store.outbox_stuck_reported(item.id, now)
        nexts = [i.next_attempt_at for i in backlog]
        at = now + timedelta(seconds=self._delivery.retry_base_s) if None in nexts else min(nexts)
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
            self._wake_worker()

        self._retry_timer = loop.call_at(when, due)

    # --- one attempt ------------------------------------------------------------------------------
    async def _send(self, item, content: dict) -> bool | Later:
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

    async def _refused(self, item, response) -> bool | Later:
        """The homeserver said no: wait and retry if that may change, else record the failure."""
        errcode = getattr(response, "status_code", None)
        message = getattr(response, "message", "") or ""
        if errcode in TRANSIENT_ERRORS:
            after = getattr(response, "retry_after_ms", None)
            return Later(f"{errcode or 'erreur serveur'} : {message[:120]}", after_s=after / 1000 if after else None)
        log.error("envoi refusé dans %s : %s %s", item.room_id or "conversation directe", errcode, message)
        await self.store.outbox_done(item.id, self.clock.now(), error=f"{errcode}: {message}")
        return False

    async def _done(self, item, response, ok_type, also_done: Callable[[object], bool] | None = None) -> bool | object:
        """Record the item sent if the server said yes (or gave an answer that means the same:
        `also_done`), else hand the refusal back to `_send`."""
        if isinstance(response, ok_type) or (also_done is not None and also_done(response)):
            await self.store.outbox_done(item.id, self.clock.now(), event_id=getattr(response, "event_id", None))
            return True
        return response

    # --- the senders, one per action ------------------------------------------------------------
    async def _send_message(self, item, content: dict):
        await self._prepare_room_keys(item.room_id)
        response = await self.client.room_send(item.room_id, "m.room.message", content,
                                               tx_id=item.txn_id, ignore_unverified_devices=True)
        if isinstance(response, RoomSendResponse):
            self.metrics.message_sent(content, wall_ms())
        return await self._done(item, response, RoomSendResponse)

    async def _send_event(self, item, content: dict):
        """Any room event type (polls: domain.polls), encrypted like a message."""
        await self._prepare_room_keys(item.room_id)
        response = await self.client.room_send(item.room_id, content["type"], content["content"],
                                               tx_id=item.txn_id, ignore_unverified_devices=True)
        return await self._done(item, response, RoomSendResponse)

    async def _send_poll_end(self, item, content: dict):
        event_ids = await self.store.outbox_event_ids(content["poll_ref"])
        if not event_ids:
            return Later("sondage à clore pas encore envoyé")
        await self._prepare_room_keys(item.room_id)
        response = await self.client.room_send(item.room_id, POLL_END, poll_end_content(event_ids[0], content["text"]),
                                               tx_id=item.txn_id, ignore_unverified_devices=True)
        return await self._done(item, response, RoomSendResponse)

    async def _send_file(self, item, content: dict):
        message = await self._upload_encrypted(content)
        if not isinstance(message, dict):
            return message
        await self._prepare_room_keys(item.room_id)
        response = await self.client.room_send(item.room_id, "m.room.message", message,
                                               tx_id=item.txn_id, ignore_unverified_devices=True)
        return await self._done(item, response, RoomSendResponse)

    async def _upload_encrypted(self, payload: dict):
        """Encrypt the attachment (AES-CTR, key in the `file` object, itself inside the encrypted
        event) and upload only ciphertext, without its name: the homeserver learns a size. A send
        retried after the upload uploads again; the orphan costs storage, not privacy."""
        data = base64.b64decode(payload["data"])
        ciphertext, keys = encrypt_attachment(data)
        response, _ = await self.client.upload(io.BytesIO(ciphertext), content_type="application/octet-stream",
                                               filesize=len(ciphertext))
        if not isinstance(response, UploadResponse):
            return response
        return {"msgtype": payload["msgtype"], "body": payload["body"], "filename": payload["filename"],
                "info": {"mimetype": payload["mimetype"], "size": len(data)},
                "file": {**keys, "url": response.content_uri, "mimetype": payload["mimetype"]}}

    async def _send_direct(self, item, content: dict):
        user_id = content["user_id"]
        try:
            room_id = await self._direct_room(user_id)
        except RoomLookupError as e:
            return Later(f"recherche de la conversation directe impossible ({str(e)[:80]})")
        if room_id is None:
            return Later("conversation directe pas encore créée")
        # The server is the truth for membership: after a start the sync lazy-loads members, so
        # someone who never spoke in the chat is missing from room.users until we ask.
        room = await self.room(room_id)
        if room is None:
            return Later("conversation directe pas encore lisible")
        if user_id not in room.users:  # they left the chat, or declined it
            if item.last_error == INVITED:
                return Later(INVITED)  # invited once for this message; `cercle status` shows it if it lasts
            response = await self.client.room_invite(room_id, user_id)
            self.mark_members_dirty(room_id)
            if not isinstance(response, RoomInviteResponse) and not already_in_room(response):
                return response
            if not already_in_room(response):
                return Later(INVITED)
            room = await self.room(room_id)
            if room is None or user_id not in room.users:
                return Later("membre annoncé présent mais introuvable")
        if user_id in room.invited_users:
            return Later(INVITED)  # keys shared before they join would not reach their devices
        message = content.get("content") or await self._upload_encrypted(content["file"])
        if not isinstance(message, dict):
            return message
        await self._prepare_room_keys(room_id)
        response = await self.client.room_send(room_id, "m.room.message", message,
                                               tx_id=item.txn_id, ignore_unverified_devices=True)
        return await self._done(item, response, RoomSendResponse)

    async def _send_state(self, item, content: dict):
        room = await self.room(item.room_id)
        if room is None:
            return Later("salon pas encore lisible")  # to know our power level
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
        return await self._done(item, response, RoomInviteResponse, already_in_room)

    async def _send_kick(self, item, content: dict):
        response = await self.client.room_kick(item.room_id, content["user_id"], content.get("reason"))
        self.mark_members_dirty(item.room_id)
        # « not in the room »: they left, or a kick that went through before a crash is retried.
        return await self._done(item, response, RoomKickResponse, not_in_room)

    async def _send_leave(self, item, content: dict):
        return await self._done(item, await self.client.room_leave(item.room_id), RoomLeaveResponse)

    async def _send_redact(self, item, content: dict):
        response = await self.client.room_redact(item.room_id, content["event_id"], content.get("reason"),
                                                 tx_id=item.txn_id)
        return await self._done(item, response, RoomRedactResponse)

    async def _send_create_room(self, item, content: dict) -> bool | Later:
        """Create a room exactly once, even if the bot dies between room_create and recording it.

        The attempt is committed before room_create, and the room carries its creation key
        (bot.room_creation): after a crash, the next attempt finds the room among the bot's rooms
        instead of creating a second one. The transaction that records the room also points every
        item queued against `pending:<key>` at the real room id.
        """
        key = content["key"]
        attempt = f"creation:{key}"
        started = await self.store.get_state(attempt)
        room_id = None
        if started is not None:
            try:
                room_id = await find_created_room(self.client, self.store, key)
                if room_id is None:
                    check_not_under_way(int(started), wall_ms())
            except RoomLookupError as e:
                log.warning("recherche du salon %s impossible (%s) : nouvel essai", key, e)
                return Later(f"recherche du salon {key} impossible")
        if room_id is None:
            started = str(wall_ms())
            await self.store.set_state(attempt, started)
            response = await create_patient_room(self.client, key, content["code"], content["invite"])
            if isinstance(response, RoomCreateError):
                return await self._creation_refused(item, content, attempt, response)
            room_id = response.room_id
        self.mark_members_dirty(room_id)
        async with self.store.session.begin() as session:
            await patients.record_patient_room(session, content["code"], room_id)
            await self.store.save_room(room_id, content.get("kind", "patient"), int(started), created=True,
                                       session=session)
            await self.store.room_exists(session, item.id, item.room_id, room_id, self.clock.now())
            await self.store.delete_state(attempt, session=session)
        log.info("salon %s créé : %s", key, room_id)
        return True

    async def _creation_refused(self, item, content: dict, attempt: str, response: RoomCreateError) -> bool | Later:
        key, now = content["key"], self.clock.now()
        if response.status_code in TRANSIENT_ERRORS:
            log.warning("création du salon %s reportée : %s", key, response.message)
            return Later(f"création du salon reportée : {response.message}")
        log.error("création du salon %s refusée : %s %s", key, response.status_code, response.message)
        async with self.store.session.begin() as session:
            await self.store.creation_failed(session, item.room_id, now, f"{response.status_code}: {response.message}")
            await patients.abandon_patient_room(session, content["code"], now)
            await self.store.delete_state(attempt, session=session)
            if content.get("notify"):
                self.store.queue(session, "message", content["notify"], render(
                    f"❌ Le salon du cercle {content['code']} n'a pas pu être créé : le serveur Matrix "
                    f"a refusé ({response.status_code}). Relancez `!patient nouveau`, et prévenez les "
                    "coordinateurs si cela se reproduit."), now)
        return False

    # --- rooms, members and room keys ---------------------------------------------------------------
    async def room(self, room_id: str) -> MatrixRoom | None:
        """The room as nio must know it before the bot writes in it: members (joined and invited),
        encryption, power levels. None if the bot is not in it, or its state is unreadable for now.

        A start syncs incrementally from the stored token, so nio knows only the rooms where
        something happened while the bot was down, and those only by the state that changed
        (issue 11: no full-state sync of every room at each start). The room's whole state is
        read from the server (one request) the first time the bot needs it since the start, and
        again after the bot itself changed the members; the sync keeps it current afterwards."""
        room = self.client.rooms.get(room_id)
        if room is not None and room.members_synced and room_id not in self._members_dirty:
            return room
        self._members_dirty.discard(room_id)  # a change made while we read is marked again
        state = await self.client.room_get_state(room_id)
        if not isinstance(state, RoomGetStateResponse):
            self._members_dirty.add(room_id)
            return None
        self.member_reads += 1
        events = [e for e in map(Event.parse_event, state.events) if isinstance(e, Event)]
        if room_id not in self.client.rooms:
            # The server answers for a room the bot has left too (its state at the departure).
            me = [e for e in events if isinstance(e, RoomMemberEvent) and e.state_key == self.user_id]
            if not me or me[-1].membership != "join":
                return None
            self.client.rooms[room_id] = MatrixRoom(room_id, self.user_id, room_id in self.client.encrypted_rooms)
        room = self.client.rooms[room_id]
        for event in events:  # as nio applies a sync's state block (AsyncClient._handle_joined_state)
            if isinstance(event, RoomMemberEvent):
                room.handle_membership(event)
            else:
                room.handle_event(event)
        room.members_synced = True
        if room.encrypted and room_id not in self.client.encrypted_rooms:
            self.client.encrypted_rooms.add(room_id)
            if self.client.store:
                self.client.store.save_encrypted_rooms({room_id})
        if room.encrypted and self.client.olm is not None:
            self.client.olm.update_tracked_users(room)  # devices of members not seen since the start
        return room

    async def _prepare_room_keys(self, room_id: str) -> None:
        """Make sure the next message's room key reaches every current device, invitees included.

        nio rotates its outbound session only when its own sync shows a membership or device
        change; right after the bot invited someone, its sync has not seen it yet. So: re-read the
        members where the bot invited someone, then rotate if a current device was not covered.
        """
        async with self._keys_lock:
            room = await self.room(room_id)
            if room is None:
                raise LocalProtocolError("salon illisible (membres, chiffrement)")
            if not room.encrypted:
                return
            if self.client.should_query_keys:
                await self.client.keys_query()
            await self._apply_trust_policy(room_id)
            session = self.client.olm.outbound_group_sessions.get(room_id)
            if session is not None and session.shared:
                covered = session.users_shared_with | session.users_ignored
                wanted = {(u, d.id) for u in room.users for d in self.client.device_store.active_user_devices(u)
                          if not d.blacklisted}
                departed = {u for u, _ in session.users_shared_with} - set(room.users)
                if wanted - covered or departed:
                    self.client.invalidate_outbound_session(room_id)
            if self.client.olm.should_share_group_session(room_id):
                # Here, under the lock, rather than inside room_send, which may run beside another room's.
                await self.client.share_group_session(room_id, ignore_unverified_devices=True)

    async def _apply_trust_policy(self, room_id: str) -> None:
        """bot.trust: cross-signed devices verified, the others per configuration."""
        try:
            await apply_trust_policy(self.client, self.trust_cache, self._cross_signing, room_id,
                                     strict=self._strict_trust)
        except Exception as e:
            if homeserver_unreachable(e):
                self.homeserver.failed(e)
            if self._strict_trust:
                raise LocalProtocolError(f"vérification des appareils impossible ({e})")  # fail closed, retry
            if not self.homeserver.down:
                log.warning("vérification des appareils impossible (%s) : envoi à tous les appareils", e)

    async def may_send_state(self, room, event_type: str) -> bool:
        # nio predates room version 12, where creators have every power without being listed.
        return (await self.store.bot_created(room.room_id)
                or room.power_levels.can_user_send_state(self.user_id, event_type))

    # --- direct chats ------------------------------------------------------------------------------
    async def _known_direct_room(self, user_id: str) -> str | None:
        if user_id in self._direct_rooms:
            return self._direct_rooms[user_id]
        async with self.store.session() as session:
            found = await session.scalar(select(RoomRecord.room_id).where(
                RoomRecord.kind == "direct", RoomRecord.direct_with == user_id).order_by(RoomRecord.joined_ts))
        if found:
            self._direct_rooms[user_id] = found
        return found

    async def _direct_room(self, user_id: str) -> str | None:
        """The bot's direct chat with a professional, created (encrypted) the first time.

        Idempotent across crashes, like patient rooms (bot.room_creation): a creation key is
        recorded *before* asking the server, and the room carries it in its state; if the key is
        still there at the next attempt, the previous one may have created the room without
        recording it (crash, lost answer), so the bot looks for it before creating another.
        """
        found = await self._known_direct_room(user_id)
        if found:
            return found
        marker = "direct_creation:" + hashlib.sha256(user_id.encode()).hexdigest()[:40]
        stored = await self.store.get_state(marker)
        if stored:
            key, _, started = stored.partition(":")  # "<key>:<wall ms>" (a bare key: an older bot's)
            found = await find_created_room(self.client, self.store, key)
            if found:
                log.info("conversation directe retrouvée après une création interrompue : %s", found)
                await self._record_direct(found, user_id, marker)
                return found
            check_not_under_way(int(started) if started else None, wall_ms())
        else:
            key = uuid.uuid4().hex
            await self.store.set_state(marker, f"{key}:{wall_ms()}")
        response = await create_direct_room(self.client, key, user_id)
        if not isinstance(response, RoomCreateResponse):
            log.warning("conversation directe avec %s impossible : %s", user_id, response.message)
            return None
        await self._record_direct(response.room_id, user_id, marker)
        return response.room_id

    async def _record_direct(self, room_id: str, user_id: str, marker: str) -> None:
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
