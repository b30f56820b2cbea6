"""The bot's cross-signing identity: created once, reused at every start, never silently replaced.

Element excludes devices that their owner did not cross-sign, so this runs before the bot is
useful: after the device keys are uploaded, the device is signed by the self-signing key.
"""
from __future__ import annotations

import logging

from bot.cross_signing import CrossSigningClient
from bot.cross_signing_keys import CrossSigningError, CrossSigningKeys

log = logging.getLogger("cercle.identity")

SECRET_KEY = "cross_signing_keys"


def cross_signing_client(bot) -> CrossSigningClient:
    return CrossSigningClient(bot.config.matrix.homeserver, bot.user_id, bot.device_id,
                              bot.client.access_token, bot.password)


async def ensure_identity(bot) -> str:
    """Returns the status: created | reused | mismatch | error."""
    stored_dict = await bot.store.get_secret(SECRET_KEY)
    stored = CrossSigningKeys.from_secret_dict(stored_dict) if stored_dict else None
    olm_key = bot.client.olm.account.identity_keys["ed25519"]
    async with cross_signing_client(bot) as cs:
        try:
            result = await cs.ensure(stored, olm_ed25519=olm_key)
        except CrossSigningError as e:
            if e.keys is not None:  # uploaded, then something failed: keep what the server now has
                await bot.store.set_secret(SECRET_KEY, e.keys.to_secret_dict())
            log.error("signature croisée impossible : %s", e)
            return "error"
    if result.status == "created":
        await bot.store.set_secret(SECRET_KEY, result.keys.to_secret_dict())
        announce_recovery_key(result.recovery_key)
    elif result.status == "mismatch":
        log.error("identité de signature croisée différente sur le serveur : %s", result.detail)
        bot.identity_warning = (
            "⚠️ L'identité de signature croisée du compte de Cercle a été remplacée ailleurs (réinitialisation "
            "depuis un autre appareil ?). Je ne l'écrase pas : Element peut ne plus faire confiance à Cercle. "
            "Un opérateur doit lancer `cercle identity restore` avec la clé de récupération.")
    else:
        log.info("identité de signature croisée reprise, appareil %s signé", bot.device_id)
    bot.identity_status = result.status  # last: whoever waits on it sees the whole outcome
    return result.status


def announce_recovery_key(recovery_key: str) -> None:
    """Printed once, at creation: the operator keeps it to restore the identity elsewhere."""
    banner = "=" * 72
    print(f"\n{banner}\nIdentité de signature croisée de Cercle créée.\n"
          f"Clé de récupération (à conserver hors ligne, elle ne sera plus affichée) :\n\n    {recovery_key}\n\n"
          f"Elle permet `cercle identity restore` sur une nouvelle machine.\n{banner}\n", flush=True)
