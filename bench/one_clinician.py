"""One clinician, Cercle vs the trivial echo bot, interleaved sample by sample.

Commands: `!aide`, `!demandes`, and a `!dec …` / `!annuler …` pair in a patient room created
through the bot (`patient nouveau` in a direct chat). Each bot runs in its own process; the
clinician alternates the two rooms, so both see the same machine load.

    .venv/bin/python -m bench.one_clinician [--small] [--runs 3] [--n 30]
"""
from __future__ import annotations

import argparse
import asyncio
import re

from bench.common import ask, machine_note, mark, p50, pct, stack, table

TARGET_P50 = 1.05  # issue 11: p50 ≤ 1.05× echo, one clinician

COMMANDS = ("!aide", "!demandes", "!dec", "!annuler")


async def patient_room(dr, bot_user: str, nurse: str) -> tuple[str, str]:
    """(the direct chat with the bot, a patient room created from it)."""
    dm = await dr.create_room(invite=[bot_user], is_direct=True)
    await dr.wait_joined(dm, bot_user, timeout=60)
    _, reply = await ask(dr, dm, "patient nouveau nom=Banc prenom=Marie naissance=12/03/1950 sexe=F "
                                 'tel=0612345678 adresse="3 rue des Lilas" commune=Brétigny-sur-Orge '
                                 f"mt={dr.user_id} pros={nurse} consentement=oui", bot_user)
    if not re.search(r"P-[2-9A-Z]{4}", reply.body):
        raise RuntimeError(f"patient non créé : {reply.body}")
    room = await dr.wait_for_invite(timeout=60, predicate=lambda r: r.room_id != dm)
    await dr.join(room)
    return dm, room


async def one_run(s, dr, rooms: dict, bots: dict, n: int) -> dict[str, dict[str, list[float]]]:
    """n interleaved samples of each command: {bot: {command: [ms]}}."""
    samples = {b: {c: [] for c in COMMANDS} for b in bots}
    for i in range(n):
        order = ("cercle", "echo") if i % 2 == 0 else ("echo", "cercle")
        for b in order:
            ms, _ = await ask(dr, rooms[b]["dm"], "!aide", bots[b])
            samples[b]["!aide"].append(ms)
        for b in order:
            ms, _ = await ask(dr, rooms[b]["patient"], "!demandes", bots[b])
            samples[b]["!demandes"].append(ms)
        numero = {}
        for b in order:
            ms, reply = await ask(dr, rooms[b]["patient"], "!dec infirmier vad reponse=4h pansement talon", bots[b])
            samples[b]["!dec"].append(ms)
            found = re.search(r"n°\s*\**(\d+)", reply.body)
            numero[b] = found.group(1) if found else "1"
            if b == "cercle" and not found:
                raise RuntimeError(f"!dec sans numéro de demande : {reply.body}")
        for b in order:
            ms, reply = await ask(dr, rooms[b]["patient"], f"!annuler {numero[b]} patient hospitalisé", bots[b])
            samples[b]["!annuler"].append(ms)
            if b == "cercle" and "annul" not in reply.body.lower():
                raise RuntimeError(f"!annuler sans effet : {reply.body}")
    return samples


async def main(small: bool, runs: int, n: int | None) -> None:
    n = n or (8 if small else 30)
    print(f"bench.one_clinician : {runs} run(s) × {n} échantillons par commande et par bot, entrelacés")
    print(machine_note())
    async with stack("one") as s:
        bot_user, echo_user = s.account("cercle"), s.account("echo")
        dr, nurse = s.account("dr"), s.account("ide")
        cercle = await s.start(s.cercle(bot_user, enrol=[(dr, "medecin_generaliste"), (nurse, "infirmier")]))
        echo = await s.start(s.echo(echo_user))
        c = await s.clinician(dr)
        try:
            dm, patient = await patient_room(c, bot_user, nurse)
            rooms = {"cercle": {"dm": dm, "patient": patient}, "echo": {}}
            for key in ("dm", "patient"):
                rooms["echo"][key] = await c.create_room(invite=[echo_user])
                await c.wait_joined(rooms["echo"][key], echo_user, timeout=60)
            bots = {"cercle": bot_user, "echo": echo_user}
            for b in bots:  # warm-up: Olm sessions and room keys
                await ask(c, rooms[b]["dm"], "!aide", bots[b])
                await ask(c, rooms[b]["patient"], "!demandes", bots[b])

            all_rows, ratios = [], {cmd: [] for cmd in COMMANDS}
            for run in range(1, runs + 1):
                samples = await one_run(s, c, rooms, bots, n)
                for cmd in COMMANDS:
                    ce, ec = samples["cercle"][cmd], samples["echo"][cmd]
                    r50 = p50(ce) / p50(ec)
                    ratios[cmd].append(r50)
                    all_rows.append((run, cmd, f"{p50(ce):.0f}", f"{pct(ce, 95):.0f}", f"{p50(ec):.0f}",
                                     f"{pct(ec, 95):.0f}", f"{r50:.2f}", f"{pct(ce, 95) / pct(ec, 95):.2f}",
                                     f"≤ {TARGET_P50}", mark(r50 <= TARGET_P50)))
                print(f"run {run} terminé ({machine_note()})", flush=True)
            print()
            print(table(all_rows, ("run", "commande", "Cercle p50 ms", "p95", "echo p50 ms", "p95",
                                   "ratio p50", "ratio p95", "cible p50", "")))
            print()
            print("médiane des runs, ratio p50 Cercle / echo :")
            for cmd in COMMANDS:
                r = p50(ratios[cmd])
                print(f"  {cmd:<10} {r:.2f}  (cible ≤ {TARGET_P50}) {mark(r <= TARGET_P50)}")
            print(machine_note())
        finally:
            await c.close()
            await echo.stop()
            await cercle.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="8 échantillons par commande")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--n", type=int, default=None, help="échantillons par commande et par run")
    args = parser.parse_args()
    asyncio.run(main(args.small, args.runs, args.n))
