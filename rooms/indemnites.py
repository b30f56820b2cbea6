"""The indemnity ledger: record each act once, price it (domain.indemnites), keep its state current,
and build the bordereaux for the coordinators (decisions.md 12-15, spec §5).

- `record` is how the flows write a ledger line: once per (professional, act kind, ref), whatever
  the retries; it is priced at once in the same transaction.
- A line's facts are its details (`criteres`: the criteria met so far) plus the directory (profession,
  cotisation on the act's date). `add_criterion` notes a criterion met (CR posted, fiche closed…) and
  prices again: a pending line becomes éligible in the transaction that brought the missing piece.
- A validated bordereau freezes its lines: a later change of price becomes a correction line in an
  open quarter, so a paid amount is never rewritten.
- No patient identity anywhere here: patient codes only (decisions.md 15).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time, timezone
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from domain.indemnites import (
    CRITERES,
    ETAT_LIBELLE,
    Bareme,
    Etat,
    Ligne,
    Tarif,
    Trimestre,
    dernier_trimestre_termine,
    euros,
    parse_trimestre,
    prochain_debut_de_trimestre,
    prochain_jour_de_semaine,
    tarifer,
    trimestre_de,
)
from domain.markup import literal
from rooms import bordereaux
from rooms.directory import profession_label
from rooms.patients import active_inclusions
from storage.models import Act, Bordereau, Deadline, Observation, Professional
from storage.models import Demande as DemandeRow

POST_HOUR = time(8, 0)  # bordereaux and digests wait for the working day (decisions.md 1)
DIGEST_WEEKDAY = 0  # lundi
QUARTERLY, WEEKLY = "indemnites.trimestre", "indemnites.attente"
ACT_LABELS = {"reperage": "repérage", "inclusion": "inclusion", "declenchement": "déclenchement",
              "acceptation": "acceptation", "red_flag": "red flag", "alerte_critique": "alerte critique",
              "suivi": "suivi", "tcim_medecin": "TCIM médecin", "tcim_infirmier": "TCIM infirmier·e"}


# --- recording and pricing ---------------------------------------------------------------------------
async def record(ctx, *, user_id: str, kind: str, ref: str, patient_code: str | None = None,
                 parcours: str | None = None, criteres: tuple[str, ...] = (), **details) -> Act:
    """One ledger line per (professional, kind, ref): a replay returns the line already there."""
    existing = await ctx.session.scalar(select(Act).where(Act.user_id == user_id, Act.kind == kind, Act.ref == ref,
                                                          Act.correction == 0))
    if existing is not None:
        return existing
    if parcours is None and patient_code:
        current = await active_inclusions(ctx.session, patient_code)
        if len(current) == 1:  # a generic request (consultation, VAD) counts in the patient's parcours
            parcours = current[0].parcours
    act = Act(user_id=user_id, kind=kind, patient_code=patient_code, parcours=parcours, ref=ref, at=ctx.now,
              details={**details, "criteres": sorted(set(criteres))}, correction=0, montant_cents=0)
    ctx.session.add(act)
    await price(ctx.session, ctx.services, act, ctx.now)
    if kind == "suivi":
        await _recheck_inclusions(ctx.session, ctx.services, act, ctx.now)
    return act


async def add_criterion(ctx, ref: str, critere: str, *, user_id: str | None = None,
                        kinds: tuple[str, ...] | None = None) -> list[Act]:
    """A criterion is now met for the lines of `ref` (e.g. "cr" for "demande:12"): price them again."""
    stmt = select(Act).where(Act.ref == ref, Act.correction == 0)
    if user_id:
        stmt = stmt.where(Act.user_id == user_id)
    if kinds:
        stmt = stmt.where(Act.kind.in_(kinds))
    acts = list((await ctx.session.scalars(stmt)).all())
    for act in acts:
        met = set(act.details.get("criteres") or [])
        if critere not in met:
            act.details = {**act.details, "criteres": sorted(met | {critere})}  # a new dict: JSON change seen
        await price(ctx.session, ctx.services, act, ctx.now)
    return acts


async def call_off(ctx, ref: str) -> None:
    """The request of `ref` was called off: its lines still waiting for a criterion will not get it
    (priced non éligible, no more « à compléter » hints); those already éligible stay so."""
    for act in (await ctx.session.scalars(select(Act).where(Act.ref == ref, Act.correction == 0))).all():
        act.details = {**act.details, "annulee": True}  # a new dict: JSON change seen
        await price(ctx.session, ctx.services, act, ctx.now)


async def reprice_user(ctx, user_id: str) -> int:
    """The professional's lines after a directory change (cotisation corrected): open lines move,
    frozen ones get corrections."""
    acts = (await ctx.session.scalars(select(Act).where(Act.user_id == user_id, Act.correction == 0))).all()
    for act in acts:
        await price(ctx.session, ctx.services, act, ctx.now)
    return len(acts)


async def catch_up(session: AsyncSession, services, now: datetime) -> int:
    """Price the lines due for it: written by a flow with a plain insert, or whose details another
    module rewrote (storage.models marks them: `priced_at` NULL). The flows of this repository
    price in their own transaction (`record`, `add_criterion`). Bounded by what changed since the
    last pricing, not by the size of the ledger (a partial index holds those lines)."""
    stmt = select(Act).where(Act.priced_at.is_(None), Act.correction == 0)
    acts = (await session.scalars(stmt)).all()
    cache: dict = {}
    for act in acts:
        fresh = act.etat is None
        await price(session, services, act, now, cache=cache)
        if fresh and act.kind == "suivi":
            await _recheck_inclusions(session, services, act, now)
    return len(acts)


async def _recheck_inclusions(session: AsyncSession, services, suivi: Act, now: datetime) -> None:
    if suivi.patient_code and suivi.parcours:
        await recheck_inclusions(session, services, suivi.patient_code, suivi.parcours, now)


async def recheck_inclusions(session: AsyncSession, services, patient_code: str, parcours: str,
                             now: datetime) -> None:
    """Données de base or an item just posted may complete what a pending inclusion line waits for."""
    await session.flush()
    waiting = (await session.scalars(select(Act).where(
        Act.kind == "inclusion", Act.patient_code == patient_code, Act.parcours == parcours,
        Act.etat == Etat.EN_ATTENTE.value, Act.correction == 0))).all()
    for act in waiting:
        await price(session, services, act, now)


async def price(session: AsyncSession, services, act: Act, now: datetime, *, cache: dict | None = None) -> Tarif:
    bareme: Bareme = services.bareme
    tz: ZoneInfo = services.tz
    ligne = await facts(session, services, act, cache if cache is not None else {})
    tarif = tarifer(bareme, ligne, tz)
    if act.bordereau_id is None:
        _write(act, tarif, trimestre_de(act.at, tz), now)
    else:
        await _correct(session, services, act, tarif, now)
        act.priced_at = now  # the paid figures stay; the line is up to date through its corrections
    return tarif


def _write(act: Act, tarif: Tarif, trimestre: Trimestre, now: datetime) -> None:
    act.trimestre = str(trimestre)
    act.etat = tarif.etat.value
    act.montant_cents = tarif.montant_cents
    act.motif = tarif.motif[:300] or None
    act.cpam, act.regle, act.version = tarif.cpam, tarif.regle, tarif.version
    act.priced_at = now


def du(act: Act) -> int:
    return act.montant_cents if act.etat == Etat.ELIGIBLE.value else 0


async def _correct(session: AsyncSession, services, act: Act, tarif: Tarif, now: datetime) -> None:
    """A frozen (paid) line whose price changed: the difference goes to an open quarter."""
    corrections = list((await session.scalars(select(Act).where(
        Act.user_id == act.user_id, Act.kind == act.kind, Act.ref == act.ref, Act.correction > 0))).all())
    paid = du(act) + sum(du(c) for c in corrections)
    delta = tarif.du_cents - paid
    if delta == 0:
        return
    target = trimestre_de(now, services.tz)
    while await session.scalar(select(Bordereau.id).where(Bordereau.user_id == act.user_id,
                                                          Bordereau.trimestre == str(target))):
        target = target.suivant()
    why = tarif.motif or "critères remplis"
    session.add(Act(user_id=act.user_id, kind=act.kind, patient_code=act.patient_code, parcours=act.parcours,
                    ref=act.ref, at=now, details={"correction_de": act.id, "criteres": act.details.get("criteres", [])},
                    correction=len(corrections) + 1, trimestre=str(target), etat=Etat.ELIGIBLE.value,
                    montant_cents=delta, cpam=tarif.cpam, regle=tarif.regle, version=tarif.version, priced_at=now,
                    motif=f"correction de la ligne du {act.at.astimezone(services.tz):%d/%m/%Y} ({act.trimestre}) : "
                          f"{why}"[:300]))


async def facts(session: AsyncSession, services, act: Act, cache: dict) -> Ligne:
    prof = await _cached(session, cache, Professional, act.user_id)
    details = act.details or {}
    met = set(details.get("criteres") or [])
    other = details.get("criteria")  # flows may keep their criteria as a list or as {name: bool}
    if isinstance(other, dict):
        met |= {k for k, v in other.items() if v}
    elif isinstance(other, list):
        met |= set(other)
    if act.kind == "suivi" and details.get("element"):
        met.add("element_de_suivi")
        if str(details["element"]).startswith("fiche_suivi"):
            met.add("fiche_suivi")
        if details.get("photos"):
            met.add("photos")
    if act.kind == "inclusion" and "donnees_de_base" not in met and act.patient_code and act.parcours:
        if await _donnees_de_base(session, services, act.patient_code, act.parcours, cache):
            met.add("donnees_de_base")
    roles: set[str] = set()
    for u in (details.get("demandeur"), details.get("pour_compte_de")):
        if u:
            p = await _cached(session, cache, Professional, u)
            roles |= set(p.roles or []) if p else set()
    return Ligne(acte=act.kind, at=act.at, parcours=act.parcours, flux=details.get("flow"),
                 profession=prof.profession if prof else None,
                 cotisation_jusqu_au=prof.cotisation_until if prof else None,
                 roles_demandeur=frozenset(roles), criteres=frozenset(met), annulee=bool(details.get("annulee")))


async def _cached(session, cache: dict, model, key):
    k = (model.__name__, key)
    if k not in cache:
        cache[k] = await session.get(model, key)
    return cache[k]


async def _donnees_de_base(session, services, patient_code: str, parcours: str, cache: dict) -> bool:
    """Every donnée de base of the parcours is recorded (`!donnees`: storage.suivi observations)."""
    p = services.catalogue.get(parcours)
    if p is None or not p.donnees_de_base:
        return False
    key = ("ddb", patient_code, parcours)
    if key not in cache:
        cache[key] = set((await session.scalars(select(Observation.element).where(
            Observation.patient_code == patient_code, Observation.parcours == parcours,
            Observation.kind == "donnee").distinct())).all())
    return {d.code for d in p.donnees_de_base} <= cache[key]


# --- reading the ledger --------------------------------------------------------------------------------
@dataclass
class Resume:
    """One professional's quarter: counts and amounts per state (cents)."""

    user_id: str
    nom: str = ""
    profession: str = ""
    actes: int = 0
    eligible_cents: int = 0
    attente_cents: int = 0
    attente: int = 0
    non_eligible: int = 0
    valide: bool = False
    par_etat: dict = field(default_factory=dict)


