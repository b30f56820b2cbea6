"""Many clinicians at once, Cercle vs the trivial echo bot: p50/p95 and CPU per command.

Each clinician has a room with each bot. A round: every clinician sends `!aide` to one bot at
the same moment and waits for the answer, then the same to the other bot (the order alternates
round by round). Each bot runs in its own process; its CPU comes from /proc/<pid>/stat, from the
end of the warm-up to the last answer, divided by the commands it answered.

    .venv/bin/python -m bench.concurrent [--small] [--runs 3] [--clinicians 50] [--rounds 10]
"""
from __future__ import annotations

import argparse
import asyncio

from bench.common import ask, machine_note, mark, p50, pct, stack, table

TARGET_P50, TARGET_P95, TARGET_CPU = 1.05, 1.3, 3.0  # issue 11, at 50 concurrent clinicians


async def gathered(coros, limit: int = 10):
    sem = asyncio.Semaphore(limit)

    async def one(c):
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))


async def main(small: bool, runs: int, clinicians: int | None, rounds: int | None) -> None:
    clinicians = clinicians or (10 if small else 50)
    rounds = rounds or (4 if small else 10)
    print(f"bench.concurrent : {runs} run(s), {clinicians} clinicien·ne·s simultané·e·s × {rounds} tours, `!aide`")
    print(machine_note())
    async with stack("concurrent") as s:
        bot_user, echo_user = s.account("cercle"), s.account("echo")
        users = [s.account(f"dr{i}") for i in range(clinicians)]
        cercle = await s.start(s.cercle(bot_user, enrol=[(u, "medecin_generaliste") for u in users]))
        echo = await s.start(s.echo(echo_user))
        bots = {"cercle": (bot_user, cercle), "echo": (echo_user, echo)}
        people = await gathered([s.clinician(u) for u in users], limit=5)
        try:
            async def rooms_of(c):
                out = {}
                for b, (user, _) in bots.items():
                    out[b] = await c.create_room(invite=[user])
                    await c.wait_joined(out[b], user, timeout=120)
                    await ask(c, out[b], "!aide", user, timeout=120)  # warm-up: Olm sessions, room keys
                return out
            rooms = await gathered([rooms_of(c) for c in people], limit=5)
            print(f"{clinicians} clinicien·ne·s prêt·e·s ({machine_note()})", flush=True)

            rows, summary = [], {"p50": [], "p95": [], "cpu": []}
            for run in range(1, runs + 1):
                samples = {b: [] for b in bots}
                cpu0 = {b: proc.cpu_ms() for b, (_, proc) in bots.items()}
                for r in range(rounds):
                    order = ("cercle", "echo") if r % 2 == 0 else ("echo", "cercle")
                    for b in order:
                        user = bots[b][0]
                        results = await asyncio.gather(*(ask(c, rm[b], "!aide", user, timeout=120)
                                                         for c, rm in zip(people, rooms)))
                        samples[b] += [ms for ms, _ in results]
                cpu = {b: (proc.cpu_ms() - cpu0[b]) / len(samples[b]) for b, (_, proc) in bots.items()}
                ce, ec = samples["cercle"], samples["echo"]
                r50, r95, rcpu = p50(ce) / p50(ec), pct(ce, 95) / pct(ec, 95), cpu["cercle"] / max(cpu["echo"], 0.01)
                summary["p50"].append(r50)
                summary["p95"].append(r95)
                summary["cpu"].append(rcpu)
                rows.append((run, f"{p50(ce):.0f}", f"{pct(ce, 95):.0f}", f"{p50(ec):.0f}", f"{pct(ec, 95):.0f}",
                             f"{r50:.2f} {mark(r50 <= TARGET_P50)}", f"{r95:.2f} {mark(r95 <= TARGET_P95)}",
                             f"{cpu['cercle']:.1f}", f"{cpu['echo']:.1f}", f"{rcpu:.2f} {mark(rcpu <= TARGET_CPU)}"))
                print(f"run {run} terminé ({machine_note()})", flush=True)
            print()
            print(table(rows, ("run", "Cercle p50 ms", "p95", "echo p50 ms", "p95",
                               f"ratio p50 (≤ {TARGET_P50})", f"ratio p95 (≤ {TARGET_P95})",
                               "CPU ms/cmd Cercle", "echo", f"ratio CPU (≤ {TARGET_CPU:.0f})")))
            print()
            print(f"médiane des runs ({clinicians} simultanés) :  ratio p50 {p50(summary['p50']):.2f} "
                  f"{mark(p50(summary['p50']) <= TARGET_P50)}   ratio p95 {p50(summary['p95']):.2f} "
                  f"{mark(p50(summary['p95']) <= TARGET_P95)}   ratio CPU {p50(summary['cpu']):.2f} "
                  f"{mark(p50(summary['cpu']) <= TARGET_CPU)}")
            if clinicians != 50:
                print("(les cibles de l'issue 11 portent sur 50 clinicien·ne·s simultané·e·s)")
            print(machine_note())
        finally:
            await asyncio.gather(*(c.close() for c in people), return_exceptions=True)
            await echo.stop()
            await cercle.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="10 clinicien·ne·s × 4 tours")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clinicians", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    asyncio.run(main(args.small, args.runs, args.clinicians, args.rounds))
