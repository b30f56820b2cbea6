"""Cross-signing for the bot's own devices (matrix-nio has none).

Element's "exclude insecure devices" mode refuses devices their owner did not cross-sign, so
the bot keeps its own master / self-signing / user-signing Ed25519 keys, publishes them once,
and signs each of its devices with the self-signing key.

Facts this module relies on (measured against Synapse, see docs/matrix-notes.md):
- signatures are made over canonical JSON: sorted keys, separators (",", ":"), UTF-8;
- `keys/signatures/upload` answers 200 even when it rejects a signature: read `failures`;
- the device object we sign must equal the server's copy once both are stripped of
  `signatures` and `unsigned`;
- the first `keys/device_signing/upload` needs no password, a replacement answers 401 with
  the `m.login.password` flow (user-interactive auth).
"""
from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import quote

import aiohttp

from bot.cross_signing_keys import (
    CrossSigningError,
    CrossSigningKeys,
    EnsureResult,
    canonical_json,
    device_is_cross_signed,
    sign_json,
    single_ed25519,
    stripped_of_signatures,
    verify_signed_json,
)
from bot.secret_storage import store_cross_signing_secrets

log = logging.getLogger(__name__)

API = "/_matrix/client/v3"

# --- HTTP -------------------------------------------------------------------------------------

