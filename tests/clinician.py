"""A real end-to-end encrypted Matrix client playing a clinician in the tests (matrix-nio).

One background task syncs like `sync_forever` (keys upload / query / claim, to-device) but
never dies from one bad event, and records every timeline event (decrypted when possible) and
every to-device event in arrival order. The wait helpers sleep on an asyncio.Condition that the
loop notifies after each sync, so tests wait exactly as long as the homeserver takes.
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import quote
from uuid import uuid4

from nio import (
    AsyncClient,
    AsyncClientConfig,
    EnableEncryptionBuilder,
    EncryptionError,
    Event,
    JoinError,
    LoginResponse,
    MatrixInvitedRoom,
    MatrixRoom,
    MegolmEvent,
    RoomCreateError,
    RoomMemberEvent,
    RoomMessage,
    RoomPreset,
    SyncResponse,
)
from nio.crypto.attachments import decrypt_attachment

log = logging.getLogger("tests.clinician")

SYNC_TIMEOUT_MS = 1500  # idle long-poll; the server answers at once when something arrives
SYNC_FILTER = {
    "presence": {"not_types": ["*"]},
    "room": {"ephemeral": {"not_types": ["*"]}, "timeline": {"limit": 100}},
}


class MatrixError(Exception):
    def __init__(self, method: str, path: str, status: int, body: dict):
        self.status, self.errcode, self.body = status, body.get("errcode"), body
        super().__init__(f"{method} {path} -> {status} {self.errcode}: {body.get('error', body)}")


@dataclass
class ReceivedMessage:
    event_id: str
    sender: str
    msgtype: str
    body: str
    formatted_body: str | None
    content: dict
    encrypted: bool
    server_ts: int

    @classmethod
    def of(cls, ev: RoomMessage) -> "ReceivedMessage":
        content = ev.source.get("content", {})
        return cls(ev.event_id, ev.sender, content.get("msgtype", ""), content.get("body", ""),
                   content.get("formatted_body"), content, bool(ev.decrypted), ev.server_timestamp)

    def in_reply_to(self) -> str | None:
        return ((self.content.get("m.relates_to") or {}).get("m.in_reply_to") or {}).get("event_id")


class Clinician:
    def __init__(self, user_id: str, password: str, client: AsyncClient):
        self.user_id, self.password, self.client = user_id, password, client
        self.timelines: dict[str, list] = {}  # room id -> nio events in arrival order
        self.to_device_events: list = []  # every to-device event, decrypted when it was Olm
        self._seen: set[str] = set()
        self._changed = asyncio.Condition()
        self._crypto = asyncio.Lock()  # key query / claim / share never run twice at once
        self._synced = False
        self._task: asyncio.Task | None = None
        self._closed = False

    # --- lifecycle -------------------------------------------------------------------------
    @classmethod
    async def login(cls, homeserver: str, user_id: str, password: str, store_dir: Path) -> "Clinician":
        store_dir = Path(store_dir)
        store_dir.mkdir(parents=True, exist_ok=True)
        client = AsyncClient(homeserver, user_id, store_path=str(store_dir), config=AsyncClientConfig(
            encryption_enabled=True, store_sync_tokens=True, request_timeout=30, max_timeouts=3))
        response = await client.login(password, device_name="clinicien de test")
        if not isinstance(response, LoginResponse):
            await client.close()
            raise AssertionError(f"connexion de {user_id} refusée : {response}")
        self = cls(user_id, password, client)
        self._task = asyncio.create_task(self._sync_loop(), name=f"sync {user_id}")
        try:
            await self._wait(lambda: self._synced and client.olm.account.shared, 20,
                             lambda: f"{user_id}: clés du compte olm jamais publiées")
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.client.close()

    # --- the sync loop -----------------------------------------------------------------------
    async def _sync_loop(self) -> None:
        first = True
        while True:
            try:
                response = await self.client.sync(timeout=0 if first else SYNC_TIMEOUT_MS,
                                                  sync_filter=SYNC_FILTER, full_state=first or None)
                if isinstance(response, SyncResponse):
                    first = False
                    self._record(response)
                else:
                    log.warning("%s: sync refusée : %s", self.user_id, response)
                    await asyncio.sleep(0.3)
                async with self._crypto:
                    await self._housekeeping()
                self._synced = not first
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: erreur dans la boucle de sync (on continue)", self.user_id)
                await asyncio.sleep(0.3)
            async with self._changed:
                self._changed.notify_all()

    async def _housekeeping(self) -> None:
        """What sync_forever does between two syncs."""
        c = self.client
        if c.should_upload_keys:
            await c.keys_upload()
        if c.should_query_keys:
            await c.keys_query()
            self._trust_everyone()
        if c.should_claim_keys:
            await c.keys_claim(c.get_users_for_key_claiming())
        await c.send_to_device_messages()

    def _record(self, response: SyncResponse) -> None:
        for ev in response.to_device_events:
            self.to_device_events.append(ev)
        for room_id, info in response.rooms.join.items():
            timeline = self.timelines.setdefault(room_id, [])
            for ev in info.timeline.events:
                try:
                    if ev.event_id in self._seen:
                        continue
                    self._seen.add(ev.event_id)
                    if isinstance(ev, MegolmEvent):
                        ev.room_id = room_id
                    timeline.append(ev)
                except Exception:
                    log.exception("%s: événement ignoré dans %s : %r", self.user_id, room_id, ev)
        if response.to_device_events:
            self._retry_undecryptable()

    def _retry_undecryptable(self) -> None:
        """A room key can arrive after the message it opens: decrypt again, in place."""
        for timeline in self.timelines.values():
            for i, ev in enumerate(timeline):
                if isinstance(ev, MegolmEvent):
                    try:
                        timeline[i] = self.client.decrypt_event(ev)
                    except EncryptionError:
                        pass
                    except Exception:
                        log.exception("%s: déchiffrement de %s", self.user_id, ev.event_id)

    def _trust_everyone(self) -> None:
        """Tests are not about trust: every device seen is verified (before any key is shared)."""
        for device in list(self.client.device_store):
            if not device.verified and not device.deleted and device.id != self.client.device_id:
                self.client.verify_device(device)

    async def _wait(self, predicate: Callable[[], object], timeout: float, describe: Callable[[], str]):
        """The first truthy value of predicate(), re-evaluated after every sync."""
        found = None

        def ready():
            nonlocal found
            if self._task is not None and self._task.done():
                raise AssertionError(f"{self.user_id}: la boucle de sync s'est arrêtée")
            found = predicate()
            return bool(found)

        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(ready), timeout)
        except (asyncio.TimeoutError, TimeoutError):
            raise AssertionError(describe()) from None
        return found

    # --- rooms ---------------------------------------------------------------------------------
    async def create_room(self, invite: list[str] = (), encrypted: bool = True, is_direct: bool = False,
                          name: str | None = None) -> str:
        response = await self.client.room_create(
            name=name, invite=list(invite), is_direct=is_direct, preset=RoomPreset.private_chat,
            initial_state=[EnableEncryptionBuilder().as_dict()] if encrypted else [])
        if isinstance(response, RoomCreateError):
            raise AssertionError(f"création de salon refusée : {response}")
        await self._room(response.room_id, encrypted=encrypted)
        return response.room_id

    async def join(self, room_id: str) -> None:
        response = await self.client.join(room_id)
        if isinstance(response, JoinError):
            raise AssertionError(f"{self.user_id} ne peut pas rejoindre {room_id} : {response}")
        await self._room(room_id)

    async def _room(self, room_id: str, encrypted: bool = False, timeout: float = 20) -> MatrixRoom:
        """The room once this client's sync has seen it joined (and encrypted, if asked)."""
        def ready():
            room = self.client.rooms.get(room_id)
            return room if room is not None and (room.encrypted or not encrypted) else None
        return await self._wait(ready, timeout, lambda: f"{self.user_id}: salon {room_id} jamais synchronisé")

    async def wait_for_invite(self, timeout: float = 20,
                              predicate: Callable[[MatrixInvitedRoom], bool] | None = None) -> str:
        """The id of a pending invite (oldest first); predicate gets nio's MatrixInvitedRoom."""
        def pending():
            for room_id, room in self.client.invited_rooms.items():
                if predicate is None or predicate(room):
                    return room_id
        return await self._wait(pending, timeout, lambda: f"{self.user_id}: aucune invitation reçue "
                                f"(en attente : {list(self.client.invited_rooms)})")

    async def wait_joined(self, room_id: str, user_id: str, timeout: float = 20) -> None:
        def joined():
            room = self.client.rooms.get(room_id)
            return room is not None and user_id in room.users and user_id not in room.invited_users
        await self._wait(joined, timeout, lambda: f"{self.user_id}: {user_id} n'a pas rejoint {room_id}")

    # --- sending -------------------------------------------------------------------------------
    async def send_text(self, room_id: str, body: str, *, formatted_body: str | None = None,
                        extra_content: dict | None = None) -> str:
        content = {"msgtype": "m.text", "body": body}
        if formatted_body is not None:
            content.update(format="org.matrix.custom.html", formatted_body=formatted_body)
        content.update(extra_content or {})
        return await self._send_event(room_id, "m.room.message", content)

    async def react(self, room_id: str, event_id: str, key: str) -> str:
        """An m.reaction annotation, encrypted in encrypted rooms as Element does."""
        relation = {"rel_type": "m.annotation", "event_id": event_id, "key": key}
        return await self._send_event(room_id, "m.reaction", {"m.relates_to": relation})

    async def vote(self, room_id: str, poll_event_id: str, answer_ids: list[str]) -> str:
        """A poll vote as Element sends it (matrix-js-sdk PollResponseEvent.ts: unstable type,
        `m.reference` to the start, the chosen answer ids)."""
        content = {"m.relates_to": {"rel_type": "m.reference", "event_id": poll_event_id},
                   "org.matrix.msc3381.poll.response": {"answers": answer_ids}}
        return await self._send_event(room_id, "org.matrix.msc3381.poll.response", content)

    def events_of_type(self, room_id: str, event_type: str) -> list[ReceivedMessage]:
        """Non-message events (polls) decrypted in the room, as ReceivedMessage (msgtype = type)."""
        found = []
        for ev in self.timelines.get(room_id, []):
            source = getattr(ev, "source", {}) or {}
            if source.get("type") == event_type or getattr(ev, "type", None) == event_type:
                content = source.get("content", {})
                found.append(ReceivedMessage(ev.event_id, ev.sender, event_type, content.get("body", ""), None,
                                             content, bool(getattr(ev, "decrypted", False)), ev.server_timestamp))
        return found

    async def wait_for_event(self, room_id: str, event_type: str, *, predicate=None,
                             timeout: float = 20) -> ReceivedMessage:
        def match():
            return next((m for m in self.events_of_type(room_id, event_type)
                         if predicate is None or predicate(m)), None)
        return await self._wait(match, timeout, lambda: f"{self.user_id}: aucun {event_type} dans {room_id} "
                                                        f"en {timeout} s")

    async def download_decrypted(self, message: ReceivedMessage) -> bytes:
        """The bytes of an encrypted attachment (m.file / m.image with a `file` object)."""
        file_info = message.content["file"]
        response = await self.client.download(mxc=file_info["url"])
        assert hasattr(response, "body"), f"téléchargement impossible : {response}"
        return decrypt_attachment(response.body, file_info["key"]["k"], file_info["hashes"]["sha256"],
                                  file_info["iv"])

    async def _send_event(self, room_id: str, event_type: str, content: dict) -> str:
        room = await self._room(room_id)
        if room.encrypted:
            async with self._crypto:
                await self._refresh_keys(room)
                if self.client.olm.should_share_group_session(room_id):
                    await self.client.share_group_session(room_id, ignore_unverified_devices=True)
                event_type, content = self.client.encrypt(room_id, event_type, content)
        path = f"/_matrix/client/v3/rooms/{quote(room_id)}/send/{quote(event_type)}/{uuid4().hex}"
        return (await self.request_json("PUT", path, content))["event_id"]

    async def _refresh_members(self, room: MatrixRoom) -> None:
        """The member list as the server has it now, invitees included (Element shares with them)."""
        chunk = await self.request_json("GET", f"/_matrix/client/v3/rooms/{quote(room.room_id)}/members")
        for source in chunk.get("chunk", []):
            event = Event.parse_event(source)
            if isinstance(event, RoomMemberEvent):
                room.handle_membership(event)
        room.members_synced = True
        self.client.olm.update_tracked_users(room)

    async def _refresh_keys(self, room: MatrixRoom) -> None:
        """Members and devices as of now, so a device that joined a moment ago gets the room key.

        nio only rotates the outbound session when *its sync* sees a membership change or a device
        list change; a member whose join is not synced yet, or whose devices were already known,
        would be left out. Rotate whenever a current device was not given the current key.
        """
        c = self.client
        await self._refresh_members(room)
        if c.should_query_keys:
            await c.keys_query()
        self._trust_everyone()
        session = c.olm.outbound_group_sessions.get(room.room_id)
        if session is None or not session.shared:
            return
        covered = session.users_shared_with | session.users_ignored
        wanted = {(u, d.id) for u in room.users for d in c.device_store.active_user_devices(u)}
        departed = {u for u, _ in session.users_shared_with} - set(room.users)
        if wanted - covered or departed:
            c.invalidate_outbound_session(room.room_id)

    async def send_to_device(self, event_type: str, messages: dict[str, dict[str, dict]]) -> None:
        path = f"/_matrix/client/v3/sendToDevice/{quote(event_type)}/{uuid4().hex}"
        await self.request_json("PUT", path, {"messages": messages})

    async def request_json(self, method: str, path: str, body: dict | None = None) -> dict:
        headers = {"Authorization": f"Bearer {self.client.access_token}"}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body)
        async with await self.client.send(method, path, data=data, headers=headers) as response:
            text = await response.text()
            try:
                payload = json.loads(text) if text else {}
            except ValueError:
                payload = {"error": text[:200]}
            if not 200 <= response.status < 300:
                raise MatrixError(method, path, response.status, payload)
            return payload

    # --- reading -------------------------------------------------------------------------------
    def timeline(self, room_id: str) -> list:
        return list(self.timelines.get(room_id, []))

    def messages(self, room_id: str) -> list[ReceivedMessage]:
        return [ReceivedMessage.of(ev) for ev in self.timelines.get(room_id, []) if isinstance(ev, RoomMessage)]

    def undecryptable(self, room_id: str) -> list[MegolmEvent]:
        return [ev for ev in self.timelines.get(room_id, []) if isinstance(ev, MegolmEvent)]

    async def wait_for_message(self, room_id: str, *, sender: str | None = None,
                               predicate: Callable[[ReceivedMessage], bool] | None = None,
                               after_event: str | None = None, timeout: float = 20) -> ReceivedMessage:
        def match():
            events = self.timelines.get(room_id, [])
            if after_event is not None:
                ids = [ev.event_id for ev in events]
                if after_event not in ids:
                    return None
                events = events[ids.index(after_event) + 1:]
            for ev in events:
                if isinstance(ev, RoomMessage) and (sender is None or ev.sender == sender):
                    message = ReceivedMessage.of(ev)
                    if predicate is None or predicate(message):
                        return message
        return await self._wait(match, timeout, lambda: self._describe_miss(room_id, sender, after_event, timeout))

    def _describe_miss(self, room_id: str, sender, after_event, timeout) -> str:
        lines = [f"{self.user_id}: aucun message attendu dans {room_id} en {timeout} s "
                 f"(sender={sender}, after_event={after_event}); reçus :"]
        lines += [f"  {m.event_id} {m.sender} {m.msgtype} {m.body[:100]!r}" for m in self.messages(room_id)]
        lines += [f"  {ev.event_id} {ev.sender} INDÉCHIFFRABLE (session {ev.session_id})"
                  for ev in self.undecryptable(room_id)]
        if len(lines) == 1:
            lines.append("  (rien)")
        return "\n".join(lines)
