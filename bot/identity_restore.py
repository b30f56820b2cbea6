"""`cercle identity restore`: the cross-signing keys fetched from secret storage with the recovery
key, and this device signed with them (on a new machine, or after the identity was replaced)."""
from __future__ import annotations

from nio import AsyncClient, AsyncClientConfig

from bot.config import Config
from bot.cross_signing import CrossSigningClient
from bot.cross_signing_keys import CrossSigningKeys
from bot.identity import SECRET_KEY
from bot.secret_storage import restore_cross_signing_secrets
from bot.status import stored_session


async def restore_identity(config: Config, recovery_key: str) -> str:
    """Fetch the cross-signing keys from secret storage with the recovery key, and sign this device."""
    store, device_id, token = await stored_session(config)
    user = config.matrix.user_id
    client = AsyncClient(config.matrix.homeserver, user, device_id=device_id,
                         store_path=str(config.storage.data_dir / "nio-store"),
                         config=AsyncClientConfig(encryption_enabled=True,
                                                  pickle_key=store.cipher.derive("nio-pickle-key")))
    try:
        client.restore_login(user, device_id, token)
        olm_key = client.olm.account.identity_keys["ed25519"] if client.olm else None
        async with CrossSigningClient(config.matrix.homeserver, user, device_id, token,
                                      config.matrix.resolved_password()) as cs:
            try:
                keys: CrossSigningKeys = await restore_cross_signing_secrets(cs, recovery_key)
            except ValueError as e:
                raise SystemExit(f"cercle : {e}")
            result = await cs.ensure(keys, olm_ed25519=olm_key)
        if result.status == "mismatch":
            raise SystemExit(f"cercle : les clés restaurées ne correspondent pas à celles du serveur ({result.detail})")
        await store.set_secret(SECRET_KEY, keys.to_secret_dict())
        return f"Identité restaurée : l'appareil {device_id} de {user} est signé par son identité de signature croisée."
    finally:
        await client.close()
        await store.close()
