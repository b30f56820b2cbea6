"""The indicators' queries (data/indicateurs.yaml names them): aggregates in SQL, SQLAlchemy Core,
the same SQL on SQLite and PostgreSQL.

Only plain columns are read (never `*_enc`), and nothing leaves a query but counts per month,
per breakdown value (flow, cible, parcours) and, for the quantiles, bare durations: no patient
code, no identity. Months are bucketed in SQL with a CASE over their UTC boundaries (Paris
midnights computed by domain.indicateurs), which is exact across DST on both backends.

Requests count in the month of their creation (their acceptance and escalation with them); the
other events in the month they happen. With a `parcours`, only patients included in that
parcours at the instant of the event count.
"""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from sqlalchemy import String, and_, case, cast, exists, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from domain.indicateurs import Ligne, Mois
from storage.models import Act, Deadline, Demande, Inclusion, Patient, QuestionnaireRun, TcimRecord

# The act itself, not a correction line of a frozen bordereau (rooms.indemnites): counted once.
ORIGINAL = Act.correction == 0
RED_FLAG = "red_flag"
TCIM_REALISEES = ("realisee", "close")  # domain.tcim.Etat: close only follows realisee
TCIM_INTERROMPUES = ("interrompue",)  # the flow of data/flows.yaml a !redflag creates
RECHERCHE_MT = "recherche_mt"
TCIM_MEDECIN = "tcim_medecin"  # the TCIM doctor's ledger line: « acceptation + visio » (issue 12)


def _ref_demande():
    """`demande:<id>`, the ref that Act and Deadline rows carry for a request."""
    return literal("demande:") + cast(Demande.id, String)


def _first_acceptances(since: datetime, user_id: str | None = None):
    """Each request's first acceptance since `since`, as a derived table keyed by ref. Joining the
    ledger to the requests through it, rather than Act directly, keeps the join linear: the ref is
    an expression of demande.id, which no index serves (SQLite indexes the derived table)."""
    # A TCIM's acceptance is its doctor's line (kind tcim_medecin, ref tcim:<id>, written by rooms.tcim
    # instead of « acceptation »); it names its request in details.demande.
    ref = case((Act.kind == TCIM_MEDECIN, Act.details["demande"].as_string()), else_=Act.ref)
    stmt = select(ref.label("ref"), func.min(Act.at).label("at")).where(
        Act.kind.in_(("acceptation", TCIM_MEDECIN)), Act.at >= since, ORIGINAL)
    if user_id is not None:
        stmt = stmt.where(Act.user_id == user_id)
    return stmt.group_by(ref).subquery()