async def summary(session: AsyncSession, trimestre: Trimestre) -> list[Resume]:
    """The bordereau aggregate: one indexed GROUP BY over the quarter's lines, then the names."""
    rows = (await session.execute(
        select(Act.user_id, Act.etat, func.count(), func.coalesce(func.sum(Act.montant_cents), 0))
        .where(Act.trimestre == str(trimestre)).group_by(Act.user_id, Act.etat))).all()
    out: dict[str, Resume] = {}
    for user_id, etat, n, cents in rows:
        r = out.setdefault(user_id, Resume(user_id))
        r.actes += n
        r.par_etat[etat] = (n, int(cents))
        if etat == Etat.ELIGIBLE.value:
            r.eligible_cents += int(cents)
        elif etat == Etat.EN_ATTENTE.value:
            r.attente_cents += int(cents)
            r.attente += n
        else:
            r.non_eligible += n
    if out:  # names and validations in one more query
        validated = (Bordereau.user_id == Professional.user_id) & (Bordereau.trimestre == str(trimestre))
        for user_id, nom, profession, bordereau_id in (await session.execute(
                select(Professional.user_id, Professional.display_name, Professional.profession, Bordereau.id)
                .outerjoin(Bordereau, validated).where(Professional.user_id.in_(list(out))))).all():
            r = out[user_id]
            r.nom, r.profession, r.valide = nom, profession, bordereau_id is not None
    return sorted(out.values(), key=lambda r: (r.nom or r.user_id).casefold())


