"""The README's command reference and the compose stack are checked against what they describe."""
from __future__ import annotations

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
    assert set(services) == {"postgres", "synapse", "element", "bot"}
    bot = services["bot"]
    assert bot["build"] == "."
    assert "./deploy/cercle.toml:/config/cercle.toml:ro" in bot["volumes"]
    assert bot["command"][-1] == "/config/cercle.toml"
    assert set(bot["depends_on"]) == {"synapse", "postgres"}
    assert bot["environment"]["CERCLE_DATABASE_URL"].startswith("postgresql+asyncpg://")
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
