"""Tier 2: the cercle's use cases (rooms/patients.py, rooms/cercle.py, rooms/parcours.py) through the
real dispatch on a real store, FakeClock, the outbox as the recorder (tests/usecase.py): what each
command writes, in order, and its refusals (which write nothing but the answer)."""
from __future__ import annotations

import re

from sqlalchemy import select

from storage.models import BotState, CercleMember, Patient
from tests.usecase import COORDINATION_ROOM, UseCases

MT = "@mt:cpts.test"
IDE = "@ide:cpts.test"
KINE = "@kine:cpts.test"
PH = "@ph:cpts.test"  # outside the cercle
COORD = "@coord:cpts.test"  # a coordinator may speak in every cercle, not change its members


def effects(sent) -> list[tuple[str, str]]:
    return [(s.action, s.room_id) for s in sent]


async def test_cercle_access_and_parcours_write_what_they_say(tmp_path):
    uc = await UseCases.open(tmp_path / "bot")
    try:
        await uc.enrol(MT, name="Paul Martin")
        await uc.enrol(IDE, "infirmier", name="Julie Petit")
        await uc.enrol(KINE, "masseur_kinesitherapeute", name="Emma Simon")
        await uc.enrol(PH, "pharmacien", name="Hugo Garnier")
        await uc.enrol(COORD, "autre", name="Anne Coord", roles=["coordinateur"])
        dm = uc.direct_room(MT)

        # !patient nouveau: the room is created by the outbox, everything for it queued behind.
        sent = await uc.say(MT, dm, "!patient nouveau nom=Dupont prenom=Marie naissance=12/03/1950 sexe=F "
                                    'tel=0612345678 adresse="3 rue des Lilas" commune=Brétigny-sur-Orge '
                                    f"mt={MT} pros={IDE} consentement=oui")
        code = re.search(r"P-[2-9A-Z]{4}", sent[-2].body).group(0)
        pending = f"pending:patient:{code}"
        assert effects(sent) == [("create_room", pending), ("message", pending), ("pin", pending),
                                 ("state", pending), ("message", dm), ("message", COORDINATION_ROOM)]
        assert sent[0].content["invite"] == [MT, IDE] and sent[1].ref == f"identity:{code}"
        assert "DUPONT" in sent[1].body and "Invité·e·s : Paul Martin, Julie Petit" in sent[4].body
        assert "médecin traitant : Paul Martin" in sent[5].body and "Dupont" not in sent[5].body
        room = f"!cercle-{code}:cpts.test"
        async with uc.bot.store.session.begin() as session:
            (await session.get(Patient, code)).room_id = room
        await uc.bot.store.save_room(room, "patient", 0, created=True)

        sent = await uc.say(MT, room, "!cercle")
        assert effects(sent) == [("message", room)]
        assert sorted(sent[0].body.splitlines()[2:]) == ["- Julie Petit (infirmier·e)", "- Paul Martin (médecin généraliste) · médecin traitant"]

        # !cercle ajouter / retirer: members only; the médecin traitant stays.
        sent = await uc.say(COORD, room, f"!cercle ajouter {KINE}")
        assert effects(sent) == [("message", room)] and "seuls les membres" in sent[0].body
        sent = await uc.say(IDE, room, "!cercle ajouter")
        assert "Précisez qui ajouter" in sent[0].body and "Usage" in sent[0].body
        sent = await uc.say(IDE, room, f"!cercle ajouter {KINE}")
        assert effects(sent) == [("invite", room), ("message", room), ("message", room)]
        assert sent[0].recipient == KINE and "Fiche d'identité" in sent[1].body and "invité·e" in sent[2].body
        sent = await uc.say(IDE, room, f"!cercle ajouter {KINE}")
        assert effects(sent) == [("message", room)] and "fait déjà partie" in sent[0].body
        sent = await uc.say(IDE, room, f"!cercle retirer {MT}")
        assert "médecin traitant ne peut pas être retiré" in sent[0].body
        sent = await uc.say(IDE, room, f"!cercle retirer {KINE}")
        assert effects(sent) == [("kick", room), ("message", room)]
        assert sent[0].content == {"user_id": KINE, "reason": f"retiré du cercle par {IDE}"}
        assert "Emma Simon est retiré·e" in sent[1].body
        sent = await uc.say(IDE, room, f"!cercle retirer {KINE}")
        assert effects(sent) == [("message", room)] and "ne fait pas partie" in sent[0].body

        # !acces: asked in a direct chat, answered in the room by the médecin traitant.
        ph_dm = uc.direct_room(PH)
        sent = await uc.say(PH, ph_dm, f"!acces demander {code.lower()}")
        assert effects(sent) == [("message", room), ("message", ph_dm)]
        assert "Hugo Garnier" in sent[0].body and MT in sent[0].content["m.mentions"]["user_ids"]
        assert "Demande transmise" in sent[1].body
        sent = await uc.say(IDE, room, f"!acces accepter {PH}")
        assert "seuls le médecin traitant" in sent[0].body
        sent = await uc.say(MT, room, f"!acces refuser {PH}")
        assert effects(sent) == [("message", ph_dm), ("message", room)]
        assert "n'a pas été acceptée" in sent[0].body and "refusée" in sent[1].body
        sent = await uc.say(MT, room, f"!acces accepter {PH}")
        assert "n'a pas demandé" in sent[0].body
        await uc.say(PH, ph_dm, f"!acces demander {code}")
        sent = await uc.say(MT, room, f"!acces accepter {PH}")
        assert effects(sent) == [("invite", room), ("message", room), ("message", room)]
        assert "Accès accordé à Hugo Garnier" in sent[2].body
        sent = await uc.say(MT, ph_dm, f"!acces demander {code}")
        assert "déjà partie du cercle" in sent[0].body
        async with uc.bot.store.session() as session:
            assert (await session.scalars(select(BotState).where(BotState.key.startswith("access:")))).all() == []
            member = await session.get(CercleMember, (code, PH))
            assert member is not None and member.removed_at is None

        # !inclure / !sortir: the room's name follows the parcours; no parcours left, the cercle is archived.
        sent = await uc.say(MT, room, "!inclure astrologie")
        assert "Parcours inconnu" in sent[0].body
        sent = await uc.say(MT, room, "!inclure dt2")
        assert "carte=oui" in sent[0].body
        sent = await uc.say(MT, room, "!inclure dt2 carte=oui")
        renames = [s for s in sent if s.action == "state"]
        assert renames[0].content["content"]["name"].startswith(f"Cercle {code} · Diabète")
        assert any("inclus dans le parcours" in s.body and s.room_id == room for s in sent)
        assert any(s.room_id == COORDINATION_ROOM and "Inclusion de" in s.body for s in sent)
        sent = await uc.say(MT, room, "!inclure dt2 carte=oui")
        assert "déjà inclus" in sent[0].body
        sent = await uc.say(MT, room, "!sortir ic fini")
        assert "n'est pas inclus" in sent[0].body
        sent = await uc.say(MT, room, "!sortir dt2 suivi repris par l'hôpital")
        assert effects(sent)[:2] == [("state", room), ("message", room)] and "archivé" in sent[1].body
        assert sent[0].content["content"]["name"] == f"Cercle {code} · archivé"
        assert effects(sent)[-1] == ("message", COORDINATION_ROOM)
        sent = await uc.say(MT, room, "!cercle")
        assert f"le cercle {code} est archivé" in sent[0].body
    finally:
        await uc.close()
