"""The bordereau files, built in memory from ledger lines: a PDF per professional (fpdf2), the CSV
for a French spreadsheet, and a chart (matplotlib, Agg). Patient codes only, never an identity
(decisions.md 15): these functions are never given one.
"""
from __future__ import annotations

import csv
import functools
import io
import re
import unicodedata
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from domain.indemnites import CRITERES, ETAT_LIBELLE, Etat, Trimestre, decimal_fr, euros
from rooms.directory import profession_label


def _font_dir() -> Path:
    """matplotlib's DejaVu fonts (€, accents, ✔), for the PDF."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"
ACT_LABELS = {"reperage": "repérage", "inclusion": "inclusion", "declenchement": "déclenchement",
              "acceptation": "acceptation", "red_flag": "red flag", "alerte_critique": "alerte critique",
              "suivi": "suivi", "tcim_medecin": "TCIM médecin", "tcim_infirmier": "TCIM infirmier·e"}
CSV_COLUMNS = ["trimestre", "professionnel", "identifiant", "profession", "date", "patient", "reference", "parcours",
               "acte", "etat", "montant_regle_eur", "montant_du_eur", "cpam_non_compris", "critere_rempli", "motif", "regle",
               "version", "correction"]


def slug(text: str) -> str:
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^A-Za-z0-9]+", "-", plain).strip("-").lower() or "professionnel"


def _du(act) -> int:
    return act.montant_cents if act.etat == Etat.ELIGIBLE.value else 0


def _evidence(act) -> str:
    """Criterion evidence for a line: the criteria met (✔) or the reason."""
    if act.etat == Etat.ELIGIBLE.value:
        met = [CRITERES[c][0] for c in (act.details or {}).get("criteres", []) if c in CRITERES]
        return ("✔ " + ", ".join(met)) if met else "✔"
    return act.motif or ""


# --- PDF ---------------------------------------------------------------------------------------------------
@functools.cache
def _pdf_class():
    """fpdf2 (0.5 s to import) and matplotlib are loaded when the first bordereau is made, not at
    each start of the bot (issue 11: they were a third of the start's imports)."""
    from fpdf import FPDF

    class Pdf(FPDF):
        def footer(self):
            self.set_y(-12)
            self.set_font("DejaVu", size=7)
            self.cell(0, 6, f"page {self.page_no()}/{{nb}}", align="R")

    return Pdf


def pdf(cpts: str, trimestre: Trimestre, prof, user_id: str, acts: list, refs: dict[str, str], tz: ZoneInfo,
        validation=None) -> bytes:
    doc = _pdf_class()(orientation="L", format="A4")
    fonts = _font_dir()
    doc.add_font("DejaVu", "", str(fonts / "DejaVuSans.ttf"))
    doc.add_font("DejaVu", "B", str(fonts / "DejaVuSans-Bold.ttf"))
    doc.set_title(f"Bordereau d'indemnisation {trimestre}")
    doc.set_author(cpts)
    doc.alias_nb_pages()
    doc.set_auto_page_break(True, margin=15)
    doc.add_page()
    name = prof.display_name if prof else user_id
    doc.set_font("DejaVu", "B", 15)
    doc.cell(0, 8, f"Bordereau d'indemnisation · {cpts}", new_x="LMARGIN", new_y="NEXT")
    doc.set_font("DejaVu", size=10)
    doc.cell(0, 6, f"Période : {trimestre.libelle()}", new_x="LMARGIN", new_y="NEXT")
    doc.set_font("DejaVu", "B", 11)
    doc.cell(0, 6, f"Professionnel : {name}", new_x="LMARGIN", new_y="NEXT")
    doc.set_font("DejaVu", size=9)
    profession = profession_label(prof.profession) if prof else "hors annuaire"
    last_day = trimestre.fin(tz)
    if prof and prof.cotisation_until and prof.cotisation_until >= last_day - timedelta(seconds=1):
        cotisation = f"à jour (jusqu'au {prof.cotisation_until.astimezone(tz):%d/%m/%Y})"
    elif prof and prof.cotisation_until:
        cotisation = (f"NON à jour depuis le {prof.cotisation_until.astimezone(tz):%d/%m/%Y} : les actes postérieurs "
                      "ne sont pas payables")
    else:
        cotisation = "NON renseignée : lignes non payables"
    doc.cell(0, 5, f"{profession} · {user_id} · cotisation : {cotisation}", new_x="LMARGIN", new_y="NEXT")
    if validation is not None:
        doc.cell(0, 5, f"Validé (payé) le {validation.valide_le.astimezone(tz):%d/%m/%Y} par {validation.valide_par} : "
                       f"{euros(validation.total_cents)}", new_x="LMARGIN", new_y="NEXT")
    doc.ln(3)
    widths = (20, 27, 36, 30, 40, 22, 79, 23)
    head = ("Date", "Patient", "Parcours", "Acte", "Montant", "État", "Critère / motif", "Version")
    doc.set_font("DejaVu", "B", 8)
    doc.set_fill_color(230, 230, 230)
    for w, h in zip(widths, head):
        doc.cell(w, 6, h, border=1, fill=True)
    doc.ln()
    doc.set_font("DejaVu", size=7.5)
    for a in acts:
        where = refs.get(a.ref or "", a.patient_code or "—")
        montant = euros(a.montant_cents) + (f" {a.cpam}" if a.cpam else "")
        cells = (f"{a.at.astimezone(tz):%d/%m/%Y}", where, (a.parcours or "hors parcours").replace("_", " "),
                 ACT_LABELS.get(a.kind, a.kind) + (" (corr.)" if a.correction else ""), montant,
                 ETAT_LIBELLE.get(Etat(a.etat), a.etat) if a.etat else "à calculer", _evidence(a), a.version or "")
        for w, text in zip(widths, cells):
            doc.cell(w, 5.5, _fit(doc, str(text), w - 1.5), border=1)
        doc.ln()
    eligible = sum(_du(a) for a in acts)
    attente = sum(a.montant_cents for a in acts if a.etat == Etat.EN_ATTENTE.value)
    non = sum(1 for a in acts if a.etat == Etat.NON_ELIGIBLE.value)
    doc.ln(3)
    doc.set_font("DejaVu", "B", 11)
    doc.cell(0, 7, f"Sous-total éligible (à payer) : {euros(eligible)}", new_x="LMARGIN", new_y="NEXT")
    doc.set_font("DejaVu", size=9)
    doc.cell(0, 5, f"En attente (non totalisé) : {euros(attente)} · non éligible : {non} ligne(s) · "
                   f"{len(acts)} ligne(s) au total", new_x="LMARGIN", new_y="NEXT")
    cpam = sorted({a.cpam for a in acts if a.cpam})
    if cpam:
        doc.cell(0, 5, "Parts CPAM affichées, non comprises : " + " ; ".join(cpam), new_x="LMARGIN", new_y="NEXT")
    versions = sorted({a.version for a in acts if a.version})
    doc.cell(0, 5, "Barème : " + (", ".join(versions) or "—"), new_x="LMARGIN", new_y="NEXT")
    doc.cell(0, 5, "Patients désignés par leur code : aucune donnée d'identité ni de santé sur ce document.",
             new_x="LMARGIN", new_y="NEXT")
    return bytes(doc.output())


def _fit(doc, text: str, width: float) -> str:
    if doc.get_string_width(text) <= width:
        return text
    while text and doc.get_string_width(text + "…") > width:
        text = text[:-1]
    return text + "…"


# --- CSV -----------------------------------------------------------------------------------------------------
def csv_bytes(trimestre: Trimestre, acts: list, profs: dict, refs: dict[str, str], tz: ZoneInfo) -> bytes:
    """Every line; opens as is in a French spreadsheet: `;`, UTF-8 with BOM, decimal comma, CRLF."""
    out = io.StringIO()
    w = csv.writer(out, delimiter=";", lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    w.writerow(CSV_COLUMNS)
    for a in acts:
        p = profs.get(a.user_id)
        w.writerow([str(trimestre), p.display_name if p else a.user_id, a.user_id,
                    profession_label(p.profession) if p else "", f"{a.at.astimezone(tz):%d/%m/%Y}",
                    a.patient_code or "", refs.get(a.ref or "", ""), a.parcours or "", ACT_LABELS.get(a.kind, a.kind),
                    ETAT_LIBELLE.get(Etat(a.etat), a.etat) if a.etat else "", decimal_fr(a.montant_cents),
                    decimal_fr(_du(a)), a.cpam or "", _evidence(a) if a.etat == Etat.ELIGIBLE.value else "",
                    a.motif or "", a.regle or "", a.version or "",
                    a.correction or ""])
    return ("\ufeff" + out.getvalue()).encode("utf-8")


# --- chart -----------------------------------------------------------------------------------------------------
MOIS = ["janv.", "févr.", "mars", "avr.", "mai", "juin", "juil.", "août", "sept.", "oct.", "nov.", "déc."]


def chart(trimestre: Trimestre, acts: list, tz: ZoneInfo) -> bytes:
    """Left: éligible amount per parcours; right: acts per month, stacked per parcours."""
    amounts: dict[str, int] = defaultdict(int)
    per_month: dict[str, dict[tuple[int, int], int]] = defaultdict(lambda: defaultdict(int))
    for a in acts:
        key = (a.parcours or "hors parcours").replace("_", " ")
        amounts[key] += _du(a)
        local: datetime = a.at.astimezone(tz)
        per_month[key][(local.year, local.month)] += 1
    months = trimestre.mois()
    # matplotlib's object API, no pyplot state (as rooms.indicateurs.chart_png), imported here.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), dpi=90)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    names = sorted(set(amounts) | set(per_month))
    left.barh(names, [amounts[n] / 100 for n in names], color="#2a6f97")
    left.set_title(f"Montant éligible par parcours (€) · {trimestre}")
    left.invert_yaxis()
    bottom = [0] * len(months)
    labels = [f"{MOIS[m - 1]} {y}" for y, m in months]
    for n in names:
        values = [per_month[n].get(m, 0) for m in months]
        right.bar(labels, values, bottom=bottom, label=n)
        bottom = [b + v for b, v in zip(bottom, values)]
    right.set_title("Actes par mois et par parcours")
    if names:
        right.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
