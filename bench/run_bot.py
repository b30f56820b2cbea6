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


def trace_http(client) -> None:
    """With "trace" in the spec (bench/phases.py): one JSON line per /sync answer (when its headers
    came, when its body was read, the timeline event ids) and per event sent (start, end)."""
    send, parse_body = client.send, client.parse_body
    sync_headers = [0.0]

    async def traced_send(method, path, *args, **kwargs):
        start = time.monotonic()
        response = await send(method, path, *args, **kwargs)
        if method == "PUT" and "/send/" in path:
            say("trace", kind="put", start=start, end=time.monotonic())
        elif "/sync" in path:
            sync_headers[0] = time.monotonic()
        else:
            say("trace", kind="http", method=method, path=path.split("?")[0][:60], start=start, end=time.monotonic())
        return response

    async def traced_parse(transport_response):
        if "/sync" not in transport_response.url.path:
            return await parse_body(transport_response)
        headers_at = sync_headers[0]
        data = json.loads(await transport_response.read())
        ids = [ev.get("event_id") for room in ((data.get("rooms") or {}).get("join") or {}).values()
               for ev in (room.get("timeline") or {}).get("events") or []]
        say("trace", kind="sync", headers=headers_at, body=time.monotonic(), ids=ids)
        return data

    client.send, client.parse_body = traced_send, traced_parse


def trace_steps(bot) -> None:
    """With "trace": one JSON line per step of Cercle's command path (start, end, CPU of the loop's
    thread), to tell where the time between the /sync answer and the PUT of the answer goes."""
    import bot.app as app

    def wrap(owner, name, label):
        inner = getattr(owner, name)

        async def timed(*args, **kwargs):
            start, cpu = time.monotonic(), time.thread_time()
            try:
                return await inner(*args, **kwargs)
            finally:
                say("trace", kind="step", name=label, start=start, end=time.monotonic(),
                    cpu_ms=round((time.thread_time() - cpu) * 1000, 2))
        setattr(owner, name, timed)

    wrap(bot.client, "receive_response", "nio receive_response")
    wrap(bot.intake, "_crypto_housekeeping", "crypto housekeeping")
    wrap(bot.intake, "_collect", "collect")
    wrap(bot.store, "record_sync", "record_sync")
    wrap(bot.intake, "retry_waiting_keys", "retry_waiting_keys")
    wrap(bot.store, "pending_events", "pending_events")
    wrap(app, "dispatch", "dispatch")
    wrap(bot.outbox, "flush", "outbox flush")
    wrap(bot.outbox, "_prepare_room_keys", "prepare keys")
    wrap(bot.client, "room_send", "room_send")


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
    if spec.get("trace"):
        trace_http(bot.client)
        trace_steps(bot)
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

    client, task = await echo_bot(spec["homeserver"], spec["user_id"], spec["password"], Path(spec["data_dir"]),
                                  before_sync=trace_http if spec.get("trace") else None)
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
