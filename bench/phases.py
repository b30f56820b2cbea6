"""Where an `!aide` round trip spends its time, Cercle next to the echo bot, interleaved.

Each bot process writes a line per /sync answer and per event it sends (bench/run_bot.py,
`trace`); the clinician notes when it sent the command and when the answer arrived. All on
CLOCK_MONOTONIC, the same clock in every process of the machine. Phases of one sample:

  send        the clinician's PUT of the command (encrypt + homeserver)
  to bot      from that PUT's answer to the bot's /sync answer holding the command
  read        the /sync body read and parsed as JSON
  bot         from there to the bot's PUT of its answer (nio's sync processing, decryption,
              and, for Cercle, the inbox commit, the pick-up, the dispatch and its commit)
  bot send    the bot's PUT of its answer (encrypt + homeserver)
  to client   from that PUT's answer until the clinician has decrypted the answer

Then, for Cercle, each step of its own between the /sync answer and its PUT (wall and CPU of
the event loop's thread, p50): what is left of the "bot" phase, and where.

    .venv/bin/python -m bench.phases [--runs 3] [--n 20] [--command "!aide"]
"""
from __future__ import annotations

import argparse
import asyncio
import time

from bench.common import machine_note, p50, stack, table

PHASES = ("send", "to bot", "read", "bot", "bot send", "to client", "total")
STEPS = ("nio receive_response", "record_sync", "pending_events", "dispatch", "prepare keys", "room_send")


def phases(bot, sent_id: str, t0: float, t_sent: float, t_reply: float) -> dict[str, float] | None:
    sync = next((t for t in bot.traces if t["kind"] == "sync" and sent_id in t["ids"]), None)
    if sync is None:
        return None
    put = next((t for t in bot.traces if t["kind"] == "put" and t["start"] >= sync["body"]), None)
    if put is None:
        return None
    ms = lambda a, b: (b - a) * 1000  # noqa: E731
    return {"send": ms(t0, t_sent), "to bot": ms(t_sent, sync["headers"]), "read": ms(sync["headers"], sync["body"]),
            "bot": ms(sync["body"], put["start"]), "bot send": ms(put["start"], put["end"]),
            "to client": ms(put["end"], t_reply), "total": ms(t0, t_reply)}


def steps(bot, sent_id: str) -> dict[str, tuple[float, float]]:
    """{step: (wall ms, CPU ms)} of Cercle's steps between the /sync holding the command and its PUT."""
    sync = next((t for t in bot.traces if t["kind"] == "sync" and sent_id in t["ids"]), None)
    put = next((t for t in bot.traces if sync and t["kind"] == "put" and t["start"] >= sync["body"]), None)
    if sync is None or put is None:
        return {}
    found = {}
    for t in bot.traces:
        if t["kind"] == "step" and t["name"] not in found and sync["headers"] <= t["start"] <= put["start"]:
            found[t["name"]] = ((t["end"] - t["start"]) * 1000, t["cpu_ms"])
    return found


async def sample(c, room: str, command: str, bot, responder: str) -> dict[str, float] | None:
    t0 = time.monotonic()
    sent = await c.send_text(room, command)
    t_sent = time.monotonic()
    await c.wait_for_message(room, sender=responder, predicate=lambda m: m.in_reply_to() == sent, timeout=60)
    t_reply = time.monotonic()
    await asyncio.sleep(0.2)  # the bot's last trace lines reach the reader
    found = phases(bot, sent, t0, t_sent, t_reply)
    if found is not None:
        found["steps"] = steps(bot, sent)
    return found


async def main(runs: int, n: int, command: str) -> None:
    print(f"bench.phases : {runs} run(s) × {n} « {command} » par bot, entrelacés")
    print(machine_note())
    async with stack("phases") as s:
        bot_user, echo_user, dr = s.account("cercle"), s.account("echo"), s.account("dr")
        bots = {"cercle": await s.start(s.cercle(bot_user, enrol=[(dr, "medecin_generaliste")], trace=True)),
                "echo": await s.start(s.echo(echo_user, trace=True))}
        users = {"cercle": bot_user, "echo": echo_user}
        c = await s.clinician(dr)
        try:
            rooms = {}
            for b, user in users.items():
                rooms[b] = await c.create_room(invite=[user], is_direct=True)
                await c.wait_joined(rooms[b], user, timeout=60)
                for _ in range(2):  # warm-up: Olm sessions, room keys
                    await sample(c, rooms[b], command, bots[b], user)
            rows, step_rows = [], []
            for run in range(1, runs + 1):
                got = {b: [] for b in bots}
                for i in range(n):
                    for b in (("cercle", "echo") if i % 2 == 0 else ("echo", "cercle")):
                        one = await sample(c, rooms[b], command, bots[b], users[b])
                        if one:
                            got[b].append(one)
                for b in bots:
                    rows.append((run, b, len(got[b]), *(f"{p50([g[p] for g in got[b]]):.1f}" for p in PHASES)))
                for step in STEPS:
                    seen = [g["steps"][step] for g in got["cercle"] if step in g["steps"]]
                    if seen:
                        step_rows.append((run, step, len(seen), f"{p50([w for w, _ in seen]):.1f}",
                                          f"{p50([c for _, c in seen]):.1f}"))
                print(f"run {run} terminé ({machine_note()})")
            print()
            print(table(rows, ("run", "bot", "n", *(f"{p} p50 ms" for p in PHASES))))
            print()
            print("Cercle, pas à pas entre la réponse /sync et le PUT de la réponse :")
            print(table(step_rows, ("run", "étape", "n", "durée p50 ms", "CPU p50 ms")))
        finally:
            await c.close()
            for b in bots.values():
                await b.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--command", default="!aide")
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.n, args.command))
