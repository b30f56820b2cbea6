"""Issue 16, "beyond one machine", exercised: Synapse on PostgreSQL with a generic worker and Redis,
configured from deploy/synapse/ (the files of the compose `workers` profile), behind a proxy that
routes with the patterns of deploy/synapse/nginx-workers.conf. The bot syncs through the worker
and answers an E2EE clinician.

Needs PostgreSQL on 127.0.0.1:5432, `redis-server`, and what Synapse's `postgres` and `redis`
extras bring (psycopg2 or psycopg2-binary, txredisapi<1.6, hiredis); skipped, with the reason,
without them. Not in pyproject: psycopg2 from source needs libpq's headers.
"""
from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import aiohttp
import asyncpg
import pytest
import yaml
from aiohttp import web

from bot.local_synapse import LocalSynapse, free_port
from tests.bot_harness import BotHarness
from tests.clinician import Clinician
from tests.conftest import POSTGRES_BASE, _postgres_answers

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "synapse"
pytestmark = pytest.mark.synapse


def worker_routes() -> list[re.Pattern]:
    """The nginx `location ~ REGEX { proxy_pass ...worker... }` lines, as compiled patterns."""
    routes = []
    for line in (DEPLOY / "nginx-workers.conf").read_text().splitlines():
        m = re.match(r"location ~ (\S+) \{ proxy_pass http://synapse-generic-worker", line)
        if m:
            routes.append(re.compile(m.group(1)))
    return routes


def _missing() -> str | None:
    if not _postgres_answers():
        return "PostgreSQL ne répond pas sur 127.0.0.1:5432"
    if shutil.which("redis-server") is None:
        return "redis-server absent"
    try:
        import hiredis  # noqa: F401
        import psycopg2  # noqa: F401
        import txredisapi  # noqa: F401
    except ImportError as e:
        return f"dépendance de Synapse manquante ({e.name}) : pip install psycopg2-binary 'txredisapi<1.6' hiredis"
    return None


def wait_http(url: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} ne répond pas")


class Proxy:
    """The reverse proxy of the deployment, in miniature: worker routes to the worker, the rest to main."""

    def __init__(self, main: str, worker: str):
        self.main, self.worker = main, worker
        self.routes = worker_routes()
        self.served = {"main": 0, "worker": 0}
        self.worker_paths: set[str] = set()
        self._runner = None

    async def start(self) -> str:
        app = web.Application(client_max_size=50 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._session = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=120))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        await self._session.close()
        await self._runner.cleanup()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        to_worker = any(r.match(request.path) for r in self.routes)
        self.served["worker" if to_worker else "main"] += 1
        if to_worker:
            self.worker_paths.add(re.sub(r"![^/]+|%21[^/]+", "!room", request.path.rsplit("/send/", 1)[0]))
        upstream = (self.worker if to_worker else self.main) + request.path_qs
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with self._session.request(request.method, upstream, headers=headers, data=await request.read()) as r:
            body = await r.read()
            out = {k: v for k, v in r.headers.items()
                   if k.lower() not in ("transfer-encoding", "content-length", "connection")}
            return web.Response(status=r.status, body=body, headers=out)


async def _admin_sql(sql: str) -> None:
    conn = await asyncpg.connect(POSTGRES_BASE.replace("postgresql+asyncpg", "postgresql"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def test_the_bot_answers_through_a_synapse_generic_worker(tmp_path):
    missing = _missing()
    if missing:
        pytest.skip(missing)
    main_cfg = yaml.safe_load((DEPLOY / "workers.yaml").read_text())
    worker_cfg = yaml.safe_load((DEPLOY / "generic-worker-1.yaml").read_text())
    database = f"cercle_synapse_{uuid.uuid4().hex[:10]}"
    await _admin_sql(f"CREATE DATABASE {database} TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'")
    redis_port, replication_port, worker_port = free_port(), free_port(), free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = LocalSynapse.prepare(tmp_path / "hs")
    worker = proxy = harness = dr = None
    try:
        # The main process: PostgreSQL, the replication listener, instance_map and redis of workers.yaml.
        config = json.loads(server.config_path.read_text())
        config["database"] = {"name": "psycopg2", "args": {"user": "postgres", "host": "127.0.0.1", "port": 5432,
                                                           "database": database, "cp_min": 1, "cp_max": 5}}
        replication = next(listener for listener in main_cfg["listeners"]
                           if any("replication" in r["names"] for r in listener["resources"]))
        config["listeners"].append({**replication, "port": replication_port, "bind_addresses": ["127.0.0.1"]})
        config["instance_map"] = {"main": {**main_cfg["instance_map"]["main"], "host": "127.0.0.1",
                                           "port": replication_port}}
        config["redis"] = {**main_cfg["redis"], "host": "127.0.0.1", "port": redis_port}
        server.config_path.write_text(json.dumps(config, indent=2))
        server.start()
        # The generic worker of generic-worker-1.yaml, on a free port.
        worker_cfg["worker_listeners"][0].update(port=worker_port, bind_addresses=["127.0.0.1"])
        worker_path = tmp_path / "hs" / "generic-worker-1.yaml"
        worker_path.write_text(yaml.safe_dump(worker_cfg))
        worker_log = open(tmp_path / "hs" / "worker.stderr", "ab")
        worker = subprocess.Popen([sys.executable, "-m", "synapse.app.generic_worker", "-c", str(server.config_path),
                                   "-c", str(worker_path)], cwd=tmp_path / "hs", stdout=worker_log,
                                  stderr=worker_log)
        wait_http(f"http://127.0.0.1:{worker_port}/health")
        proxy = Proxy(server.url, f"http://127.0.0.1:{worker_port}")
        homeserver = await proxy.start()

        bot_user = server.register("cercle", "pw-bot")
        dr_user = server.register("dr", "pw-dr")
        harness = BotHarness(homeserver, bot_user, "pw-bot", tmp_path / "bot")
        await harness.start()
        await harness.enrol(dr_user)
        dr = await Clinician.login(homeserver, dr_user, "pw-dr", tmp_path / "dr")
        room = await dr.create_room(invite=[bot_user])
        await dr.wait_joined(room, bot_user, timeout=30)
        for text in ("!aide", "!aide aide"):
            sent = await dr.send_text(room, text)
            reply = await dr.wait_for_message(room, sender=bot_user, predicate=lambda m: m.in_reply_to() == sent,
                                              timeout=40)
            assert reply.encrypted and "!aide" in reply.body
        assert proxy.served["worker"] > 0
        synced = [p for p in proxy.worker_paths if p.endswith("/sync")]
        sent_paths = [p for p in proxy.worker_paths if "/rooms/" in p]
        assert synced and sent_paths, proxy.worker_paths  # syncs and sends went through the worker
    finally:
        if dr is not None:
            await dr.close()
        if harness is not None:
            await harness.stop()
        if proxy is not None:
            await proxy.stop()
        if worker is not None:
            worker.terminate()
            worker.wait(20)
        server.stop()
        redis.terminate()
        redis.wait(10)
        await asyncio.sleep(0.5)
        await _admin_sql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
