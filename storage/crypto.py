"""Authenticated encryption of fields at rest (AES-256-GCM).

The key lives in a file outside the database: a copied database alone reveals no patient.
Each value is bound to its purpose (associated data) so ciphertexts cannot be swapped between columns.
"""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from storage.private import private_dir

_VERSION = b"\x01"


class StorageKeyError(Exception):
    pass


class FieldCipher:
    def __init__(self, key: bytes):
        if len(key) != 32:
            raise StorageKeyError("la clé de stockage doit faire 32 octets")
        self._key = key
        self._aead = AESGCM(key)

    @classmethod
    def from_key_file(cls, path: Path, create: bool = True) -> "FieldCipher":
        path = Path(path)
        if not path.exists():
            if not create:
                raise StorageKeyError(f"fichier de clé introuvable : {path}")
            private_dir(path.parent)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(base64.b64encode(os.urandom(32)).decode() + "\n")
        try:
            key = base64.b64decode(path.read_text().strip(), validate=True)
        except ValueError:
            raise StorageKeyError(f"fichier de clé illisible (base64 attendu) : {path}")
        return cls(key)

    def encrypt(self, plaintext: bytes, purpose: str) -> bytes:
        nonce = os.urandom(12)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, purpose.encode())

    def decrypt(self, blob: bytes, purpose: str) -> bytes:
        if not blob or blob[:1] != _VERSION:
            raise StorageKeyError("format chiffré inconnu")
        return self._aead.decrypt(blob[1:13], blob[13:], purpose.encode())

    def encrypt_json(self, value, purpose: str) -> bytes:
        return self.encrypt(json.dumps(value, ensure_ascii=False).encode(), purpose)

    def decrypt_json(self, blob: bytes, purpose: str):
        return json.loads(self.decrypt(blob, purpose))

    def encrypt_text(self, value: str, purpose: str) -> bytes:
        return self.encrypt(value.encode(), purpose)

    def decrypt_text(self, blob: bytes, purpose: str) -> str:
        return self.decrypt(blob, purpose).decode()

    def derive(self, purpose: str) -> str:
        """A stable secret for another component (e.g. nio's crypto-store pickle key)."""
        return base64.b64encode(HKDF(SHA256(), 32, salt=None, info=purpose.encode()).derive(self._key)).decode()