async def lines(session: AsyncSession, trimestre: Trimestre, user_id: str | None = None) -> list[Act]:
    stmt = select(Act).where(Act.trimestre == str(trimestre))
    if user_id:
        stmt = stmt.where(Act.user_id == user_id)
    return list((await session.scalars(stmt.order_by(Act.user_id, Act.at, Act.id))).all())


async def demande_refs(session: AsyncSession, acts: list[Act]) -> dict[str, str]:
    """ "demande:12" -> "P-7K3Q/3" (what clinicians type), for the lines that have one; a TCIM's
    lines (rooms.tcim: "tcim:<request id>") name their request too."""
    ids = {int(a.ref.split(":")[1]) for a in acts if a.ref and a.ref.startswith(("demande:", "tcim:"))}
    if not ids:
        return {}
    rows = (await session.execute(select(DemandeRow.id, DemandeRow.patient_code, DemandeRow.numero)
                                  .where(DemandeRow.id.in_(ids)))).all()
    return {f"{kind}:{i}": f"{code}/{n}" for i, code, n in rows for kind in ("demande", "tcim")}


def to_do(act: Act, refs: dict[str, str]) -> str:
    """What to do to complete a pending line, with the patient code (never an identity)."""
    missing = [c for c in (act.motif or "").removeprefix("manque : ").split(", ") if c]
    by_label = {label: (code, hint) for code, (label, hint) in CRITERES.items()}
    where = refs.get(act.ref or "", act.patient_code or "")
    numero = where.split("/")[1] if "/" in where else "<n°>"
    steps = []
    for label in missing:
        code, hint = by_label.get(label, (None, label))
        hint = hint.replace("<n°>", numero).replace("<P-XXXX/n>", where or "<P-XXXX/n>")
        steps.append(hint)
    return f"**{where or '—'}** · {ACT_LABELS.get(act.kind, act.kind)} : " + " ; ".join(steps)


