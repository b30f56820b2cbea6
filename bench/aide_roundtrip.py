"""Round trip of `!aide` through Cercle vs a trivial echo bot, on the same local Synapse.

Both bots are nio E2EE clients in an encrypted room with one clinician; the clinician sends a
command and waits for the answer. Prints p50/p95 for each and their ratio (one run, same machine).

    .venv/bin/python -m bench.aide_roundtrip [--n 50]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import echo_bot
from bot.app import Bot
from bot.config import Config, CptsConfig, MatrixConfig, StorageConfig, SyncConfig
from bot.local_synapse import LocalSynapse
from domain.clock import SystemClock
from rooms.directory import upsert_professional
from tests.clinician import Clinician


async def measure(c: Clinician, room: str, responder: str, n: int, text: str) -> list[float]:
    warm = await c.send_text(room, text)  # the first message pays for Olm sessions and room keys
    await c.wait_for_message(room, sender=responder, predicate=lambda m: m.in_reply_to() == warm, timeout=30)
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        sent = await c.send_text(room, text)
        await c.wait_for_message(room, sender=responder, predicate=lambda m, s=sent: m.in_reply_to() == s, timeout=30)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def summary(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=20)
    return f"p50 {statistics.median(samples):6.1f} ms   p95 {q[18]:6.1f} ms   (n={len(samples)})"


async def main(n: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="cercle-bench-"))
    server = LocalSynapse.prepare(work / "synapse")
    server.start()
    try:
        bot_pw, echo_pw, dr_pw = "bench-bot", "bench-echo", "bench-dr"
        bot_user = server.register("cercle", bot_pw)
        echo_user = server.register("echo", echo_pw)
        dr_user = server.register("dr", dr_pw)
        config = Config(matrix=MatrixConfig(homeserver=server.url, user_id=bot_user, password=bot_pw),
                        storage=StorageConfig(data_dir=work / "bot"), cpts=CptsConfig(name="Bench"),
                        sync=SyncConfig(timeout_ms=30000))
        bot = await Bot.open(config, SystemClock())
        async with bot.store.session.begin() as s:
            await upsert_professional(s, user_id=dr_user, display_name="Dr Bench", profession="medecin_generaliste",
                                      now=bot.clock.now())
        runner = asyncio.create_task(bot.run())
        echo, echo_task = await echo_bot(server.url, echo_user, echo_pw, work / "echo")
        dr = await Clinician.login(server.url, dr_user, dr_pw, work / "dr")

        room_bot = await dr.create_room(invite=[bot_user])
        await dr.wait_joined(room_bot, bot_user, timeout=30)
        room_echo = await dr.create_room(invite=[echo_user])
        await dr.wait_joined(room_echo, echo_user, timeout=30)

        cercle = await measure(dr, room_bot, bot_user, n, "!aide")
        trivial = await measure(dr, room_echo, echo_user, n, "!aide")
        print(f"Cercle  !aide : {summary(cercle)}")
        print(f"echo (nio)    : {summary(trivial)}")
        print(f"ratio p50 Cercle / echo : {statistics.median(cercle) / statistics.median(trivial):.2f}")

        await dr.close()
        echo_task.cancel()
        await echo.close()
        await bot.stop()
        await runner
        await bot.close()
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=50)
    asyncio.run(main(parser.parse_args().n))
