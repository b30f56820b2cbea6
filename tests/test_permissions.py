"""Who may act on a request: the permission table (issue 8), on the use-case tier.

Each row is one kind of person, each column one request action; a cell says whether the bot does
it. Every cell runs the real command through the real dispatch on a real store (no homeserver),
then checks both the answer and that a refusal wrote nothing. The rules themselves live in one
place, domain/permissions.py; the pure tests at the bottom pin its reasons.
"""
from __future__ import annotations

import shutil

import pytest

from domain.clock import FakeClock
from domain.demandes import creer_demande, solliciter
from domain.flows import load_flows
from domain.permissions import Action, Actor, authorize
from rooms import demandes
from tests.usecase import UseCases

CODE = "P-TEST"
MT = "@mt:cpts.test"                      # médecin traitant, requester of the requests below
IDE_CERCLE = "@ide.cercle:cpts.test"      # nurse of the cercle: the target, solicited first
IDE_LOCALE = "@ide.locale:cpts.test"      # nurse of the request's commune, outside the cercle
IDE_ARPAJON = "@ide.arpajon:cpts.test"    # nurse of another commune
KINE = "@kine:cpts.test"                  # another profession, outside the cercle
REFERENT = "@referent:cpts.test"          # holds the référent parcours role
PHARMA = "@pharma:cpts.test"              # directory member with no role
SEC_MT = "@sec.mt:cpts.test"              # the MT's secretary (in the cercle)
SEC_IDE = "@sec.ide:cpts.test"            # the cercle nurse's secretary (in the cercle)
COORD = "@coord:cpts.test"                # coordinator (not in the cercle)
PHARMA_CERCLE = "@pharma.cercle:cpts.test"  # a member of the cercle of another profession
ANCIENNE = "@ide.ancienne:cpts.test"      # former member of the cercle (removed)
INTRUS = "@intrus:cpts.test"              # not in the directory at all

PEOPLE = {
    MT: ("medecin_generaliste", [], ["Brétigny-sur-Orge"]),
    IDE_CERCLE: ("infirmier", [], ["Brétigny-sur-Orge"]),
    IDE_LOCALE: ("infirmier", [], ["Brétigny-sur-Orge"]),
    IDE_ARPAJON: ("infirmier", [], ["Arpajon"]),
    KINE: ("masseur_kinesitherapeute", [], ["Brétigny-sur-Orge"]),
    REFERENT: ("pharmacien", ["referent"], ["Brétigny-sur-Orge"]),
    PHARMA: ("pharmacien", [], ["Brétigny-sur-Orge"]),
    SEC_MT: ("autre", [f"secretaire:{MT}"], ["Brétigny-sur-Orge"]),
    SEC_IDE: ("autre", [f"secretaire:{IDE_CERCLE}"], ["Brétigny-sur-Orge"]),
    COORD: ("autre", ["coordinateur"], ["Brétigny-sur-Orge"]),
    PHARMA_CERCLE: ("pharmacien", [], ["Brétigny-sur-Orge"]),
    ANCIENNE: ("infirmier", [], ["Brétigny-sur-Orge"]),
}
CERCLE = [MT, IDE_CERCLE, SEC_MT, SEC_IDE, PHARMA_CERCLE, ANCIENNE]

# The table. Requests: n°1 « infirmier, commune Brétigny » by the MT; n°2 to the référent role.
# accepter/refuser are typed in the person's direct chat (`accepter P-TEST/1`), the others in the
# patient room after IDE_CERCLE accepted n°1.
TABLE = {
    #                accepter refuser  rdv    cr     clôturer annuler
    IDE_CERCLE:     (True,    True,    True,  True,  True,    False),
    IDE_LOCALE:     (True,    True,    False, False, False,   False),
    IDE_ARPAJON:    (False,   False,   False, False, False,   False),
    KINE:           (False,   False,   False, False, False,   False),
    REFERENT:       (False,   False,   False, False, False,   False),
    PHARMA:         (False,   False,   False, False, False,   False),
    SEC_MT:         (False,   False,   False, False, False,   True),
    SEC_IDE:        (False,   False,   True,  False, False,   False),
    COORD:          (False,   False,   False, False, True,    True),
    PHARMA_CERCLE:  (False,   False,   False, False, False,   False),
    ANCIENNE:       (True,    True,    False, False, False,   False),  # a nurse of the commune still
    INTRUS:         (False,   False,   False, False, False,   False),
    MT:             (False,   False,   False, False, True,    True),   # the requester
}
ACTIONS = ["accepter", "refuser", "rdv", "cr", "cloturer", "annuler"]
COMMANDS = {
    "accepter": "accepter P-TEST/1",
    "refuser": "refuser P-TEST/1 pas de disponibilité",
    "rdv": "!rdv 1 demain 9h domicile",
    "cr": "!cr 1 pansement refait, plaie propre",
    "cloturer": "!cloturer 1",
    "annuler": "!annuler 1 patient hospitalisé",
}
SUCCESS = {"accepter": "C'est noté", "refuser": "Refus noté", "rdv": "rendez-vous fixé", "cr": "compte-rendu posté",
           "cloturer": "clôturée", "annuler": "annulée"}


