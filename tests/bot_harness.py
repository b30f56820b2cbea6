"""Run the real bot against the test Synapse, stop it, restart it on the same data."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from bot.app import Bot
from bot.config import Config, CptsConfig, MatrixConfig, StorageConfig, SyncConfig
from domain.clock import Clock, SystemClock


@dataclass
class BotHarness:
    homeserver: str
    user_id: str
    password: str
    data_dir: Path
    database_url: str | None = None
    clock: Clock = field(default_factory=SystemClock)
    coordinator_room: str | None = None
    bot: Bot | None = None
    task: asyncio.Task | None = None
    starts: int = 0
    # Called with each new Bot after it is opened and wired, before it runs (e.g. to count calls).
    before_run: list = field(default_factory=list)

    def config(self) -> Config:
        return Config(
            matrix=MatrixConfig(homeserver=self.homeserver, user_id=self.user_id, password=self.password),
            storage=StorageConfig(data_dir=self.data_dir, database_url=self.database_url),
            cpts=CptsConfig(name="CPTS de test", coordinator_room=self.coordinator_room),
            sync=SyncConfig(timeout_ms=1000),
        )

    async def start(self) -> Bot:
        self.bot = await Bot.open(self.config(), self.clock)
        for hook in self.before_run:
            hook(self.bot)
        self.task = asyncio.create_task(self.bot.run())
        await asyncio.wait_for(self.bot.synced_once.wait(), 30)
        self.starts += 1
        return self.bot

    async def stop(self) -> None:
        if self.bot is None:
            return
        await self.bot.stop()
        await asyncio.wait_for(self.task, 30)
        await self.bot.close()
        self.bot, self.task = None, None

    async def enrol(self, user_id: str, profession: str = "medecin_generaliste", name: str | None = None,
                    roles: list[str] | None = None, communes: list[str] | None = None) -> None:
        """Put a professional in the directory (what the coordinators do with `!annuaire ajouter`)."""
        from datetime import timedelta

        from rooms.directory import upsert_professional

        now = self.bot.clock.now()
        async with self.bot.store.session.begin() as session:
            await upsert_professional(session, user_id=user_id, display_name=name or user_id[1:].split(":")[0],
                                      profession=profession, roles=roles or [], now=now,
                                      communes=communes if communes is not None else ["Brétigny-sur-Orge"],
                                      cotisation_until=now + timedelta(days=365))

    async def identity_status(self, timeout: float = 10) -> str:
        """The cross-signing outcome of this start (created | reused | mismatch | error)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while loop.time() < end:
            if self.bot.identity_status:
                return self.bot.identity_status
            await asyncio.sleep(0.05)
        raise AssertionError("identité de signature croisée non vérifiée au démarrage")

    async def kill(self) -> None:
        """Stop like `kill -9`: every task dies at its current await, nothing is flushed or closed
        cleanly (open transactions are lost, as the database would lose them)."""
        if self.bot is None:
            return
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.bot.close()
        self.bot, self.task = None, None

    async def restart(self) -> Bot:
        await self.stop()
        return await self.start()

    async def idle(self, timeout: float = 15) -> None:
        """Wait until every recorded event is handled and every queued send has gone out, except
        direct messages waiting for their recipient to join."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while loop.time() < end:
            if not await self.bot.store.pending_events():
                waiting = await self.bot.flush_outbox()
                if not await self.bot.store.pending_events() and waiting == len(await self.bot.store.pending_outbox()):
                    if all(i.action == "direct" for i, _ in await self.bot.store.pending_outbox()):
                        return
            await asyncio.sleep(0.05)
        pending = [(i.action, i.room_id, i.ref) for i, _ in await self.bot.store.pending_outbox()]
        events = [(e.kind, e.event_id) for e in await self.bot.store.pending_events()]
        raise AssertionError(f"le bot n'a pas fini : événements {events}, envois {pending}")
