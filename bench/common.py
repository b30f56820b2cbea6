"""Shared pieces of the benchmarks: a local Synapse, the two bots in their own processes, a
trivial nio echo bot, clinicians, figures and targets.

Every benchmark compares Cercle with a reference measured side by side in the same run (the echo
bot, or a plain SQL query), on the same machine: the ratios mean something on a noisy shared
machine where absolute times do not. Traffic stays on 127.0.0.1.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from nio import AsyncClient, AsyncClientConfig, InviteMemberEvent, MatrixRoom, RoomMessageText

from bot.config import Config, CptsConfig, MatrixConfig, StorageConfig, SyncConfig
from bot.local_synapse import LocalSynapse

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")

logging.getLogger("nio").setLevel(logging.ERROR)  # "Missing session for device": expected at warm-up


# --- the reference bot -------------------------------------------------------------------------
async def echo_bot(url: str, user_id: str, password: str, store: Path,
                   before_sync=None) -> tuple[AsyncClient, asyncio.Task]:
    """The trivial reference: answer every text message with an encrypted m.notice, nothing else."""
    store.mkdir(parents=True, exist_ok=True)
    client = AsyncClient(url, user_id, store_path=str(store), config=AsyncClientConfig(encryption_enabled=True))
    await client.login(password)

    async def on_invite(room: MatrixRoom, event: InviteMemberEvent):
        if event.state_key == user_id:
            await client.join(room.room_id)

    async def on_message(room: MatrixRoom, event: RoomMessageText):
        if event.sender != user_id:
            await client.room_send(room.room_id, "m.room.message",
                                   {"msgtype": "m.notice", "body": event.body,
                                    "m.relates_to": {"m.in_reply_to": {"event_id": event.event_id}}},
                                   ignore_unverified_devices=True)

    client.add_event_callback(on_invite, InviteMemberEvent)
    client.add_event_callback(on_message, RoomMessageText)
    await client.sync(timeout=0, full_state=True)
    if before_sync:
        before_sync(client)
    return client, asyncio.create_task(client.sync_forever(timeout=30000))


def cercle_config(homeserver: str, user_id: str, password: str, data_dir: Path, name: str = "Bench",
                  timeout_ms: int = 30000) -> Config:
    return Config(matrix=MatrixConfig(homeserver=homeserver, user_id=user_id, password=password),
                  storage=StorageConfig(data_dir=data_dir), cpts=CptsConfig(name=name),
                  sync=SyncConfig(timeout_ms=timeout_ms))


# --- a bot in its own process (bench/run_bot.py), so its CPU and memory are its own -----------------
@dataclass
class BotProcess:
    kind: str  # "cercle" | "echo"
    spec: dict
    proc: asyncio.subprocess.Process | None = None
    events: dict[str, dict] = field(default_factory=dict)
    traces: list[dict] = field(default_factory=list)  # "trace" lines (bench/phases.py), in order
    started_at: float = 0.0  # time.monotonic() just before the process was spawned
    _reader: asyncio.Task | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self, spec_path: Path) -> "BotProcess":
        spec_path.write_text(json.dumps(self.spec))
        os.chmod(spec_path, 0o600)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.events.clear()
        self.started_at = time.monotonic()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.run_bot", self.kind, str(spec_path), cwd=str(REPO), env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        while line := await self.proc.stdout.readline():
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg["event"] == "trace":
                self.traces.append(msg)
            else:
                self.events[msg["event"]] = msg
            self._changed.set()
        self._changed.set()

    async def wait(self, event: str, timeout: float = 120) -> dict:
        end = time.monotonic() + timeout
        while event not in self.events:
            if self.proc.returncode is not None or (self._reader.done() and event not in self.events):
                raise RuntimeError(f"{self.kind}: processus terminé avant « {event} » (code {self.proc.returncode})")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), max(0.01, end - time.monotonic()))
            except asyncio.TimeoutError:
                raise RuntimeError(f"{self.kind}: « {event} » pas reçu en {timeout:.0f} s") from None
        return self.events[event]

    def cpu_ms(self) -> float:
        """user + system CPU of the bot process so far (from /proc, no psutil)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * 1000 / CLK_TCK

    def memory_mb(self) -> tuple[float, float]:
        """(RSS now, peak RSS) in MB."""
        values = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
        return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)

    async def stop(self, timeout: float = 60) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self.proc.stdin.close()  # the runner stops cleanly when its stdin closes
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader:
            await asyncio.gather(self._reader, return_exceptions=True)
        self.proc = None