@pytest.fixture(scope="module")
async def directory_and_cercle(tmp_path_factory):
    """The people and the patient, written once; each test starts from a copy."""
    template = tmp_path_factory.mktemp("permissions") / "bot"
    uc = await UseCases.open(template, clock=FakeClock())
    for user_id, (profession, roles, communes) in PEOPLE.items():
        await uc.enrol(user_id, profession, roles=roles, communes=communes)
    await uc.patient(CODE, CERCLE, mt=MT)
    await uc.remove_member(CODE, ANCIENNE)
    await uc.bot.store.save_room(uc.direct_room(INTRUS), "direct", 0, direct_with=INTRUS)  # a chat opened before
    await uc.close()
    return template


@pytest.fixture
async def world(directory_and_cercle, tmp_path):
    shutil.copytree(directory_and_cercle, tmp_path / "bot")
    uc = await UseCases.open(tmp_path / "bot", clock=FakeClock())
    uc.room = f"!cercle-{CODE}:cpts.test"
    replies = await uc.say(MT, uc.room, "!dec infirmier commune=Brétigny-sur-Orge pansement quotidien talon gauche")
    assert "Demande n°1 créée" in " ".join(r.body for r in replies)
    yield uc
    await uc.close()


async def request_state(uc) -> tuple:
    async with uc.bot.store.session() as session:
        row = await demandes.find(session, uc.room, 1)
        d = demandes.read(uc.bot.store.cipher, row)
    return d.etat, d.acceptee_par, dict(d.refus), set(d.sollicites), d.rdv, d.cr


def room_for(uc, sender: str, action: str) -> str:
    return uc.direct_room(sender) if action in ("accepter", "refuser") else uc.room


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("sender", list(TABLE))
async def test_permission_table(world, sender, action):
    uc = world
    if action not in ("accepter", "refuser"):
        await uc.say(IDE_CERCLE, uc.room, "!accepter 1")
    await uc.sent()
    before = await request_state(uc)
    replies = await uc.say(sender, room_for(uc, sender, action), COMMANDS[action])
    answer = replies[0].body if replies else ""
    allowed = TABLE[sender][ACTIONS.index(action)]
    if allowed:
        assert SUCCESS[action] in " ".join(r.body for r in replies), answer
        assert await request_state(uc) != before
    else:
        assert answer.startswith(("⛔", "🙏")), answer
        assert await request_state(uc) == before, "a refusal must write nothing"
        assert all(r.room_id == room_for(uc, sender, action) for r in replies), "a refusal is posted nowhere else"


async def test_outsider_is_told_access_is_reserved_and_nothing_about_the_cpts(world):
    replies = await world.say(INTRUS, world.direct_room(INTRUS), "accepter P-TEST/1")
    assert replies[0].body.startswith("🙏 Accès réservé")
    assert "CPTS" not in replies[0].body and "annuaire" not in replies[0].body


# --- the reproductions of issue 8 ----------------------------------------------------------------

async def test_declining_first_does_not_open_the_way_to_another_profession(world):
    """Defect 1: `!refuser` then `!accepter` by a kiné took a nurse's request."""
    uc, dm = world, world.direct_room(KINE)
    await uc.say(KINE, dm, "accepter P-TEST/1")
    await uc.say(KINE, dm, "refuser P-TEST/1 pas dispo")
    replies = await uc.say(KINE, dm, "accepter P-TEST/1")
    etat, acceptee_par, refus, sollicites, *_ = await request_state(uc)
    assert acceptee_par is None and KINE not in refus and KINE not in sollicites
    assert not [r for r in replies if r.action == "invite"], "the kiné was invited into the cercle"
    assert replies[0].body.startswith("⛔") and "infirmier" in replies[0].body


async def test_a_request_to_a_role_is_only_for_its_holders(world):
    """Defect 2: `!dec referent …` was accepted by a pharmacien with no role."""
    uc = world
    replies = await uc.say(MT, uc.room, "!dec referent coordination du retour à domicile")
    assert "Demande n°2 créée" in " ".join(r.body for r in replies)
    refused = await uc.say(PHARMA, uc.direct_room(PHARMA), "accepter P-TEST/2")
    assert refused[0].body.startswith("⛔") and not [r for r in refused if r.action == "invite"]
    accepted = await uc.say(REFERENT, uc.direct_room(REFERENT), "accepter P-TEST/2")
    assert "C'est noté" in " ".join(r.body for r in accepted)
    assert [r for r in accepted if r.action == "invite" and r.content["user_id"] == REFERENT]


