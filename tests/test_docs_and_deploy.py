"""The README's command reference and the compose stack are checked against what they describe."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from bot.config import load_config
from commands.reference import README, readme_block, reference

ROOT = Path(__file__).resolve().parent.parent


def test_readme_command_reference_matches_the_declarations():
    assert readme_block(README.read_text()) == reference(), "run: python -m commands.reference --write"


def test_readme_quick_start_has_the_two_commands():
    text = README.read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = [line for line in quick.splitlines() if line.startswith("python3 -m venv")]
    assert len(commands) == 2
    assert commands[0].endswith("cercle up") and commands[1].endswith("pytest")
    assert (ROOT / ".ci/run").read_text().count(".venv/bin/pytest") == 1


def test_compose_stack_is_complete_and_consistent():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    default = {name for name, service in services.items() if not service.get("profiles")}
    assert default == {"postgres", "synapse", "element", "bot"}
    bot = services["bot"]
    assert bot["build"] == "."
    assert "./deploy/cercle.toml:/config/cercle.toml:ro" in bot["volumes"]
    assert bot["command"][-1] == "/config/cercle.toml"
    assert set(bot["depends_on"]) == {"synapse", "postgres"}
    assert bot["environment"]["CERCLE_DATABASE_URL"].startswith("postgresql+asyncpg://")
    assert bot["environment"]["CERCLE_HTTP_LISTEN"].endswith(":9480") and "9480/health" in str(bot["healthcheck"])
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{source} is mounted but missing"
            else:
                assert source in compose["volumes"], f"named volume {source} undeclared"
        for secret in service.get("secrets", []):
            assert secret in compose["secrets"]
    # The bot's mounted config is valid once the compose environment is applied.
    environ = {k: str(v) for k, v in bot["environment"].items()} | {"CERCLE_PASSWORD": "from-secret"}
    config = load_config(ROOT / "deploy/cercle.toml", environ=environ)
    assert config.matrix.homeserver == "http://synapse:8008"
    assert config.storage.url().startswith("postgresql+asyncpg://")
    assert (ROOT / "Dockerfile").exists()


def test_compose_profiles_standby_and_synapse_workers():
    """The `standby` profile is a second bot on the same database and volumes (README, Operations);
    the `workers` profile is Synapse with a generic worker and Redis, and its two config files agree."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    profiles = {}
    for name, service in services.items():
        for profile in service.get("profiles", []):
            profiles.setdefault(profile, set()).add(name)
    assert profiles == {"standby": {"bot-standby"}, "workers": {"redis", "synapse-generic-worker-1"}}

    bot, standby = services["bot"], services["bot-standby"]
    for key in ("build", "command", "environment", "volumes", "secrets", "depends_on"):
        assert standby[key] == bot[key], key  # same database, same data and key volumes, same account
    environ = {k: str(v) for k, v in standby["environment"].items()} | {"CERCLE_PASSWORD": "from-secret"}
    assert load_config(ROOT / "deploy/cercle.toml", environ=environ).storage.url().startswith("postgresql")

    worker = services["synapse-generic-worker-1"]
    assert worker["environment"]["SYNAPSE_WORKER"] == "synapse.app.generic_worker"
    assert set(worker["depends_on"]) == {"synapse", "redis"}
    mounted = [v for v in worker["volumes"] if v.startswith("./")]
    assert len(mounted) == 1
    source, target = mounted[0].split(":")[:2]
    assert f"--config-path={target}" in worker["entrypoint"]
    assert "synapse-data:/data" in worker["volumes"]  # the main process's homeserver.yaml and signing key
    worker_config = yaml.safe_load((ROOT / source).read_text())
    assert worker_config["worker_app"] == "synapse.app.generic_worker"
    assert Path(target).stem == worker_config["worker_name"]
    port = worker_config["worker_listeners"][0]["port"]
    assert f"{port}:{port}" in worker["ports"] and f"localhost:{port}/health" in str(worker["healthcheck"])

    main = yaml.safe_load((ROOT / "deploy/synapse/workers.yaml").read_text())
    assert main["redis"] == {"enabled": True, "host": "redis", "port": 6379}
    replication = [listener["port"] for listener in main["listeners"]
                   if any("replication" in r["names"] for r in listener["resources"])]
    assert replication == [main["instance_map"]["main"]["port"]]
    assert main["instance_map"]["main"]["host"] == "synapse"
    # The reverse proxy's routes point at this worker's service and port, the rest at the main process.
    nginx = (ROOT / "deploy/synapse/nginx-workers.conf").read_text()
    upstreams = set(re.findall(r"proxy_pass (http://[^;]+);", nginx))
    assert upstreams == {f"http://synapse-generic-worker-1:{port}", "http://synapse:8008"}
