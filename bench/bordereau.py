"""The quarterly bordereau over a large ledger, on SQLite and on PostgreSQL (issue 14).

Generated ledger lines (1,000,000 by default; 90 % in the measured quarter, 100 professionals,
80 % éligible, 15 % en attente, 5 % non éligible; 0.1 % left unpriced, as another module's plain
insert leaves them, for the first catch-up) are inserted with SQLAlchemy Core into a fresh, migrated store. Then, interleaved and
repeated:
  - the bordereau aggregate, as `!bordereau` runs it before building its files: the catch-up of
    unpriced / re-checked lines (rooms.indemnites.catch_up) and the per-professional summary
    (rooms.indemnites.summary: one GROUP BY, names, validations, in Python objects);
  - a plain SQL aggregate of the same lines on the raw driver (sqlite3 / asyncpg):
    SELECT user_id, etat, count(*), sum(montant_cents) … WHERE trimestre = ? GROUP BY user_id, etat.
Printed: medians, the ratio, and the target (within 2 s and within 1.5× of the plain aggregate).

    .venv/bin/python -m bench.bordereau [--small] [--lines N] [--runs 7] [--sqlite-only]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import insert

from bench.common import machine_note, mark, p50, table
from bot.config import Config, CptsConfig, MatrixConfig, StorageConfig
from bot.wiring import compose
from domain.clock import FakeClock
from domain.indemnites import Trimestre
from rooms import indemnites
from storage.models import Act, Professional
from storage.repositories import open_store

QUARTER = Trimestre(2026, 3)
TARGET_S, TARGET_RATIO = 2.0, 1.5
POSTGRES = os.environ.get("CERCLE_TEST_POSTGRES", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
PLAIN = ("SELECT user_id, etat, count(*), sum(montant_cents) FROM act WHERE trimestre = {p} "
         "GROUP BY user_id, etat")
KINDS = [("reperage", "bpco", 1500), ("inclusion", "bpco", 1500), ("red_flag", "insuffisance_cardiaque", 1500),
         ("acceptation", "plaie", 1500), ("declenchement", None, 0), ("suivi", "perinatalite", 1500)]


def rows(n: int, users: list[str], rng: random.Random):
    q_start = datetime(2026, 7, 1, tzinfo=timezone.utc)
    old_start = datetime(2026, 4, 1, tzinfo=timezone.utc)
    now = datetime(2026, 10, 1, tzinfo=timezone.utc)
    for i in range(n):
        in_quarter = rng.random() < 0.9
        at = (q_start if in_quarter else old_start) + timedelta(seconds=rng.randrange(85 * 86400))
        kind, parcours, cents = KINDS[i % len(KINDS)]
        draw = rng.random()
        etat = "eligible" if draw < 0.80 else "en_attente" if draw < 0.95 else "non_eligible"
        unpriced = i % 1000 == 0
        if unpriced:
            kind, parcours, cents, etat = "tcim_medecin", "tcim", 2500, None
        yield {"user_id": users[i % len(users)], "kind": kind, "patient_code": f"P-{i % 9000:04d}",
               "parcours": parcours, "ref": f"bench:{i}", "at": at, "details": {"criteres": []}, "correction": 0,
               "trimestre": str(QUARTER) if in_quarter else "2026-T2", "etat": etat, "montant_cents": cents,
               "motif": None if etat == "eligible" else "manque : compte-rendu", "regle": "bench",
               "version": "livret-2022", "priced_at": None if unpriced else now}


async def fill(store, n: int) -> list[str]:
    users = [f"@pro{i:03d}:bench" for i in range(100)]
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    async with store.session.begin() as s:
        for u in users:
            s.add(Professional(user_id=u, display_name=f"Pro {u[4:7]}", profession="infirmier", communes=[],
                               roles=[], absences=[], cotisation_until=now + timedelta(days=3650), created_at=now))
    rng = random.Random(14)
    batch: list[dict] = []
    for row in rows(n, users, rng):
        batch.append(row)
        if len(batch) == 20000:
            async with store.session.begin() as s:
                await s.execute(insert(Act), batch)
            batch = []
    if batch:
        async with store.session.begin() as s:
            await s.execute(insert(Act), batch)
    return users


async def measure(label: str, url: str, data_dir: Path, n: int, runs: int, plain) -> tuple:
    store = await open_store(url, data_dir / "storage.key")
    try:
        started = time.perf_counter()
        await fill(store, n)
        fill_s = time.perf_counter() - started
        config = Config(matrix=MatrixConfig(homeserver="http://127.0.0.1:9", user_id="@cercle:bench", password="x"),
                        storage=StorageConfig(data_dir=data_dir, database_url=url), cpts=CptsConfig(name="Bench"))
        clock = FakeClock(datetime(2026, 10, 2, 8, tzinfo=timezone.utc))
        services = compose(config, store, clock).services
        ours, theirs = [], []
        expected = None
        for _ in range(runs):  # interleaved: each pair sees the same machine load
            t0 = time.perf_counter()
            async with store.session.begin() as s:
                await indemnites.catch_up(s, services, clock.now())
                summary = await indemnites.summary(s, QUARTER)
            ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            result = await plain(str(QUARTER))
            theirs.append(time.perf_counter() - t0)
            expected = sum(int(r[3] or 0) for r in result if r[1] == "eligible")
        assert sum(r.eligible_cents for r in summary) == expected, "the two aggregates disagree"
        a, b = p50(ours), p50(theirs)
        ok = a <= TARGET_S and a <= TARGET_RATIO * b
        return (label, f"{n:,}".replace(",", " "), f"{fill_s:.1f}", f"{a * 1000:.0f}", f"{b * 1000:.0f}",
                f"{a / b:.2f}×", mark(ok))
    finally:
        await store.close()


async def sqlite_case(n: int, runs: int) -> tuple:
    data_dir = Path(tempfile.mkdtemp(prefix="bench-bordereau-"))
    path = data_dir / "cercle.db"

    async def plain(q: str):
        with sqlite3.connect(path) as db:
            return db.execute(PLAIN.format(p="?"), (q,)).fetchall()

    return await measure("SQLite", f"sqlite+aiosqlite:///{path}", data_dir, n, runs, plain)


async def postgres_case(n: int, runs: int) -> tuple | None:
    try:
        import asyncpg
        dsn = POSTGRES.replace("postgresql+asyncpg", "postgresql")
        admin = await asyncpg.connect(dsn, timeout=3)
    except (OSError, ImportError, asyncio.TimeoutError) as e:
        print(f"PostgreSQL indisponible ({e}) : mesure ignorée")
        return None
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        async def plain(q: str):
            return await conn.fetch(PLAIN.format(p="$1"), q)

        sep = "&" if "?" in POSTGRES else "?"
        data_dir = Path(tempfile.mkdtemp(prefix="bench-bordereau-pg-"))
        return await measure("PostgreSQL", f"{POSTGRES}{sep}search_path={schema}", data_dir, n, runs, plain)
    finally:
        await conn.close()
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="20 000 lignes (machine partagée)")
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--sqlite-only", action="store_true")
    args = parser.parse_args()
    n = 20_000 if args.small else args.lines
    print(machine_note())
    results = [await sqlite_case(n, args.runs)]
    if not args.sqlite_only:
        pg = await postgres_case(n, args.runs)
        if pg:
            results.append(pg)
    print(table(results, ("base", "lignes", "insertion s", "bordereau ms (p50)", "SQL brut ms (p50)", "rapport",
                          f"≤ {TARGET_S:.0f} s et ≤ {TARGET_RATIO}×")))


if __name__ == "__main__":
    asyncio.run(main())
