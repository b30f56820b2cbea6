"""Tableau de bord (issue 18): the indicators of data/indicateurs.yaml for a period, posted in the
coordinators' room as a short table, a chart (PNG, encrypted m.image) and a CSV (encrypted m.file);
automatically on the first working day of each month (and of each quarter), as deadline rows;
and a professional's own activity in their direct chat (`!activite`).

Aggregates only: no identity and no patient code, counts of 1 to 4 shown « < 5 »
(domain.indicateurs). The figures come from storage.indicateurs (SQL aggregates).
"""
from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select

from domain.indicateurs import (
    Catalogue,
    Ligne,
    Mois,
    Periode,
    Resultat,
    Valeur,
    date_rapport,
    load_indicateurs,
    mois_de,
    periode_mois,
    quantile,
    resultat,
    trimestre_de,
    valeur,
)
from domain.text import format_duree
from rooms.directory import profession_label
from storage.indicateurs import Requetes, activite
from storage.models import Deadline

CATALOGUE: Catalogue = load_indicateurs()
REPORT_KIND = "indicateurs.rapport"
PNG, CSV = "image/png", "text/csv"


@dataclass(frozen=True)
class Rapport:
    periode: Periode
    parcours: str | None
    fenetre: tuple[Mois, ...]
    resultats: tuple[Resultat, ...]
    par_cible: dict[tuple[str, str], int]  # (flow, cible) -> count over the period
    par_detail_mois: dict[str, dict[str, dict[str, Valeur]]]  # indicator -> detail -> month -> figure


async def calculer(session, services, periode: Periode, parcours: str | None = None,
                   catalogue: Catalogue = CATALOGUE) -> Rapport:
    """Every indicator over the chart's window (the period, widened to 6 months)."""
    fenetre = periode.fenetre()
    q = Requetes(session, fenetre, services.tz, parcours)
    resultats, details = [], {}
    cles = [m.cle for m in periode.mois]
    for ind in catalogue.indicateurs:
        lignes: list[Ligne] = await getattr(q, ind.requete)()
        resultats.append(resultat(ind, lignes, fenetre, periode))
        groupes: dict[str, dict[str, list[Ligne]]] = {}
        for x in lignes:
            if x.detail:
                groupes.setdefault(x.detail, {}).setdefault(x.mois, []).append(x)
        details[ind.code] = {d: {k: valeur(ind.mesure, by_month.get(k, [])) for k in cles}
                             for d, by_month in sorted(groupes.items())}
    par_cible: dict[tuple[str, str], int] = {}
    for mois, flow, cible, n in await q.declenchements_par_cible():
        if mois in cles:
            f = services.flows.get(flow)
            cible = cible or (f.cible_profession or f.cible_role if f else None) or "non précisée"
            par_cible[(flow, cible)] = par_cible.get((flow, cible), 0) + n
    return Rapport(periode, parcours, fenetre, tuple(resultats), par_cible, details)


# --- the three renderings ------------------------------------------------------------------------
def _nom_parcours(services, code: str | None) -> str:
    if code is None:
        return "tous parcours"
    p = services.catalogue.get(code)
    return p.nom if p else code


def table(services, r: Rapport) -> str:
    """The short table of the message (the period's figures)."""
    lines = [f"📊 **Indicateurs · {r.periode.libelle}** · {_nom_parcours(services, r.parcours)} · {services.cpts_name}", "",
             "| Indicateur | Valeur |", "|---|---|"]
    for res in r.resultats:
        lines.append(f"| {res.indicateur.libelle} | {res.periode.affichee()} |")
    lines += ["", "« < 5 » : effectif de 1 à 4 (ou calculé sur moins de 5 lignes), masqué pour qu'aucun patient "
                  "ne soit identifiable. Détail par mois, par type et par cible dans le CSV."]
    if CATALOGUE.en_attente:
        lines.append("Pas encore calculés (données non enregistrées sous une forme agrégeable) : "
                     + ", ".join(i.libelle for i in CATALOGUE.en_attente) + ".")
    return "\n".join(lines)


