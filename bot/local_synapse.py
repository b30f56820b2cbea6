"""A local Synapse homeserver on 127.0.0.1 (SQLite), for `cercle up` and the test suite.

Synapse comes from the optional `[local]` extra; production deployments point the
bot at their own homeserver instead.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from storage.private import private_dir, tighten, write_private

log = logging.getLogger(__name__)

SERVER_NAME = "localhost"

# Every rate limit Synapse knows, lifted: the bot and the tests send bursts on purpose.
_UNLIMITED = {"per_second": 10000, "burst_count": 100000}
RATE_LIMITS = {
    "rc_message": _UNLIMITED,
    "rc_registration": _UNLIMITED,
    "rc_registration_token_validity": _UNLIMITED,
    "rc_login": {"address": _UNLIMITED, "account": _UNLIMITED, "failed_attempts": _UNLIMITED},
    "rc_admin_redaction": _UNLIMITED,
    "rc_joins": {"local": _UNLIMITED, "remote": _UNLIMITED},
    "rc_joins_per_room": _UNLIMITED,
    "rc_3pid_validation": _UNLIMITED,
    "rc_invites": {"per_room": _UNLIMITED, "per_user": _UNLIMITED, "per_issuer": _UNLIMITED},
    "rc_third_party_invite": _UNLIMITED,
    "rc_media_create": _UNLIMITED,
    "rc_key_requests": _UNLIMITED,
    "rc_presence": {"per_user": _UNLIMITED},
    "rc_delayed_event_mgmt": _UNLIMITED,
    "rc_room_creation": _UNLIMITED,
    "rc_reports": _UNLIMITED,
    "rc_user_directory": _UNLIMITED,
    "rc_profile": _UNLIMITED,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unpadded_b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


@dataclass
class LocalSynapse:
    """Owns one Synapse process whose whole state lives under `directory`."""

    directory: Path
    port: int
    shared_secret: str
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.directory / "homeserver.json"

    @classmethod
    def prepare(cls, directory: Path, port: int | None = None) -> "LocalSynapse":
        """Write a config under `directory`, or reuse the one already there."""
        directory = Path(directory).resolve()
        private_dir(directory)
        tighten(directory)  # an older run's files: the config holds registration_shared_secret
        config_path = directory / "homeserver.json"
        if config_path.exists():
            config = json.loads(config_path.read_text())
            if port is not None and port != config["listeners"][0]["port"]:
                config["listeners"][0]["port"] = port
                config["public_baseurl"] = f"http://127.0.0.1:{port}/"
                write_private(config_path, json.dumps(config, indent=2))
            return cls(directory, config["listeners"][0]["port"], config["registration_shared_secret"])

        port = port or free_port()
        secret = secrets.token_hex(16)
        signing_key = directory / "signing.key"
        write_private(signing_key, f"ed25519 a_local {_unpadded_b64(os.urandom(32))}\n")
        log_config = directory / "log.config.json"
        write_private(log_config, json.dumps({
            "version": 1,
            "formatters": {"p": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
            "handlers": {"f": {"class": "logging.FileHandler", "formatter": "p",
                               "filename": str(directory / "homeserver.log")}},
            "root": {"level": "WARNING", "handlers": ["f"]},
            "disable_existing_loggers": False,
        }))
        # JSON is valid YAML, so Synapse reads it as it is.
        config = {
            "server_name": SERVER_NAME,
            "public_baseurl": f"http://127.0.0.1:{port}/",
            "pid_file": str(directory / "homeserver.pid"),
            "listeners": [{
                "port": port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": False,
                "x_forwarded": False, "resources": [{"names": ["client"], "compress": False}],
            }],
            "database": {"name": "sqlite3", "args": {"database": str(directory / "homeserver.db")}},
            "log_config": str(log_config),
            "media_store_path": str(directory / "media"),
            "signing_key_path": str(signing_key),
            "registration_shared_secret": secret,
            "macaroon_secret_key": secrets.token_hex(16),
            "form_secret": secrets.token_hex(16),
            "report_stats": False,
            "enable_registration": False,
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "presence": {"enabled": False},
            "bcrypt_rounds": 4,
            "url_preview_enabled": False,
            **RATE_LIMITS,
        }
        write_private(config_path, json.dumps(config, indent=2))
        return cls(directory, port, secret)

    def start(self, timeout: float = 60.0) -> None:
        stderr = os.fdopen(os.open(self.directory / "homeserver.stderr", os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                                   0o600), "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "synapse.app.homeserver", "-c", str(self.config_path)],
            cwd=self.directory, stdout=stderr, stderr=stderr,
            start_new_session=True,  # Ctrl-C in `cercle up` is handled by us, not delivered to Synapse twice
            umask=0o077,  # its database, media store and log are private to this account
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"Synapse s'est arrêté au démarrage (code {self.process.returncode}); "
                    f"voir {self.directory / 'homeserver.stderr'}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Synapse n'a pas répondu sur {self.url} en {timeout:.0f} s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def register(self, localpart: str, password: str, admin: bool = False,
                 displayname: str | None = None) -> str:
        """Register through the shared-secret admin API; an existing user is kept as it is."""
        self._create(localpart, password, admin=admin, displayname=displayname)
        return f"@{localpart}:{SERVER_NAME}"

    def _create(self, localpart: str, password: str, admin: bool = False, displayname: str | None = None) -> bool:
        """True if the account was created, False if it already existed (its password unchanged)."""
        endpoint = f"{self.url}/_synapse/admin/v1/register"
        with urllib.request.urlopen(endpoint, timeout=10) as r:
            nonce = json.load(r)["nonce"]
        mac = hmac.new(self.shared_secret.encode(), digestmod=hashlib.sha1)
        mac.update(b"\x00".join([nonce.encode(), localpart.encode(), password.encode(),
                                 b"admin" if admin else b"notadmin"]))
        body = {"nonce": nonce, "username": localpart, "password": password, "admin": admin,
                "mac": mac.hexdigest()}
        if displayname:
            body["displayname"] = displayname
        try:
            self._post(endpoint, body)
        except urllib.error.HTTPError as e:
            payload = json.loads(e.read() or b"{}")
            if payload.get("errcode") != "M_USER_IN_USE":
                raise RuntimeError(f"inscription de {localpart} refusée : {payload}") from e
            return False
        return True

    @staticmethod
    def _post(url: str, body: dict, token: str | None = None, method: str = "POST") -> dict:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method=method)
        with urllib.request.urlopen(request, timeout=10) as r:
            return json.loads(r.read() or b"{}")

    # --- accounts whose password must stay known (cercle up) ---------------------------------
    @property
    def accounts_path(self) -> Path:
        """Passwords of the accounts `ensure_account` made, kept with the homeserver's own data:
        they live as long as the accounts, whatever happens to the files printed for people."""
        return self.directory / "accounts.json"

    def _accounts(self) -> dict[str, str]:
        try:
            return json.loads(self.accounts_path.read_text())
        except (OSError, ValueError):
            return {}

    def _remember(self, user_id: str, password: str) -> None:
        accounts = self._accounts() | {user_id: password}
        self.accounts_path.touch(mode=0o600)
        self.accounts_path.write_text(json.dumps(accounts, indent=2))

    def ensure_account(self, localpart: str, password: str | None = None,
                       displayname: str | None = None) -> tuple[str, str]:
        """(user_id, password) of an account that accepts this password.

        The password kept with the accounts wins; else `password` (or a new one) is registered,
        or, for an account that exists with a password nobody kept, set through the admin API.
        """
        user_id = f"@{localpart}:{SERVER_NAME}"
        kept = self._accounts().get(user_id)
        if kept:
            self._create(localpart, kept, displayname=displayname)  # the database may have been reset
            return user_id, kept
        chosen = password or f"demo-{secrets.token_hex(4)}"
        if not self._create(localpart, chosen, displayname=displayname):
            self.set_password(user_id, chosen)
        self._remember(user_id, chosen)
        return user_id, chosen

    def set_password(self, user_id: str, password: str) -> None:
        """Admin API: set a password, keeping the account's sessions (the bot's device stays)."""
        admin_id, admin_password = self._admin()
        login = self._post(f"{self.url}/_matrix/client/v3/login", {
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": admin_id},
            "password": admin_password, "initial_device_display_name": "cercle up (administration)"})
        token = login["access_token"]
        try:
            self._post(f"{self.url}/_synapse/admin/v2/users/{urllib.parse.quote(user_id)}",
                       {"password": password, "logout_devices": False}, token=token, method="PUT")
        finally:
            self._post(f"{self.url}/_matrix/client/v3/logout", {}, token=token)

    def _admin(self) -> tuple[str, str]:
        """A local admin account for set_password, created on first need and kept with the others."""
        for user_id, password in self._accounts().items():
            if user_id.startswith("@cercle-admin"):
                self._create(user_id[1:].split(":")[0], password, admin=True)  # if the database was reset
                return user_id, password
        localpart = "cercle-admin"
        password = secrets.token_urlsafe(18)
        while not self._create(localpart, password, admin=True):  # taken, password unknown: another name
            localpart = f"cercle-admin-{secrets.token_hex(3)}"
        user_id = f"@{localpart}:{SERVER_NAME}"
        self._remember(user_id, password)
        return user_id, password