async def test_nobody_declines_a_request_not_addressed_to_them(world):
    """Defect 3: anyone could decline, and the refusal was posted in the patient room."""
    uc = world
    replies = await uc.say(PHARMA, uc.direct_room(PHARMA), "refuser P-TEST/1 je ne peux pas")
    assert replies[0].body.startswith("⛔")
    assert not [r for r in replies if r.room_id == uc.room]


async def test_a_check_mark_from_the_wrong_profession_is_refused(world):
    """✅ on a notice goes through the same rule as `!accepter`."""
    uc = world
    notice = await uc.event_id_of("notice:")
    replies = await uc.react(KINE, uc.room, "✅", notice)
    assert replies and replies[0].body.startswith("⛔")
    assert (await request_state(uc))[1] is None
    await uc.react(IDE_CERCLE, uc.room, "✅", notice)
    assert (await request_state(uc))[1] == IDE_CERCLE


async def test_a_former_member_no_longer_acts_in_the_cercle(world):
    uc = world
    replies = await uc.say(ANCIENNE, uc.room, "!demandes")
    assert replies[0].body.startswith("⛔"), replies[0].body
    replies = await uc.say(ANCIENNE, uc.room, "!redflag confirme=oui dyspnée au repos")
    assert replies[0].body.startswith("⛔"), replies[0].body


# --- the rule module, pure ---------------------------------------------------------------------

T0 = FakeClock().now()


def _demande(**target):
    d = creer_demande(1, load_flows()["consultation"], MT, T0, commentaire="x", **target)
    return d


def test_rule_reasons_name_what_is_wrong():
    d = _demande(cible_profession="infirmier", commune="Brétigny-sur-Orge")
    kine = Actor(KINE, profession="masseur_kinesitherapeute")
    assert "s'adresse à un·e infirmier" in authorize(Action.ACCEPTER, d, kine, lambda c: "infirmier·e").reason
    arpajon = Actor(IDE_ARPAJON, profession="infirmier", communes=frozenset({"Arpajon"}))
    assert "Brétigny-sur-Orge" in authorize(Action.ACCEPTER, d, arpajon).reason
    accent = Actor(IDE_LOCALE, profession="infirmier", communes=frozenset({"BRETIGNY-SUR-ORGE"}))
    assert authorize(Action.ACCEPTER, d, accent)
    assert authorize(Action.ACCEPTER, d, Actor(INTRUS, in_directory=False)).reason == "accès réservé"


def test_the_ladder_may_widen_beyond_the_commune():
    """When nobody of the commune exists, the pool asks the whole profession: those asked may answer."""
    d = _demande(cible_profession="infirmier", commune="Brétigny-sur-Orge")
    solliciter(d, [IDE_ARPAJON], T0)
    assert authorize(Action.ACCEPTER, d, Actor(IDE_ARPAJON, profession="infirmier"))


def test_person_request_only_for_that_person():
    d = _demande(cible_personne=IDE_CERCLE)
    assert authorize(Action.ACCEPTER, d, Actor(IDE_CERCLE, profession="infirmier"))
    other = authorize(Action.ACCEPTER, d, Actor(IDE_LOCALE, profession="infirmier"))
    assert not other and other.mentions == {"cible": IDE_CERCLE}


def test_declining_never_adds_to_the_solicited():
    from domain.demandes import refuser

    d = _demande(cible_profession="infirmier")
    refuser(d, IDE_LOCALE, "pas dispo", T0)
    assert d.sollicites == set()


