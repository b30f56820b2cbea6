"""The pieces of `cercle backup` / `cercle restore` that touch files and databases.

- seal/unseal: the archive encrypted with a passphrase (scrypt -> AES-256-GCM, the header bound as
  associated data). The storage key travels inside, so the passphrase is what protects everything:
  without it the archive is noise; with it, it is the whole bot.
- consistent copies: SQLite through its online backup API (a bot running meanwhile is fine: the
  copy is one transaction's view), PostgreSQL through `pg_dump` (one snapshot) and `psql` back.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
import struct
import subprocess
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from sqlalchemy.engine import URL, make_url

MAGIC = b"CERCLE-SAUVEGARDE\x00"
VERSION = 1
# scrypt cost: ~0.1 s and 32 MiB here; stored in the header so it can grow later.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 15, 8, 1
_HEADER = struct.Struct(">B16sIII12s")  # version, salt, n, r, p, nonce
MIN_PASSPHRASE = 12


class BackupError(Exception):
    """A French message for the operator."""

    exit_code = 4  # `cercle backup` / `cercle restore`'s exit status


def _key(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode())


def seal(data: bytes, passphrase: str) -> bytes:
    if len(passphrase) < MIN_PASSPHRASE:
        raise BackupError(f"phrase de passe trop courte : {MIN_PASSPHRASE} caractères au moins")
    salt, nonce = os.urandom(16), os.urandom(12)
    header = MAGIC + _HEADER.pack(VERSION, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, nonce)
    return header + AESGCM(_key(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)).encrypt(nonce, data, header)


def unseal(blob: bytes, passphrase: str) -> bytes:
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + _HEADER.size:
        raise BackupError("ce fichier n'est pas une sauvegarde de Cercle")
    end = len(MAGIC) + _HEADER.size
    version, salt, n, r, p, nonce = _HEADER.unpack(blob[len(MAGIC):end])
    if version != VERSION:
        raise BackupError(f"version de sauvegarde inconnue : {version}")
    try:
        return AESGCM(_key(passphrase, salt, n, r, p)).decrypt(nonce, blob[end:], blob[:end])
    except InvalidTag:
        raise BackupError("phrase de passe incorrecte, ou sauvegarde altérée") from None


# --- SQLite -----------------------------------------------------------------------------------------
def sqlite_copy(source: Path, target: Path) -> None:
    """A consistent copy of a live SQLite database (online backup API), WAL folded in."""
    target.parent.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
        finally:
            dst.close()
    finally:
        src.close()


def copy_tree_consistently(source: Path, target: Path) -> None:
    """Copy a directory (nio's crypto store): SQLite files through the backup API, others as they are."""
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if path.is_dir() or path.name.endswith(("-wal", "-shm", "-journal")):
            continue
        out = target / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "rb") as f:
            is_sqlite = f.read(16) == b"SQLite format 3\x00"
        if is_sqlite:
            sqlite_copy(path, out)
        else:
            shutil.copy2(path, out)


# --- PostgreSQL -------------------------------------------------------------------------------------
def _pg_args(url: URL) -> tuple[list[str], dict, str | None]:
    args = ["-h", url.host or "127.0.0.1", "-p", str(url.port or 5432), "-d", url.database or "postgres"]
    if url.username:
        args += ["-U", url.username]
    env = {**os.environ}
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    return args, env, url.query.get("search_path")


def pg_dump(database_url: str) -> bytes:
    """One snapshot of the bot's tables (its schema only, when the URL names one)."""
    args, env, schema = _pg_args(make_url(database_url))
    if shutil.which("pg_dump") is None:
        raise BackupError("pg_dump introuvable : installez le client PostgreSQL (paquet postgresql-client)")
    command = ["pg_dump", *args, "--no-owner", "--no-privileges", "--format=plain"]
    if schema:
        command += ["--schema", schema]
    done = subprocess.run(command, capture_output=True, env=env)
    if done.returncode != 0:
        raise BackupError(f"pg_dump a échoué : {done.stderr.decode(errors='replace').strip()[:300]}")
    return done.stdout


def pg_restore(database_url: str, dump: bytes) -> None:
    args, env, schema = _pg_args(make_url(database_url))
    if shutil.which("psql") is None:
        raise BackupError("psql introuvable : installez le client PostgreSQL (paquet postgresql-client)")
    if schema:  # the dump creates its schema; an empty one left by the operator is dropped first
        dump = f'DROP SCHEMA IF EXISTS "{schema}";\n'.encode() + dump
    done = subprocess.run(["psql", *args, "-v", "ON_ERROR_STOP=1", "--single-transaction", "-q"],
                          input=dump, capture_output=True, env=env)
    if done.returncode != 0:
        raise BackupError(f"psql a échoué : {done.stderr.decode(errors='replace').strip()[:300]}")