# --- one benchmark run: a work dir, a Synapse, accounts ---------------------------------------
class Stack:
    def __init__(self, work: Path, server: LocalSynapse):
        self.work, self.server = work, server
        self.passwords: dict[str, str] = {}
        self.spec_count = 0

    @property
    def url(self) -> str:
        return self.server.url

    def account(self, localpart: str) -> str:
        password = f"bench-{localpart}"
        user_id = self.server.register(localpart, password)
        self.passwords[user_id] = password
        return user_id

    def cercle(self, user_id: str, enrol: list[tuple[str, str]] = (), timeout_ms: int = 30000,
               trace: bool = False) -> BotProcess:
        """enrol: (user_id, profession) put in the directory before the bot runs."""
        data_dir = self.work / user_id[1:].split(":")[0]
        return BotProcess("cercle", {"homeserver": self.url, "user_id": user_id,
                                     "password": self.passwords[user_id], "data_dir": str(data_dir),
                                     "timeout_ms": timeout_ms, "enrol": list(map(list, enrol)), "trace": trace})

    def echo(self, user_id: str, trace: bool = False) -> BotProcess:
        return BotProcess("echo", {"homeserver": self.url, "user_id": user_id,
                                   "password": self.passwords[user_id],
                                   "data_dir": str(self.work / user_id[1:].split(":")[0]), "trace": trace})

    async def start(self, bot: BotProcess, timeout: float = 120) -> BotProcess:
        self.spec_count += 1
        await bot.start(self.work / f"spec-{self.spec_count}.json")
        await bot.wait("ready", timeout)
        return bot

    async def clinician(self, user_id: str):
        from tests.clinician import Clinician
        return await Clinician.login(self.url, user_id, self.passwords[user_id],
                                     self.work / "clients" / user_id[1:].split(":")[0])


@asynccontextmanager
async def stack(prefix: str):
    work = Path(tempfile.mkdtemp(prefix=f"cercle-bench-{prefix}-"))
    server = LocalSynapse.prepare(work / "synapse")
    server.start()
    try:
        yield Stack(work, server)
    finally:
        server.stop()


# --- measuring -------------------------------------------------------------------------------------
async def ask(c, room: str, text: str, responder: str, timeout: float = 60) -> tuple[float, object]:
    """Send a command and wait for the answer in reply to it: (round trip in ms, the answer)."""
    start = time.perf_counter()
    sent = await c.send_text(room, text)
    reply = await c.wait_for_message(room, sender=responder, predicate=lambda m: m.in_reply_to() == sent,
                                     timeout=timeout)
    return (time.perf_counter() - start) * 1000, reply


def pct(samples: list[float], p: float) -> float:
    """The p-th percentile (0-100), linear between closest ranks."""
    s = sorted(samples)
    if len(s) == 1:
        return s[0]
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def p50(samples):
    return statistics.median(samples)


def mark(ok: bool | None) -> str:
    return "—" if ok is None else ("✅" if ok else "❌")


def table(rows: list[tuple], headers: tuple) -> str:
    cells = [tuple(str(c) for c in headers)] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine_note() -> str:
    load = os.getloadavg()
    return f"machine : {os.cpu_count()} cœurs, charge {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min)"


def least_squares(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(slope, intercept) of y = slope·x + intercept."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return slope, my - slope * mx
