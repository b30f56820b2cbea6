"""Secret storage (SSSS) `m.secret_storage.v1.aes-hmac-sha2`, as Element does it.

The bot's private cross-signing keys go, encrypted, into the account data of its own account;
the 32-byte storage key is shown once to the operator as a recovery key (base58, groups of
four characters) and is what `cercle identity restore` asks for.

Per secret: HKDF-SHA-256(key, salt = 32 zero bytes, info = secret name) -> 64 bytes: AES-CTR-256
key then HMAC-SHA-256 key; random 16-byte IV with bit 63 cleared; MAC over the ciphertext only.
The key description carries the MAC of 32 zero bytes encrypted under the empty name, which tells
a right recovery key from a wrong one.
"""
from __future__ import annotations

import base64
import hmac
import os
import re
import secrets
import string
from hashlib import sha256
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bot.cross_signing_keys import (
    CrossSigningError,
    CrossSigningKeys,
    b64decode_unpadded,
)

if TYPE_CHECKING:
    from bot.cross_signing import CrossSigningClient

ALGORITHM = "m.secret_storage.v1.aes-hmac-sha2"
DEFAULT_KEY_TYPE = "m.secret_storage.default_key"
KEY_TYPE_PREFIX = "m.secret_storage.key."
SECRET_NAMES = {
    "master": "m.cross_signing.master",
    "self_signing": "m.cross_signing.self_signing",
    "user_signing": "m.cross_signing.user_signing",
}
RECOVERY_PREFIX = b"\x8b\x01"
KEY_LENGTH = 32

# --- base58 (bitcoin alphabet) ----------------------------------------------------------------

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}


def b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58[r])
    zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * zeros + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    n = 0
    for c in text:
        if c not in _B58_INDEX:
            raise ValueError(f"Clé de récupération invalide : le caractère « {c} » n'existe pas en base58 "
                             "(ni 0, O, I ni l)")
        n = n * 58 + _B58_INDEX[c]
    zeros = len(text) - len(text.lstrip("1"))
    return b"\0" * zeros + (n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b"")


# --- recovery key -----------------------------------------------------------------------------

def _parity(data: bytes) -> int:
    p = 0
    for b in data:
        p ^= b
    return p


def encode_recovery_key(key: bytes) -> str:
    if len(key) != KEY_LENGTH:
        raise ValueError(f"clé de stockage : {KEY_LENGTH} octets attendus")
    raw = RECOVERY_PREFIX + key
    encoded = b58encode(raw + bytes([_parity(raw)]))
    return " ".join(encoded[i:i + 4] for i in range(0, len(encoded), 4))


def generate_recovery_key() -> tuple[bytes, str]:
    """(32 random bytes, their recovery key text)."""
    key = os.urandom(KEY_LENGTH)
    return key, encode_recovery_key(key)


def decode_recovery_key(text: str) -> bytes:
    """The 32-byte key behind a recovery key; whitespace is insignificant. ValueError (in French) otherwise."""
    compact = re.sub(r"\s+", "", text or "")
    if not compact:
        raise ValueError("Clé de récupération vide")
    raw = b58decode(compact)
    if len(raw) != len(RECOVERY_PREFIX) + KEY_LENGTH + 1:
        raise ValueError(f"Clé de récupération invalide : longueur incorrecte ({len(raw)} octets décodés au "
                         f"lieu de {len(RECOVERY_PREFIX) + KEY_LENGTH + 1}) ; vérifiez qu'elle est complète")
    # Parity before prefix, as Element does: a typo near the start also garbles the prefix bytes.
    if _parity(raw) != 0:
        raise ValueError("Clé de récupération invalide : contrôle de parité faux, probablement une faute de frappe")
    if raw[:2] != RECOVERY_PREFIX:
        raise ValueError("Clé de récupération invalide : ce n'est pas une clé de récupération Matrix (préfixe)")
    return raw[2:2 + KEY_LENGTH]


# --- AES-CTR + HMAC-SHA-256 -------------------------------------------------------------------

def _b64(data: bytes) -> str:
    # Padded standard base64, as Element writes it; reading accepts both forms.
    return base64.b64encode(data).decode("ascii")


def derive_keys(key: bytes, name: str) -> tuple[bytes, bytes]:
    """(AES key, HMAC key) for one secret name."""
    okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=bytes(32), info=name.encode("utf-8")).derive(key)
    return okm[:32], okm[32:]


def _ctr_then_mac(key: bytes, name: str, plaintext: bytes, iv: bytes) -> tuple[bytes, bytes]:
    """(ciphertext, MAC) with the IV exactly as given."""
    aes_key, mac_key = derive_keys(key, name)
    encryptor = Cipher(algorithms.AES(aes_key), modes.CTR(iv)).encryptor()
    ciphertext = encryptor.update(plaintext) + encryptor.finalize()
    return ciphertext, hmac.new(mac_key, ciphertext, sha256).digest()