# --- the coordinators' bordereau ------------------------------------------------------------------------
async def post_bordereau(ctx, room_id: str, trimestre: Trimestre, reply_to: str | None = None) -> int:
    """Summary message, then one PDF per professional, the CSV and the chart, as encrypted files."""
    await catch_up(ctx.session, ctx.services, ctx.now)
    await ctx.session.flush()
    resumes = await summary(ctx.session, trimestre)
    if not resumes:
        ctx.send(room_id, f"🧾 **Bordereaux {trimestre}** : aucun acte au registre pour ce trimestre.",
                 reply_to=reply_to)
        return 0
    ctx.send(room_id, summary_text(trimestre, resumes), ref=f"bordereau:{trimestre}", reply_to=reply_to)
    acts = await lines(ctx.session, trimestre)
    profs = {p.user_id: p for p in (await ctx.session.scalars(
        select(Professional).where(Professional.user_id.in_([r.user_id for r in resumes])))).all()}
    refs = await demande_refs(ctx.session, acts)
    tz, cpts = ctx.services.tz, ctx.services.cpts_name
    validations = {b.user_id: b for b in (await ctx.session.scalars(
        select(Bordereau).where(Bordereau.trimestre == str(trimestre)))).all()}
    for r in resumes:
        own = [a for a in acts if a.user_id == r.user_id]
        pdf = bordereaux.pdf(cpts, trimestre, profs.get(r.user_id), r.user_id, own, refs, tz,
                             validations.get(r.user_id))
        ctx.send_file(room_id, f"bordereau-{trimestre}-{bordereaux.slug(r.nom or r.user_id)}.pdf", pdf,
                      "application/pdf", ref=f"bordereau:{trimestre}:pdf:{r.user_id}")
    ctx.send_file(room_id, f"bordereau-{trimestre}.csv", bordereaux.csv_bytes(trimestre, acts, profs, refs, tz),
                  "text/csv", ref=f"bordereau:{trimestre}:csv")
    ctx.send_file(room_id, f"bordereau-{trimestre}.png", bordereaux.chart(trimestre, acts, tz), "image/png",
                  msgtype="m.image", ref=f"bordereau:{trimestre}:png")
    return len(resumes)


def _clean(name: str) -> str:
    return "".join(ch for ch in name if ch.isprintable() and ch != "`")[:28]


