"""From a recorded inbox event to its effect. Each event is handled in one transaction."""
from __future__ import annotations

import logging
import uuid
from contextvars import ContextVar

from nio import JoinError, ToDeviceMessage
from nio.crypto.attachments import decrypt_attachment
from sqlalchemy.orm.exc import StaleDataError

from commands import dialogue
from commands.arguments import ParseContext
from commands.registry import CommandNotFound, UsageError
from domain.clock import wall_ms
from domain.markup import literal
from rooms.advertise import advertise_commands
from rooms.context import CommandContext, Refusal
from rooms.directory_import import import_directory
from rooms.services import Services
from storage.models import RoomRecord
from storage.repositories import IncomingEvent, mark_event

log = logging.getLogger("cercle.dispatch")

# What the event being dispatched turned out to be, for the metrics: {"command": declared name or
# None for an unknown word, "outcome": see bot.metrics.OUTCOMES}. Empty when it was no command.
_COMMAND: ContextVar[dict | None] = ContextVar("command", default=None)


def _note(command: str | None, outcome: str) -> None:
    noted = _COMMAND.get()
    if noted is not None:
        noted.update(command=command, outcome=outcome)


def command_context(services: Services, session, room_id: str, room_kind: str, sender: str,
                    event_id: str) -> CommandContext:
    """What a handler gets: the declared services and this event's transaction, nothing of the adapter."""
    return CommandContext(services=services, session=session, room_id=room_id, room_kind=room_kind,
                          sender=sender, event_id=event_id, now=services.clock.now())


async def dispatch(bot, event: IncomingEvent, attempts: int = 3) -> bool:
    """Handle `event` in one transaction; True if it was a command (answered, refused or failed)."""
    noted: dict = {}
    token = _COMMAND.set(noted)
    try:
        await _dispatch(bot, event, attempts)
    finally:
        _COMMAND.reset(token)
    if noted:
        bot.metrics.command(noted["command"], noted["outcome"])
    return bool(noted)


async def _dispatch(bot, event: IncomingEvent, attempts: int) -> None:
    handler = HANDLERS.get(event.kind)
    try:
        async with bot.store.session.begin() as session:
            if handler is not None:
                await handler(bot, session, event)
            await _protect_identity(bot, session, event)
            await _mark(session, event.event_id, "handled", bot.clock.now())
    except StaleDataError:
        # A timer changed the same request meanwhile: nothing was written, handle it again on fresh data.
        if attempts > 1:
            return await _dispatch(bot, event, attempts - 1)
        await _fail(bot, event, "conflit d'écriture répété")
    except Refusal as refusal:
        noted = _COMMAND.get()
        if noted and noted["outcome"] == "ok":
            noted["outcome"] = "refusee"
        async with bot.store.session.begin() as session:
            ctx = bot.context(session, event.room_id, "", event.sender, event.event_id)
            ctx.reply_privately = (getattr(refusal, "private", False)
                                   or await _identity_in_shared_room(bot, session, event))
            if getattr(refusal, "dialogue_id", None) is not None:  # a guided command refused at its ✅
                await dialogue.end_after_refusal(ctx, refusal.dialogue_id)
                ctx.reply(refusal.text + "\n\nRien n'a été enregistré ; le dialogue est terminé.")
            else:
                ctx.reply(refusal.text)
            await _protect_identity(bot, session, event)
            await _mark(session, event.event_id, "handled", bot.clock.now())
    except Exception as e:
        log.exception("échec du traitement de %s", event.event_id)
        await _fail(bot, event, type(e).__name__)  # not the message: it may quote clinical input


async def _fail(bot, event: IncomingEvent, error: str) -> None:
    noted = _COMMAND.get()
    if noted:
        noted["outcome"] = "erreur"
    async with bot.store.session.begin() as session:
        if event.kind == "message":
            ctx = bot.context(session, event.room_id, "", event.sender, event.event_id)
            ctx.reply_privately = await _identity_in_shared_room(bot, session, event)
            ctx.reply("❌ Une erreur interne m'a empêché de traiter cette commande. Rien n'a été "
                      "enregistré ; réessayez, et prévenez les coordinateurs si cela se reproduit.")
        await _protect_identity(bot, session, event)
        await _mark(session, event.event_id, "failed", bot.clock.now(), error=error[:500])


