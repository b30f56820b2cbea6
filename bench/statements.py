"""SQL statements and database sessions per command, in process (a count, not a time: it does not
depend on how busy the machine is). Issue 11: « nothing read from the database that the process
already knows … the send of exactly what the handler queued ».

    .venv/bin/python -m bench.statements [--n 20] [--show]

Starts a local Synapse, the bot in this process and one E2EE clinician; after a warm-up, counts
what the bot's engine executes between a command's send and the bot's answer, then until the
bot is idle again (the answer's own echo in the next sync included).
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import re
import statistics
import tempfile
from pathlib import Path

from sqlalchemy import event

from bot.app import Bot
from bot.config import Config, CptsConfig, MatrixConfig, StorageConfig, SyncConfig
from bot.local_synapse import LocalSynapse
from domain.clock import SystemClock
from rooms.directory import upsert_professional
from tests.clinician import Clinician


class Counter:
    def __init__(self, engine):
        self.statements: collections.Counter = collections.Counter()
        self.begins = 0
        self.paused = False  # the benchmark's own polling is not the bot's work
        event.listen(engine.sync_engine, "before_cursor_execute", self._statement)
        event.listen(engine.sync_engine, "begin", self._begin)

    def _statement(self, conn, cursor, statement, parameters, context, executemany):
        if not self.paused:
            self.statements[_shape(statement)] += 1

    def _begin(self, conn):
        if not self.paused:
            self.begins += 1

    def take(self) -> tuple[collections.Counter, int]:
        taken, begins = self.statements, self.begins
        self.statements, self.begins = collections.Counter(), 0
        return taken, begins


def _shape(statement: str) -> str:
    s = " ".join(statement.split())
    s = re.sub(r"\(\?(, \?)*\)|\(\$\d+(::\w+)?(, \$\d+(::\w+)?)*\)", "(…)", s)
    verb = s.split(" ", 1)[0]
    table = re.search(r"\b(?:FROM|INTO|UPDATE)\s+(\w+)", s)
    where = re.search(r"\bWHERE (.{0,60})", s)
    return f"{verb} {table[1] if table else ''} {('WHERE ' + where[1]) if where else ''}".strip()


async def idle(bot: Bot, counter: "Counter | None" = None) -> None:
    async def pending() -> bool:
        if counter is not None:
            counter.paused = True
        try:
            return bool(await bot.store.pending_events())
        finally:
            if counter is not None:
                counter.paused = False

    for _ in range(200):
        if not await pending():
            await asyncio.sleep(0.3)
            if not await pending():
                return
        await asyncio.sleep(0.05)


async def main(n: int, show: bool) -> None:
    work = Path(tempfile.mkdtemp(prefix="cercle-bench-"))
    server = LocalSynapse.prepare(work / "synapse")
    server.start()
    try:
        bot_user = server.register("cercle", "bench-bot")
        dr_user = server.register("dr", "bench-dr")
        config = Config(matrix=MatrixConfig(homeserver=server.url, user_id=bot_user, password="bench-bot"),
                        storage=StorageConfig(data_dir=work / "bot"), cpts=CptsConfig(name="Bench"),
                        sync=SyncConfig(timeout_ms=30000))
        bot = await Bot.open(config, SystemClock())
        async with bot.store.session.begin() as s:
            await upsert_professional(s, user_id=dr_user, display_name="Dr Bench", profession="medecin_generaliste",
                                      now=bot.clock.now())
        runner = asyncio.create_task(bot.run())
        dr = await Clinician.login(server.url, dr_user, "bench-dr", work / "dr")
        room = await dr.create_room(invite=[bot_user])
        await dr.wait_joined(room, bot_user, timeout=30)
        counter = Counter(bot.store.engine)
        for command in ("!aide", "!demandes"):
            per_command, per_begin = [], []
            shapes: collections.Counter = collections.Counter()
            for i in range(n + 2):
                await idle(bot, counter)
                counter.take()
                sent = await dr.send_text(room, command)
                await dr.wait_for_message(room, sender=bot_user, predicate=lambda m, s=sent: m.in_reply_to() == s)
                await idle(bot, counter)
                statements, begins = counter.take()
                if i >= 2:  # the first ones pay for keys and room state
                    per_command.append(sum(statements.values()))
                    per_begin.append(begins)
                    shapes.update(statements)
            print(f"{command:10} SQL statements per command: median {statistics.median(per_command):.0f} "
                  f"(min {min(per_command)}, max {max(per_command)}); transactions: median "
                  f"{statistics.median(per_begin):.0f}")
            if show:
                for shape, count in shapes.most_common():
                    print(f"    {count / n:5.1f}  {shape}")
        await dr.close()
        await bot.stop()
        await runner
        await bot.close()
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--show", action="store_true", help="each statement shape, per command")
    args = parser.parse_args()
    asyncio.run(main(args.n, args.show))
