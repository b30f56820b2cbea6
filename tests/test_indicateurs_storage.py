"""Tableau de bord, the queries (storage/indicateurs.py) on SQLite and PostgreSQL, over a
generated history whose answers are known: a month with no activity (September), a request made
late on 31 October (Paris) and accepted on 1 November, small counts, a parcours filter, an exit."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from domain.indicateurs import Mois, lire_periode, resultat
from domain.indicateurs import load_indicateurs as load
from storage.indicateurs import Requetes, activite
from storage.models import Act, Deadline, Demande, Inclusion, Patient, QuestionnaireRun, TcimRecord
from storage.repositories import open_store

PARIS = ZoneInfo("Europe/Paris")
NOW = datetime(2026, 12, 2, 7, 0, tzinfo=timezone.utc)
H = timedelta(hours=1)
D = timedelta(days=1)
IC, BPCO = "insuffisance_cardiaque", "bpco"
MOIS = [Mois(2026, 9), Mois(2026, 10), Mois(2026, 11)]
IDE, MG, MG2 = "@ide:t", "@mg:t", "@mg2:t"


def utc(*a) -> datetime:
    return datetime(*a, tzinfo=timezone.utc)


class History:
    def __init__(self, session):
        self.s = session
        self.n = 0

    def patient(self, code, created=utc(2026, 10, 1, 8), mt=MG):
        self.s.add(Patient(code=code, room_id=f"!{code}", identity_enc=b"x", medecin_traitant=mt,
                           created_by=IDE, created_at=created))

    async def demande(self, code, flow, created, *, delai, accepted_after=None, by=MG, cible=None, act="declenchement"):
        self.n += 1
        row = Demande(patient_code=code, room_id=f"!{code}", numero=self.n, flow=flow, etat="en_attente",
                      demandeur=IDE, created_at=created, data_enc=b"x")
        self.s.add(row)
        await self.s.flush()
        ref = f"demande:{row.id}"
        details = {"flow": flow, **({"cible": cible} if cible else {})}
        self.s.add(Act(user_id=IDE, kind=act, patient_code=code, ref=ref, at=created, details=details))
        due = created + delai
        accepted = created + accepted_after if accepted_after is not None else None
        late_or_never = accepted is None or accepted > due
        fired = late_or_never and due <= NOW
        self.s.add(Deadline(kind="demande.escalade", ref=ref, due_at=due, created_at=created,
                            status="fired" if fired else ("pending" if accepted is None else "cancelled")))
        if accepted is not None:
            row.etat, row.acceptee_par = "acceptee", by
            self.s.add(Act(user_id=by, kind="acceptation", patient_code=code, ref=ref, at=accepted, details={"flow": flow}))


@pytest.fixture
async def store(database_url, tmp_path):
    s = await open_store(database_url, tmp_path / "storage.key")
    async with s.session.begin() as session:
        h = History(session)
        in_ic = ["P-A", "P-B", "P-C", "P-D", "P-E", "P-F"]
        for code in in_ic + ["P-G"]:
            h.patient(code)
        for code in ["P-H", "P-I", "P-J", "P-K", "P-L"]:
            h.patient(code, created=utc(2026, 10, 10, 9), mt=None)
        h.patient("P-M", created=utc(2026, 10, 31, 23, 30), mt=None)  # 00:30 on 1 Nov in Paris
        h.patient("P-N")
        for code in in_ic:
            session.add(Inclusion(patient_code=code, parcours=IC, included_by=MG, included_at=utc(2026, 10, 1, 9),
                                  ended_at=utc(2026, 11, 15, 9) if code == "P-A" else None))
        session.add(Inclusion(patient_code="P-A", parcours=BPCO, included_by=MG, included_at=utc(2026, 10, 2, 9)))
        session.add(Inclusion(patient_code="P-G", parcours=BPCO, included_by=MG, included_at=utc(2026, 10, 2, 9)))
        # October: 10 consultations (délai 4 j): 7 accepted within 1..7 h, one 5 days late, two never.
        for i in range(10):
            code = in_ic[i] if i < 6 else "P-G"
            after = (i + 1) * H if i < 7 else (5 * D if i == 7 else None)
            await h.demande(code, "consultation", utc(2026, 10, 5 + i, 10), delai=4 * D, accepted_after=after,
                            cible="infirmier" if i < 5 else "medecin_generaliste")
        # 23:00 on 31 October in Paris, accepted 4 h later, on 1 November: it is October's.
        await h.demande("P-G", "visite_domicile", utc(2026, 10, 31, 22), delai=24 * H, accepted_after=4 * H)
        # Recherche MT: five made in October, accepted on 10 November (21 days: within the 30 days).
        for code in ["P-H", "P-I", "P-J", "P-K", "P-L"]:
            await h.demande(code, "recherche_mt", utc(2026, 10, 20, 10), delai=30 * D, accepted_after=21 * D,
                            by=MG2, cible="medecin_generaliste")
        # November: three red flags on P-B (8 h): one in 2 h, one at 9 h, one never; a consultation
        # for P-A after her exit from IC.
        for after in (2 * H, 9 * H, None):
            await h.demande("P-B", "red_flag", utc(2026, 11, 3, 10), delai=8 * H, accepted_after=after, act="red_flag")
        await h.demande("P-A", "consultation", utc(2026, 11, 20, 10), delai=4 * D)
        # Questionnaires: five finished in October (3 J0, 2 J7), one still running, one in November.
        for i, (code, status, finished) in enumerate(
                [("vigie-j0", "termine", utc(2026, 10, 3, 9))] * 3 + [("vigie-j7", "termine", utc(2026, 10, 9, 9))] * 2
                + [("vigie-j30", "en_cours", None), ("vigie-j30", "termine", utc(2026, 11, 3, 9))]):
            session.add(QuestionnaireRun(patient_code=in_ic[i % 6], room_id="!q", inclusion_id=100 + i, code=code,
                                         status=status, created_at=utc(2026, 10, 1, 9), finished_at=finished))
        for day in (4, 5):
            session.add(Act(user_id=IDE, kind="alerte_critique", patient_code="P-N", parcours="perinatalite",
                            ref=f"alerte:{day}", at=utc(2026, 11, day, 10), details={}))
        # TCIM asked in October: 5 done (3 closed), 2 interrupted, 1 still waiting; one asked on
        # 30 November done in December still counts in November.
        for i, etat in enumerate(["close"] * 3 + ["realisee"] * 2 + ["interrompue"] * 2 + ["confirmee"]):
            session.add(TcimRecord(demande_id=1000 + i, patient_code=in_ic[i % 6], etat=etat, infirmier=IDE,
                                   created_at=utc(2026, 10, 12 + i, 9), data_enc=b"x"))
        session.add(TcimRecord(demande_id=1100, patient_code="P-G", etat="realisee", infirmier=IDE,
                               created_at=utc(2026, 11, 30, 20), data_enc=b"x"))
        # Correction lines of a frozen bordereau (rooms.indemnites) repeat an act: never counted again.
        session.add(Act(user_id=IDE, kind="alerte_critique", patient_code="P-N", ref="alerte:4", correction=1,
                        at=utc(2026, 11, 20, 10), details={}))
        session.add(Act(user_id=IDE, kind="declenchement", patient_code="P-A", ref="demande:1", correction=1,
                        at=utc(2026, 10, 20, 10), details={"flow": "consultation", "cible": "infirmier"}))
    yield s
    await s.close()


async def figures(store, parcours=None, periode="2026-T4"):
    p = lire_periode(periode, NOW, PARIS)
    async with store.session() as session:
        q = Requetes(session, MOIS, PARIS, parcours)
        out = {}
        for ind in load().indicateurs:
            r = resultat(ind, await getattr(q, ind.requete)(), MOIS, p)
            out[ind.code] = {m: v.affichee() for m, v in r.par_mois.items()} | {"T4": r.periode.affichee()}
            out["_raw_" + ind.code] = {m: v.n for m, v in r.par_mois.items()}  # before the small-count rule
        out["_cible"] = sorted((m, f, c, n) for m, f, c, n in await q.declenchements_par_cible())
        return out


async def test_each_indicator_on_a_known_history(store):
    f = await figures(store)
    sep, oct_, nov = "2026-09", "2026-10", "2026-11"
    # September: no activity at all, shown as zeros (rates and delays: « – »).
    assert {k: v[sep] for k, v in f.items() if not k.startswith("_")} == {
        "inclusions": "0", "sorties": "0", "declenchements": "0", "acceptees": "0", "escaladees": "0",
        "taux_acceptation": "–", "acceptees_dans_le_delai": "–", "delai_acceptation_median": "–",
        "delai_acceptation_p90": "–", "red_flags": "0", "red_flags_dans_le_delai": "–", "alertes_critiques": "0",
        "patients_sans_mt": "0", "mt_trouves": "0", "questionnaires_completes": "0", "tcim_realisees": "0",
        "tcim_interrompues": "0"}
    assert f["inclusions"][oct_] == "8"  # 6 in IC, 2 in BPCO
    assert f["sorties"][nov] == "< 5"  # one exit
    # October: 10 consultations + the visit of the 31st + 5 recherches MT.
    assert f["declenchements"][oct_] == "16"
    assert f["acceptees"][oct_] == "14"
    assert f["taux_acceptation"][oct_] == "87,5"
    assert f["escaladees"][oct_] == "< 5" and f["_raw_escaladees"][oct_] == 3  # the late one, the two never accepted
    assert f["acceptees_dans_le_delai"][oct_] == "92,9"  # 13 of 14
    # Delays (h): 1..7, 4 (the 31st), 120 (late), 504 ×5 → median 6.5, p90 504.
    assert f["delai_acceptation_median"][oct_] == "6,5"
    assert f["delai_acceptation_p90"][oct_] == "504,0"
    # November: 3 red flags and 1 consultation: small counts everywhere.
    assert f["declenchements"][nov] == "< 5" and f["red_flags"][nov] == "< 5"
    assert f["red_flags_dans_le_delai"][nov] == "< 5"  # 1 of 3: computed on fewer than 5
    assert f["alertes_critiques"][nov] == "< 5" and f["_raw_alertes_critiques"][nov] == 2
    assert f["patients_sans_mt"][oct_] == "5" and f["patients_sans_mt"][nov] == "< 5"  # 00:30 on 1 Nov in Paris
    assert f["mt_trouves"][nov] == "5" and f["mt_trouves"][oct_] == "0"
    assert f["questionnaires_completes"][oct_] == "5" and f["questionnaires_completes"][nov] == "< 5"
    assert f["tcim_realisees"][oct_] == "5" and f["tcim_interrompues"][oct_] == "< 5"
    assert f["_raw_tcim_interrompues"][oct_] == 2 and f["tcim_realisees"][nov] == "< 5"
    # The quarter adds its months up.
    assert f["declenchements"]["T4"] == "20" and f["red_flags"]["T4"] == "< 5"
    assert f["taux_acceptation"]["T4"] == "80,0"  # (14 + 2) / 20
    # By type and target: the ledger's cible; none on the old visit line (the caller falls back).
    assert (oct_, "consultation", "infirmier", 5) in f["_cible"]
    assert (oct_, "visite_domicile", None, 1) in f["_cible"]
    assert (nov, "red_flag", "medecin_generaliste", 3) in f["_cible"]


async def test_a_parcours_counts_its_patients_while_they_are_in_it(store):
    f = await figures(store, parcours=IC)
    oct_, nov = "2026-10", "2026-11"
    assert f["inclusions"][oct_] == "6"
    assert f["declenchements"][oct_] == "6" and f["taux_acceptation"][oct_] == "100,0"
    assert f["delai_acceptation_median"][oct_] == "3,5" and f["delai_acceptation_p90"][oct_] == "5,5"
    assert f["escaladees"][oct_] == "0"
    assert f["red_flags"][nov] == "< 5"
    # P-A left IC on 15 November: her request of the 20th is not IC's.
    assert f["declenchements"][nov] == "< 5"  # the 3 red flags of P-B only
    # P-A (index 0, 6) left IC on 15 November: her J30 of the 3rd still counts, it was before.
    assert f["questionnaires_completes"][oct_] == "5"
    b = await figures(store, parcours=BPCO)
    assert b["inclusions"][oct_] == "< 5" and b["declenchements"][oct_] == "6"  # P-A 1, P-G 4 + the visit


async def test_a_professionals_own_activity(store):
    async with store.session() as session:
        start, end = lire_periode("2026-11", NOW, PARIS).bornes(PARIS)
        mine = await activite(session, MG2, start, end)
        assert mine["acceptees_par_vous"] == 5 and mine["durees_acceptation"] == [21 * 86400.0] * 5
        assert mine["demandes_faites"] == 0
        ide = await activite(session, IDE, *lire_periode("2026-10", NOW, PARIS).bornes(PARIS))
        assert ide["demandes_faites"] == 16 and ide["demandes_faites_acceptees"] == 14
        assert ide["acceptees_par_vous"] == 0