async def _identity_in_shared_room(bot, session, event: IncomingEvent) -> bool:
    """A command carrying a patient's identity, typed anywhere but the sender's direct chat with the bot."""
    if event.kind != "message":
        return False
    known = session.info.setdefault("identity_in_shared_room", {})  # asked twice per command
    if event.event_id not in known:
        kind = await room_kind(bot, await session.get(RoomRecord, event.room_id))
        body = event.payload.get("body", "")
        cmd = None if kind == "direct" else bot.registry.addressed_command(body, direct=False)
        # The identity travels in the options (nom=…, naissance=…): a bare `!patient nouveau` holds none.
        known[event.event_id] = cmd is not None and cmd.carries_identity and "=" in body
    return known[event.event_id]


async def _protect_identity(bot, session, event: IncomingEvent) -> None:
    """Room history is kept for every member, present and future: redact the identity out of it
    (the bot has the power to in the rooms it governs), and say so in one line."""
    if not await _identity_in_shared_room(bot, session, event):
        return
    ctx = bot.context(session, event.room_id, "", event.sender, event.event_id)
    ctx.queue("redact", event.room_id, {"event_id": event.event_id, "reason": "identité de patient dans un salon partagé"})
    ctx.send(event.room_id, f"🔒 J'ai effacé le message de {event.sender} : il contenait l'identité d'un patient, "
                            "et l'historique de ce salon reste lisible par tous ses membres. La réponse est dans "
                            "votre conversation directe avec moi ; écrivez-y la prochaine fois.",
             mentions={event.sender: event.sender})


async def _mark(session, event_id: str, status: str, now, error: str | None = None) -> None:
    await mark_event(session, event_id, status, now, error)


async def room_kind(bot, record) -> str:
    """patient | coordination | direct | other; a two-person room with the bot counts as direct."""
    if record is None:
        return "other"
    if record.kind in ("patient", "coordination", "direct"):
        return record.kind
    room = bot.client.rooms.get(record.room_id)
    if room is None or not (room.members_synced or (room.summary and room.summary.joined_member_count)):
        # After a start the sync brings a room's members only as they change (no full state):
        # read them once (the answer needs them anyway to be encrypted for the room).
        room = await bot.outbox.room(record.room_id)
    if room is not None and room.joined_count == 2:
        return "direct"
    return record.kind


async def handle_message(bot, session, event: IncomingEvent) -> None:
    record = await session.get(RoomRecord, event.room_id)
    # Held for the transaction: the session's identity map keeps objects only while referenced,
    # and the handler's checks look the room up again (one query each otherwise).
    session.info["room_record"] = record
    kind = await room_kind(bot, record)
    body = event.payload.get("body", "")
    ctx = bot.context(session, event.room_id, kind, event.sender, event.event_id)
    content = event.payload.get("content") or {}
    if await dialogue.take_message(ctx, _without_reply_fallback(body), content):
        return  # an answer to the sender's guided command here (commands.dialogue)
    if await _handled_as_reply(bot, ctx, event):
        return
    parse_ctx = ParseContext(now=ctx.now, tz=bot.services.tz, flows=bot.services.flows)
    try:
        invocation = bot.registry.parse(body, parse_ctx, direct=(kind == "direct"))
    except CommandNotFound as e:
        _note(None, "usage")  # the typed word is never a label
        hint = f" Vouliez-vous dire {' ou '.join('`!' + s + '`' for s in e.suggestions)} ?" if e.suggestions else ""
        ctx.reply(f"⚠️ Commande inconnue : « {literal(e.word)} ».{hint}\nTapez `!aide` pour la liste des commandes.")
        return
    except UsageError as e:
        _note(e.command.name, "usage")
        ctx.reply_privately = await _identity_in_shared_room(bot, session, event)  # the error may quote it
        if await dialogue.start(ctx, body, content, direct=(kind == "direct")):
            return  # only required arguments were missing: the bot asks for them
        ctx.reply(bot.registry.usage_error_text(e.command, e.markup))
        return
    if invocation is None:
        return
    cmd = invocation.command
    _note(cmd.name, "ok")  # changed below if refused or failed
    ctx.reply_privately = await _identity_in_shared_room(bot, session, event)
    if cmd.requires:
        refusal = await bot.services.directory.refusal(session, event.sender, cmd.requires)
        if refusal:
            _note(cmd.name, "refusee")
            ctx.reply(refusal)
            await leave_if_no_member_left(bot, session, record)
            return
    refusal = await dialogue.place_refusal(ctx, cmd)
    if refusal:
        _note(cmd.name, "refusee")
        ctx.reply(refusal)
        return
    await dialogue.run(ctx, invocation)  # the same checks and handler a confirmed dialogue runs


