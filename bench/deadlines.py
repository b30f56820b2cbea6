"""100,000 pending deadlines in the bot's store: start, `cercle status`, lateness, overdue burst.

The rows are inserted with plain SQL (SQLAlchemy Core insert) into the bot's SQLite store, with a
no-op deadline kind registered for the benchmark; the real deadline runner fires them. Next to
each figure, a plain SQL query on the same table gives the scale.

  - start: a clinician sends `!aide` while the bot is down; time from Bot.open to the answer,
    alternating a bot whose deadline table is empty and one with the pending rows;
  - `cercle status --config …` (the real CLI, a process of its own), same alternation;
  - lateness: 1,000 deadlines due within a minute, fired by the running bot (wall clock);
  - burst: 10,000 overdue deadlines at start; time until all fired, and each fired once.

    .venv/bin/python -m bench.deadlines [--small] [--runs 3]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

from sqlalchemy import insert

from bench.common import REPO, machine_note, mark, p50, pct, stack, table
from bot.app import Bot
from bot.config import write_config
from domain.clock import SystemClock
from storage.models import Deadline
from tests.bot_harness import BotHarness

TARGET_START, TARGET_STATUS_S, TARGET_LATE_S, TARGET_BURST_S = 1.1, 1.0, 1.0, 10.0  # issue 11
KIND = "bench.noop"


def sqlite_path(h: BotHarness) -> str:
    url = h.config().storage.url()
    assert url.startswith("sqlite"), "ce banc mesure le stockage SQLite par défaut"
    return url.split(":///", 1)[1]


def sql_time(dt: datetime) -> str:
    """An instant as SQLAlchemy stores it in SQLite (UTC, no offset), for comparisons in plain SQL."""
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


def plain_sql(h: BotHarness, sql: str, *args) -> tuple[float, object]:
    """(ms, first value) of one query with the sqlite3 module on the bot's database file."""
    with sqlite3.connect(sqlite_path(h)) as db:
        start = time.perf_counter()
        value = db.execute(sql, args).fetchone()[0]
        return (time.perf_counter() - start) * 1000, value


async def insert_deadlines(h: BotHarness, prefix: str, dues: list[datetime]) -> None:
    bot = await Bot.open(h.config(), SystemClock())  # not run: only its store
    try:
        now = datetime.now(timezone.utc)
        for i in range(0, len(dues), 10000):
            rows = [{"kind": KIND, "ref": f"{prefix}:{j}", "due_at": due, "status": "pending", "payload": {},
                     "created_at": now} for j, due in enumerate(dues[i:i + 10000], start=i)]
            async with bot.store.session.begin() as session:
                await session.execute(insert(Deadline), rows)
    finally:
        await bot.close()


