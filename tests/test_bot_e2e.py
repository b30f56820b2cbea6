"""The foundation, end to end on a real Synapse with real E2EE clients."""
from __future__ import annotations

import asyncio

import pytest

from tests.bot_harness import BotHarness
from tests.clinician import Clinician

pytestmark = pytest.mark.synapse


async def room_with_bot(c: Clinician, harness: BotHarness, *, is_direct=False) -> str:
    room_id = await c.create_room(invite=[harness.user_id], is_direct=is_direct)
    await c.wait_joined(room_id, harness.user_id)
    return room_id


async def test_aide_answered_encrypted_with_both_prefixes(harness, people):
    dr = await people()
    room = await room_with_bot(dr, harness)
    for command in ("!aide", "/aide"):
        sent = await dr.send_text(room, command)
        reply = await dr.wait_for_message(room, sender=harness.user_id, after_event=sent,
                                          predicate=lambda m: m.in_reply_to() == sent)
        assert reply.encrypted, "the answer must be end-to-end encrypted"
        assert reply.msgtype == "m.notice"
        assert "Commandes de Cercle" in reply.body
        assert "<strong>" in (reply.formatted_body or "")


async def test_direct_chat_needs_no_prefix_and_group_room_ignores_chatter(harness, people):
    dr = await people()
    direct = await room_with_bot(dr, harness, is_direct=True)
    sent = await dr.send_text(direct, "aide dec")
    reply = await dr.wait_for_message(direct, sender=harness.user_id, predicate=lambda m: m.in_reply_to() == sent)
    assert "Usage" in reply.body or "Je ne connais pas" in reply.body

    colleague = await people("ide", "infirmier")
    group = await room_with_bot(dr, harness)
    await dr.client.room_invite(group, colleague.user_id)
    await colleague.join(group)
    await dr.wait_joined(group, colleague.user_id)
    chatter = await dr.send_text(group, "bonjour à tous, réunion demain")
    probe = await dr.send_text(group, "!aide")
    await dr.wait_for_message(group, sender=harness.user_id, predicate=lambda m: m.in_reply_to() == probe)
    assert not [m for m in dr.messages(group) if m.in_reply_to() == chatter]


async def test_unknown_command_and_malformed_argument_get_french_usage(harness, people):
    dr = await people()
    room = await room_with_bot(dr, harness)
    sent = await dr.send_text(room, "!aidez")
    reply = await dr.wait_for_message(room, sender=harness.user_id, predicate=lambda m: m.in_reply_to() == sent)
    assert "Commande inconnue" in reply.body and "« aidez »" in reply.body
    assert "!aide" in reply.body  # the suggestion

    sent = await dr.send_text(room, "!aide dec en trop")
    reply = await dr.wait_for_message(room, sender=harness.user_id, predicate=lambda m: m.in_reply_to() == sent)
    assert "« en trop »" in reply.body and "Usage : !aide" in reply.body


async def test_commands_are_advertised_as_msc4332_state(harness, people):
    dr = await people()
    # A room where the bot may send state (moderator), as a team would set it up.
    created = await dr.request_json("POST", "/_matrix/client/v3/createRoom", {
        "preset": "private_chat", "invite": [harness.user_id],
        "initial_state": [{"type": "m.room.encryption", "state_key": "",
                           "content": {"algorithm": "m.megolm.v1.aes-sha2"}}],
        "power_level_content_override": {"users": {harness.user_id: 50}}})
    room = created["room_id"]
    await dr.wait_joined(room, harness.user_id)
    sent = await dr.send_text(room, "!aide")
    await dr.wait_for_message(room, sender=harness.user_id, predicate=lambda m: m.in_reply_to() == sent)
    state = await dr.request_json(
        "GET", f"/_matrix/client/v3/rooms/{room}/state/org.matrix.msc4332.commands/{harness.user_id}")
    syntaxes = [c["syntax"] for c in state["commands"]]
    assert "aide {commande} {sous_commande}" in syntaxes
    assert state["sigil"] == "!"

    # Where the bot has no power to send state, it does not try (and says nothing in the room).
    plain = await room_with_bot(dr, harness)
    probe = await dr.send_text(plain, "!aide")
    await dr.wait_for_message(plain, sender=harness.user_id, predicate=lambda m: m.in_reply_to() == probe)
    await harness.idle()
    with pytest.raises(Exception, match="404"):
        await dr.request_json(
            "GET", f"/_matrix/client/v3/rooms/{plain}/state/org.matrix.msc4332.commands/{harness.user_id}")


