"""Cold start to first reply as the bot's rooms grow: 10, 500, 1000, 2000 rooms (--small: 10, 100).

Rooms are made through the client API as a CPTS makes them: a clinician creates an encrypted room
and invites the bot and one or two colleagues, who join. At each size, with the bot stopped, a
clinician sends `!aide` in a room it shares with the bot; then the bot process starts, and we time
the answer from the spawn (imports included), the first sync, and the process RSS.

Side by side, a reference bot that stays in 10 rooms is started the same way, alternately, so
each size has its own "10-room start" measured under the same load. The slope (least squares over
the sizes) projects the start with 10,000 rooms.

    .venv/bin/python -m bench.cold_start [--small] [--runs 3] [--sizes 10,500,1000,2000]
"""
from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp

from bench.common import least_squares, machine_note, mark, p50, stack, table
from storage.repositories import open_store

TARGET_REPLY_S, TARGET_RATIO, TARGET_10K_S, TARGET_RSS_MB = 10.0, 1.5, 30.0, 300.0  # issue 11, 2 000 rooms
POOL = 20  # clinicians who create and share the rooms
ENCRYPTION = {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}


class Api:
    def __init__(self, http: aiohttp.ClientSession, url: str):
        self.http, self.url = http, url

    async def call(self, method: str, path: str, token: str, body: dict | None = None) -> dict:
        for attempt in range(5):
            async with self.http.request(method, self.url + path, json=body if body is not None else {},
                                         headers={"Authorization": f"Bearer {token}"}) as r:
                payload = await r.json(content_type=None)
                if r.status == 429:
                    await asyncio.sleep(payload.get("retry_after_ms", 500) / 1000)
                    continue
                if r.status >= 400:
                    raise RuntimeError(f"{method} {path} -> {r.status} {payload}")
                return payload
        raise RuntimeError(f"{method} {path}: limité par le serveur")

    async def login(self, user_id: str, password: str) -> str:
        async with self.http.post(self.url + "/_matrix/client/v3/login", json={
                "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user_id},
                "password": password, "initial_device_display_name": "bench"}) as r:
            return (await r.json())["access_token"]


async def grow(api: Api, pool: list[tuple[str, str]], bot: tuple[str, str], start: int, stop: int,
               concurrency: int = 6) -> None:
    """Rooms number start..stop-1: creator pool[i], one or two colleagues, and the bot, all joined."""
    sem = asyncio.Semaphore(concurrency)
    bot_user, bot_token = bot

    async def one(i: int):
        creator = pool[i % len(pool)]
        others = [pool[(i + 1) % len(pool)]] + ([pool[(i + 2) % len(pool)]] if i % 2 else [])
        async with sem:
            room = (await api.call("POST", "/_matrix/client/v3/createRoom", creator[1], {
                "preset": "private_chat", "invite": [bot_user] + [u for u, _ in others],
                "initial_state": [ENCRYPTION]}))["room_id"]
            for _, token in [bot] + others:
                await api.call("POST", f"/_matrix/client/v3/join/{room}", token)

    await asyncio.gather(*(one(i) for i in range(start, stop)))


async def bot_token(data_dir) -> str:
    from bench.common import cercle_config
    config = cercle_config("http://127.0.0.1:1", "@x:localhost", "x", data_dir)
    store = await open_store(config.storage.url(), config.storage.key_path(), create_key=False)
    try:
        return await store.get_secret("access_token")
    finally:
        await store.close()


async def cold_start(s, spec_bot, probe, room: str) -> dict:
    """Send `!aide` while the bot is down, start its process, time the answer."""
    bot_user = spec_bot.spec["user_id"]
    sent = await probe.send_text(room, "!aide")
    s.spec_count += 1
    await spec_bot.start(s.work / f"spec-{s.spec_count}.json")  # not s.start: the answer is the finish line
    try:
        await probe.wait_for_message(room, sender=bot_user, predicate=lambda m: m.in_reply_to() == sent, timeout=600)
        replied = time.monotonic()
        cpu_s = spec_bot.cpu_ms() / 1000  # the bot's own work to its first reply: less noisy than the wall clock
        ready = await spec_bot.wait("ready", 600)
        rss, peak = spec_bot.memory_mb()
        return {"reply_s": replied - spec_bot.started_at, "sync_s": ready["t"] - spec_bot.started_at,
                "rss": rss, "peak": peak, "cpu_s": cpu_s, "first_sync": ready.get("first_sync") or {}}
    finally:
        await spec_bot.stop()


