"""Directory import from a CSV file posted in the coordinators' room (encrypted attachments too).

Columns (header line required, `;` or `,`): matrix_id, nom, profession, communes, roles, cotisation.
Every line gets a verdict; the accepted ones are applied, the refused ones are listed with the reason.
"""
from __future__ import annotations

import csv
import io
import re
from datetime import date, datetime, time

from domain.text import normalize
from rooms.directory import find_profession, upsert_professional

COLUMNS = ("matrix_id", "nom", "profession", "communes", "roles", "cotisation")
ROLE_NAMES = ("coordinateur", "referent", "vigie_referent", "structure", "operateur_snp", "secretaire",
              "tcim")  # tcim: signatory of the CPTS's TCIM protocol (issue 12)
MAX_BYTES = 1_000_000


class ImportError_(Exception):
    pass


def parse_csv(data: bytes) -> list[dict]:
    if len(data) > MAX_BYTES:
        raise ImportError_("fichier trop volumineux (1 Mo au plus)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("cp1252")  # spreadsheets saved on Windows
    try:
        dialect = csv.Sniffer().sniff(text.splitlines()[0] if text else "", delimiters=";,\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(io.StringIO(text), dialect=dialect)
    if reader.fieldnames is None:
        raise ImportError_("fichier vide")
    header = {normalize(h).strip().replace(" ", "_"): h for h in reader.fieldnames if h}
    missing = [c for c in ("matrix_id", "nom", "profession") if c not in header]
    if missing:
        raise ImportError_(f"colonnes manquantes : {', '.join(missing)} (attendues : {', '.join(COLUMNS)})")
    return [{c: (row.get(header[c]) or "").strip() for c in COLUMNS if c in header} for row in reader]


def check_line(row: dict) -> tuple[dict | None, str | None]:
    """(values, None) when the line can be applied, (None, reason) otherwise."""
    user_id = row.get("matrix_id", "")
    if not re.fullmatch(r"@[^:\s]+:\S+", user_id):
        return None, f"identifiant Matrix invalide « {user_id} » (forme @nom:serveur)"
    if not row.get("nom"):
        return None, "nom manquant"
    profession = find_profession(row.get("profession", ""))
    if profession is None:
        return None, f"profession inconnue « {row.get('profession', '')} »"
    roles = [r.strip() for r in row.get("roles", "").replace(";", ",").split(",") if r.strip()]
    for r in roles:
        if r.split(":")[0] not in ROLE_NAMES:
            return None, f"rôle inconnu « {r} »"
    until = None
    if row.get("cotisation"):
        m = re.fullmatch(r"(\d{1,2})/(\d{1,2})/(\d{4})", row["cotisation"])
        try:
            until = date(int(m[3]), int(m[2]), int(m[1])) if m else None
        except ValueError:
            until = None
        if until is None:
            return None, f"date de cotisation invalide « {row['cotisation']} » (JJ/MM/AAAA)"
    communes = [c.strip() for c in row.get("communes", "").replace(";", ",").split(",") if c.strip()]
    return {"user_id": user_id, "display_name": row["nom"], "profession": profession.code, "roles": roles,
            "communes": communes, "until": until}, None


async def import_directory(ctx, data: bytes) -> str:
    try:
        rows = parse_csv(data)
    except ImportError_ as e:
        return f"⚠️ Import de l'annuaire impossible : {e}. Rien n'a été modifié."
    accepted, refused = [], []
    seen = set()
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        values, reason = check_line(row)
        if values and values["user_id"] in seen:
            values, reason = None, "doublon dans le fichier"
        if reason:
            refused.append(f"- ligne {number} : {reason}")
            continue
        seen.add(values["user_id"])
        until = values.pop("until")
        await upsert_professional(
            ctx.session, now=ctx.now, cpts=ctx.services.cpts_name,
            cotisation_until=datetime.combine(until, time(23, 59), tzinfo=ctx.services.tz) if until else None,
            **values)
        accepted.append(f"- ligne {number} : {values['display_name']} ({values['user_id']})")
    text = [f"📇 Import de l'annuaire : {len(accepted)} ligne(s) acceptée(s), {len(refused)} refusée(s)."]
    if accepted:
        text += ["", "Acceptées :", *accepted]
    if refused:
        text += ["", "Refusées :", *refused]
    return "\n".join(text)