async def test_restart_keeps_device_answers_once_and_catches_up(harness, people):
    dr = await people()
    room = await room_with_bot(dr, harness)
    first = await dr.send_text(room, "!aide")
    await dr.wait_for_message(room, sender=harness.user_id, predicate=lambda m: m.in_reply_to() == first)
    device_before = harness.bot.device_id

    await harness.stop()
    while_down = await dr.send_text(room, "!aide aide")
    await harness.start()
    assert harness.bot.device_id == device_before, "a restart must reuse the same device"

    reply = await dr.wait_for_message(room, sender=harness.user_id, predicate=lambda m: m.in_reply_to() == while_down)
    assert "!aide" in reply.body
    await harness.idle()
    await asyncio.sleep(1.5)  # leave time for a duplicate to show up, if the bot were to send one
    replies_to_first = [m for m in dr.messages(room) if m.in_reply_to() == first]
    replies_to_down = [m for m in dr.messages(room) if m.in_reply_to() == while_down]
    assert len(replies_to_first) == 1 and len(replies_to_down) == 1


async def test_many_messages_while_down_are_all_answered(harness, people):
    """More messages than the sync timeline holds: the gap is paged back, nothing is skipped."""
    dr = await people()
    room = await room_with_bot(dr, harness)
    warm = await dr.send_text(room, "!aide")
    await dr.wait_for_message(room, sender=harness.user_id, predicate=lambda m: m.in_reply_to() == warm)
    await harness.stop()
    sent = [await dr.send_text(room, "!aide aide") for _ in range(harness.config().sync.timeline_limit + 5)]
    await harness.start()
    for event_id in sent:
        await dr.wait_for_message(room, sender=harness.user_id, predicate=lambda m, e=event_id: m.in_reply_to() == e,
                                  timeout=40)


async def test_backlog_from_before_the_bot_joined_is_ignored(harness, people):
    dr = await people()
    room = await dr.create_room()
    old = await dr.send_text(room, "!aide")
    await dr.client.room_invite(room, harness.user_id)
    await dr.wait_joined(room, harness.user_id)
    probe = await dr.send_text(room, "!aide aide")
    await dr.wait_for_message(room, sender=harness.user_id, predicate=lambda m: m.in_reply_to() == probe)
    assert not [m for m in dr.messages(room) if m.in_reply_to() == old]


async def test_undecryptable_message_gets_a_french_answer_and_a_key_request(harness, people):
    harness.bot.config.sync.key_wait_s = 1  # the key never comes: no need to wait the default 2 minutes
    dr = await people()
    room = await room_with_bot(dr, harness)
    # A message encrypted with a room key the bot never received.
    olm = dr.client.olm
    olm.create_outbound_group_session(room)
    olm.outbound_group_sessions[room].shared = True  # pretend: the key is deliberately withheld
    payload = olm.group_encrypt(room, {"type": "m.room.message", "content": {"msgtype": "m.text", "body": "!aide"}})
    sent = (await dr.request_json("PUT", f"/_matrix/client/v3/rooms/{room}/send/m.room.encrypted/undecryptable-1",
                                  payload))["event_id"]
    reply = await dr.wait_for_message(room, sender=harness.user_id, predicate=lambda m: m.in_reply_to() == sent)
    assert "pas pu déchiffrer" in reply.body and "demandé la clé" in reply.body
    assert dr.user_id in reply.content["m.mentions"]["user_ids"]
    requests = [e for e in dr.to_device_events if getattr(e, "source", {}).get("type") == "m.room_key_request"]
    assert any(r.source["content"].get("body", {}).get("session_id") == payload["session_id"] for r in requests)


