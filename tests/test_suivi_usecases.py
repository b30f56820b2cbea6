"""Suivi (rooms/suivi.py) in the middle tier: données de base, red-flag proposals, the checklist,
reminders and digests as deadline rows, on a real store with a FakeClock (tests/usecase.py)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from storage.models import Act, Observation, Professional
from storage.repositories import IncomingEvent
from tests.usecase import UseCases, patient_in_parcours

CODE = "P-SUIV"
MT = "@mt:cpts.test"
IDE = "@ide:cpts.test"
SF = "@sf:cpts.test"
# 12 March 2026, 9h UTC = 10h in Paris
START = datetime(2026, 3, 12, 9, 0, tzinfo=timezone.utc)


async def _world(tmp_path, *parcours: str, start: datetime = START, database_url: str | None = None) -> UseCases:
    return await patient_in_parcours(tmp_path, CODE, MT, IDE, SF, *parcours, start=start, database_url=database_url)


def _bodies(sent) -> str:
    return "\n".join(s.body for s in sent)


def _in_room(sent, room) -> list:
    return [s for s in sent if s.room_id == room]


async def test_donnees_are_typed_refused_whole_and_kept_with_history(tmp_path, database_url):
    uc = await _world(tmp_path, "insuffisance_cardiaque", database_url=database_url)
    try:
        refused = await uc.say(IDE, uc.room, "!donnees fc=64 poids=750")
        assert "Poids" in refused[0].body and "750" in refused[0].body and "de 2 à 350 kg" in refused[0].body
        assert "Usage" in refused[0].body
        async with uc.bot.store.session() as s:
            assert (await s.scalars(select(Observation))).all() == []  # nothing half-recorded
        for bad, what in (("nyha=V", "NYHA"), ("arythmie=peut-etre", "Arythmie"), ("fc=12.5", "entier"),
                          ("taille=180", "n'est pas une donnée de base")):
            assert what in (await uc.say(IDE, uc.room, f"!donnees {bad}"))[0].body, bad
        ok = await uc.say(IDE, uc.room, "!db poids=80 fc=64 nyha=3 arythmie=non")
        assert "80 kg" in ok[0].body and "NYHA III" in ok[0].body
        uc.clock.advance(timedelta(days=10))
        again = await uc.say(MT, uc.room, "!données Poids=81,5")
        assert "81,5 kg" in again[0].body and "précédent : 80 kg" in again[0].body and "par Julie Petit" in again[0].body
        assert "🚩" not in again[0].body
        shown = _bodies(await uc.say(MT, uc.room, "!donnees"))
        assert "81,5 kg" in shown and "Dr Martin" in shown and "Hémoglobine : à renseigner" in shown
        async with uc.bot.store.session() as s:
            rows = (await s.scalars(select(Observation).where(Observation.element == "poids")
                                    .order_by(Observation.id))).all()
        assert [r.recorded_by for r in rows] == [IDE, MT] and rows[1].previous_id == rows[0].id
        assert b"81" not in rows[1].value_enc  # health data: ciphertext only
    finally:
        await uc.close()


async def test_ic_weight_gain_proposes_the_red_flag_and_never_raises_it(tmp_path):
    uc = await _world(tmp_path, "insuffisance_cardiaque")
    try:
        await uc.say(IDE, uc.room, "!donnees poids=80")
        uc.clock.advance(timedelta(days=4))
        sent = await uc.say(IDE, uc.room, "!donnees poids=82.4")
        body = _bodies(sent)
        assert "Seuil de red flag franchi" in body and "poids=+2.4kg/4j" in body
        assert "!redflag parcours=insuffisance_cardiaque" in body
        assert not [d for d in await uc.pending_deadlines() if d.kind.startswith("demande.")]  # not raised
        # Over more than 5 days, the same gain is no red flag (S000 L300 « en 3 et 5 j »).
        uc.clock.advance(timedelta(days=6))
        assert "🚩" not in _bodies(await uc.say(IDE, uc.room, "!donnees poids=84.5"))
        # The prepared command is accepted by !redflag as it is.
        flag = await uc.say(IDE, uc.room, "!redflag parcours=ic poids=+2.4kg/4j prise de poids rapide")
        assert "RED FLAG" in _bodies(flag)
    finally:
        await uc.close()


async def test_the_cahier_de_liaison_shows_donnees_and_suivi_with_who(tmp_path):
    uc = await _world(tmp_path, "insuffisance_cardiaque")
    try:
        await uc.say(IDE, uc.room, "!donnees poids=80 nyha=2")
        shown = _bodies(await uc.say(MT, uc.room, "!journal"))
        assert "Donnée de base Poids : 80 kg" in shown and "NYHA II" in shown
    finally:
        await uc.close()


async def test_dt2_weight_loss_against_the_base_weight(tmp_path):
    uc = await _world(tmp_path, "diabete_type_2")
    try:
        await uc.say(MT, uc.room, "!donnees poids=90 ta=13/8")
        uc.clock.advance(timedelta(days=60))
        assert "🚩" not in _bodies(await uc.say(MT, uc.room, "!donnees poids=82"))  # -8,9 %
        body = _bodies(await uc.say(MT, uc.room, "!donnees poids=80.5"))      # -10,6 % of 90
        assert "poids=-10.6%" in body
        body = _bodies(await uc.say(MT, uc.room, "!donnees ta=155/85"))
        assert "ta=155/85" in body and "150/90" in body
    finally:
        await uc.close()


async def test_suivi_records_an_act_matches_forgivingly_and_asks_when_ambiguous(tmp_path):
    uc = await _world(tmp_path, "perinatalite")
    try:
        question = await uc.say(SF, uc.room, "!suivi echo")
        assert "quel élément" in question[0].body and "Échographie T1" in question[0].body  # a poll
        done = await uc.say(SF, uc.room, "!suivi Écho T1 10/03/2026")
        assert "Échographie T1" in done[0].body and "10 mars" in done[0].body
        future = await uc.say(SF, uc.room, "!suivi epnp 10/04/2026")
        assert "futur" in future[0].body
        positive = _bodies(await uc.say(SF, uc.room, "!suivi depistage combine positif"))
        assert "DPNI" in positive and "!dec laboratoire" in positive
        async with uc.bot.store.session() as s:
            acts = (await s.scalars(select(Act).where(Act.kind == "suivi"))).all()
        # One priced ledger line per item posted (rooms.indemnites: livret-2022, « suivi » 15 €).
        assert [(a.user_id, a.details["element"], a.etat) for a in acts] == [
            (SF, "echographie_t1", "eligible"), (SF, "depistage_combine", "eligible")]
        checklist = _bodies(await uc.say(MT, uc.room, "!suivi"))
        assert "✅ Échographie T1 : fait le" in checklist and "debut_grossesse" in checklist
    finally:
        await uc.close()


async def test_perinatalite_reminders_at_each_sa_window_within_hours(tmp_path):
    uc = await _world(tmp_path, "perinatalite")
    try:
        async with uc.bot.store.session.begin() as s:
            (await s.get(Professional, SF)).notification_hours = "09:00-18:00"
        # Pregnancy started 8 weeks ago (5 February 2026): 11 SA on 23 April.
        await uc.say(SF, uc.room, "!donnees debut_grossesse=15/01/2026")
        rows = [d for d in await uc.pending_deadlines() if d.kind == "suivi.rappel"]
        assert rows
        first = min(d.due_at for d in rows)
        # 15/01 + 11 weeks = 2 April 2026, 8h Paris (6h UTC, summer time) for the MT (no hours),
        # 9h for the sage-femme.
        assert first == datetime(2026, 4, 2, 6, 0, tzinfo=timezone.utc)
        sf_rows = [d for d in rows if d.payload["user_id"] == SF and d.payload["element"] == "echographie_t1"]
        assert [d.due_at for d in sf_rows] == [datetime(2026, 4, 2, 7, 0, tzinfo=timezone.utc)]
        assert _in_room(await uc.fire_due(datetime(2026, 4, 2, 5, 59, tzinfo=timezone.utc) - uc.now()), uc.room) == []
        sent = _in_room(await uc.fire_due(timedelta(minutes=1)), uc.room)
        assert sent and all(s.room_id == uc.room for s in sent)
        assert {u for s in sent for u in s.content["m.mentions"]["user_ids"]} == {MT}
        assert "Échographie T1" in _bodies(sent) and "11 SA" in _bodies(sent)
        # Recorded before the sage-femme's hour: her reminder is not sent.
        await uc.say(MT, uc.room, "!suivi echographie t1")
        later = await uc.fire_due(timedelta(hours=1))
        assert "Échographie T1" not in _bodies(later) and "Dépistage combiné" in _bodies(later)
    finally:
        await uc.close()


async def test_plaie_overdue_at_30_days_once_and_replanned_by_a_new_fiche(tmp_path, database_url):
    uc = await _world(tmp_path, "plaie", database_url=database_url)
    try:
        await uc.say(IDE, uc.room, "!suivi fiche")
        rows = {d.kind: d for d in await uc.pending_deadlines() if d.kind.startswith("suivi.r")}
        assert rows["suivi.rappel"].due_at == START + timedelta(days=10)
        assert rows["suivi.retard"].due_at == START + timedelta(days=30)
        assert {d.payload["user_id"] for d in await uc.pending_deadlines() if d.kind.startswith("suivi.r")} == {IDE}
        due = await uc.fire_due(timedelta(days=10))
        assert "Suivi à faire" in _bodies(due)
        late = _in_room(await uc.fire_due(timedelta(days=20)), uc.room)
        assert "Suivi en retard" in _bodies(late) and late[0].content["m.mentions"]["user_ids"] == [IDE]
        assert "Suivi en retard" not in _bodies(await uc.fire_due(timedelta(days=5)))  # once
        await uc.say(IDE, uc.room, "!suivi pansement")
        assert {d.due_at for d in await uc.pending_deadlines() if d.kind == "suivi.retard"} == \
            {uc.now() + timedelta(days=30)}
    finally:
        await uc.close()


async def test_a_reminder_computed_at_23h_waits_for_8h(tmp_path):
    # 23h in Paris (winter: UTC+1) = 22h UTC.
    uc = await _world(tmp_path, "plaie", start=datetime(2026, 1, 10, 22, 0, tzinfo=timezone.utc))
    try:
        await uc.say(IDE, uc.room, "!horaires 8h-19h")
        await uc.say(IDE, uc.room, "!suivi fiche")
        late = next(d for d in await uc.pending_deadlines() if d.kind == "suivi.retard")
        assert late.due_at == datetime(2026, 2, 10, 7, 0, tzinfo=timezone.utc)  # 8h Paris, the next morning
    finally:
        await uc.close()


async def test_horaires_refuses_a_bad_range_and_clears(tmp_path):
    uc = await _world(tmp_path)
    try:
        bad = await uc.say(IDE, uc.direct_room(IDE), "horaires 8h-25h")
        assert "heure impossible" in bad[0].body
        ok = await uc.say(IDE, uc.direct_room(IDE), "horaires 9h-12h30,14h-17h30")
        assert "9h–12h30, 14h–17h30" in ok[0].body
        async with uc.bot.store.session() as s:
            assert (await s.get(Professional, IDE)).notification_hours == "09:00-12:30,14:00-17:30"
        await uc.say(IDE, uc.direct_room(IDE), "horaires aucune")
        async with uc.bot.store.session() as s:
            assert (await s.get(Professional, IDE)).notification_hours is None
    finally:
        await uc.close()


async def test_digests_monthly_in_the_room_weekly_in_direct(tmp_path):
    uc = await _world(tmp_path, "insuffisance_cardiaque", "plaie")
    try:
        await uc.say(IDE, uc.room, "!donnees poids=80")
        await uc.say(IDE, uc.room, "!suivi fiche 17/02/2026")  # due since 27 February
        kinds = {d.kind: d for d in await uc.pending_deadlines()}
        assert kinds["suivi.digest_patient"].due_at == datetime(2026, 4, 1, 6, 0, tzinfo=timezone.utc)
        weekly = kinds["suivi.digest_pro"]
        assert weekly.payload["user_id"] == IDE
        assert weekly.due_at == datetime(2026, 3, 16, 7, 0, tzinfo=timezone.utc)  # Monday 8h Paris
        sent = await uc.fire_due(weekly.due_at - uc.now())
        direct = next(s for s in sent if s.action == "direct")
        assert direct.recipient == IDE and "Ce qui vous attend" in direct.body
        assert "P-SUIV · Plaie et cicatrisation : Fiche suivi de pansement" in direct.body
        monthly = await uc.fire_due(datetime(2026, 4, 1, 6, 0, tzinfo=timezone.utc) - uc.now())
        room = next(s for s in monthly if s.room_id == uc.room and "Point mensuel" in s.body)
        assert "Hémoglobine" in room.body and "Plaie" not in room.body  # chronic parcours only
        assert any(d.kind == "suivi.digest_patient" and d.due_at.month == 5 for d in await uc.pending_deadlines())
    finally:
        await uc.close()


async def _event(uc: UseCases, sender: str, kind: str, payload: dict, n: int):
    return await uc._handle(IncomingEvent(f"$x{n}", uc.room, sender, kind, int(uc.now().timestamp() * 1000), payload))


async def test_an_ambiguous_name_asks_with_a_poll_and_the_vote_records_it(tmp_path):
    uc = await _world(tmp_path, "perinatalite")
    try:
        sent = await uc.say(SF, uc.room, "!suivi echo 10/03/2026 normale")
        poll = next(s for s in sent if s.action == "event")
        answers = poll.content["content"]["org.matrix.msc3381.poll.start"]["answers"]
        assert [a["org.matrix.msc1767.text"] for a in answers] == ["Échographie T1", "Échographie T2", "Échographie T3"]
        poll_id = await uc.event_id_of("suiviq:")
        assert await _event(uc, "@intrus:cpts.test", "poll_response", {"poll": poll_id, "answers": ["1"]}, 1) == []
        voted = await _event(uc, SF, "poll_response", {"poll": poll_id, "answers": ["2"]}, 2)
        assert "Échographie T2" in _bodies(voted) and "10 mars" in _bodies(voted) and "normale" in _bodies(voted)
        assert any(s.action == "poll_end" for s in voted)
        assert await _event(uc, SF, "poll_response", {"poll": poll_id, "answers": ["3"]}, 3) == []  # once
        async with uc.bot.store.session() as s:
            assert [a.details["element"] for a in (await s.scalars(select(Act).where(Act.kind == "suivi"))).all()] == \
                ["echographie_t2"]
    finally:
        await uc.close()


async def test_fait_in_reply_to_a_reminder_records_the_element(tmp_path):
    uc = await _world(tmp_path, "plaie")
    try:
        await uc.say(IDE, uc.room, "!suivi fiche")
        reminder = next(s for s in await uc.fire_due(timedelta(days=10)) if s.room_id == uc.room)
        reminder_id = await uc.event_id_of(reminder.ref)
        reply = {"body": "> rappel\n\nfait, photos postées", "content": {
            "msgtype": "m.text", "body": "fait, photos postées", "m.relates_to": {"m.in_reply_to": {"event_id": reminder_id}}}}
        assert "Fiche suivi" not in _bodies(await _event(uc, "@intrus:cpts.test", "message", reply, 1))
        done = await _event(uc, IDE, "message", reply, 2)
        assert "Fiche suivi de pansement" in _bodies(done) and "photos postées" in _bodies(done)
        assert {d.due_at for d in await uc.pending_deadlines() if d.kind == "suivi.retard"} == \
            {uc.now() + timedelta(days=30)}
    finally:
        await uc.close()


async def test_redflag_with_an_absolute_weight_uses_the_recorded_weights(tmp_path):
    uc = await _world(tmp_path, "insuffisance_cardiaque")
    try:
        refused = await uc.say(IDE, uc.room, "!redflag poids=83 oedèmes")
        assert "aucun poids antérieur" in refused[0].body
        await uc.say(IDE, uc.room, "!donnees poids=80")
        uc.clock.advance(timedelta(days=3))
        flag = _bodies(await uc.say(IDE, uc.room, "!redflag poids=82.6 oedèmes des chevilles"))
        assert "RED FLAG" in flag and "+2,6 kg en 3 jours" in flag
    finally:
        await uc.close()


async def test_history_of_one_donnee_and_hours_change_moves_pending_reminders(tmp_path):
    uc = await _world(tmp_path, "insuffisance_cardiaque", "plaie")
    try:
        await uc.say(IDE, uc.room, "!donnees poids=80")
        uc.clock.advance(timedelta(days=1))
        await uc.say(MT, uc.room, "!donnees poids=80.5")
        history = _bodies(await uc.say(MT, uc.room, "!donnees poids"))
        assert history.index("80,5 kg") < history.index("80 kg") and "Dr Martin" in history and "Julie Petit" in history
        await uc.say(IDE, uc.room, "!suivi fiche")
        late = next(d for d in await uc.pending_deadlines() if d.kind == "suivi.retard")
        instant = datetime.fromisoformat(late.payload["instant"])
        assert late.due_at == instant  # no hours: at once
        answer = await uc.say(IDE, uc.room, "!horaires 20h-21h")
        assert "2 rappel(s)" in answer[0].body
        late = next(d for d in await uc.pending_deadlines() if d.kind == "suivi.retard")
        assert late.due_at.astimezone(uc.bot.services.tz).hour == 20
    finally:
        await uc.close()


async def test_plaie_fiche_fields_are_typed_and_an_aggravation_proposes_the_red_flag(tmp_path):
    uc = await _world(tmp_path, "plaie")
    try:
        refused = await uc.say(IDE, uc.room, "!suivi fiche longueur=300 largeur=2")
        assert "Longueur" in refused[0].body and "300" in refused[0].body
        assert "couleur" in (await uc.say(IDE, uc.room, "!suivi fiche couleur=rouge"))[0].body
        body = _bodies(await uc.say(IDE, uc.room, "!suivi fiche longueur=3,5 photos=oui evolution=aggravation bords macérés"))
        assert "Longueur 3,5 cm" in body and "Photos postées oui" in body and "bords macérés" in body
        assert "!redflag parcours=plaie signes=aggravation" in body
        assert "Longueur 3,5 cm" in _bodies(await uc.say(IDE, uc.room, "!suivi"))
    finally:
        await uc.close()


async def test_a_pregnancy_start_date_says_what_is_already_due(tmp_path):
    uc = await _world(tmp_path, "perinatalite")
    try:
        # 16 SA today: 11, 13 and 15 SA items are already due; 20 SA and later are planned.
        body = _bodies(await uc.say(SF, uc.room, "!donnees ddr=19/11/2025"))
        assert "Déjà à faire" in body and "Échographie T1" in body and "Déclaration de grossesse" in body
        assert "Échographie T2" not in body.split("Déjà à faire")[1]
        planned = {d.payload["element"] for d in await uc.pending_deadlines() if d.kind == "suivi.rappel"}
        assert "echographie_t2" in planned and "echographie_t1" not in planned
    finally:
        await uc.close()