def summary_text(trimestre: Trimestre, resumes: list[Resume]) -> str:
    head = f"{'Professionnel':<28} {'Actes':>5} {'Éligible':>12} {'En attente':>12} {'Non élig.':>9}"
    rows = [head, "-" * len(head)]
    for r in resumes:
        mark = " ✔" if r.valide else ""
        rows.append(f"{_clean(r.nom or r.user_id):<28} {r.actes:>5} {euros(r.eligible_cents):>12} "
                    f"{euros(r.attente_cents):>12} {r.non_eligible:>9}{mark}")
    total = (sum(r.actes for r in resumes), sum(r.eligible_cents for r in resumes),
             sum(r.attente_cents for r in resumes), sum(r.non_eligible for r in resumes))
    rows += ["-" * len(head), f"{'TOTAL':<28} {total[0]:>5} {euros(total[1]):>12} {euros(total[2]):>12} {total[3]:>9}"]
    table = "\n".join("    " + line for line in rows)
    return (f"🧾 **Bordereaux d'indemnisation · {trimestre.libelle()}**\n\n{table}\n\n"
            "Montants CPTS : les parts « + CPAM » sont affichées sur les lignes, jamais additionnées. "
            "En attente : non totalisé tant que le critère manque. ✔ : bordereau validé (payé, figé).\n"
            f"Pour valider un bordereau : `!bordereau valider <professionnel> {trimestre}`.")


async def validate(ctx, user_id: str, trimestre: Trimestre) -> Bordereau:
    """Paid: the professional's lines of the quarter are frozen with the amount validated."""
    if trimestre >= trimestre_de(ctx.now, ctx.services.tz):
        ctx.refuse(f"le trimestre {trimestre} n'est pas terminé : on valide un trimestre échu", usage=False)
    existing = await ctx.session.scalar(select(Bordereau).where(Bordereau.user_id == user_id,
                                                                Bordereau.trimestre == str(trimestre)))
    if existing is not None:
        ctx.refuse(f"le bordereau {trimestre} de ce professionnel est déjà validé "
                   f"(le {existing.valide_le.astimezone(ctx.services.tz):%d/%m/%Y}) : les changements "
                   "passent en corrections sur le trimestre suivant", usage=False)
    await catch_up(ctx.session, ctx.services, ctx.now)
    await ctx.session.flush()
    own = await lines(ctx.session, trimestre, user_id)
    b = Bordereau(user_id=user_id, trimestre=str(trimestre), total_cents=sum(du(a) for a in own), lignes=len(own),
                  valide_par=ctx.sender, valide_le=ctx.now)
    ctx.session.add(b)
    await ctx.session.flush()
    for a in own:
        a.bordereau_id = b.id
    return b


# --- the professional's own view --------------------------------------------------------------------------
async def my_lines_text(ctx, user_id: str, trimestre: Trimestre) -> str:
    await catch_up(ctx.session, ctx.services, ctx.now)
    await ctx.session.flush()
    own = await lines(ctx.session, trimestre, user_id)
    if not own:
        return f"🧾 **Vos indemnités · {trimestre.libelle()}** : aucun acte enregistré."
    refs = await demande_refs(ctx.session, own)
    tz = ctx.services.tz
    totals = {e: sum(a.montant_cents for a in own if a.etat == e.value) for e in Etat}
    out = [f"🧾 **Vos indemnités · {trimestre.libelle()}**", ""]
    shown = own[:60]
    for a in shown:
        where = refs.get(a.ref or "", a.patient_code or "—")
        etat = ETAT_LIBELLE.get(Etat(a.etat), a.etat) if a.etat else "à calculer"
        extra = f" ({literal(a.motif)})" if a.motif else ""
        cpam = f" {a.cpam}" if a.cpam else ""
        out.append(f"- {a.at.astimezone(tz):%d/%m} · {where} · {_parcours(ctx, a.parcours)} · "
                   f"{ACT_LABELS.get(a.kind, a.kind)} · {euros(a.montant_cents)}{cpam} · **{etat}**{extra}")
    if len(own) > len(shown):
        out.append(f"- … et {len(own) - len(shown)} autres lignes (voir le bordereau des coordinateurs)")
    out += ["", f"**Éligible : {euros(totals[Etat.ELIGIBLE])}** · en attente : {euros(totals[Etat.EN_ATTENTE])} "
                f"(non totalisé) · non éligible : {sum(1 for a in own if a.etat == Etat.NON_ELIGIBLE.value)} ligne(s)"]
    pending = [a for a in own if a.etat == Etat.EN_ATTENTE.value]
    if pending:
        out += ["", "**Pour compléter les lignes en attente :**"]
        out += [f"- {to_do(a, refs)}" for a in pending[:30]]
    if any(a.cpam for a in own):
        out.append("\nLes parts « + CPAM » se facturent à l'Assurance maladie : elles ne sont pas dans ces totaux.")
    return "\n".join(out)


def _parcours(ctx, code: str | None) -> str:
    p = ctx.services.catalogue.get(code) if code else None
    return p.nom if p else (code or "hors parcours")