class Requetes:
    """The queries for one window of months (and one parcours, or all). Indicators of one family
    share one SQL pass (memoized), so `!indicateurs` costs a handful of queries whatever the number
    of indicators."""

    def __init__(self, session: AsyncSession, mois: Sequence[Mois], tz: ZoneInfo, parcours: str | None = None):
        self.session = session
        self.mois = list(mois)
        self.tz = tz
        self.parcours = parcours
        self.debut = self.mois[0].debut(tz)
        self.fin = self.mois[-1].suivant().debut(tz)
        self._demandes: list | None = None
        self._durees_cache: list | None = None
        self._durees_lignes: list[Ligne] | None = None

    # --- helpers ------------------------------------------------------------------------------
    def _bucket(self, col):
        return case(*[(col < m.suivant().debut(self.tz), m.cle) for m in self.mois], else_=None)

    def _within(self, col):
        return and_(col >= self.debut, col < self.fin)

    def _in_parcours(self, patient_col, instant_col):
        """The patient was in the parcours at that instant (always true without a parcours)."""
        if self.parcours is None:
            return literal(True)
        return exists().where(Inclusion.patient_code == patient_col, Inclusion.parcours == self.parcours,
                              Inclusion.included_at <= instant_col,
                              or_(Inclusion.ended_at.is_(None), Inclusion.ended_at > instant_col))

    async def _rows(self, stmt) -> list:
        return list((await self.session.execute(stmt)).all())

    # --- parcours -----------------------------------------------------------------------------
    async def _inclusion_event(self, col) -> list[Ligne]:
        m = self._bucket(col).label("m")
        stmt = (select(m, Inclusion.parcours, func.count(func.distinct(Inclusion.patient_code)))
                .where(self._within(col)).group_by(m, Inclusion.parcours))
        if self.parcours:
            stmt = stmt.where(Inclusion.parcours == self.parcours)
        return [Ligne(mois, n, detail=p) for mois, p, n in await self._rows(stmt)]

    async def inclusions(self) -> list[Ligne]:
        return await self._inclusion_event(Inclusion.included_at)

    async def sorties(self) -> list[Ligne]:
        return await self._inclusion_event(Inclusion.ended_at)

    # --- requests: one pass, every request of the window with its acceptance and escalation ----
    async def _demandes_rows(self) -> list:
        if self._demandes is None:
            acc = _first_acceptances(self.debut)
            esc = Deadline.__table__.alias("esc")
            ref = _ref_demande()
            m = self._bucket(Demande.created_at).label("m")
            stmt = (select(m, Demande.flow,
                           func.count(),
                           func.count(acc.c.at),
                           func.sum(case((esc.c.status == "fired", 1), else_=0)),
                           func.sum(case((and_(acc.c.at.is_not(None), esc.c.due_at.is_not(None),
                                               acc.c.at <= esc.c.due_at), 1), else_=0)))
                    .select_from(Demande)
                    .outerjoin(acc, acc.c.ref == ref)
                    .outerjoin(esc, and_(esc.c.kind == "demande.escalade", esc.c.ref == ref))
                    .where(self._within(Demande.created_at),
                           self._in_parcours(Demande.patient_code, Demande.created_at))
                    .group_by(m, Demande.flow))
            self._demandes = await self._rows(stmt)
        return self._demandes

    async def declenchements(self) -> list[Ligne]:
        return [Ligne(m, n, detail=flow) for m, flow, n, *_ in await self._demandes_rows()]

    async def acceptees(self) -> list[Ligne]:
        return [Ligne(m, acc, detail=flow) for m, flow, _, acc, *_ in await self._demandes_rows()]

    async def escaladees(self) -> list[Ligne]:
        return [Ligne(m, int(esc or 0), detail=flow) for m, flow, _, _, esc, _ in await self._demandes_rows()]

    async def taux_acceptation(self) -> list[Ligne]:
        return [Ligne(m, acc, base=n, detail=flow) for m, flow, n, acc, *_ in await self._demandes_rows()]

    async def acceptees_dans_le_delai(self) -> list[Ligne]:
        """Of the accepted requests that had a délai de réponse (an escalation row)."""
        return [Ligne(m, int(ok or 0), base=acc, detail=flow) for m, flow, _, acc, _, ok in await self._demandes_rows()]

    async def red_flags(self) -> list[Ligne]:
        return [x for x in await self.declenchements() if x.detail == RED_FLAG]

    async def red_flags_dans_le_delai(self) -> list[Ligne]:
        return [Ligne(m, int(ok or 0), base=n, detail=flow)
                for m, flow, n, _, _, ok in await self._demandes_rows() if flow == RED_FLAG]

    async def _durees_rows(self) -> list:
        """(month, flow, created_at, first acceptance) of the accepted requests: the quantiles
        need the durations themselves (PostgreSQL has percentile_cont, SQLite has none)."""
        if self._durees_cache is None:
            acc = _first_acceptances(self.debut)
            m = self._bucket(Demande.created_at).label("m")
            stmt = (select(m, Demande.flow, Demande.created_at, acc.c.at)
                    .select_from(Demande).join(acc, acc.c.ref == _ref_demande())
                    .where(self._within(Demande.created_at),
                           self._in_parcours(Demande.patient_code, Demande.created_at)))
            self._durees_cache = await self._rows(stmt)
        return self._durees_cache

    async def _durees(self) -> list[Ligne]:
        if self._durees_lignes is not None:
            return self._durees_lignes
        by: dict[tuple[str, str], list[float]] = {}
        for m, flow, created, accepted in await self._durees_rows():
            by.setdefault((m, flow), []).append((_aware(accepted) - _aware(created)).total_seconds())
        self._durees_lignes = [Ligne(m, len(d), base=len(d), durees=tuple(d), detail=flow) for (m, flow), d in by.items()]
        return self._durees_lignes

    async def delai_acceptation_median(self) -> list[Ligne]:
        return await self._durees()

    async def delai_acceptation_p90(self) -> list[Ligne]:
        return await self._durees()

    # --- alertes, access to a médecin traitant ------------------------------------------------
    async def alertes_critiques(self) -> list[Ligne]:
        m = self._bucket(Act.at).label("m")
        stmt = (select(m, func.count()).where(Act.kind == "alerte_critique", ORIGINAL, self._within(Act.at),
                                              self._in_parcours(Act.patient_code, Act.at))
                .group_by(m))
        return [Ligne(mois, n) for mois, n in await self._rows(stmt)]

    async def patients_sans_mt(self) -> list[Ligne]:
        """Cercles made in the month without a médecin traitant. With a parcours: the patients in it
        at the end of the window (nobody is included at the instant their cercle is made)."""
        m = self._bucket(Patient.created_at).label("m")
        stmt = (select(m, func.count()).where(Patient.medecin_traitant.is_(None), self._within(Patient.created_at),
                                              self._in_parcours(Patient.code, self.fin))
                .group_by(m))
        return [Ligne(mois, n) for mois, n in await self._rows(stmt)]

    async def mt_trouves(self) -> list[Ligne]:
        """Recherche MT requests accepted in the month (the month of the acceptance)."""
        acc = _first_acceptances(self.debut)
        m = self._bucket(acc.c.at).label("m")
        stmt = (select(m, func.count())
                .select_from(Demande).join(acc, acc.c.ref == _ref_demande())
                .where(Demande.flow == RECHERCHE_MT, self._within(acc.c.at),
                       self._in_parcours(Demande.patient_code, acc.c.at))
                .group_by(m))
        return [Ligne(mois, n) for mois, n in await self._rows(stmt)]

    # --- questionnaires (issue 15) ---------------------------------------------------------------
    async def questionnaires_completes(self) -> list[Ligne]:
        """Questionnaires finished in the month, by questionnaire (vigie-j0, vigie-j7…)."""
        m = self._bucket(QuestionnaireRun.finished_at).label("m")
        stmt = (select(m, QuestionnaireRun.code, func.count())
                .where(QuestionnaireRun.status == "termine", self._within(QuestionnaireRun.finished_at),
                       self._in_parcours(QuestionnaireRun.patient_code, QuestionnaireRun.finished_at))
                .group_by(m, QuestionnaireRun.code))
        return [Ligne(mois, n, detail=code) for mois, code, n in await self._rows(stmt)]

    # --- TCIM (issue 12): like requests, in the month they were asked ------------------------------
    async def _tcim(self, etats: tuple[str, ...]) -> list[Ligne]:
        m = self._bucket(TcimRecord.created_at).label("m")
        stmt = (select(m, func.count())
                .where(TcimRecord.etat.in_(etats), self._within(TcimRecord.created_at),
                       self._in_parcours(TcimRecord.patient_code, TcimRecord.created_at))
                .group_by(m))
        return [Ligne(mois, n) for mois, n in await self._rows(stmt)]

    async def tcim_realisees(self) -> list[Ligne]:
        """Done: `!tcim fin` (realisee), then closed with the CR and the prescription (close)."""
        return await self._tcim(TCIM_REALISEES)

    async def tcim_interrompues(self) -> list[Ligne]:
        return await self._tcim(TCIM_INTERROMPUES)

    # --- déclenchements by type and target (breakdown for the CSV) ------------------------------
    async def declenchements_par_cible(self) -> list[tuple[str, str, str | None, int]]:
        """(month, flow, cible, count) from the ledger's declenchement lines; red flags go to a
        médecin généraliste (data/flows.yaml red_flag). `cible` is None on lines written before
        the ledger recorded it: the caller falls back to the flow's own target."""
        m = self._bucket(Act.at).label("m")
        flow = Act.details["flow"].as_string()
        cible = Act.details["cible"].as_string()
        stmt = (select(m, Act.kind, flow, cible, func.count())
                .where(Act.kind.in_(("declenchement", "red_flag")), ORIGINAL, self._within(Act.at),
                       self._in_parcours(Act.patient_code, Act.at))
                .group_by(m, Act.kind, flow, cible))
        return [(mois, RED_FLAG if kind == "red_flag" else f, "medecin_generaliste" if kind == "red_flag" else c, n)
                for mois, kind, f, c, n in await self._rows(stmt)]


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


