"""Cross-signing keys and signed JSON: the pure part of cross-signing (no HTTP).

Shared by the upload client (bot/cross_signing.py) and the secret storage (bot/secret_storage.py),
which both need the key types without importing each other.
"""
from __future__ import annotations

import base64
import copy
import json
from dataclasses import dataclass
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

# --- pure helpers -----------------------------------------------------------------------------

def canonical_json(obj: Any) -> bytes:
    """Matrix canonical JSON; default separators (", ") make servers reject the signature."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def unpadded_b64(data: bytes) -> str:
    """Unpadded *standard* base64, the only form Matrix clients must accept."""
    return base64.b64encode(data).decode("ascii").rstrip("=")


def b64decode_unpadded(s: str) -> bytes:
    """Decode base64 with or without padding (URL-safe alphabet tolerated on input)."""
    s = s.strip().replace("-", "+").replace("_", "/").rstrip("=")
    return base64.b64decode(s + "=" * (-len(s) % 4), validate=True)


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _raw_private(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


def public_b64(key: Ed25519PrivateKey) -> str:
    return unpadded_b64(_raw_public(key))


def stripped_of_signatures(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}


def sign_json(obj: dict, user_id: str, key_id: str, key: Ed25519PrivateKey) -> dict:
    """Sign `obj` (without its `signatures` / `unsigned`) and return a copy with the signature merged."""
    signature = unpadded_b64(key.sign(canonical_json(stripped_of_signatures(obj))))
    signed = copy.deepcopy(obj)
    signed.setdefault("signatures", {}).setdefault(user_id, {})[key_id] = signature
    return signed


def verify_signed_json(obj: dict, user_id: str, key_id: str, public_key_b64: str) -> bool:
    """True only if `obj` carries a valid signature by `public_key_b64` under signatures[user_id][key_id]."""
    try:
        signature = obj["signatures"][user_id][key_id]
        public = Ed25519PublicKey.from_public_bytes(b64decode_unpadded(public_key_b64))
        public.verify(b64decode_unpadded(signature), canonical_json(stripped_of_signatures(obj)))
        return True
    except (KeyError, TypeError, ValueError, InvalidSignature, AttributeError):
        return False


def single_ed25519(key_obj: dict | None) -> tuple[str, str] | None:
    """(key_id, public key) of a cross-signing key object holding exactly one ed25519 key."""
    if not isinstance(key_obj, dict):
        return None
    keys = [(k, v) for k, v in (key_obj.get("keys") or {}).items()
            if isinstance(k, str) and k.startswith("ed25519:") and isinstance(v, str)]
    return keys[0] if len(keys) == 1 else None


def device_is_cross_signed(keys_query: dict, user_id: str, device_id: str) -> bool:
    """Check the whole chain with real signature verification, as Element does.

    master key (its self-signature is optional) -> self-signing key signed by the master key ->
    device keys signed by the self-signing key (and by the device's own ed25519 key, without
    which no client uses the device at all). The presence of a signature proves nothing.
    """
    master_obj = (keys_query.get("master_keys") or {}).get(user_id)
    ssk_obj = (keys_query.get("self_signing_keys") or {}).get(user_id)
    device = ((keys_query.get("device_keys") or {}).get(user_id) or {}).get(device_id)
    master, ssk = single_ed25519(master_obj), single_ed25519(ssk_obj)
    if master is None or ssk is None or not isinstance(device, dict):
        return False
    if master_obj.get("user_id") != user_id or "master" not in (master_obj.get("usage") or []):
        return False
    if ssk_obj.get("user_id") != user_id or "self_signing" not in (ssk_obj.get("usage") or []):
        return False
    if not verify_signed_json(ssk_obj, user_id, master[0], master[1]):
        return False
    if device.get("user_id") != user_id or device.get("device_id") != device_id:
        return False
    device_key = (device.get("keys") or {}).get(f"ed25519:{device_id}")
    if not isinstance(device_key, str) or not verify_signed_json(device, user_id, f"ed25519:{device_id}", device_key):
        return False
    return verify_signed_json(device, user_id, ssk[0], ssk[1])


# --- keys -------------------------------------------------------------------------------------

_ROLES = ("master", "self_signing", "user_signing")


@dataclass(eq=False)
class CrossSigningKeys:
    master: Ed25519PrivateKey
    self_signing: Ed25519PrivateKey
    user_signing: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> "CrossSigningKeys":
        return cls(Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate())

    def to_secret_dict(self) -> dict[str, str]:
        """Private seeds (32 bytes each), unpadded base64: the form SSSS stores them in too."""
        return {role: unpadded_b64(_raw_private(getattr(self, role))) for role in _ROLES}

    @classmethod
    def from_secret_dict(cls, d: dict[str, str]) -> "CrossSigningKeys":
        seeds = {}
        for role in _ROLES:
            seed = b64decode_unpadded(d[role])
            if len(seed) != 32:
                raise ValueError(f"clé privée {role} : 32 octets attendus, {len(seed)} reçus")
            seeds[role] = Ed25519PrivateKey.from_private_bytes(seed)
        return cls(**seeds)

    def public_keys(self) -> dict[str, str]:
        """{"master": "<unpadded b64 public key>", ...}"""
        return {role: public_b64(getattr(self, role)) for role in _ROLES}

    def public_ids(self) -> dict[str, str]:
        """{"master": "ed25519:<pub>", ...}: the key ids used in `keys` and `signatures`."""
        return {role: f"ed25519:{pub}" for role, pub in self.public_keys().items()}

    def upload_body(self, user_id: str) -> dict:
        """Body of keys/device_signing/upload: self-signing and user-signing keys signed by the master key."""
        pubs, ids = self.public_keys(), self.public_ids()

        def key_obj(role: str) -> dict:
            return {"user_id": user_id, "usage": [role], "keys": {ids[role]: pubs[role]}}

        return {
            "master_key": key_obj("master"),
            "self_signing_key": sign_json(key_obj("self_signing"), user_id, ids["master"], self.master),
            "user_signing_key": sign_json(key_obj("user_signing"), user_id, ids["master"], self.master),
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CrossSigningKeys):
            return NotImplemented
        return self.to_secret_dict() == other.to_secret_dict()

    def __repr__(self) -> str:  # never print private keys in logs or tracebacks
        return f"CrossSigningKeys(master={self.public_ids()['master']})"


class CrossSigningError(Exception):
    """A cross-signing step failed. After a successful upload of *new* keys, `keys` and
    `recovery_key` are set so the caller can still persist them."""

    def __init__(self, message: str, *, keys: CrossSigningKeys | None = None, recovery_key: str | None = None):
        super().__init__(message)
        self.keys = keys
        self.recovery_key = recovery_key


@dataclass
class EnsureResult:
    status: Literal["created", "reused", "mismatch"]
    keys: CrossSigningKeys | None
    recovery_key: str | None
    detail: str