def encrypt_secret(key: bytes, name: str, plaintext: bytes, *, iv: bytes | None = None) -> dict:
    """{"iv", "ciphertext", "mac"} (base64) of `plaintext` stored under secret `name`."""
    iv_bytes = bytearray(iv if iv is not None else os.urandom(16))
    if len(iv_bytes) != 16:
        raise ValueError("IV de 16 octets attendu")
    iv_bytes[8] &= 0x7F  # bit 63 cleared: AES-CTR implementations disagree on counter overflow
    ciphertext, mac = _ctr_then_mac(key, name, plaintext, bytes(iv_bytes))
    return {"iv": _b64(bytes(iv_bytes)), "ciphertext": _b64(ciphertext), "mac": _b64(mac)}


def decrypt_secret(key: bytes, name: str, payload: dict) -> bytes:
    """Check the MAC, then decrypt; ValueError if the key or the data is wrong."""
    aes_key, mac_key = derive_keys(key, name)
    try:
        iv = b64decode_unpadded(payload["iv"])
        ciphertext = b64decode_unpadded(payload["ciphertext"])
        mac = b64decode_unpadded(payload["mac"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"secret {name} : données chiffrées illisibles ({e})") from e
    if len(iv) != 16:
        raise ValueError(f"secret {name} : IV de {len(iv)} octets au lieu de 16")
    if not hmac.compare_digest(hmac.new(mac_key, ciphertext, sha256).digest(), mac):
        raise ValueError(f"secret {name} : authentification échouée (mauvaise clé ou données altérées)")
    decryptor = Cipher(algorithms.AES(aes_key), modes.CTR(iv)).decryptor()
    return decryptor.update(ciphertext) + decryptor.finalize()


def key_description(key: bytes, *, iv: bytes | None = None) -> dict:
    """Content of `m.secret_storage.key.<id>`: 32 zero bytes encrypted under the empty name."""
    check = encrypt_secret(key, "", bytes(32), iv=iv)
    return {"algorithm": ALGORITHM, "iv": check["iv"], "mac": check["mac"]}


def check_key(key: bytes, description: dict) -> bool:
    """True if `key` is the one `description` was made for (spec: no iv/mac means no check possible)."""
    if description.get("algorithm") != ALGORITHM:
        return False
    if "iv" not in description or "mac" not in description:
        return True
    try:
        iv = b64decode_unpadded(description["iv"])
        expected = b64decode_unpadded(description["mac"])
    except (TypeError, ValueError):
        return False
    if len(iv) != 16:
        return False
    # The IV is used as stored (no bit clearing): another client may have written it.
    _, actual = _ctr_then_mac(key, "", bytes(32), iv)
    return hmac.compare_digest(actual, expected)


# --- account data -----------------------------------------------------------------------------

def _new_key_id() -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(32))


async def store_cross_signing_secrets(client: "CrossSigningClient", keys: CrossSigningKeys) -> str:
    """Create a new storage key (made the default), store the three private keys under it, return the recovery key."""
    key, recovery_key = generate_recovery_key()
    key_id = _new_key_id()
    await client.put_account_data(KEY_TYPE_PREFIX + key_id, key_description(key))
    for role, seed_b64 in keys.to_secret_dict().items():
        name = SECRET_NAMES[role]
        await client.put_account_data(name, {"encrypted": {key_id: encrypt_secret(key, name, seed_b64.encode())}})
    # Default last: until here the previous default (if any) still describes what it encrypted.
    await client.put_account_data(DEFAULT_KEY_TYPE, {"key": key_id})
    return recovery_key


async def restore_cross_signing_secrets(client: "CrossSigningClient", recovery_key: str) -> CrossSigningKeys:
    """Read the three private keys back from account data with the recovery key.

    ValueError (French) for a malformed or wrong recovery key, CrossSigningError when the account
    has no secret storage to restore from.
    """
    key = decode_recovery_key(recovery_key)
    default = await client.get_account_data(DEFAULT_KEY_TYPE)
    key_id = (default or {}).get("key")
    if not key_id:
        raise CrossSigningError("aucun stockage de secrets sur ce compte (m.secret_storage.default_key absent)")
    description = await client.get_account_data(KEY_TYPE_PREFIX + key_id)
    if description is None:
        raise CrossSigningError(f"description de la clé de stockage {key_id} absente du compte")
    if description.get("algorithm") != ALGORITHM:
        raise CrossSigningError(f"algorithme de stockage non pris en charge : {description.get('algorithm')}")
    if not check_key(key, description):
        raise ValueError("Cette clé de récupération n'ouvre pas le stockage de secrets actuel du compte "
                         "(clé d'une autre installation, ou identité réinitialisée depuis)")
    seeds = {}
    for role, name in SECRET_NAMES.items():
        content = await client.get_account_data(name)
        payload = ((content or {}).get("encrypted") or {}).get(key_id)
        if payload is None:
            raise CrossSigningError(f"secret {name} absent ou chiffré avec une autre clé")
        seeds[role] = decrypt_secret(key, name, payload).decode("utf-8")
    return CrossSigningKeys.from_secret_dict(seeds)
