"""`!indicateurs` over a year of a large CPTS: 500 professionals, 20,000 requests (issue 18:
within 2 s). `--small`: a tenth of it.

The history is inserted with SQLAlchemy Core into a fresh store (SQLite by default, the bot's
own; `--database-url` for PostgreSQL): patients, inclusions and exits, requests with their ledger
lines (declenchement, acceptation, red flag, alerte), their escalation rows (fired for those nobody
took in time). Then, interleaved and repeated, for a month and for the whole year:
  - the whole computation of `!indicateurs` (rooms.indicateurs: every query, the table, the CSV,
    and the chart, timed apart since matplotlib dominates);
  - a plain SQL count of the same requests (`SELECT count(*) FROM demande WHERE created_at …`),
    the scale of one indexed scan on this machine.

    .venv/bin/python -m bench.indicateurs [--small] [--runs 5] [--database-url URL]
"""
from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from zoneinfo import ZoneInfo

from sqlalchemy import func, insert, select, text

from bench.common import machine_note, mark, p50, table
from domain.flows import load_flows
from domain.indicateurs import lire_periode
from domain.parcours import load_catalogue
from rooms.indicateurs import calculer, chart_png, csv_bytes
from rooms.indicateurs import table as table_text
from storage.models import Act, Deadline, Demande, Inclusion, Patient, Professional
from storage.repositories import open_store

TARGET_S = 2.0  # issue 18
PARIS = ZoneInfo("Europe/Paris")
YEAR_START = datetime(2026, 1, 1, tzinfo=timezone.utc)
NOW = datetime(2027, 1, 10, 9, tzinfo=timezone.utc)
FLOWS = ["consultation", "visite_domicile", "teleconsultation", "conseil_telephonique", "snp", "recherche_mt",
         "referent_parcours", "red_flag"]
DELAIS = {"consultation": 4 * 24, "visite_domicile": 24, "teleconsultation": 24, "conseil_telephonique": 4,
          "snp": 4, "recherche_mt": 30 * 24, "referent_parcours": 4 * 24, "red_flag": 8}
PARCOURS = ["insuffisance_cardiaque", "bpco", "diabete_type_2", "plaie", "perinatalite"]
PROFESSIONS = ["medecin_generaliste", "infirmier", "kinesitherapeute", "pharmacien", "sage_femme"]


