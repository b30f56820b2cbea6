"""Configuration: TOML + environment; one clear message naming the key when something is wrong."""
from __future__ import annotations

import pytest

from bot.config import ConfigError, load_config, write_config


def write(tmp_path, text):
    p = tmp_path / "cercle.toml"
    p.write_text(text)
    return p


GOOD = """
[matrix]
homeserver = "https://matrix.cpts.fr/"
user_id = "@cercle:cpts.fr"
password = "s3cret"
[cpts]
name = "CPTS Val d'Orge"
"""


def test_valid_file_and_defaults(tmp_path):
    c = load_config(write(tmp_path, GOOD), environ={})
    assert c.matrix.homeserver == "https://matrix.cpts.fr"
    assert c.storage.url().startswith("sqlite+aiosqlite:///")
    assert c.storage.key_path().name == "storage.key"
    assert c.tz.key == "Europe/Paris"
    assert c.trust.unverified_devices == "share"


def test_environment_overrides(tmp_path):
    c = load_config(write(tmp_path, GOOD), environ={
        "CERCLE_DATABASE_URL": "postgresql+asyncpg://u@db/cercle", "CERCLE_HOMESERVER": "http://synapse:8008"})
    assert c.storage.url() == "postgresql+asyncpg://u@db/cercle"
    assert c.matrix.homeserver == "http://synapse:8008"


@pytest.mark.parametrize("text, message", [
    ("[matrix]\nuser_id='@a:b'\npassword='x'", "matrix.homeserver : valeur manquante"),
    ("[matrix]\nhomeserver='matrix.fr'\nuser_id='@a:b'\npassword='x'", "matrix.homeserver : doit commencer par http"),
    ("[matrix]\nhomeserver='http://h'\nuser_id='cercle'\npassword='x'", "matrix.user_id : identifiant Matrix attendu"),
    ("[matrix]\nhomeserver='http://h'\nuser_id='@a:b'", "password ou password_file est requis"),
    (GOOD + "\n[cpts.extra]\n", "cpts.extra : clé inconnue"),
    (GOOD.replace("CPTS Val d'Orge", "X") + "timezone = 'Mars/Olympus'", "cpts.timezone : fuseau horaire inconnu"),
    ("[matrix\n", "TOML invalide"),
])
def test_invalid_values_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text), environ={})
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="introuvable"):
        load_config(tmp_path / "absent.toml", environ={})


def test_password_file_and_round_trip(tmp_path):
    (tmp_path / "pw").write_text("from-file\n")
    c = load_config(write(tmp_path, GOOD.replace('password = "s3cret"', f'password_file = "{tmp_path / "pw"}"')),
                    environ={})
    assert c.matrix.resolved_password() == "from-file"
    out = tmp_path / "out.toml"
    write_config(out, c)
    assert load_config(out, environ={}) == c