# --- TCIM (issue 12): one rule per step, the same kind of table -----------------------------------
DR_TCIM = "@dr.tcim:cpts.test"           # signed the TCIM protocol; joins the cercle by accepting
REF_CERCLE = "@ref.cercle:cpts.test"     # référent parcours, member of the cercle
TCIM_ASK = f"!tcim demande snp sans_mt=oui deplacement=non infirmier={IDE_CERCLE} toux fébrile, alitée"
TCIM_TABLE = {
    #              demande confirmer proposer charte debut  fin    interrompre ordonnance
    IDE_CERCLE:   (True,   True,     True,    False, False, False, True,       True),
    DR_TCIM:      (False,  False,    False,   True,  True,  True,  True,       False),
    MT:           (False,  False,    False,   False, False, False, False,      False),
    REF_CERCLE:   (True,   False,    False,   False, False, False, False,      False),
    COORD:        (True,   False,    False,   False, False, False, False,      False),
    IDE_LOCALE:   (False,  False,    False,   False, False, False, False,      False),
    SEC_IDE:      (False,  False,    False,   False, False, False, False,      False),
    PHARMA_CERCLE: (False, False,    False,   False, False, False, False,      False),
    ANCIENNE:     (False,  False,    False,   False, False, False, False,      False),
    INTRUS:       (False,  False,    False,   False, False, False, False,      False),
}
TCIM_ACTIONS = ["demande", "confirmer", "proposer", "charte", "debut", "fin", "interrompre", "ordonnance"]
TCIM_COMMANDS = {
    "demande": TCIM_ASK, "confirmer": "!tcim confirmer", "proposer": "!tcim proposer demain 16h",
    "charte": "!tcim charte tout", "debut": "!tcim debut", "fin": "!tcim fin lieu=domicile",
    "interrompre": "!tcim interrompre la patiente refuse", "ordonnance": "!tcim ordonnance recue",
}
TCIM_SUCCESS = {"demande": "TCIM n°1 demandée", "confirmer": "créneau confirmé", "proposer": "propose un autre créneau",
                "charte": "Charte de la TCIM", "debut": "démarrée", "fin": "terminée", "interrompre": "interrompue par",
                "ordonnance": "ordonnance reçue"}
# What happened before the cell's command: each step by its rightful person.
TCIM_BEFORE = {"demande": 0, "confirmer": 1, "proposer": 1, "charte": 2, "interrompre": 2, "debut": 3, "fin": 4,
               "ordonnance": 5}


@pytest.fixture(scope="module")
async def tcim_template(tmp_path_factory):
    template = tmp_path_factory.mktemp("permissions_tcim") / "bot"
    uc = await UseCases.open(template, clock=FakeClock())
    for user_id, (profession, roles, communes) in PEOPLE.items():
        await uc.enrol(user_id, profession, roles=roles, communes=communes)
    await uc.enrol(DR_TCIM, "medecin_generaliste", roles=["tcim"])
    await uc.enrol(REF_CERCLE, "pharmacien", roles=["referent"])
    await uc.patient(CODE, [*CERCLE, REF_CERCLE])  # no MT: a TCIM patient
    await uc.remove_member(CODE, ANCIENNE)
    await uc.bot.store.save_room(uc.direct_room(INTRUS), "direct", 0, direct_with=INTRUS)
    await uc.close()
    return template


async def tcim_state(uc) -> tuple | None:
    from sqlalchemy import select

    from rooms.tcim import read as read_tcim
    from storage.models import TcimRecord

    async with uc.bot.store.session() as session:
        row = await demandes.find(session, uc.room, 1)
        if row is None:
            return None
        rec = await session.scalar(select(TcimRecord).where(TcimRecord.demande_id == row.id))

        class _Ctx:
            store = uc.bot.store
        return row.etat, read_tcim(_Ctx, rec)


@pytest.mark.parametrize("action", TCIM_ACTIONS)
@pytest.mark.parametrize("sender", list(TCIM_TABLE))
async def test_tcim_permission_table(tcim_template, tmp_path, sender, action):
    shutil.copytree(tcim_template, tmp_path / "bot")
    uc = await UseCases.open(tmp_path / "bot", clock=FakeClock())
    uc.room = f"!cercle-{CODE}:cpts.test"
    steps = [(IDE_CERCLE, uc.room, TCIM_ASK), (DR_TCIM, uc.direct_room(DR_TCIM), "accepter P-TEST/1"),
             (IDE_CERCLE, uc.room, "!tcim confirmer"), (DR_TCIM, uc.room, "!tcim charte tout"),
             (DR_TCIM, uc.room, "!tcim debut"), (DR_TCIM, uc.room, "!tcim fin")]
    try:
        for i, (who, room, body) in enumerate(steps[:TCIM_BEFORE[action] + (1 if TCIM_BEFORE[action] else 0)]):
            await uc.say(who, room, body)
            if i == 0:
                await uc.fire_due()
            if i == 1:
                await uc.say(DR_TCIM, uc.room, "!rdv 1 demain 14h teleconsultation")
        await uc.sent()
        before = await tcim_state(uc)
        replies = await uc.say(sender, uc.room, TCIM_COMMANDS[action])
        answer = replies[0].body if replies else ""
        if TCIM_TABLE[sender][TCIM_ACTIONS.index(action)]:
            assert TCIM_SUCCESS[action] in " ".join(r.body for r in replies), answer
            assert await tcim_state(uc) != before
        else:
            assert answer.startswith(("⛔", "🙏")), answer
            assert await tcim_state(uc) == before, "a refusal must write nothing"
            assert all(r.room_id == uc.room for r in replies), "a refusal is posted nowhere else"
    finally:
        await uc.close()