def _without_reply_fallback(body: str) -> str:
    """Older clients quote the answered message (« > <@bot> … ») before the reply itself."""
    lines = body.split("\n")
    while lines and lines[0].startswith(">"):
        lines.pop(0)
    return "\n".join(lines).strip()


async def _handled_as_reply(bot, ctx: CommandContext, event: IncomingEvent) -> bool:
    """A reply to one of the bot's messages (or a message in its thread) that is not a command
    goes to the REPLY_HANDLERS entry of the answered message's ref, which may take it."""
    relates = (event.payload.get("content") or {}).get("m.relates_to") or {}
    answered = [(relates.get("m.in_reply_to") or {}).get("event_id")]
    if relates.get("rel_type") == "m.thread":
        answered.append(relates.get("event_id"))
    text = _without_reply_fallback(event.payload.get("body", ""))
    if not bot.reply_handlers or not text or text.startswith(("!", "/")):
        return False
    for event_id in filter(None, answered):
        ref = await bot.store.ref_of_sent_event(ctx.session, event_id)
        handler = bot.reply_handlers.get(ref.split(":", 1)[0]) if ref else None
        if handler is not None and await handler(ctx, ref, text):
            return True
    return False


async def handle_poll_response(bot, session, event: IncomingEvent) -> None:
    """A vote: the POLL_HANDLERS entry named by the poll's ref prefix decides what it means."""
    ref = await bot.store.ref_of_sent_event(session, event.payload["poll"])
    handler = bot.poll_handlers.get(ref.split(":", 1)[0]) if ref else None
    if handler is None:
        return
    record = await session.get(RoomRecord, event.room_id)
    ctx = bot.context(session, event.room_id, await room_kind(bot, record), event.sender, event.event_id)
    await handler(ctx, ref, list(event.payload.get("answers") or []))


async def handle_undecryptable(bot, session, event: IncomingEvent) -> None:
    """An undecryptable event recorded as pending (the sync records them as waiting_key, see
    SyncIntake.retry_waiting_keys): run it if its key is here by now, else ask for it and tell the sender."""
    decrypted = await bot.intake.decrypt_later(event)
    if decrypted is not None:
        handler = HANDLERS.get(decrypted.kind)
        if handler is not None:
            await handler(bot, session, decrypted)
        return
    try:
        await request_key_from_sender(bot.client, event)
    except Exception as e:  # an already pending request is fine; the French answer matters more
        log.info("demande de clé non envoyée : %s", e)
    bot.metrics.undecryptable.inc()
    await tell_undecryptable(bot.services, session, event)


async def tell_undecryptable(services: Services, session, event: IncomingEvent) -> None:
    """Tell the sender, in French, that their message could not be read (queued in `session`)."""
    ctx = command_context(services, session, event.room_id, "", event.sender, event.event_id)
    ctx.reply(
        f"🔒 {event.sender} : je n'ai pas pu déchiffrer votre message (clé de chiffrement non reçue). "
        "J'ai demandé la clé à votre appareil. Si cela se reproduit, vérifiez dans Element que "
        "l'envoi aux sessions non vérifiées n'est pas bloqué, puis renvoyez votre message.",
        mentions={event.sender: event.sender})


async def request_key_from_sender(client, event: IncomingEvent) -> None:
    """m.room_key_request to the sender's device (nio would only ask the bot's own devices)."""
    source = event.payload["source"]
    content = source.get("content", {})
    request = {
        "action": "request", "requesting_device_id": client.device_id, "request_id": uuid.uuid4().hex,
        "body": {"algorithm": content.get("algorithm"), "room_id": event.room_id,
                 "sender_key": content.get("sender_key"), "session_id": content.get("session_id")},
    }
    device = content.get("device_id") or "*"
    await client.to_device(ToDeviceMessage("m.room_key_request", event.sender, device, request))