def csv_bytes(services, r: Rapport) -> bytes:
    """French spreadsheet CSV: `;`, decimal comma, UTF-8 with a BOM (Excel reads the accents)."""
    mois = [m.cle for m in r.periode.mois]

    def row(cells) -> str:
        return ";".join(_csv_cell(c) for c in cells)

    out = [row(["Indicateur", "Détail", *mois, f"Total {r.periode.code}"]),
           row([f"Période : {r.periode.libelle}", f"Parcours : {_nom_parcours(services, r.parcours)}",
                *[""] * len(mois), ""])]
    for res in r.resultats:
        ind = res.indicateur
        out.append(row([ind.libelle, "", *[res.par_mois[m].affichee() for m in mois], res.periode.affichee()]))
        for detail, by_month in r.par_detail_mois.get(ind.code, {}).items():
            label = _detail_label(services, ind.code, detail)
            out.append(row([ind.libelle, label, *[by_month[m].affichee() for m in mois],
                            res.detail[detail].affichee() if detail in res.detail else ""]))
    for (flow, cible), n in sorted(r.par_cible.items()):
        f = services.flows.get(flow)
        out.append(row(["Déclenchements par type et cible", f"{f.libelle if f else flow} → {_cible_label(cible)}",
                        *[""] * len(mois), Valeur(n=n).affichee()]))
    out.append("")
    out += [row(["Définition", res.indicateur.libelle, res.indicateur.definition]) for res in r.resultats]
    out.append(row(["Définition", "« < 5 »", "effectif de 1 à 4, ou valeur calculée sur moins de 5 lignes : "
                                          "masqué pour qu'aucun patient ne soit identifiable"]))
    return ("\ufeff" + "\r\n".join(out) + "\r\n").encode("utf-8")


