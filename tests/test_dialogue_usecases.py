"""Guided commands (commands/dialogue.py, issue 17) in the middle tier: the real dispatch, parser and
handlers on a real store with a fake clock; what the bot asks is read back from the outbox."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from commands.arguments import ParseContext
from commands.dialogue import choices_of, example
from commands.registry import COORDINATION, DIRECT, PATIENT, Option, Param
from domain.clock import FakeClock
from domain.demandes import commenter, creer_demande
from domain.flows import load_flows
from domain.markup import unmark
from domain.permissions import Action, Actor, authorize
from domain.polls import POLL_START
from rooms.demandes import read
from storage.models import Demande, Dialogue, Patient
from tests.usecase import COORDINATION_ROOM, UseCases

CODE = "P-G7DQ"
MT = "@mt:cpts.test"
IDE = "@ide:cpts.test"
IDE2 = "@ide2:cpts.test"
COORD = "@coord:cpts.test"
KINE = "@kine:cpts.test"


async def _world(tmp_path, database_url: str | None = None) -> UseCases:
    uc = await UseCases.open(tmp_path / "bot", database_url, clock=FakeClock())
    await uc.enrol(MT, "medecin_generaliste", name="Paul Martin")
    await uc.enrol(IDE, "infirmier", name="Julie Petit")
    await uc.enrol(IDE2, "infirmier", name="Marc Durand")
    await uc.enrol(COORD, "autre", name="Claire Coord", roles=["coordinateur"])
    await uc.enrol(KINE, "masseur_kinesitherapeute", name="Kim Kiné")
    uc.room = await uc.patient(CODE, [MT, IDE], mt=MT)
    return uc


async def count(uc, stmt) -> int:
    async with uc.bot.store.session() as s:
        return await s.scalar(stmt)


def polls(sent):
    return [s for s in sent if s.action == "event" and s.content["type"] == POLL_START]


def texts(sent):
    return "\n".join(s.body for s in sent)


async def test_a_bare_dec_is_asked_in_a_thread_then_runs_as_typed_after_confirmation(tmp_path, database_url):
    uc = await _world(tmp_path, database_url)
    sent = await uc.say(MT, uc.room, "!dec")
    command_event = uc.last_event
    assert "je vous pose 3 questions" in texts(sent)
    question = sent[-1]
    assert question.content["m.relates_to"]["rel_type"] == "m.thread"
    assert question.content["m.relates_to"]["event_id"] == command_event
    assert "1/3 · Cible" in question.body and "Exemple : infirmier" in question.body
    thread = {"rel_type": "m.thread", "event_id": command_event}

    sent = await uc.say(MT, uc.room, "infirmier", relates_to=thread)
    poll = polls(sent)[0]
    assert poll.ref.endswith(":soins")
    answers = poll.content["content"]["org.matrix.msc3381.poll.start"]["answers"]
    assert answers[-1]["org.matrix.msc1767.text"] == "passer (facultatif)"
    visite = next(a["id"] for a in answers if a["org.matrix.msc1767.text"] == "Visite à domicile")
    poll_event = await uc.event_id_of(poll.ref, latest=True)
    sent = await uc.vote(IDE, uc.room, poll_event, [visite])  # someone else's vote: ignored
    assert sent == []
    sent = await uc.vote(MT, uc.room, poll_event, [visite])
    assert "3/3 · Commentaire" in texts(sent)
    ended = [s for s in sent if s.action == "poll_end"]
    assert ended and ended[0].content == {"poll_ref": poll.ref, "text": "Réponse retenue : Visite à domicile"}
    sent = await uc.vote(MT, uc.room, poll_event, ["1"])  # a second vote on an answered question: ignored
    assert sent == []
    sent = await uc.say(MT, uc.room, "pansement quotidien talon gauche", relates_to=thread)
    assert "Récapitulatif" in texts(sent) and "soins : Visite à domicile" in texts(sent)
    assert await count(uc, select(func.count()).select_from(Demande)) == 0  # nothing before ✅

    sent = await uc.say(MT, uc.room, "✅", relates_to=thread)
    assert "Demande n°1 créée (Visite à domicile → infirmier·e)" in texts(sent)
    assert await count(uc, select(func.count()).select_from(Demande)) == 1
    async with uc.bot.store.session() as s:
        row = await s.scalar(select(Dialogue))
        assert row.status == "done"
        assert b"pansement" not in row.answers_enc  # encrypted at rest


async def test_a_wrong_value_is_a_usage_error_not_a_dialogue(tmp_path):
    uc = await _world(tmp_path)
    sent = await uc.say(MT, uc.room, "!dec infirmier reponse=4x")
    assert "Usage" in texts(sent) and "je vous pose" not in texts(sent)
    assert await count(uc, select(func.count()).select_from(Dialogue)) == 0


async def test_a_wrong_answer_is_explained_and_asked_again(tmp_path):
    uc = await _world(tmp_path)
    await uc.say(MT, uc.room, "!rdv")
    sent = await uc.say(MT, uc.room, "hier soir")
    assert "⚠️" in texts(sent) and "Horaire" in texts(sent)
    sent = await uc.say(MT, uc.room, "demain 14h")
    assert polls(sent) and polls(sent)[0].ref.endswith(":lieu")
    sent = await uc.say(MT, uc.room, "2")  # the poll's numbered fallback, typed
    assert "Récapitulatif" in texts(sent) and "domicile" in texts(sent)


async def test_annuler_stops_and_expiry_says_so_and_nothing_is_written(tmp_path):
    uc = await _world(tmp_path)
    await uc.say(MT, uc.room, "!dec")
    sent = await uc.say(MT, uc.room, "annuler")
    assert "annulé : rien n'a été enregistré" in texts(sent)
    sent = await uc.say(MT, uc.room, "infirmier")  # the dialogue is over: conversation again
    assert sent == []

    await uc.say(MT, uc.room, "!dec")
    await uc.say(MT, uc.room, "infirmier")
    uc.clock.advance(timedelta(minutes=29))
    await uc.say(MT, uc.room, "passer")  # an answer gives the full time again
    sent = await uc.fire_due(timedelta(minutes=29))
    assert sent == []
    sent = await uc.fire_due(timedelta(minutes=2))
    assert "j'abandonne !declenchement" in texts(sent)
    assert await count(uc, select(func.count()).select_from(Demande)) == 0


async def test_two_rooms_do_not_mix_and_only_the_starter_answers(tmp_path):
    uc = await _world(tmp_path)
    dm = uc.direct_room(MT)
    await uc.say(MT, uc.room, "!rdv")
    sent = await uc.say(MT, dm, "refuser")  # bare in the direct chat: its own dialogue (motif)
    assert "Motif" in texts(sent)
    sent = await uc.say(IDE, uc.room, "demain 14h")  # not hers
    assert sent == []
    sent = await uc.say(MT, dm, "pas disponible")
    assert "Récapitulatif" in texts(sent) and "pas disponible" in texts(sent)
    sent = await uc.say(MT, uc.room, "demain 14h")
    assert polls(sent)  # the room's dialogue got it, at its own question


async def test_identity_typed_in_a_shared_room_is_redacted_and_the_summary_is_private(tmp_path, database_url):
    uc = await _world(tmp_path, database_url)
    sent = await uc.say(COORD, COORDINATION_ROOM, "!patient nouveau")
    assert "1/7 · Nom" in texts(sent) and "Exemple : Dupont" in texts(sent)
    for answer in ("Dupontel", "Marielle", "31/02/1950"):
        sent = await uc.say(COORD, COORDINATION_ROOM, answer)
        assert any(s.action == "redact" for s in sent)
    assert "n'est pas une date qui existe" in texts(sent)
    for answer in ("12/03/1950",):
        await uc.say(COORD, COORDINATION_ROOM, answer)
    sent = await uc.say(COORD, COORDINATION_ROOM, "F")
    for answer in ("0612345678", "3 rue des Lilas"):
        sent = await uc.say(COORD, COORDINATION_ROOM, answer)
    assert polls(sent)  # consentement: oui
    sent = await uc.say(COORD, COORDINATION_ROOM, "oui")
    shared = [s for s in sent if s.room_id == COORDINATION_ROOM]
    assert "Dupontel" not in texts(shared) and "conversation directe" in texts(shared)
    private = [s for s in sent if s.action == "direct"]
    assert "Dupontel" in texts(private) and "3 rue des Lilas" in texts(private)
    sent = await uc.say(COORD, COORDINATION_ROOM, "oui")
    assert all("Dupontel" not in s.body for s in sent if s.room_id == COORDINATION_ROOM)
    assert await count(uc, select(func.count()).select_from(Patient)) == 2


async def test_replies_act_on_the_request_they_answer_with_the_typed_command_s_checks(tmp_path):
    uc = await _world(tmp_path)
    await uc.say(MT, uc.room, "!dec infirmier vad reponse=4h pansement quotidien")
    notice = await uc.event_id_of("notice:", latest=True)
    reply_to = {"m.in_reply_to": {"event_id": notice}}
    # A kiné may not take a nurse's request: refused exactly as `!accepter` typed.
    sent = await uc.say(KINE, uc.direct_room(KINE), "ok", relates_to=reply_to)
    typed = await uc.say(KINE, uc.direct_room(KINE), f"accepter {CODE}/1")
    assert texts(sent) == texts(typed) and "⛔" in texts(sent)

    sent = await uc.say(IDE, uc.room, "ok", relates_to=reply_to)
    assert "prise en charge" in texts(sent) or "accept" in texts(sent)
    async with uc.bot.store.session() as s:
        assert (await s.scalar(select(Demande))).acceptee_par == IDE

    accepted = await uc.event_id_of("demande:1:acceptee", latest=True)
    sent = await uc.say(IDE, uc.room, "rdv demain 14h domicile", relates_to={"m.in_reply_to": {"event_id": accepted}})
    assert "rendez-vous fixé" in texts(sent)
    sent = await uc.say(MT, uc.room, "la patiente préfère le matin", relates_to=reply_to)
    assert "💬 Demande n°1, Paul Martin : la patiente préfère le matin" in texts(sent)
    sent = await uc.say(KINE, uc.direct_room(KINE), "je passe", relates_to=reply_to)
    assert "⛔" in texts(sent)  # not part of the request: no comment either
    sent = await uc.say(IDE, uc.room, "refuser", relates_to=reply_to)  # incomplete: its dialogue opens
    assert "je vous pose 1 question" in texts(sent) and "Motif" in texts(sent)


async def test_a_text_reply_to_a_red_flag_is_a_comment_in_its_history(tmp_path):
    uc = await _world(tmp_path)
    await uc.say(IDE, uc.room, "!redflag confirme=oui dyspnée de repos, oedèmes")
    flag = await uc.event_id_of("demande:1:red_flag", latest=True)
    sent = await uc.say(MT, uc.room, "je passe à 18h", relates_to={"m.in_reply_to": {"event_id": flag}})
    assert "💬 Demande n°1, Paul Martin : je passe à 18h" in texts(sent)
    async with uc.bot.store.session() as s:
        d = read(uc.bot.store.cipher, await s.scalar(select(Demande)))
    assert [(e.par, e.action, e.detail) for e in d.journal if e.action == "commentaire"] == \
        [(MT, "commentaire", "je passe à 18h")]


async def test_a_new_bare_command_replaces_the_open_dialogue_and_says_so(tmp_path):
    uc = await _world(tmp_path)
    await uc.say(MT, uc.room, "!dec")
    sent = await uc.say(MT, uc.room, "!cr")
    assert "J'abandonne `!declenchement`" in texts(sent) or "J'abandonne !declenchement" in texts(sent)
    async with uc.bot.store.session() as s:
        assert sorted((await s.scalars(select(Dialogue.status))).all()) == ["active", "cancelled"]


def _room_for(uc, cmd):
    if PATIENT in cmd.scopes:
        return uc.room
    if DIRECT in cmd.scopes:
        return uc.direct_room(COORD)
    assert COORDINATION in cmd.scopes
    return COORDINATION_ROOM


async def test_every_command_with_required_arguments_completes_by_dialogue(tmp_path):
    """Issue 17.4: the declarations are the single source. Each command typed bare opens a dialogue
    whose questions cover its required arguments; a generated answer (the poll's first choice, or the
    example the declarations give) is accepted at each step; ✅ then runs the command, which may
    refuse on the facts (no such request…) but never for its syntax."""

    uc = await _world(tmp_path)
    registry = uc.bot.registry
    walked = []
    for cmd in registry.runnable:
        required = [p.name for p in cmd.params if not p.optional] + [o.key for o in cmd.options if o.required]
        if not required:
            continue
        room = _room_for(uc, cmd)
        sent = await uc.say(COORD, room, f"!{cmd.name}")
        assert "je vous pose" in texts(sent), (cmd.name, texts(sent))
        asked = []
        for _ in range(20):
            last = sent[-1]
            assert last.ref and last.ref.startswith("dialogue:"), (cmd.name, texts(sent))
            name = last.ref.split(":")[2]
            if name == "resume":
                break
            assert "⚠️" not in texts(sent), (cmd.name, asked, texts(sent))
            item = next(i for i in (*cmd.params, *cmd.options)
                        if (i.name if isinstance(i, Param) else i.key) == name)
            pctx = ParseContext(now=uc.now(), tz=uc.bot.services.tz, flows=uc.bot.services.flows)
            if choices_of(item, pctx) is not None:
                assert polls(sent), (cmd.name, name)
                answer = "1"
            else:
                answer = example(cmd, item, pctx)
                assert answer, (cmd.name, name)
                assert isinstance(item, (Param, Option))
            asked.append(name)
            sent = await uc.say(COORD, room, answer)
        else:
            raise AssertionError(f"{cmd.name}: no summary after 20 answers")
        assert set(required) <= set(asked), (cmd.name, required, asked)
        sent = await uc.say(COORD, room, "✅")
        assert "Usage" not in texts(sent), (cmd.name, texts(sent))
        async with uc.bot.store.session() as s:
            status = (await s.scalar(select(Dialogue).order_by(Dialogue.id.desc()))).status
        assert status in ("done", "refused"), (cmd.name, status)
        walked.append(cmd.name)
    assert {"patient", "declenchement", "rdv", "refuser", "cr", "annuler", "inclure", "sortir", "redflag",
            "alerte", "commentaire", "acces", "annuaire", "absence", "tcim demande"} <= set(walked)


async def test_in_a_direct_chat_a_command_typed_during_a_dialogue_stays_a_command(tmp_path):
    uc = await _world(tmp_path)
    dm = uc.direct_room(MT)
    await uc.say(MT, dm, "patient nouveau nom=Sans prenom=Accord naissance=01/02/1960 sexe=M tel=0600000000 "
                         'adresse="1 place de la Mairie"')
    sent = await uc.say(MT, dm, "acces demander P-10")
    assert "n'est pas un code patient" in texts(sent) and "Usage" in texts(sent)
    sent = await uc.say(MT, dm, "ok")  # an answer, not the `ok` (accepter) command: consent needs « oui »
    assert "n'est pas une valeur possible" in texts(sent)
    sent = await uc.say(MT, dm, "oui")
    assert "Récapitulatif" in texts(sent)
    sent = await uc.say(MT, dm, "demandes")  # awaiting ✅: a command word runs the command
    assert "Aucune demande en cours" in texts(sent)
    await uc.say(MT, dm, "!refuser")
    sent = await uc.say(MT, dm, "cr fait hier, rien à signaler")  # free text expected: an answer
    assert "Récapitulatif" in texts(sent) and "cr fait hier" in texts(sent)


async def test_the_command_typed_in_full_ends_its_dialogue(tmp_path):
    uc = await _world(tmp_path)
    await uc.say(MT, uc.room, "!dec")
    await uc.say(MT, uc.room, "!dec infirmier pansement quotidien")
    sent = await uc.say(MT, uc.room, "merci à tous")  # conversation again, not an answer
    assert sent == []
    async with uc.bot.store.session() as s:
        assert (await s.scalars(select(Dialogue.status))).all() == ["cancelled"]


def test_who_may_comment_a_request():
    """Tier 1: those who take part in the request, the cercle and coordinators; nobody else."""
    now = FakeClock().now()
    d = creer_demande(1, load_flows()["consultation"], MT, now, commentaire="x", cible_profession="infirmier")
    d.sollicites = {IDE}
    assert authorize(Action.COMMENTER, d, Actor(MT))
    assert authorize(Action.COMMENTER, d, Actor(IDE, profession="infirmier"))
    assert authorize(Action.COMMENTER, d, Actor(KINE, cercle_member=True))
    assert authorize(Action.COMMENTER, d, Actor(COORD, roles=frozenset({"coordinateur"})))
    refused = authorize(Action.COMMENTER, d, Actor(IDE2, profession="infirmier"))
    assert not refused and "ne participez pas" in refused.reason
    assert not authorize(Action.COMMENTER, d, Actor(IDE, in_directory=False))
    outcome = commenter(d, IDE, "clés chez la voisine", now)
    assert d.journal[-1].action == "commentaire" and unmark(outcome.texte({IDE: "Julie"})) == "💬 Demande n°1, Julie : clés chez la voisine"