async def handle_withheld(bot, session, event: IncomingEvent) -> None:
    code = event.payload.get("code", "")
    reasons = {
        "m.unverified": "votre application ne fait pas confiance à l'appareil de Cercle (appareil non vérifié)",
        "m.blacklisted": "l'appareil de Cercle est bloqué dans votre application",
        "m.unauthorised": "votre application estime que Cercle n'a pas le droit de lire ce message",
        "m.unavailable": "la clé n'est plus disponible sur votre appareil",
        "m.no_olm": "aucune session chiffrée n'a pu être établie avec l'appareil de Cercle",
    }
    reason = reasons.get(code, f"motif « {literal(code or 'non précisé')} »")
    ctx = bot.context(session, event.room_id, "", event.sender, event.event_id)
    ctx.send(event.room_id,
             f"🔒 {event.sender} : votre application a refusé de me transmettre la clé de votre message : "
             f"{reason}. Je ne peux donc pas le lire.\n\nÀ vérifier dans Element : Paramètres → Sécurité et "
             "confidentialité. Si l'option « N'envoyer des messages chiffrés qu'aux sessions vérifiées » est "
             "active, vérifiez le compte de Cercle (son appareil est signé par son identité) ou désactivez "
             "l'option pour ce salon, puis renvoyez votre message.",
             mentions={event.sender: event.sender})


async def handle_invite(bot, session, event: IncomingEvent) -> None:
    if not await bot.services.directory.accepts_invite_from(session, event.sender):
        log.info("invitation de %s refusée (hors annuaire) pour %s", event.sender, event.room_id)
        await bot.client.room_leave(event.room_id)
        return
    response = await bot.client.join(event.room_id)
    if isinstance(response, JoinError):
        log.warning("impossible de rejoindre %s : %s", event.room_id, response.message)
        return
    now_ms = wall_ms()
    kind = "direct" if event.payload.get("is_direct") else "other"
    await bot.store.save_room(event.room_id, kind, now_ms, direct_with=event.sender if kind == "direct" else None,
                              session=session)
    await advertise_commands(bot.services, session, event.room_id, kind)


async def handle_membership(bot, session, event: IncomingEvent) -> None:
    await leave_if_no_member_left(bot, session, await session.get(RoomRecord, event.room_id))


async def leave_if_no_member_left(bot, session, record: RoomRecord | None) -> None:
    """In a room the bot was invited to, it stays only while a directory member is there (issue 8):
    never alone with people outside the CPTS. Patient and coordinators' rooms are the bot's own."""
    if record is None or record.kind in ("patient", "coordination", "left"):
        return
    response = await bot.client.joined_members(record.room_id)  # the server's word, not the lazy-loaded sync
    members = [m.user_id for m in getattr(response, "members", None) or []]
    if not members:
        return  # could not ask: decide at the next membership change
    for user_id in members:
        if user_id != bot.user_id and await bot.services.directory.get(session, user_id) is not None:
            return
    log.info("plus aucun membre de l'annuaire dans %s : le bot quitte le salon", record.room_id)
    bot.store.queue(session, "leave", record.room_id, {}, bot.clock.now())
    record.kind = "left"


async def handle_reaction(bot, session, event: IncomingEvent) -> None:
    handler = bot.reaction_handlers.get(event.payload.get("key"))
    if handler is None:
        return
    record = await session.get(RoomRecord, event.room_id)
    ctx = bot.context(session, event.room_id, await room_kind(bot, record), event.sender, event.event_id)
    await handler(ctx, event.payload.get("reacts_to"))


async def handle_file(bot, session, event: IncomingEvent) -> None:
    """A CSV posted by a coordinator in the coordinators' room is a directory import."""
    record = await session.get(RoomRecord, event.room_id)
    name = event.payload.get("body", "")
    if record is None or record.kind != "coordination" or not name.lower().endswith(".csv"):
        return
    ctx = bot.context(session, event.room_id, "coordination", event.sender, event.event_id)
    refusal = await bot.services.directory.refusal(session, event.sender, "coordinateur")
    if refusal:
        ctx.reply(refusal)
        return
    content = event.payload["content"]
    file_info = content.get("file")  # encrypted attachment
    url = file_info["url"] if file_info else content.get("url")
    response = await bot.client.download(mxc=url)
    data = getattr(response, "body", None)
    if data is None:
        ctx.reply(f"⚠️ Je n'ai pas pu télécharger « {literal(name)} » : {getattr(response, 'message', response)}. "
                  "Rien n'a été modifié ; renvoyez le fichier.")
        return
    if file_info:
        data = decrypt_attachment(data, file_info["key"]["k"], file_info["hashes"]["sha256"], file_info["iv"])
    ctx.reply(await import_directory(ctx, data))


HANDLERS = {
    "file": handle_file,
    "message": handle_message,
    "undecryptable": handle_undecryptable,
    "withheld": handle_withheld,
    "invite": handle_invite,
    "reaction": handle_reaction,
    "poll_response": handle_poll_response,
    "membership": handle_membership,
}
