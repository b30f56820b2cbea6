"""The `cercle` command line: `up` (the embedded default), `status`, `identity restore`."""
from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.config import write_config
from bot.local_synapse import free_port
from tests.bot_harness import BotHarness
from tests.clinician import Clinician

pytestmark = pytest.mark.synapse
CERCLE = [sys.executable, "-m", "bot.cli"]


def start_up(data_dir: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen([*CERCLE, "up", "--data-dir", str(data_dir), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=Path(__file__).resolve().parent.parent)


async def wait_ready(proc: subprocess.Popen, timeout: float = 90) -> str:
    """Read the output until the welcome banner's last line; return everything printed."""
    out: list[str] = []
    loop = asyncio.get_running_loop()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = await loop.run_in_executor(None, proc.stdout.readline)
        if not line:
            raise AssertionError("cercle up s'est arrêté :\n" + "".join(out))
        out.append(line)
        if "relancer `cercle up` reprend tout" in line:
            return "".join(out)
    raise AssertionError("cercle up n'est pas prêt :\n" + "".join(out))


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("cercle up ne s'arrête pas sur Ctrl-C")


async def ask_aide(demo: dict, tmp_path: Path, tag: str) -> str:
    account = next(a for a in demo["accounts"] if a["user_id"].startswith("@dr.martin"))
    dr = await Clinician.login(demo["homeserver"], account["user_id"], account["password"], tmp_path / f"dr-{tag}")
    try:
        room = await dr.create_room(invite=[demo["bot"]], is_direct=True)
        await dr.wait_joined(room, demo["bot"], timeout=30)
        sent = await dr.send_text(room, "aide")  # no prefix in a direct chat
        reply = await dr.wait_for_message(room, sender=demo["bot"], predicate=lambda m: m.in_reply_to() == sent,
                                          timeout=30)
        assert reply.encrypted
        return reply.body
    finally:
        await dr.close()


async def test_cercle_up_answers_aide_stops_cleanly_and_restarts_on_the_same_data(tmp_path):
    data_dir, port = tmp_path / "demo", free_port()
    proc = start_up(data_dir, port)
    try:
        banner = await wait_ready(proc)
        assert f"http://127.0.0.1:{port}" in banner and "@dr.martin:localhost" in banner
        demo = json.loads((data_dir / "demo.json").read_text())
        assert set(demo) >= {"homeserver", "bot", "coordinator_room", "accounts"}
        professions = {a["profession"] for a in demo["accounts"]}
        assert {"medecin_generaliste", "infirmier", "sage_femme", "pharmacien", "masseur_kinesitherapeute"} <= professions
        assert [a["role"] for a in demo["accounts"]].count("coordinateur") == 1
        assert "Commandes de Cercle" in await ask_aide(demo, tmp_path, "1")
    finally:
        assert stop(proc) == 0
    out = proc.stdout.read()
    assert "Cercle et Synapse arrêtés" in out

    proc = start_up(data_dir, port)
    try:
        await wait_ready(proc)
        again = json.loads((data_dir / "demo.json").read_text())
        assert again["coordinator_room"] == demo["coordinator_room"]
        assert again["accounts"] == demo["accounts"]
        assert "Commandes de Cercle" in await ask_aide(again, tmp_path, "2")
    finally:
        assert stop(proc) == 0
    out = proc.stdout.read()
    assert "première connexion" not in out  # the second run reused the device


async def test_status_and_identity_restore_on_a_new_machine(synapse, register, tmp_path, capsys):
    bot_user, bot_password = register("cercle")
    first = BotHarness(synapse.url, bot_user, bot_password, tmp_path / "machine-1")
    await first.start()
    await first.identity_status()
    recovery_key = re.search(r"Clé de récupération.*?\n\n\s+(.+?)\n", capsys.readouterr().out, re.S).group(1).strip()
    await first.stop()

    config_path = tmp_path / "machine-1.toml"
    write_config(config_path, first.config())
    status = subprocess.run([*CERCLE, "status", "--config", str(config_path)], capture_output=True, text=True)
    assert status.returncode == 0, status.stderr
    assert "Signé (croisé)  : oui" in status.stdout and bot_user in status.stdout

    # A new machine: new device, same account. The bot sees the identity on the server and does not replace it.
    second = BotHarness(synapse.url, bot_user, bot_password, tmp_path / "machine-2")
    await second.start()
    assert await second.identity_status() == "mismatch"
    await second.stop()
    config_path = tmp_path / "machine-2.toml"
    write_config(config_path, second.config())
    status = subprocess.run([*CERCLE, "status", "--config", str(config_path)], capture_output=True, text=True)
    assert "Signé (croisé)  : NON" in status.stdout

    wrong = subprocess.run([*CERCLE, "identity", "restore", "--config", str(config_path), "--recovery-key",
                            "EsT1 aaaa bbbb"], capture_output=True, text=True)
    assert wrong.returncode != 0
    restored = subprocess.run([*CERCLE, "identity", "restore", "--config", str(config_path), "--recovery-key",
                               recovery_key], capture_output=True, text=True)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    status = subprocess.run([*CERCLE, "status", "--config", str(config_path)], capture_output=True, text=True)
    assert "Signé (croisé)  : oui" in status.stdout

    await second.start()  # and from now on the stored identity is reused
    assert await second.identity_status() == "reused"
    await second.stop()


def test_invalid_config_names_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[matrix]\nhomeserver = 'matrix.example.fr'\nuser_id = '@c:x'\npassword = 'p'\n")
    result = subprocess.run([*CERCLE, "run", "--config", str(bad)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "matrix.homeserver" in result.stderr and "http" in result.stderr