async def main(small: bool, runs: int, sizes: list[int] | None) -> None:
    sizes = sorted(sizes or ([10, 100] if small else [10, 500, 1000, 2000]))
    print(f"bench.cold_start : salons {sizes}, {runs} démarrage(s) mesuré(s) par taille, "
          "alternés avec un bot de référence dans 10 salons")
    print(machine_note())
    async with stack("cold") as s, aiohttp.ClientSession() as http:
        api = Api(http, s.url)
        big_user, ref_user, probe_user = s.account("cercle"), s.account("cercle10"), s.account("sonde")
        users = [s.account(f"pro{i}") for i in range(POOL)]
        enrol = [(probe_user, "medecin_generaliste")] + [(u, "infirmier") for u in users]
        bots = {"big": s.cercle(big_user, enrol=enrol), "ref": s.cercle(ref_user, enrol=enrol)}
        probe = await s.clinician(probe_user)
        try:
            rooms = {}
            for key, bot in bots.items():  # first start: login once, the probe's room, warm keys
                await s.start(bot)
                user = bot.spec["user_id"]
                rooms[key] = await probe.create_room(invite=[user])
                await probe.wait_joined(rooms[key], user, timeout=120)
                sent = await probe.send_text(rooms[key], "!aide")
                await probe.wait_for_message(rooms[key], sender=user, predicate=lambda m: m.in_reply_to() == sent,
                                             timeout=120)
                await bot.stop()
            pool = [(u, await api.login(u, s.passwords[u])) for u in users]
            tokens = {k: (b.spec["user_id"], await bot_token(s.work / b.spec["user_id"][1:].split(":")[0]))
                      for k, b in bots.items()}
            await grow(api, pool, tokens["ref"], 1, 10)  # the reference bot: 10 rooms with the probe's
            have = 1
            rows, medians, cpu_medians = [], {}, {}
            for n in sizes:
                t0 = time.monotonic()
                await grow(api, pool, tokens["big"], have, n)
                made = n - have
                have = n
                print(f"{n} salons : {made} créés en {time.monotonic() - t0:.0f} s ({machine_note()})", flush=True)
                catch_up = await cold_start(s, bots["big"], probe, rooms["big"])  # first start after the growth
                print(f"  premier démarrage après création (rattrapage) : réponse {catch_up['reply_s']:.1f} s", flush=True)
                replies, refs, cpus, ref_cpus = [], [], [], []
                for run in range(1, runs + 1):
                    order = ("ref", "big") if run % 2 else ("big", "ref")
                    got = {k: await cold_start(s, bots[k], probe, rooms[k]) for k in order}
                    big, ref = got["big"], got["ref"]
                    replies.append(big["reply_s"])
                    refs.append(ref["reply_s"])
                    cpus.append(big["cpu_s"])
                    ref_cpus.append(ref["cpu_s"])
                    rows.append((n, run, f"{big['reply_s']:.2f}", f"{big['sync_s']:.2f}", f"{big['rss']:.0f}",
                                 f"{big['peak']:.0f}", f"{ref['reply_s']:.2f}", f"{big['reply_s'] / ref['reply_s']:.2f}",
                                 f"{big['cpu_s']:.2f}", f"{ref['cpu_s']:.2f}"))
                    first = big["first_sync"]
                    print(f"  run {run} : réponse {big['reply_s']:.2f} s (réf. 10 salons {ref['reply_s']:.2f} s), "
                          f"CPU {big['cpu_s']:.2f} s (réf. {ref['cpu_s']:.2f} s), RSS {big['rss']:.0f} Mo ; 1re sync : {first.get('bytes', 0)} octets, "
                          f"{first.get('rooms', 0)} salons, {first.get('state', 0)} événements d'état, "
                          f"{first.get('timeline', 0)} de chronologie", flush=True)
                medians[n] = (p50(replies), p50(refs), max(float(r[4]) for r in rows if r[0] == n))
                cpu_medians[n] = (p50(cpus), p50(ref_cpus))
            print()
            print(table(rows, ("salons", "run", "1re réponse s", "1re sync s", "RSS Mo", "pic RSS Mo",
                               "réf. 10 salons s", "ratio", "CPU s", "réf. CPU s")))
            slope, intercept = least_squares([float(n) for n in medians], [m[0] for m in medians.values()])
            at10k = intercept + slope * 10000
            top = sizes[-1]
            reply, ref, rss = medians[top]
            print()
            print(f"pente (moindres carrés) : {slope * 1000:.2f} ms par salon, ordonnée {intercept:.2f} s")
            cpu_slope, cpu_intercept = least_squares([float(n) for n in cpu_medians],
                                                     [m[0] for m in cpu_medians.values()])
            print(f"pente CPU du bot jusqu'à sa 1re réponse : {cpu_slope * 1000:.2f} ms par salon, ordonnée "
                  f"{cpu_intercept:.2f} s ; projection 10 000 salons {cpu_intercept + cpu_slope * 10000:.1f} s de CPU ; "
                  "ratio CPU / réf. 10 salons : " + ", ".join(f"{n} : {c / r:.2f}" for n, (c, r) in cpu_medians.items()))
            label = "" if top == 2000 else f"  (cibles pour 2 000 salons, mesuré à {top})"
            print(f"à {top} salons, médianes :{label}")
            print(f"  1re réponse {reply:.2f} s          cible ≤ {TARGET_REPLY_S:.0f} s  {mark(reply <= TARGET_REPLY_S)}")
            print(f"  ratio / 10 salons {reply / ref:.2f}      cible ≤ {TARGET_RATIO}    {mark(reply / ref <= TARGET_RATIO)}")
            print(f"  RSS {rss:.0f} Mo               cible ≤ {TARGET_RSS_MB:.0f} Mo {mark(rss <= TARGET_RSS_MB)}")
            print(f"  projection 10 000 salons {at10k:.1f} s  cible ≤ {TARGET_10K_S:.0f} s  {mark(at10k <= TARGET_10K_S)}")
            print(machine_note())
        finally:
            await probe.close()
            for bot in bots.values():
                await bot.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="10 et 100 salons")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default=None, help="tailles séparées par des virgules")
    args = parser.parse_args()
    asyncio.run(main(args.small, args.runs, [int(x) for x in args.sizes.split(",")] if args.sizes else None))
