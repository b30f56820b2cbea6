"""Configuration: one TOML file plus CERCLE_* environment overrides.

An invalid or missing value stops the start with one message naming the key.
"""
from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)


class ConfigError(Exception):
    """One line, naming the key and what is wrong."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MatrixConfig(_Section):
    homeserver: str
    user_id: str
    password: str | None = None
    password_file: Path | None = None
    device_name: str = "Cercle"

    @field_validator("homeserver")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("doit commencer par http:// ou https://")
        return v.rstrip("/")

    @field_validator("user_id")
    @classmethod
    def _matrix_id(cls, v: str) -> str:
        if not (v.startswith("@") and ":" in v):
            raise ValueError("identifiant Matrix attendu, par exemple @cercle:exemple.fr")
        return v

    @model_validator(mode="after")
    def _one_secret(self):
        if not self.password and not self.password_file:
            raise ValueError("password ou password_file est requis (le mot de passe sert à la première "
                             "connexion et à l'identité de signature croisée)")
        return self

    def resolved_password(self) -> str:
        if self.password:
            return self.password
        try:
            return self.password_file.read_text().strip()
        except OSError as e:
            raise ConfigError(f"matrix.password_file : lecture impossible ({e.strerror}) : {self.password_file}")


class StorageConfig(_Section):
    data_dir: Path = Path("cercle-data")
    database_url: str | None = None  # default: SQLite file in data_dir
    key_file: Path | None = None  # default: data_dir/storage.key, outside the database on purpose

    def url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{(self.data_dir / 'cercle.db').resolve()}"

    def key_path(self) -> Path:
        return self.key_file or self.data_dir / "storage.key"


class CptsConfig(_Section):
    name: str = "CPTS"
    coordinator_room: str | None = None
    timezone: str = "Europe/Paris"
    tarifs: str = "livret-2022"  # the indemnity rule set, a file of data/tarifs (decisions.md 12)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"fuseau horaire inconnu : {v}")
        return v

    @field_validator("coordinator_room")
    @classmethod
    def _room_id(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("!"):
            raise ValueError("identifiant de salon attendu (commence par !)")
        return v


class TrustConfig(_Section):
    # "share": room keys go to every device of the room's members (cross-signed ones are marked verified);
    # "cross_signed_only": devices their owner did not cross-sign get no room key (Element's strict mode).
    unverified_devices: Literal["share", "cross_signed_only"] = "share"


class SyncConfig(_Section):
    timeout_ms: int = Field(30000, ge=0)
    timeline_limit: int = Field(20, ge=1, le=100)
    max_backoff_s: float = Field(60.0, gt=0)
    # A message whose room key has not arrived waits this long (wall-clock seconds) before its
    # sender is told it could not be read; a key arriving meanwhile runs it as the command it is.
    key_wait_s: float = Field(120.0, gt=0)


class DeliveryConfig(_Section):
    # Outbox: an item that could not go is retried after retry_base_s, doubling up to retry_max_s
    # (sooner when its room changes); one still pending after stuck_after_s is reported once.
    retry_base_s: float = Field(1.0, gt=0)
    retry_max_s: float = Field(60.0, gt=0)
    stuck_after_s: float = Field(600.0, gt=0)
    # Rooms sent to at once (in order within each room): a burst of answers in fifty rooms waits
    # for about one send, not fifty in a row.
    parallel_rooms: int = Field(16, ge=1, le=256)


class HttpConfig(_Section):
    # Health and Prometheus metrics (bot/health.py). Off unless set: `cercle up` turns it on, on a
    # free loopback port. Keep it on loopback or behind the reverse proxy: /metrics is not public.
    listen: str | None = None  # "127.0.0.1:9480"
    sync_max_age_s: float = Field(120.0, gt=0)  # /health: a successful sync within this long
    outbox_max_age_s: float = Field(300.0, gt=0)  # /health: no pending send older than this

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str | None) -> str | None:
        if v is None:
            return v
        host, _, port = v.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError("adresse attendue sous la forme hôte:port, par exemple 127.0.0.1:9480")
        return v

    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


class LogConfig(_Section):
    # "text": French lines as always; "json": one JSON object per line, for log shippers.
    format: Literal["text", "json"] = "text"


class TcimConfig(_Section):
    # One unguessable room per teleconsultation under this base (a Jitsi server, or an Element
    # Call URL ending in « #/room/ » or similar): the bot appends « tcim-<random> » (issue 12).
    video_base: str = "https://meet.jit.si/"
    reminder_before_min: int = Field(30, gt=0)  # reminder to doctor and nurse before the slot
    late_after_min: int = Field(15, gt=0)  # no `!tcim debut` this long after the slot: escalation

    @field_validator("video_base")
    @classmethod
    def _https(cls, v: str) -> str:
        if not v.startswith("https://"):
            raise ValueError("adresse https:// attendue (serveur de visio)")
        return v


class DialogueConfig(_Section):
    # A command completed by questions (commands.dialogue) is dropped after this long without an
    # answer: long enough for a phone call between two answers, short enough not to surprise.
    expire_after_min: float = Field(30.0, gt=0)


class Config(_Section):
    matrix: MatrixConfig
    storage: StorageConfig = StorageConfig()
    cpts: CptsConfig = CptsConfig()
    trust: TrustConfig = TrustConfig()
    sync: SyncConfig = SyncConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    http: HttpConfig = HttpConfig()
    log: LogConfig = LogConfig()
    tcim: TcimConfig = TcimConfig()
    dialogue: DialogueConfig = DialogueConfig()

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.cpts.timezone)


# Environment overrides: variable -> (section, key).
ENV_OVERRIDES = {
    "CERCLE_HOMESERVER": ("matrix", "homeserver"),
    "CERCLE_USER_ID": ("matrix", "user_id"),
    "CERCLE_PASSWORD": ("matrix", "password"),
    "CERCLE_PASSWORD_FILE": ("matrix", "password_file"),
    "CERCLE_DATA_DIR": ("storage", "data_dir"),
    "CERCLE_DATABASE_URL": ("storage", "database_url"),
    "CERCLE_KEY_FILE": ("storage", "key_file"),
    "CERCLE_CPTS_NAME": ("cpts", "name"),
    "CERCLE_COORDINATOR_ROOM": ("cpts", "coordinator_room"),
    "CERCLE_TIMEZONE": ("cpts", "timezone"),
    "CERCLE_TARIFS": ("cpts", "tarifs"),
    "CERCLE_UNVERIFIED_DEVICES": ("trust", "unverified_devices"),
    "CERCLE_HTTP_LISTEN": ("http", "listen"),
    "CERCLE_LOG_FORMAT": ("log", "format"),
    "CERCLE_TCIM_VIDEO_BASE": ("tcim", "video_base"),
}


def load_config(path: Path | None, environ: dict[str, str] | None = None) -> Config:
    environ = os.environ if environ is None else environ
    raw: dict = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"fichier de configuration introuvable : {path}")
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path} : TOML invalide ({e})")
    for var, (section, key) in ENV_OVERRIDES.items():
        if environ.get(var):
            raw.setdefault(section, {})[key] = environ[var]
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(racine)"
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "missing":
            message = "valeur manquante"
        elif first["type"] == "extra_forbidden":
            message = "clé inconnue"
        raise ConfigError(f"Configuration invalide : {where} : {message}") from None


def write_config(path: Path, config: Config) -> None:
    """Write a TOML file (used by `cercle up`); values are simple strings and numbers."""
    lines = []
    for section, model in config.model_dump(exclude_none=True).items():
        lines.append(f"[{section}]")
        for key, value in model.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                lines.append(f"{key} = {value}")
            else:
                escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
                lines.append(f'{key} = "{escaped}"')
        lines.append("")
    path.write_text("\n".join(lines))