class Fired:
    """The no-op deadline kind: records when each row fired, and how often."""

    def __init__(self):
        self.late: dict[str, list[float]] = {}
        self.count: Counter = Counter()
        self.last: float = 0.0

    def hook(self, bot) -> None:
        bot.deadline_handlers[KIND] = self.handle

    async def handle(self, ctx, deadline) -> None:
        self.count[deadline.ref] += 1
        self.last = time.monotonic()
        prefix = deadline.ref.split(":")[0]
        self.late.setdefault(prefix, []).append((datetime.now(timezone.utc) - deadline.due_at).total_seconds())

    def of(self, prefix: str) -> int:
        return sum(1 for ref in self.count if ref.startswith(prefix + ":"))

    async def wait(self, prefix: str, n: int, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while self.of(prefix) < n and time.monotonic() < end:
            await asyncio.sleep(0.05)
        return self.of(prefix) >= n


async def timed_start(h: BotHarness, probe, room: str) -> float:
    """Seconds from Bot.open to the answer to an `!aide` sent while the bot was down."""
    sent = await probe.send_text(room, "!aide")
    t0 = time.monotonic()
    await h.start()
    await probe.wait_for_message(room, sender=h.user_id, predicate=lambda m: m.in_reply_to() == sent, timeout=300)
    elapsed = time.monotonic() - t0
    await h.stop()
    return elapsed


def timed_imports() -> float:
    """The floor of any `cercle` command: a Python process importing the CLI and `cercle status`."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", "import bot.cli, bot.status"], cwd=REPO, env=env, check=True, timeout=120)
    return time.monotonic() - t0


def timed_status(config_path) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "bot.cli", "status", "--config", str(config_path)], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - t0
    if out.returncode != 0:
        raise RuntimeError(f"cercle status : code {out.returncode}\n{out.stderr[-2000:]}")
    line = next((x for x in out.stdout.splitlines() if x.startswith("Échéances")), "?")
    return elapsed, line


async def main(small: bool, runs: int) -> None:
    pending = 10_000 if small else 100_000
    due_soon, overdue = (200, 1_000) if small else (1_000, 10_000)
    window = 20 if small else 60
    print(f"bench.deadlines : {pending} échéances en attente, {due_soon} dues dans {window} s, "
          f"{overdue} en retard au démarrage; {runs} run(s) pour le démarrage et `cercle status`")
    print(machine_note())
    fired = Fired()
    async with stack("deadlines") as s:
        probe_user = s.account("sonde")
        hs = {}
        for key, local in (("vide", "cercle-vide"), ("plein", "cercle")):
            user = s.account(local)
            hs[key] = BotHarness(s.url, user, s.passwords[user], s.work / local, before_run=[fired.hook])
        probe = await s.clinician(probe_user)
        rooms, configs = {}, {}
        try:
            for key, h in hs.items():  # first start: login once, the probe's room, warm keys
                await h.start()
                await h.enrol(probe_user)
                rooms[key] = await probe.create_room(invite=[h.user_id])
                await probe.wait_joined(rooms[key], h.user_id, timeout=60)
                sent = await probe.send_text(rooms[key], "!aide")
                await probe.wait_for_message(rooms[key], sender=h.user_id, timeout=60,
                                             predicate=lambda m: m.in_reply_to() == sent)
                await h.stop()
                configs[key] = s.work / f"{key}.toml"
                configs[key].touch(mode=0o600)
                write_config(configs[key], h.config())
            far = datetime.now(timezone.utc) + timedelta(days=30)
            t0 = time.monotonic()
            await insert_deadlines(hs["plein"], "futur", [far + timedelta(seconds=i) for i in range(pending)])
            print(f"{pending} lignes insérées en {time.monotonic() - t0:.1f} s", flush=True)
            count_sql = "SELECT count(*) FROM deadline WHERE status='pending'"

            # start and status, alternated between the empty table and the full one
            rows, starts, statuses = [], {"vide": [], "plein": []}, {"vide": [], "plein": []}
            imports = []
            for run in range(1, runs + 1):
                order = ("vide", "plein") if run % 2 else ("plein", "vide")
                for key in order:
                    starts[key].append(await timed_start(hs[key], probe, rooms[key]))
                lines = {}
                for key in order:
                    elapsed, lines[key] = timed_status(configs[key])
                    statuses[key].append(elapsed)
                imports.append(timed_imports())
                sql_ms, n = plain_sql(hs["plein"], count_sql)
                rows.append((run, f"{starts['vide'][-1]:.2f}", f"{starts['plein'][-1]:.2f}",
                             f"{starts['plein'][-1] / starts['vide'][-1]:.2f}", f"{statuses['vide'][-1]:.2f}",
                             f"{statuses['plein'][-1]:.2f}", f"{imports[-1]:.2f}", f"{sql_ms:.1f} ({n})"))
                print(f"run {run} : démarrage {starts['vide'][-1]:.2f} / {starts['plein'][-1]:.2f} s, "
                      f"status {statuses['vide'][-1]:.2f} / {statuses['plein'][-1]:.2f} s "
                      f"[{lines['plein'].strip()}] ({machine_note()})", flush=True)
            print()
            print(table(rows, ("run", "démarrage vide s", f"démarrage {pending} s", "ratio",
                               "status vide s", f"status {pending} s", "imports seuls s", f"SQL `{count_sql}` ms")))

            # lateness: due within the window, the pending rows still there
            now = datetime.now(timezone.utc)
            first = now + timedelta(seconds=8)
            await insert_deadlines(hs["plein"], "bientot",
                                   [first + timedelta(seconds=window * i / due_soon) for i in range(due_soon)])
            await hs["plein"].start()
            all_fired = await fired.wait("bientot", due_soon, window + 120)
            await hs["plein"].stop()
            late = fired.late.get("bientot", [])
            due_ms, _ = plain_sql(hs["plein"], "SELECT count(*) FROM deadline WHERE status='pending' AND due_at <= ?",
                                  sql_time(datetime.now(timezone.utc)))

            # burst: overdue at start
            now = datetime.now(timezone.utc)
            await insert_deadlines(hs["plein"], "retard", [now - timedelta(seconds=1 + i % 3600) for i in range(overdue)])
            burst_sql_ms, _ = plain_sql(hs["plein"], "SELECT count(*) FROM deadline WHERE status='pending' AND due_at <= ?",
                                        sql_time(now))
            t0 = time.monotonic()
            await hs["plein"].start()
            done = await fired.wait("retard", overdue, 600)
            burst_s = (fired.last if done else time.monotonic()) - t0
            await asyncio.sleep(2)  # a second firing would show here
            await hs["plein"].stop()
            once = all(c == 1 for ref, c in fired.count.items())
            _, fired_rows = plain_sql(hs["plein"], "SELECT count(*) FROM deadline WHERE status='fired' "
                                      "AND ref LIKE 'retard:%'")
            _, still = plain_sql(hs["plein"], "SELECT count(*) FROM deadline WHERE status='pending' "
                                 "AND ref NOT LIKE 'futur:%'")

            start_ratio = p50(starts["plein"]) / p50(starts["vide"])
            status_s = p50(statuses["plein"])
            late_p99 = pct(late, 99) if late else float("inf")
            print()
            label = "" if not small else "  (--small : les cibles de l'issue 11 portent sur 100 000 / 1 000 / 10 000)"
            print(f"résumé (médianes des runs){label}")
            print(table([
                ("démarrage, ratio plein / vide", f"{start_ratio:.2f}", f"≤ {TARGET_START}", mark(start_ratio <= TARGET_START),
                 f"{p50(starts['vide']):.2f} s vide, {p50(starts['plein']):.2f} s plein"),
                ("cercle status", f"{status_s:.2f} s", f"≤ {TARGET_STATUS_S:.0f} s", mark(status_s <= TARGET_STATUS_S),
                 f"table vide {p50(statuses['vide']):.2f} s, imports seuls {p50(imports):.2f} s; "
                 f"SQL count {sql_ms:.1f} ms"),
                (f"retard p99, {due_soon} dues en {window} s", f"{late_p99:.2f} s", f"≤ {TARGET_LATE_S:.0f} s",
                 mark(all_fired and late_p99 <= TARGET_LATE_S),
                 f"p50 {p50(late):.2f} s, max {max(late):.2f} s, {len(late)}/{due_soon} déclenchées; SQL dues {due_ms:.1f} ms"
                 if late else "aucune déclenchée"),
                (f"{overdue} en retard au démarrage", f"{burst_s:.1f} s", f"≤ {TARGET_BURST_S:.0f} s",
                 mark(done and burst_s <= TARGET_BURST_S),
                 f"{fired.of('retard')} déclenchées, {fired_rows} lignes 'fired'; SQL dues {burst_sql_ms:.1f} ms"),
                ("chacune une seule fois", "oui" if once else "NON", "oui", mark(once and fired_rows == overdue),
                 f"max {max(fired.count.values())} déclenchement(s) par ligne; {still} hors 'futur' encore en attente"),
            ], ("mesure", "valeur", "cible", "", "échelle / détail")))
            print(machine_note())
        finally:
            await probe.close()
            for h in hs.values():
                await h.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="10 000 en attente, 200 dues en 20 s, 1 000 en retard")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.small, args.runs))