# --- one professional's own activity (!activite) ----------------------------------------------------
async def activite(session: AsyncSession, user_id: str, debut: datetime, fin: datetime) -> dict[str, object]:
    """The sender's own figures: requests made and their fate, requests accepted and how fast,
    red flags, inclusions. Nothing about anyone else."""
    acc = _first_acceptances(debut)
    ref = _ref_demande()
    faites = (await session.execute(
        select(func.count(), func.count(acc.c.at)).select_from(Demande).outerjoin(acc, acc.c.ref == ref)
        .where(Demande.demandeur == user_id, Demande.created_at >= debut, Demande.created_at < fin))).one()
    by_me = _first_acceptances(debut, user_id)
    mine = (select(Demande.created_at, by_me.c.at).select_from(Demande).join(by_me, by_me.c.ref == ref)
            .where(by_me.c.at < fin))
    durees = [(_aware(a) - _aware(c)).total_seconds() for c, a in (await session.execute(mine)).all()]
    kinds = dict((await session.execute(
        select(Act.kind, func.count()).where(Act.user_id == user_id, ORIGINAL, Act.at >= debut, Act.at < fin,
                                             Act.kind.in_(("red_flag", "alerte_critique", "inclusion")))
        .group_by(Act.kind))).all())
    return {"demandes_faites": faites[0], "demandes_faites_acceptees": faites[1],
            "acceptees_par_vous": len(durees), "durees_acceptation": durees,
            "red_flags": kinds.get("red_flag", 0), "alertes_critiques": kinds.get("alerte_critique", 0),
            "inclusions": kinds.get("inclusion", 0)}


REQUETES = frozenset(name for name in vars(Requetes) if not name.startswith("_") and name != "declenchements_par_cible")