async def generate(store, n_pros: int, n_requests: int, seed: int = 18) -> None:
    rnd = random.Random(seed)
    pros = [f"@pro{i}:bench" for i in range(n_pros)]
    n_patients = n_requests // 3
    codes = [f"P-{i:05d}" for i in range(n_patients)]
    year = timedelta(days=365)

    def when() -> datetime:
        return YEAR_START + year * rnd.random()

    professionals = [dict(user_id=u, display_name=u, profession=PROFESSIONS[i % len(PROFESSIONS)], communes=[],
                          cpts="Bench", roles=[], absences=[], active=True, created_at=YEAR_START)
                     for i, u in enumerate(pros)]
    patients = [dict(code=c, room_id=f"!{c}:bench", identity_enc=b"x", created_by=rnd.choice(pros),
                     medecin_traitant=None if rnd.random() < 0.1 else rnd.choice(pros[:n_pros // 5]),
                     created_at=when(), birth_year=rnd.randint(1930, 2020)) for c in codes]
    inclusions = []
    for c in rnd.sample(codes, n_patients // 2):
        start = when()
        inclusions.append(dict(patient_code=c, parcours=rnd.choice(PARCOURS), included_by=rnd.choice(pros),
                               included_at=start, ended_at=start + timedelta(days=60) if rnd.random() < 0.2 else None))
    demandes, acts, deadlines = [], [], []
    for i in range(1, n_requests + 1):
        flow = FLOWS[i % len(FLOWS)] if rnd.random() < 0.95 else "red_flag"
        created = when()
        code = rnd.choice(codes)
        requester = rnd.choice(pros)
        ref = f"demande:{i}"
        demandes.append(dict(id=i, patient_code=code, room_id=f"!{code}:bench", numero=i, flow=flow,
                             etat="en_attente", demandeur=requester, created_at=created, version=1, data_enc=b"x"))
        acts.append(dict(user_id=requester, kind="red_flag" if flow == "red_flag" else "declenchement",
                         patient_code=code, ref=ref, at=created,
                         details={"flow": flow, "cible": PROFESSIONS[i % len(PROFESSIONS)]}))
        due = created + timedelta(hours=DELAIS[flow])
        taken = rnd.random() < 0.85
        accepted = created + timedelta(hours=DELAIS[flow] * rnd.random() * (1.3 if rnd.random() < 0.1 else 1)) if taken else None
        if accepted is not None:
            acts.append(dict(user_id=rnd.choice(pros), kind="acceptation", patient_code=code, ref=ref, at=accepted,
                             details={"flow": flow}))
        fired = (accepted is None or accepted > due) and due <= NOW
        deadlines.append(dict(kind="demande.escalade", ref=ref, due_at=due, created_at=created, payload={},
                              status="fired" if fired else "cancelled"))
    for _ in range(n_requests // 100):
        acts.append(dict(user_id=rnd.choice(pros), kind="alerte_critique", patient_code=rnd.choice(codes), at=when(),
                         details={}))
    async with store.session.begin() as s:
        for model, rows in ((Professional, professionals), (Patient, patients), (Inclusion, inclusions),
                            (Demande, demandes), (Act, acts), (Deadline, deadlines)):
            for k in range(0, len(rows), 5000):
                await s.execute(insert(model), rows[k:k + 5000])


async def once(store, services, periode_code: str, parcours: str | None) -> tuple[float, float, float]:
    """(s for the queries + table + CSV, s for the chart, ms for the plain SQL count)."""
    periode = lire_periode(periode_code, NOW, PARIS)
    start, end = periode.bornes(PARIS)
    async with store.session() as s:
        t0 = time.perf_counter()
        await s.scalar(select(func.count()).select_from(Demande).where(Demande.created_at >= start,
                                                                       Demande.created_at < end))
        plain_ms = (time.perf_counter() - t0) * 1000
    async with store.session() as s:
        t0 = time.perf_counter()
        r = await calculer(s, services, periode, parcours)
        table_text(services, r)
        csv_bytes(services, r)
        t1 = time.perf_counter()
        chart_png(services, r)
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1, plain_ms


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", action="store_true", help="50 professionnels, 2 000 demandes")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--database-url", default=None, help="PostgreSQL, e.g. postgresql+asyncpg://…/bench")
    args = ap.parse_args()
    n_pros, n_requests = (50, 2000) if args.small else (500, 20000)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        store = await open_store(url, Path(tmp) / "storage.key")
        t0 = time.perf_counter()
        await generate(store, n_pros, n_requests)
        if not url.startswith("sqlite"):
            # Statistics, as autovacuum gathers them after a bulk load: without them PostgreSQL
            # guesses one row per table and nests the escalation join (1 s instead of 3 ms).
            async with store.session.begin() as s:
                await s.execute(text("ANALYZE"))
        print(f"historique : {n_pros} professionnels, {n_requests} demandes sur 2026 "
              f"({time.perf_counter() - t0:.1f} s d'insertion) · {url.split(':')[0]}")
        print(machine_note())
        services = SimpleNamespace(tz=PARIS, flows=load_flows(), catalogue=load_catalogue(), cpts_name="Bench")
        cases = [("2026-11", None), ("2026", None), ("2026-T4", "insuffisance_cardiaque")]
        samples = {c: ([], [], []) for c in cases}
        await once(store, services, "2026-11", None)  # warm-up (imports, caches, matplotlib fonts)
        for _ in range(args.runs):  # interleaved: every case once per round
            for c in cases:
                q, chart, plain = await once(store, services, *c)
                samples[c][0].append(q)
                samples[c][1].append(chart)
                samples[c][2].append(plain)
        rows = []
        for (periode, parcours), (q, chart, plain) in samples.items():
            total = p50(q) + p50(chart)
            rows.append((f"!indicateurs {periode}{' ' + parcours if parcours else ''}",
                         f"{p50(q) * 1000:.0f} ms", f"{p50(chart) * 1000:.0f} ms", f"{total:.2f} s",
                         f"{p50(plain):.1f} ms", f"×{p50(q) * 1000 / max(p50(plain), 1e-3):.0f}",
                         mark(total <= TARGET_S)))
        print(table(rows, ("commande", "requêtes+tableau+CSV", "graphique", "total (p50)",
                           "SQL count(*) seul", "requêtes / count", f"≤ {TARGET_S:.0f} s")))
        print(f"médianes sur {args.runs} tours entrelacés")
        await store.close()


if __name__ == "__main__":
    asyncio.run(main())
