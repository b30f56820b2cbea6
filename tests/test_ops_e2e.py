"""Issue 16, end to end on a real Synapse: /health follows the homeserver (503 when it is stopped,
200 again after), /metrics parses with Prometheus's own parser and counts a command by name and
outcome, with no user id in any label."""
from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.config import HttpConfig
from bot.health import OpsServer
from tests.clinician import Clinician
from tests.test_bot_e2e import bot_on_its_own_homeserver

pytestmark = pytest.mark.synapse


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s:
        async with s.get(url, timeout=aiohttp.ClientTimeout(total=10)) as r:
            return r.status, await r.text()


async def wait_health(url: str, status: int, timeout: float) -> dict:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    last = None
    while loop.time() < end:
        code, body = await get(f"{url}/health")
        last = (code, body)
        if code == status:
            return json.loads(body)
        await asyncio.sleep(0.5)
    raise AssertionError(f"/health n'a pas répondu {status} en {timeout:.0f} s : {last}")


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_health_follows_the_homeserver_and_metrics_count_commands(tmp_path):
    server, h, room, dr_user = await bot_on_its_own_homeserver(tmp_path)
    ops = OpsServer(HttpConfig(listen="127.0.0.1:0", sync_max_age_s=20), h.bot.metrics)
    url = await ops.start()
    try:
        ops.serving(h.bot)
        assert (await wait_health(url, 200, 20))["status"] == "ok"

        # One more known command, and a word that is no command (its label must not be the word).
        dr = await Clinician.login(server.url, dr_user, "pw-dr", tmp_path / "dr-metrics")
        await dr.join(room)
        for text in ("!aide", "!zorglub"):
            sent = await dr.send_text(room, text)
            await dr.wait_for_message(room, sender=h.user_id, predicate=lambda m: m.in_reply_to() == sent,
                                      timeout=30)
        await dr.close()
        await h.idle()
        code, text = await get(f"{url}/metrics")
        assert code == 200
        values = samples(text)
        aide_ok = values[("cercle_commands_total", (("command", "aide"), ("outcome", "ok")))]
        assert aide_ok == 2  # the one of the fixture, and this one
        assert values[("cercle_commands_total", (("command", "inconnue"), ("outcome", "usage")))] == 1
        assert values[("cercle_reply_latency_seconds_count", ())] == 3  # each answer sent, once
        assert 0 < values[("cercle_reply_latency_seconds_sum", ())] < 30
        assert values[("cercle_sync_duration_seconds_count", ())] >= 1
        assert values[("cercle_rooms_joined", (("kind", "other"),))] >= 1
        assert ("cercle_outbox_pending", ()) in values and ("cercle_deadlines_pending", ()) in values
        assert values[("cercle_active", ())] == 1
        labels = {v for _, ls in values for _, v in ls}
        assert not [v for v in labels if "@" in v or "!" in v or "zorglub" in v], labels

        # The homeserver goes away: 503 with the reason; back: 200.
        server.stop()
        body = await wait_health(url, 503, 30)
        assert body["status"] == "error" and any("injoignable" in r for r in body["reasons"]), body
        code, text = await get(f"{url}/metrics")  # still served, and says so
        assert samples(text)[("cercle_homeserver_reachable", ())] == 0
        server.start()
        assert (await wait_health(url, 200, 60))["status"] == "ok"
        ops.stopping()
        await h.stop()
        code, body = await get(f"{url}/health")
        assert code == 503  # a bot that stops is not healthy
    finally:
        await ops.stop()
        await h.stop()
        server.stop()
