"""Issue 16 without a homeserver: command metrics from the real dispatch on a real store, deadline
lateness, the JSON log lines' scrubbing, and the [http] / [log] configuration."""
from __future__ import annotations

import io
import json
import logging
import time
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.config import ConfigError, HttpConfig, load_config
from bot.health import OpsServer
from bot.logs import setup_logging
from domain.clock import wall_now
from rooms.messages import render
from tests.usecase import COORDINATION_ROOM, UseCases

MT = "@mt:cpts.test"
IDE = "@ide:cpts.test"
OUTSIDER = "@inconnu:cpts.test"


def commands(uc: UseCases) -> dict[tuple[str, str], float]:
    text = uc.bot.metrics.exposition().decode()
    return {(s.labels["command"], s.labels["outcome"]): s.value
            for f in text_string_to_metric_families(text) for s in f.samples if s.name == "cercle_commands_total"}


async def test_commands_are_counted_by_declared_name_and_outcome(tmp_path):
    uc = await UseCases.open(tmp_path / "bot")
    try:
        await uc.enrol(MT, name="Dr Martin")
        await uc.enrol(IDE, "infirmier", name="Julie Petit")
        room = await uc.patient("P-OPS", [MT, IDE], mt=MT)
        await uc.say(MT, room, "!aide")
        await uc.say(MT, room, "!annuaire")  # a known command, its required argument missing
        await uc.say(MT, room, "!zorglub")  # no such command: counted, never named
        await uc.say(OUTSIDER, room, "!redflag spo2=91 essoufflement")  # not in the directory
        await uc.say(MT, room, "bonjour à tous")  # chatter: no command at all
        counted = commands(uc)
        assert counted[("aide", "ok")] == 1
        assert counted[("annuaire", "usage")] == 1
        assert counted[("inconnue", "usage")] == 1
        assert counted[("redflag", "refusee")] == 1
        assert sum(counted.values()) == 4
        assert not any("zorglub" in name or "@" in name for name, _ in counted)

        # The gauges read from the database at each scrape.
        await uc.bot.metrics.refresh(uc.bot.store)
        families = {f.name: f for f in text_string_to_metric_families(uc.bot.metrics.exposition().decode())}
        pending = families["cercle_outbox_pending"].samples[0].value
        assert pending == len(await uc.bot.store.pending_outbox())  # what the use cases queued, unsent here
        rooms = {s.labels["kind"]: s.value for s in families["cercle_rooms_joined"].samples}
        assert rooms["patient"] == 1 and rooms["coordination"] == 1
    finally:
        await uc.close()


async def test_a_deadline_fired_late_is_measured(tmp_path):
    uc = await UseCases.open(tmp_path / "bot")
    fired = []

    async def handler(ctx, deadline):
        fired.append(deadline.id)

    try:
        uc.bot.deadlines.handlers["essai"] = handler
        await uc.bot.store.add_deadline("essai", "ops:1", uc.clock.now() + timedelta(minutes=5), uc.clock.now())
        uc.clock.advance(timedelta(minutes=5, seconds=40))  # fired 40 s after its time
        assert await uc.bot.fire_due_deadlines() == 1
        text = uc.bot.metrics.exposition().decode()
        samples = {s.name: s for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name.startswith("cercle_deadline")}
        assert samples["cercle_deadlines_fired_total"].value == 1
        assert samples["cercle_deadline_lateness_seconds_sum"].value == pytest.approx(40)
    finally:
        await uc.close()


def test_json_log_lines_mask_tokens_and_pseudonymise_user_ids():
    stream = io.StringIO()
    setup_logging(False, "json", stream=stream)
    try:
        log = logging.getLogger("cercle")
        log.warning("jeton syt_Y2VyY2xl_abcdefghijkl_123 refusé pour @dr.martin:cpts.fr")
        try:
            raise RuntimeError("GET /sync?access_token=secret123&since=s1")
        except RuntimeError:
            log.exception("échec pour @dr.martin:cpts.fr")
    finally:
        setup_logging(False, "text")
    first, second = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert first["level"] == "WARNING" and first["logger"] == "cercle"
    assert "syt_" not in first["message"] and "dr.martin" not in first["message"]
    assert "@#" in first["message"] and ":cpts.fr" in first["message"]
    assert second["message"].split()[-1] == first["message"].split()[-1]  # the same person, the same pseudonym
    assert "secret123" not in second["exc"] and "RuntimeError" in second["exc"]


def test_http_and_log_sections(tmp_path):
    base = '[matrix]\nhomeserver = "http://hs"\nuser_id = "@c:hs"\npassword = "x"\n'
    path = tmp_path / "c.toml"
    path.write_text(base)
    config = load_config(path, environ={})
    assert config.http.listen is None and config.log.format == "text"  # off by default in `cercle run`
    path.write_text(base + '[http]\nlisten = "127.0.0.1:9480"\n[log]\nformat = "json"\n')
    config = load_config(path, environ={})
    assert config.http.host_port() == ("127.0.0.1", 9480) and config.log.format == "json"
    path.write_text(base + '[http]\nlisten = "9480"\n')
    with pytest.raises(ConfigError, match="http.listen : adresse attendue"):
        load_config(path, environ={})
    path.write_text(base + '[log]\nformat = "xml"\n')
    with pytest.raises(ConfigError, match="log.format"):
        load_config(path, environ={})


async def test_health_says_what_fails(tmp_path):
    uc = await UseCases.open(tmp_path / "bot")
    try:
        ops = OpsServer(HttpConfig(listen="127.0.0.1:0", outbox_max_age_s=300), uc.bot.metrics)
        assert (await ops.health())[0] == 503  # starting
        ops.standby()
        assert await ops.health() == (200, {"status": "standby"})
        ops.serving(uc.bot)
        code, body = await ops.health()
        assert code == 503 and body["reasons"] == ["pas encore de synchronisation"]
        uc.bot.intake.last_sync_at = time.monotonic()  # what a successful sync leaves
        assert await ops.health() == (200, {"status": "ok"})
        async with uc.bot.store.session.begin() as session:  # a send pending for 10 minutes
            uc.bot.store.queue(session, "message", COORDINATION_ROOM, render("x"), wall_now() - timedelta(minutes=10))
        code, body = await ops.health()
        assert code == 503 and body["reasons"][0].startswith("envoi en attente depuis 6")
        uc.bot.intake.last_sync_at = time.monotonic() - 200
        code, body = await ops.health()
        assert "pas de synchronisation réussie depuis 200 s" in body["reasons"]
    finally:
        await uc.close()
