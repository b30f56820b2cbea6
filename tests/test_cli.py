"""The `cercle` command line: `up` (the embedded default), `status`, `identity restore`."""
from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
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
        # Health and metrics on a free loopback port, named in demo.json and in the banner.
        assert demo["http"].startswith("http://127.0.0.1:") and f"{demo['http']}/health" in banner
        with urllib.request.urlopen(f"{demo['http']}/health", timeout=10) as r:
            assert r.status == 200 and json.load(r)["status"] == "ok"
        with urllib.request.urlopen(f"{demo['http']}/metrics", timeout=10) as r:
            assert 'cercle_commands_total{command="aide",outcome="ok"} 1.0' in r.read().decode()
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


def password_login(homeserver: str, localpart: str, password: str) -> str:
    """Log in as a person would (errcode, or "ok"), then log that session out again."""
    import urllib.error
    import urllib.request

    def post(path, body, token=None):
        headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
        request = urllib.request.Request(homeserver + path, data=json.dumps(body).encode(), headers=headers)
        with urllib.request.urlopen(request, timeout=10) as r:
            return json.load(r)

    try:
        token = post("/_matrix/client/v3/login", {"type": "m.login.password", "password": password,
                                                  "identifier": {"type": "m.id.user", "user": localpart}})["access_token"]
    except urllib.error.HTTPError as e:
        return json.loads(e.read() or b"{}").get("errcode", str(e.code))
    post("/_matrix/client/v3/logout", {}, token)
    return "ok"


async def test_cercle_up_without_demo_json_prints_passwords_that_work(tmp_path):
    """Issue 9: demo.json deleted, `cercle up` printed new passwords the accounts did not have."""
    data_dir, port = tmp_path / "demo", free_port()
    proc = start_up(data_dir, port)
    try:
        await wait_ready(proc)
        first = json.loads((data_dir / "demo.json").read_text())
    finally:
        assert stop(proc) == 0
    (data_dir / "demo.json").unlink()

    proc = start_up(data_dir, port)
    try:
        banner = await wait_ready(proc)
        printed = re.search(r"@dr\.martin:localhost\s+(\S+)", banner).group(1)
        assert password_login(f"http://127.0.0.1:{port}", "dr.martin", printed) == "ok"
        again = json.loads((data_dir / "demo.json").read_text())
        assert again["accounts"] == first["accounts"] and again["bot_password"] == first["bot_password"]
    finally:
        assert stop(proc) == 0


def test_an_account_whose_password_nobody_kept_is_given_a_working_one(synapse):
    """A data directory from before the passwords were kept with the accounts, demo.json lost."""
    import uuid

    localpart = f"ancien{uuid.uuid4().hex[:6]}"
    synapse.register(localpart, "mot-de-passe-perdu")
    user_id, password = synapse.ensure_account(localpart)
    assert password != "mot-de-passe-perdu"
    assert password_login(synapse.url, localpart, password) == "ok"
    assert password_login(synapse.url, localpart, "mot-de-passe-perdu") == "M_FORBIDDEN"
    assert synapse.ensure_account(localpart, "un-autre") == (user_id, password)  # the kept password wins


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


def test_status_names_an_unreachable_homeserver_instead_of_a_traceback():
    from bot.status import _ask

    with pytest.raises(SystemExit, match="serveur d'accueil injoignable à http://127.0.0.1:9"):
        _ask("http://127.0.0.1:9", "token", "GET", "/_matrix/client/v3/joined_rooms")
