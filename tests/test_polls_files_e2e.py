"""Polls, votes, replies and encrypted attachments on the wire: the primitives the questionnaires,
the guided commands and the bordereaux build on (brief: polls with a text fallback; attachments
only as encrypted files)."""
from __future__ import annotations

import asyncio

import pytest

from domain.polls import POLL_END, POLL_START
from tests.test_bot_e2e import room_with_bot

pytestmark = pytest.mark.synapse

PDF = b"%PDF-1.4\n% Cercle test\n" + bytes(range(256)) * 40


async def test_a_poll_is_voted_a_reply_is_routed_and_a_file_arrives_encrypted(harness, people):
    dr = await people()
    room = await room_with_bot(dr, harness)
    bot = harness.bot
    votes: list[tuple[str, str, list[str]]] = []
    replies: list[tuple[str, str, str]] = []

    async def on_vote(ctx, ref, answers):
        votes.append((ctx.sender, ref, answers))
        ctx.end_poll(ctx.room_id, ref, "Réponse enregistrée : Oui")
        ctx.send_file(ctx.room_id, "compte-rendu.pdf", PDF, "application/pdf", body="compte-rendu.pdf")

    async def on_reply(ctx, ref, text):
        replies.append((ctx.sender, ref, text))
        ctx.reply(f"Bien reçu : {text}")
        return True

    bot.poll_handlers["essai"] = on_vote
    bot.reply_handlers["essai"] = on_reply
    async with bot.store.session.begin() as session:
        ctx = bot.context(session, room, "other", bot.user_id, "")
        ctx.send_poll(room, "Le patient peut-il se déplacer ?", ["Oui", "Non", "Je ne sais pas"], ref="essai:1")
        ctx.send(room, "Une question ordinaire", ref="essai:2")
    bot._wake_worker.set()

    poll = await dr.wait_for_event(room, POLL_START)
    assert poll.encrypted
    start = poll.content[POLL_START]
    assert [a["org.matrix.msc1767.text"] for a in start["answers"]] == ["Oui", "Non", "Je ne sais pas"]
    assert "2. Non" in poll.content["org.matrix.msc1767.text"]

    await dr.vote(room, poll.event_id, ["1"])
    end = await dr.wait_for_event(room, POLL_END)
    assert end.content["m.relates_to"] == {"rel_type": "m.reference", "event_id": poll.event_id}
    assert votes == [(dr.user_id, "essai:1", ["1"])]

    attachment = await dr.wait_for_message(room, sender=harness.user_id, predicate=lambda m: m.msgtype == "m.file")
    assert "url" not in attachment.content, "an attachment is never a plain upload"
    assert attachment.content["info"]["mimetype"] == "application/pdf"
    assert await dr.download_decrypted(attachment) == PDF

    question = await dr.wait_for_message(room, sender=harness.user_id, predicate=lambda m: "ordinaire" in m.body)
    sent = await dr.send_text(room, "ok pour moi",
                              extra_content={"m.relates_to": {"m.in_reply_to": {"event_id": question.event_id}}})
    await dr.wait_for_message(room, sender=harness.user_id, predicate=lambda m: m.in_reply_to() == sent)
    assert replies == [(dr.user_id, "essai:2", "ok pour moi")]

    # A vote on a poll the bot did not send, and a reply to someone else's message: ignored.
    other = await dr.send_text(room, "message d'un humain")
    await dr.send_text(room, "réponse", extra_content={"m.relates_to": {"m.in_reply_to": {"event_id": other}}})
    await dr.vote(room, other, ["1"])
    await harness.idle()
    await asyncio.sleep(0.5)
    assert len(votes) == 1 and len(replies) == 1


async def test_a_file_reaches_a_professional_in_their_direct_chat(harness, people):
    nurse = await people("ide", "infirmier")
    bot = harness.bot
    async with bot.store.session.begin() as session:
        ctx = bot.context(session, "", "other", bot.user_id, "")
        ctx.send_file_direct(nurse.user_id, "releve.csv", "a;b\n1;2\n".encode("utf-8-sig"), "text/csv")
    bot._wake_worker.set()
    room = await nurse.wait_for_invite()
    await nurse.join(room)
    attachment = await nurse.wait_for_message(room, sender=harness.user_id, predicate=lambda m: m.msgtype == "m.file")
    assert (await nurse.download_decrypted(attachment)).decode("utf-8-sig") == "a;b\n1;2\n"
