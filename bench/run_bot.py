"""One bot in its own process, for the benchmarks: `python -m bench.run_bot cercle|echo spec.json`.

Prints JSON lines on stdout ({"event": ..., "t": time.monotonic()}; CLOCK_MONOTONIC is the same
clock in every process of the machine) and stops cleanly when its stdin is closed.
"""
from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from datetime import timedelta
from pathlib import Path


def say(event: str, **extra) -> None:
    print(json.dumps({"event": event, "t": time.monotonic(), **extra}), flush=True)


async def stdin_closed() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.read(4096):
        pass


def watch_first_sync(client) -> dict:
    """Fills the returned dict with the size of the first /sync response the client reads: bytes,
    joined rooms, state and timeline events (what a start costs the homeserver and the bot)."""
    seen: dict = {}
    parse_body = client.parse_body

    async def parse(transport_response):
        if seen or "/sync" not in transport_response.url.path:
            return await parse_body(transport_response)
        raw = await transport_response.read()
        data = json.loads(raw)
        rooms = (data.get("rooms") or {}).get("join") or {}
        seen.update(bytes=len(raw), rooms=len(rooms),
                    state=sum(len((r.get("state") or {}).get("events") or []) for r in rooms.values()),
                    timeline=sum(len((r.get("timeline") or {}).get("events") or []) for r in rooms.values()))
        return data

    client.parse_body = parse
    return seen


async def run_cercle(spec: dict) -> None:
    from bench.common import cercle_config
    from bot.app import Bot
    from domain.clock import SystemClock
    from rooms.directory import upsert_professional

    config = cercle_config(spec["homeserver"], spec["user_id"], spec["password"], Path(spec["data_dir"]),
                           timeout_ms=spec.get("timeout_ms", 30000))
    bot = await Bot.open(config, SystemClock())
    first_sync = watch_first_sync(bot.client)
    say("opened")
    if spec.get("enrol"):
        now = bot.clock.now()
        async with bot.store.session.begin() as session:
            for user_id, profession in spec["enrol"]:
                await upsert_professional(session, user_id=user_id, display_name=user_id[1:].split(":")[0],
                                          profession=profession, roles=[], now=now,
                                          communes=["Brétigny-sur-Orge"], cotisation_until=now + timedelta(days=365))
    runner = asyncio.create_task(bot.run())
    await asyncio.wait_for(bot.synced_once.wait(), 300)
    say("ready", first_sync=first_sync)
    waiter = asyncio.create_task(stdin_closed())
    await asyncio.wait([runner, waiter], return_when=asyncio.FIRST_COMPLETED)
    await bot.stop()
    await asyncio.wait_for(runner, 60)
    await bot.close()
    say("stopped")


async def run_echo(spec: dict) -> None:
    from bench.common import echo_bot

    client, task = await echo_bot(spec["homeserver"], spec["user_id"], spec["password"], Path(spec["data_dir"]))
    say("ready")
    await stdin_closed()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await client.close()
    say("stopped")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    kind, spec_path = sys.argv[1], sys.argv[2]
    spec = json.loads(Path(spec_path).read_text())
    asyncio.run(run_cercle(spec) if kind == "cercle" else run_echo(spec))


if __name__ == "__main__":
    main()