def _csv_cell(value: str) -> str:
    value = str(value)
    if any(c in value for c in ';"\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def _cible_label(cible: str) -> str:
    if cible.startswith("structure:"):
        return cible.split(":", 1)[1].replace("_", " ")
    label = profession_label(cible) or cible.replace("_", " ")
    return label[:1].upper() + label[1:]


def _detail_label(services, code: str, detail: str) -> str:
    if code in ("inclusions", "sorties"):
        return _nom_parcours(services, detail)
    f = services.flows.get(detail)
    return f.libelle if f else detail


def chart_png(services, r: Rapport) -> bytes:
    """One panel per family, months on the axis; a masked figure is a gap, never a guess.

    matplotlib's object API (a Figure of its own, the Agg canvas, no pyplot state): safe in a worker
    thread, and imported here so that the bot's start does not pay for it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    familles = [(f, [res for res in r.resultats if res.indicateur.famille == f]) for f in CATALOGUE.familles]
    familles = [(f, rs) for f, rs in familles if rs]
    fig = Figure(figsize=(10, 2.4 * len(familles)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(familles), 1, squeeze=False)
    labels = [m.libelle_court for m in r.fenetre]
    x = list(range(len(labels)))
    for ax, (famille, rs) in zip(axes[:, 0], familles):
        twin = None
        for k, res in enumerate(rs):
            ys = [res.par_mois[m.cle].tracee() for m in r.fenetre]
            ys = [float("nan") if y is None else y for y in ys]
            target = ax
            if res.indicateur.mesure == "taux" and any(o.indicateur.mesure != "taux" for o in rs):
                twin = twin or ax.twinx()
                twin.set_ylim(0, 105)
                twin.set_ylabel("%")
                target = twin
            target.plot(x, ys, marker="o", linestyle="--" if target is twin else "-", color=f"C{k}",
                        label=res.indicateur.libelle)
        ax.set_title(CATALOGUE.familles[famille], fontsize=10, loc="left")
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        handles, names = ax.get_legend_handles_labels()
        if twin is not None:
            h2, n2 = twin.get_legend_handles_labels()
            handles, names = handles + h2, names + n2
        ax.legend(handles, names, fontsize=7, loc="upper left", bbox_to_anchor=(1.09 if twin else 1.01, 1),
                  frameon=False)
    fig.suptitle(f"{services.cpts_name} · {r.periode.libelle} · {_nom_parcours(services, r.parcours)} "
                 "(« < 5 » non tracé)", fontsize=10)
    # Fixed margins rather than tight_layout: it measures every label, and cost as much as the
    # drawing itself (bench/indicateurs.py).
    height = 2.4 * len(familles)
    fig.subplots_adjust(left=0.06, right=0.66, top=1 - 0.75 / height, bottom=0.3 / height,
                        hspace=0.55)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def _nom_fichier(r: Rapport, ext: str) -> str:
    return f"indicateurs-{r.periode.code}{'-' + r.parcours if r.parcours else ''}.{ext}"


async def publier(ctx, periode: Periode, parcours: str | None = None, *, room_id: str | None = None) -> Rapport:
    """The table, the chart and the CSV, in the coordinators' room (or in reply to the command)."""
    r = await calculer(ctx.session, ctx.services, periode, parcours)
    text = table(ctx.services, r)
    if room_id is None:
        ctx.reply(text)
        room_id = ctx.room_id
    else:
        ctx.send(room_id, text)
    # Drawing takes about a second of CPU: in a worker thread, the bot keeps serving meanwhile.
    png = await asyncio.to_thread(chart_png, ctx.services, r)
    ctx.send_file(room_id, _nom_fichier(r, "png"), png, PNG, msgtype="m.image",
                  body=f"Graphique des indicateurs · {r.periode.libelle}")
    ctx.send_file(room_id, _nom_fichier(r, "csv"), csv_bytes(ctx.services, r), CSV,
                  body=f"Indicateurs · {r.periode.libelle} (CSV, tableur)")
    return r


# --- automatic reports: one deadline row per finished month -----------------------------------------
def _ref(m: Mois) -> str:
    return f"indicateurs:{m.cle}"


async def planifier(session, services, now: datetime) -> None:
    """The next monthly report, if not already planned (called at start; each report plans the
    next one). The last month's report is planned too if its day is still to come."""
    m = mois_de(now, services.tz).precedent()
    if date_rapport(m, services.tz) <= now:
        m = m.suivant()
    planned = await session.scalar(select(Deadline.id).where(Deadline.kind == REPORT_KIND, Deadline.ref == _ref(m)))
    if planned is None:
        await services.store.add_deadline(REPORT_KIND, _ref(m), date_rapport(m, services.tz), now,
                                          payload={"mois": m.cle}, session=session)


async def rapport_automatique(ctx, deadline) -> None:
    """First working day: last month's report, and the quarter's when it closes one."""
    room = ctx.services.coordinator_room
    annee, mois = (int(x) for x in deadline.payload["mois"].split("-"))
    m = Mois(annee, mois)
    if room:
        await publier(ctx, periode_mois(m), room_id=room)
        if (t := trimestre_de(m)) is not None:
            await publier(ctx, t, room_id=room)
    await planifier(ctx.session, ctx.services, max(ctx.now, date_rapport(m, ctx.services.tz)))


# --- a professional's own activity ---------------------------------------------------------------------
async def mon_activite(ctx, periode: Periode) -> str:
    debut, fin = periode.bornes(ctx.services.tz)
    a = await activite(ctx.session, ctx.sender, debut, fin)
    durees = a["durees_acceptation"]

    def h(q: float) -> str:
        return format_duree_h(quantile(durees, q))

    lines = [f"📈 **Votre activité · {periode.libelle}**", "",
             f"- demandes faites : {a['demandes_faites']}, dont {a['demandes_faites_acceptees']} acceptée(s)",
             f"- demandes que vous avez acceptées : {a['acceptees_par_vous']}"]
    if durees:
        lines.append(f"- votre délai d'acceptation : médian {h(0.5)}, 9 fois sur 10 moins de {h(0.9)}")
    lines += [f"- red flags levés : {a['red_flags']}", f"- alertes critiques : {a['alertes_critiques']}",
              f"- inclusions : {a['inclusions']}", "", "Vos chiffres seulement ; ceux de la CPTS sont au salon des coordinateurs."]
    return "\n".join(lines)


def format_duree_h(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 60:
        return "moins d'une minute"
    return format_duree(timedelta(minutes=round(seconds / 60)))


# --- what answers what (merged by bot/wiring.compose) -------------------------------------------------
DEADLINE_HANDLERS = {REPORT_KIND: rapport_automatique}
AT_START = [planifier]  # the next monthly report, planned at each start (bot/wiring.py)