# --- attestations (recherche MT, decisions.md 14) ------------------------------------------------------------
async def ref_of(ctx, code: str, numero: int) -> str | None:
    row = await ctx.session.scalar(select(DemandeRow.id).where(DemandeRow.patient_code == code,
                                                               DemandeRow.numero == numero))
    return f"demande:{row}" if row else None


# --- timers: the quarterly post and the weekly digest -----------------------------------------------------
async def ensure_schedule(session, services, now: datetime) -> None:
    """At start (AT_START): one pending quarterly post and one weekly digest (rows, like every timer)."""
    await _schedule(session, services.store, services, now)


async def _schedule(session, store, services, now: datetime) -> None:
    room = services.coordinator_room or ""
    for kind, due, ref in _next_timers(services.tz, now):
        pending = await session.scalar(select(Deadline.id).where(Deadline.kind == kind, Deadline.status == "pending"))
        known = await session.scalar(select(Deadline.id).where(Deadline.kind == kind, Deadline.ref == ref))
        if pending is None and known is None:
            await store.add_deadline(kind, ref, due, now, payload={"room_id": room}, session=session)


def _next_timers(tz: ZoneInfo, now: datetime):
    q_at = prochain_debut_de_trimestre(now, tz, POST_HOUR)
    w_at = prochain_jour_de_semaine(now, tz, DIGEST_WEEKDAY, POST_HOUR)
    return [(QUARTERLY, q_at, f"bordereau:{dernier_trimestre_termine(q_at, tz)}"),
            (WEEKLY, w_at, f"attente:{w_at.astimezone(tz).date().isoformat()}")]


async def quarterly(ctx, deadline) -> None:
    """First day of a quarter: the bordereaux of the quarter that ended, then the next timer."""
    room = ctx.services.coordinator_room or deadline.payload.get("room_id")
    posted = parse_trimestre(deadline.ref.split(":", 1)[1])  # the row's quarter, even when it fires late
    if room:
        await post_bordereau(ctx, room, posted)
    # The next quarter follows this one (not "now"): a bot down for months posts each one in turn.
    following = posted.suivant()
    due = datetime.combine(following.fin(ctx.services.tz).astimezone(ctx.services.tz).date(), POST_HOUR,
                           tzinfo=ctx.services.tz).astimezone(timezone.utc)
    ref = f"bordereau:{following}"
    if await ctx.session.scalar(select(Deadline.id).where(Deadline.kind == QUARTERLY, Deadline.ref == ref)) is None:
        await ctx.store.add_deadline(QUARTERLY, ref, due, ctx.now, payload={"room_id": room or ""},
                                     session=ctx.session)


async def weekly(ctx, deadline) -> None:
    """Monday: the pending lines, per professional, with what is missing (codes only)."""
    room = ctx.services.coordinator_room or deadline.payload.get("room_id")
    if room:
        text = await digest_text(ctx)
        if text:
            ctx.send(room, text)
    await _schedule(ctx.session, ctx.store, ctx.services, ctx.now)


async def digest_text(ctx) -> str | None:
    await catch_up(ctx.session, ctx.services, ctx.now)
    await ctx.session.flush()
    pending = list((await ctx.session.scalars(select(Act).where(Act.etat == Etat.EN_ATTENTE.value,
                                                                Act.bordereau_id.is_(None))
                                              .order_by(Act.user_id, Act.at))).all())
    if not pending:
        return None
    by_user: dict[str, list[Act]] = {}
    for a in pending:
        by_user.setdefault(a.user_id, []).append(a)
    profs = {p.user_id: p for p in (await ctx.session.scalars(
        select(Professional).where(Professional.user_id.in_(list(by_user))))).all()}
    refs = await demande_refs(ctx.session, pending)
    out = [f"⏳ **Lignes d'indemnité en attente** ({len(pending)}, {euros(sum(a.montant_cents for a in pending))} "
           "non totalisés)", ""]
    for user_id, acts in by_user.items():
        p = profs.get(user_id)
        label = f"{literal(p.display_name)} ({profession_label(p.profession)})" if p else user_id
        out.append(f"- {label} : {len(acts)} ligne(s), {euros(sum(a.montant_cents for a in acts))}")
        out += [f"    - {to_do(a, refs)}" for a in acts[:10]]
    return "\n".join(out)


# --- what answers what (merged by bot/wiring.compose) -------------------------------------------------
DEADLINE_HANDLERS = {QUARTERLY: quarterly, WEEKLY: weekly}
AT_START = [ensure_schedule]  # run by the bot at each start, in one transaction (bot/wiring.py)