async def test_a_crash_between_send_and_record_sends_once(harness, people):
    """The reply reached the homeserver but the bot died before writing it down: the restart
    sends it again with the same transaction id, and the homeserver deduplicates it."""
    dr = await people()
    room = await room_with_bot(dr, harness)
    died = asyncio.Event()

    async def die_before_recording(*args, **kwargs):
        died.set()
        raise RuntimeError("the process dies here")

    harness.bot.store.outbox_done = die_before_recording
    sent = await dr.send_text(room, "!aide")
    await asyncio.wait_for(died.wait(), 20)
    harness.task.cancel()  # no clean shutdown
    await asyncio.gather(harness.task, return_exceptions=True)
    await harness.bot.close()
    harness.bot = None

    await harness.start()
    await harness.idle()
    first = await dr.wait_for_message(room, sender=harness.user_id, predicate=lambda m: m.in_reply_to() == sent)
    await asyncio.sleep(1.5)
    replies = [m for m in dr.messages(room) if m.in_reply_to() == sent]
    assert len(replies) == 1
    async with harness.bot.store.session() as s:
        from sqlalchemy import select

        from storage.models import OutboxItem

        rows = (await s.scalars(select(OutboxItem).where(OutboxItem.status == "sent"))).all()
    assert first.event_id in [r.event_id for r in rows]  # the retried send got the original event back


async def bot_on_its_own_homeserver(tmp_path):
    """A Synapse this test may stop, a bot retrying every second, and a doctor's room with the bot
    (the bot already answered there, so it holds the room and its members' keys)."""
    from bot.local_synapse import LocalSynapse

    server = LocalSynapse.prepare(tmp_path / "hs")
    server.start()
    try:
        return await _bot_with_a_room(server, tmp_path)
    except BaseException:
        server.stop()
        raise


async def _bot_with_a_room(server, tmp_path):
    from tests.clinician import Clinician

    bot_user = server.register("cercle", "pw-bot")
    dr_user = server.register("dr", "pw-dr")
    h = BotHarness(server.url, bot_user, "pw-bot", tmp_path / "bot")
    h_config = h.config

    def fast_backoff():
        c = h_config()
        return c.model_copy(update={"sync": c.sync.model_copy(update={"max_backoff_s": 1.0})})

    h.config = fast_backoff
    await h.start()
    await h.enrol(dr_user)
    dr = await Clinician.login(server.url, dr_user, "pw-dr", tmp_path / "dr")
    room = await room_with_bot(dr, h)
    sent = await dr.send_text(room, "!aide")
    await dr.wait_for_message(room, sender=bot_user, predicate=lambda m: m.in_reply_to() == sent, timeout=30)
    await dr.close()
    return server, h, room, dr_user


async def test_reconnects_after_the_homeserver_comes_back(tmp_path):
    from tests.clinician import Clinician

    server, h, room, dr_user = await bot_on_its_own_homeserver(tmp_path)
    bot_user = h.user_id
    try:
        server.stop()  # the homeserver goes away for a while
        await asyncio.sleep(3)
        server.start()
        dr = await Clinician.login(server.url, dr_user, "pw-dr", tmp_path / "dr2")
        await dr.join(room)
        sent = await dr.send_text(room, "!aide")
        reply = await dr.wait_for_message(room, sender=bot_user, predicate=lambda m: m.in_reply_to() == sent,
                                          timeout=30)
        assert "Commandes de Cercle" in reply.body
        await dr.close()
        await h.stop()
    finally:
        server.stop()


async def test_an_outage_is_logged_once_per_change_not_once_per_retry(tmp_path, caplog):
    """Issue 9: a homeserver outage wrote a full traceback every second. Now: one line when it
    becomes unreachable (with the reason), one when it is back (with the outage's duration)."""
    import logging

    from rooms.messages import render

    server, h, room, _ = await bot_on_its_own_homeserver(tmp_path)
    try:
        caplog.set_level(logging.INFO, logger="cercle")
        caplog.clear()
        server.stop()
        # Something to send during the outage: the worker retries it every second or two.
        async with h.bot.store.session.begin() as session:
            h.bot.store.queue(session, "message", room, render("message écrit pendant la panne"), h.bot.clock.now())
        h.bot._wake_worker.set()
        await asyncio.sleep(8)  # several sync and send retries
        during = [r for r in caplog.records if r.name == "cercle" and r.levelno >= logging.INFO]
        assert 1 <= len(during) <= 2, [r.getMessage() for r in during]
        assert "injoignable" in during[0].getMessage() and not any(r.exc_info for r in during)

        server.start()
        await h.idle(timeout=30)  # the message went out once the homeserver was back
        assert not await h.bot.store.pending_outbox()
        for _ in range(100):  # the sync loop says it, at its next try
            back = [r.getMessage() for r in caplog.records if "de nouveau joignable" in r.getMessage()]
            if back:
                break
            await asyncio.sleep(0.1)
        assert len(back) == 1 and "d'interruption" in back[0], back
        await h.stop()
    finally:
        server.stop()
