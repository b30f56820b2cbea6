"""Cahier de liaison: who did what and when for one patient, from what the database holds.

« Un outil de coordination autour du patient » and a shared, traceable record (spec §7.2, §7.5
R5, R8). The journal is a list of SOURCES, each a small function `async (ctx, patient) -> list[Entree]`
reading one table (inclusions, requests and their history, red flags, alertes, questionnaires);
another feature adds its own by appending a function to SOURCES (suivi, TCIM…). The entries
stay in the patient room (or its encrypted export): they may carry clinical content.

`!journal export` makes a PDF (fpdf2, core fonts) and a CSV, posted as encrypted files. The PDF's
header carries the patient CODE, never the identity (a printed page travels further than the room).
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timezone

from sqlalchemy import select

from domain.markup import literal, unmark
from domain.parcours import find_parcours
from domain.suivi import show_value
from domain.text import normalize
from rooms import demandes, tcim
from rooms.alertes import signs_of
from rooms.directory import names
from rooms.questionnaires import answers_of
from rooms.suivi import show_fait
from storage import suivi as observations
from storage.models import Act, Inclusion, Patient, QuestionnaireRun
from storage.models import Demande as DemandeRow

PAGE = 25  # entries shown per message


@dataclass(frozen=True)
class Entree:
    at: datetime
    par: str | None  # a user id, or None for the bot (timers)
    quoi: str        # French, plain text (may quote clinical text: patient room or encrypted export only)
    parcours: str | None = None
    source: str = ""


# --- sources ------------------------------------------------------------------------------------------
async def source_inclusions(ctx, patient: Patient) -> list[Entree]:
    rows = (await ctx.session.scalars(select(Inclusion).where(Inclusion.patient_code == patient.code))).all()
    out = []
    for i in rows:
        nom = _parcours_nom(ctx, i.parcours)
        out.append(Entree(i.included_at, i.included_by, f"Inclusion dans le parcours {nom}"
                          + (" (carte d'intégration remise)" if i.attestation else ""), i.parcours, "inclusion"))
        if i.ended_at:
            raison = ctx.store.cipher.decrypt_text(i.end_reason_enc, f"inclusion:{i.id}") if i.end_reason_enc else ""
            out.append(Entree(i.ended_at, None, f"Sortie du parcours {nom}" + (f" : {raison}" if raison else ""),
                              i.parcours, "inclusion"))
    return out


_ACTIONS = {
    "creation": "créée", "sollicitation": "professionnels sollicités", "acceptation": "acceptée",
    "refus": "déclinée", "palier:pool": "élargie à la CPTS (pool)", "palier:relance": "relance",
    "palier:escalade": "escaladée aux coordinateurs", "palier:intervention": "délai d'intervention dépassé",
    "rdv": "rendez-vous fixé", "rdv_modifie": "rendez-vous modifié", "cr": "compte-rendu posté",
    "cloture": "clôturée", "annulation": "annulée",
}


async def source_demandes(ctx, patient: Patient) -> list[Entree]:
    """Requests and red flags (a red flag is a request of flow `red_flag`), with their history."""
    rows = (await ctx.session.scalars(select(DemandeRow).where(DemandeRow.patient_code == patient.code))).all()
    out = []
    for row in rows:
        d = demandes.read(ctx.store.cipher, row)
        flow = ctx.services.flows.get(d.flow)
        kind = "Red flag" if d.flow == "red_flag" else "Demande"
        what = f"{kind} n°{d.numero} ({d.libelle or (flow.libelle if flow else d.flow)})"
        # The flow's parcours, or the parcours the flow is named after (vigie_senior).
        parcours = (flow.parcours if flow else None) or (d.flow if d.flow in ctx.services.catalogue else None)
        for ev in d.journal:
            detail = ""
            if ev.action == "creation" and d.commentaire:
                detail = f" : {d.commentaire}"
            elif ev.action in ("refus", "annulation", "rdv", "rdv_modifie") and ev.detail:
                detail = f" : {ev.detail}"
            elif ev.action == "cr" and d.cr:
                detail = f" : {d.cr}"
            elif ev.action == "sollicitation":
                detail = f" ({len(ev.detail.split(','))})" if ev.detail else ""
            action = _ACTIONS.get(ev.action) or tcim.HISTORY.get(ev.action, ev.action)
            out.append(Entree(ev.at, ev.par, f"{what} {action}{detail}", parcours,
                              "red_flag" if d.flow == "red_flag" else "demande"))
    return out


async def source_alertes(ctx, patient: Patient) -> list[Entree]:
    rows = (await ctx.session.scalars(select(Act).where(Act.patient_code == patient.code,
                                                        Act.kind == "alerte_critique"))).all()
    out = []
    for a in rows:
        signes = signs_of(ctx.store.cipher, a)
        out.append(Entree(a.at, a.user_id, "Alerte critique" + (f" : {', '.join(signes)}" if signes else ""),
                          a.parcours, "alerte"))
    return out


async def source_questionnaires(ctx, patient: Patient) -> list[Entree]:
    rows = (await ctx.session.scalars(select(QuestionnaireRun).where(QuestionnaireRun.patient_code == patient.code))).all()
    out = []
    for run in rows:
        qn = ctx.services.questionnaires.get(run.code)
        if qn is None:
            continue
        if run.started_at:
            out.append(Entree(run.started_at, None, f"Questionnaire {qn.nom} adressé à {run.addressee}",
                              qn.parcours, "questionnaire"))
        answers = answers_of(ctx, run)
        for step in run.trail:
            r = answers.get(step["q"])
            shown = f" : {r.affichage()}" if r else ""
            out.append(Entree(datetime.fromisoformat(step["at"]), step["par"],
                              f"Questionnaire {qn.questionnaire}, Q{step['q']}{shown}", qn.parcours, "questionnaire"))
        if run.finished_at:
            out.append(Entree(run.finished_at, None, f"Questionnaire {qn.nom} terminé", qn.parcours, "questionnaire"))
        elif run.status == "abandonne":
            out.append(Entree(run.started_at or run.created_at, None, f"Questionnaire {qn.nom} abandonné (sortie)",
                              qn.parcours, "questionnaire"))
    return out


async def source_suivi(ctx, patient: Patient) -> list[Entree]:
    """Données de base (`!donnees`) and follow-up items (`!suivi`), each with who recorded it."""
    out = []
    for o in await observations.history(ctx.session, ctx.store.cipher, patient.code):
        p = ctx.services.catalogue.get(o.parcours)
        if p is None:
            continue
        if o.kind == "donnee":
            d = next((d for d in p.donnees_de_base if d.code == o.element), None)
            if d is not None:
                out.append(Entree(o.recorded_at, o.recorded_by, f"Donnée de base {d.libelle} : {show_value(d, o.value)}",
                                  o.parcours, "suivi"))
        elif (e := p.element(o.element)) is not None:
            value = f", {show_fait(e, o.value)}" if o.value else ""
            out.append(Entree(o.recorded_at, o.recorded_by, f"Suivi : {e.libelle} fait le "
                              f"{o.at.astimezone(ctx.services.tz):%d/%m/%Y}{value}", o.parcours, "suivi"))
    return out


# TCIM steps are in their request's history (source_demandes, labels from rooms.tcim.HISTORY).
SOURCES = [source_inclusions, source_demandes, source_alertes, source_questionnaires, source_suivi]


def _parcours_nom(ctx, code: str | None) -> str:
    p = ctx.services.catalogue.get(code) if code else None
    return p.nom if p else (code or "")


# --- the filter typed after !journal -------------------------------------------------------------------
@dataclass(frozen=True)
class Filtre:
    export: bool = False
    depuis: date | None = None
    parcours: str | None = None
    page: int = 1


_DATE = re.compile(r"^(\d{1,2})/(\d{1,2})(?:/(\d{2}|\d{4}))?$")


def parse_filtre(ctx, text: str | None) -> Filtre:
    """`[export] [depuis JJ/MM[/AAAA]] [<parcours>] [page <n>]`, in any order."""
    words = (text or "").split()
    export, depuis, parcours, page = False, None, None, 1
    i = 0
    while i < len(words):
        w = normalize(words[i])
        if w == "export" or w == "exporter":
            export = True
        elif w == "depuis" and i + 1 < len(words):
            i += 1
            m = _DATE.match(words[i])
            if not m:
                ctx.refuse(f"« {literal(words[i])} » n'est pas une date (JJ/MM ou JJ/MM/AAAA)")
            year = int(m[3]) + (2000 if m[3] and len(m[3]) == 2 else 0) if m[3] else ctx.now.astimezone(ctx.services.tz).year
            try:
                depuis = date(year, int(m[2]), int(m[1]))
            except ValueError:
                ctx.refuse(f"« {literal(words[i])} » : date impossible")
        elif w == "page" and i + 1 < len(words) and words[i + 1].isdigit():
            i += 1
            page = max(1, int(words[i]))
        else:
            p = _find_parcours(ctx, words[i])
            if p is None:
                ctx.refuse(f"« {literal(words[i])} » : ni « export », ni « depuis <date> », ni « page <n> », "
                           f"ni un parcours ({', '.join(sorted(ctx.services.catalogue))})")
            parcours = p
        i += 1
    return Filtre(export, depuis, parcours, page)


def _find_parcours(ctx, word: str) -> str | None:
    p = find_parcours(ctx.services.catalogue, word)
    return p.code if p else None


async def entries(ctx, patient: Patient, filtre: Filtre) -> list[Entree]:
    out: list[Entree] = []
    for source in SOURCES:
        out += await source(ctx, patient)
    if filtre.depuis:
        start = datetime.combine(filtre.depuis, time(0), ctx.services.tz).astimezone(timezone.utc)
        out = [e for e in out if e.at >= start]
    if filtre.parcours:
        out = [e for e in out if e.parcours in (filtre.parcours, None)]
    return sorted(out, key=lambda e: e.at)  # newest last


def _when(ctx, at: datetime) -> str:
    return at.astimezone(ctx.services.tz).strftime("%d/%m/%Y %H:%M")


async def show(ctx, patient: Patient, text: str | None) -> None:
    """`!journal [depuis <date>] [parcours] [page <n>]`, or `!journal export`."""
    filtre = parse_filtre(ctx, text)
    found = await entries(ctx, patient, filtre)
    if filtre.export:
        await export(ctx, patient, found, filtre)
        return
    if not found:
        ctx.reply(f"📒 Cahier de liaison de {patient.code} : rien à montrer pour ce filtre.")
        return
    pages = (len(found) + PAGE - 1) // PAGE
    page = min(filtre.page, pages)
    end = len(found) - (page - 1) * PAGE  # page 1 = the most recent entries
    shown = found[max(0, end - PAGE):end]
    noms = await names(ctx.session, {e.par for e in shown if e.par})
    lines = [f"📒 **Cahier de liaison · {patient.code}** · page {page}/{pages} ({len(found)} entrées, les plus récentes en bas)", ""]
    for e in shown:
        who = noms.get(e.par, e.par) if e.par else "Cercle"
        lines.append(f"- {_when(ctx, e.at)} · {literal(who)} · {literal(e.quoi)}")
    if page < pages:
        lines.append(f"\nPlus anciennes : `!journal page {page + 1}`" + (" (avec le même filtre)" if filtre.depuis or filtre.parcours else ""))
    ctx.reply("\n".join(lines))


# --- export --------------------------------------------------------------------------------------------
async def rows_for_export(ctx, found: list[Entree]) -> list[list[str]]:
    noms = await names(ctx.session, {e.par for e in found if e.par})
    return [[_when(ctx, e.at), _parcours_nom(ctx, e.parcours), e.source,
             unmark(noms.get(e.par, e.par)) if e.par else "Cercle", e.quoi] for e in found]


def to_csv(rows: list[list[str]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=";")
    writer.writerow(["date", "parcours", "source", "par", "quoi"])
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8-sig")  # BOM: spreadsheet software reads the accents


_LATIN1 = str.maketrans({"’": "'", "‘": "'", "“": '"', "”": '"', "→": "->", "…": "...", "—": "-", "–": "-",
                         "œ": "oe", "Œ": "OE", "€": "EUR", "≥": ">=", "≤": "<=", "₂": "2", "·": "-"})


def _pdf_text(text: str) -> str:
    """Core PDF fonts are Latin-1: typographic characters folded, anything else (emoji) dropped."""
    return text.translate(_LATIN1).encode("latin-1", "ignore").decode("latin-1")


def to_pdf(title: str, subtitle: str, rows: list[list[str]]) -> bytes:
    from fpdf import FPDF  # 0.4 s to import: when a journal is exported, not at each start (issue 11)

    pdf = FPDF(orientation="P", unit="mm", format="A4")
    pdf.set_title(_pdf_text(title))
    pdf.set_creator("Cercle")
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 14)
    pdf.cell(0, 8, _pdf_text(title), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 9)
    pdf.cell(0, 6, _pdf_text(subtitle), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    for when, parcours, _source, par, quoi in rows:
        pdf.set_font("Helvetica", "B", 9)
        pdf.multi_cell(0, 5, _pdf_text(f"{when} - {par}" + (f" - {parcours}" if parcours else "")),
                       new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", "", 9)
        pdf.multi_cell(0, 5, _pdf_text(quoi), new_x="LMARGIN", new_y="NEXT")
        pdf.ln(1)
    return bytes(pdf.output())


async def export(ctx, patient: Patient, found: list[Entree], filtre: Filtre) -> None:
    rows = await rows_for_export(ctx, found)
    stamp = ctx.now.astimezone(ctx.services.tz)
    base = f"cahier-de-liaison-{patient.code}-{stamp:%Y%m%d-%H%M}"
    scope = (f" · depuis le {filtre.depuis:%d/%m/%Y}" if filtre.depuis else "") + \
            (f" · {_parcours_nom(ctx, filtre.parcours)}" if filtre.parcours else "")
    title = f"Cahier de liaison - patient {patient.code}"
    subtitle = f"{ctx.services.cpts_name} - exporté le {stamp:%d/%m/%Y à %H:%M}{scope} - {len(rows)} entrées"
    ctx.send_file(ctx.room_id, f"{base}.pdf", to_pdf(title, subtitle, rows), "application/pdf",
                  body=f"{base}.pdf", ref=f"journal:{patient.code}:pdf")
    ctx.send_file(ctx.room_id, f"{base}.csv", to_csv(rows), "text/csv",
                  body=f"{base}.csv", ref=f"journal:{patient.code}:csv")
    ctx.reply(f"📎 Cahier de liaison de {patient.code} exporté ({len(rows)} entrées{scope}) : PDF pour l'impression "
              "et CSV, chiffrés comme le reste du salon. Le PDF porte le code patient, pas l'identité.")