class CrossSigningClient:
    def __init__(self, homeserver: str, user_id: str, device_id: str, access_token: str,
                 password: str | None, session: aiohttp.ClientSession | None = None):
        self.homeserver = homeserver.rstrip("/")
        self.user_id = user_id
        self.device_id = device_id
        self.access_token = access_token
        self.password = password
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> "CrossSigningClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        return self._session

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    async def request(self, method: str, path: str, body: dict | None = None,
                      *, accept: tuple[int, ...] = ()) -> tuple[int, dict]:
        """JSON request with our token; statuses other than 200 and `accept` raise CrossSigningError."""
        headers = {"Authorization": f"Bearer {self.access_token}"}
        kwargs: dict[str, Any] = {"headers": headers}
        if body is not None:
            kwargs["data"] = canonical_json(body)
            headers["Content-Type"] = "application/json"
        try:
            async with self._http().request(method, f"{self.homeserver}{path}", **kwargs) as resp:
                text = await resp.text()
                status = resp.status
        except aiohttp.ClientError as e:
            raise CrossSigningError(f"{method} {path} : serveur injoignable ({e})") from e
        try:
            payload = json.loads(text) if text else {}
        except ValueError:
            payload = {"raw": text[:200]}
        if status != 200 and status not in accept:
            raise CrossSigningError(f"{method} {path} : HTTP {status} "
                                    f"{payload.get('errcode', '')} {payload.get('error', '')}".rstrip())
        return status, payload

    def _account_data_path(self, event_type: str) -> str:
        return f"{API}/user/{quote(self.user_id, safe='')}/account_data/{quote(event_type, safe='')}"

    async def get_account_data(self, event_type: str) -> dict | None:
        status, payload = await self.request("GET", self._account_data_path(event_type), accept=(404,))
        return None if status == 404 else payload

    async def put_account_data(self, event_type: str, content: dict) -> None:
        await self.request("PUT", self._account_data_path(event_type), content)

    async def query_own_keys(self) -> dict:
        _, payload = await self.request("POST", f"{API}/keys/query", {"device_keys": {self.user_id: []}})
        return payload

    async def upload_cross_signing_keys(self, keys: CrossSigningKeys) -> None:
        """Publish the public keys; a replacement goes through password UIA."""
        body = keys.upload_body(self.user_id)
        path = f"{API}/keys/device_signing/upload"
        status, payload = await self.request("POST", path, body, accept=(401,))
        if status == 200:
            return
        if "flows" not in payload:
            raise CrossSigningError(f"publication des clés refusée : {payload.get('errcode')} {payload.get('error', '')}")
        stages = {stage for flow in payload["flows"] for stage in flow.get("stages", [])}
        if "m.login.password" not in stages:
            raise CrossSigningError(f"le serveur exige une authentification non gérée : {payload['flows']}")
        if not self.password:
            raise CrossSigningError("le serveur exige le mot de passe du bot pour remplacer ses clés "
                                    "de signature croisée, et aucun n'est configuré")
        body["auth"] = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": self.user_id},
            "password": self.password,
            "session": payload.get("session"),
        }
        status, payload = await self.request("POST", path, body, accept=(401,))
        if status != 200:
            raise CrossSigningError(f"mot de passe refusé pour publier les clés de signature croisée : "
                                    f"{payload.get('errcode')} {payload.get('error', '')}")

    def _device_from(self, query: dict, device_id: str) -> dict:
        device = ((query.get("device_keys") or {}).get(self.user_id) or {}).get(device_id)
        if not isinstance(device, dict):
            raise CrossSigningError(f"l'appareil {device_id} n'a pas publié ses clés sur le serveur "
                                    "(keys/upload à faire avant la signature croisée)")
        return device

    def _check_device(self, device: dict, device_id: str, olm_ed25519: str | None) -> None:
        """Refuse to sign a device object that is not the one we expect."""
        server_key = (device.get("keys") or {}).get(f"ed25519:{device_id}")
        if device.get("user_id") != self.user_id or device.get("device_id") != device_id or not server_key:
            raise CrossSigningError(f"clés de l'appareil {device_id} incohérentes sur le serveur")
        if olm_ed25519 is not None and server_key != olm_ed25519:
            raise CrossSigningError(f"la clé ed25519 de l'appareil {device_id} sur le serveur ({server_key}) "
                                    f"diffère de la clé olm locale ({olm_ed25519}) : signature refusée")
        if not verify_signed_json(device, self.user_id, f"ed25519:{device_id}", server_key):
            raise CrossSigningError(f"les clés de l'appareil {device_id} ne portent pas sa propre signature valide")

    async def sign_device(self, keys: CrossSigningKeys, device_id: str | None = None,
                          *, olm_ed25519: str | None = None) -> None:
        """Sign one of our devices (ours by default) with the self-signing key, and check it took."""
        device_id = device_id or self.device_id
        device = self._device_from(await self.query_own_keys(), device_id)
        self._check_device(device, device_id, olm_ed25519)
        signed = sign_json(stripped_of_signatures(device), self.user_id, keys.public_ids()["self_signing"], keys.self_signing)
        _, payload = await self.request("POST", f"{API}/keys/signatures/upload",
                                        {self.user_id: {device_id: signed}})
        if payload.get("failures"):
            raise CrossSigningError(f"signature de l'appareil {device_id} refusée : "
                                    f"{json.dumps(payload['failures'], ensure_ascii=False)}")
        if not device_is_cross_signed(await self.query_own_keys(), self.user_id, device_id):
            raise CrossSigningError(f"l'appareil {device_id} n'apparaît pas signé après l'envoi de sa signature")

    async def ensure(self, stored: CrossSigningKeys | None, *, olm_ed25519: str | None = None) -> EnsureResult:
        """Make this device cross-signed without ever replacing an identity the server already has."""

        query = await self.query_own_keys()
        self._check_device(self._device_from(query, self.device_id), self.device_id, olm_ed25519)
        server_master = single_ed25519((query.get("master_keys") or {}).get(self.user_id))
        server_ssk = single_ed25519((query.get("self_signing_keys") or {}).get(self.user_id))

        if server_master is None:
            if stored is None:
                keys = CrossSigningKeys.generate()
                # Secrets first: if anything fails after the upload, the recovery key still restores them.
                recovery_key = await store_cross_signing_secrets(self, keys)
                await self.upload_cross_signing_keys(keys)
                try:
                    await self.sign_device(keys, olm_ed25519=olm_ed25519)
                except CrossSigningError as e:
                    raise CrossSigningError(f"clés publiées mais appareil non signé : {e}",
                                            keys=keys, recovery_key=recovery_key) from e
                log.info("identité de signature croisée créée (%s)", keys.public_ids()["master"])
                return EnsureResult("created", keys, recovery_key,
                                    f"identité créée ({keys.public_ids()['master']}), appareil {self.device_id} signé")
            # Same identity as before, simply missing from the server: publishing it again changes nothing for peers.
            await self.upload_cross_signing_keys(stored)
            await self.sign_device(stored, olm_ed25519=olm_ed25519)
            return EnsureResult("reused", stored, None,
                                f"clés absentes du serveur, republiées à l'identique ({stored.public_ids()['master']}); "
                                f"appareil {self.device_id} signé")

        if stored is None:
            return EnsureResult("mismatch", None, None,
                                f"le compte {self.user_id} a déjà une identité de signature croisée "
                                f"({server_master[0]}) que le bot ne possède pas : lancer "
                                "`cercle identity restore` avec la clé de récupération (rien n'a été modifié)")
        ids = stored.public_ids()
        if server_master[1] != stored.public_keys()["master"]:
            return EnsureResult("mismatch", stored, None,
                                f"la clé maîtresse du serveur ({server_master[0]}) n'est pas celle du bot "
                                f"({ids['master']}) : identité réinitialisée ailleurs ? Rien n'a été modifié ; "
                                "restaurer avec `cercle identity restore` et la clé de récupération actuelle")
        if server_ssk is None or server_ssk[1] != stored.public_keys()["self_signing"]:
            return EnsureResult("mismatch", stored, None,
                                f"la clé d'auto-signature du serveur ({server_ssk[0] if server_ssk else 'absente'}) "
                                f"n'est pas celle du bot ({ids['self_signing']}) : rien n'a été modifié")
        if device_is_cross_signed(query, self.user_id, self.device_id):
            return EnsureResult("reused", stored, None, f"identité inchangée, appareil {self.device_id} déjà signé")
        await self.sign_device(stored, olm_ed25519=olm_ed25519)
        return EnsureResult("reused", stored, None, f"identité inchangée, appareil {self.device_id} signé")
