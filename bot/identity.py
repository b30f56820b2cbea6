"""The bot's cross-signing identity: created once, reused at every start, never silently replaced.

Element excludes devices that their owner did not cross-sign, so this runs before the bot is
useful: after the device keys are uploaded, the device is signed by the self-signing key.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.cross_signing import CrossSigningClient
from bot.cross_signing_keys import CrossSigningError, CrossSigningKeys

if TYPE_CHECKING:  # nio (0.8 s to import) stays out of `cercle status`, which imports SECRET_KEY
    from nio import AsyncClient

log = logging.getLogger("cercle.identity")

SECRET_KEY = "cross_signing_keys"


def cross_signing_client(homeserver: str, client: AsyncClient, password: str | None) -> CrossSigningClient:
    return CrossSigningClient(homeserver, client.user_id, client.device_id, client.access_token, password)


@dataclass(frozen=True)
class IdentityOutcome:
    status: str  # created | reused | mismatch | error
    warning: str | None = None  # for the coordinators' room


MISMATCH_WARNING = (
    "⚠️ L'identité de signature croisée du compte de Cercle a été remplacée ailleurs (réinitialisation "
    "depuis un autre appareil ?). Je ne l'écrase pas : Element peut ne plus faire confiance à Cercle. "
    "Un opérateur doit lancer `cercle identity restore` avec la clé de récupération.")


async def ensure_identity(store, client: AsyncClient, cross_signing: CrossSigningClient) -> IdentityOutcome:
    """Create the identity once, or check that the server still has ours and sign this device."""
    stored_dict = await store.get_secret(SECRET_KEY)
    stored = CrossSigningKeys.from_secret_dict(stored_dict) if stored_dict else None
    olm_key = client.olm.account.identity_keys["ed25519"]
    async with cross_signing as cs:
        try:
            result = await cs.ensure(stored, olm_ed25519=olm_key)
        except CrossSigningError as e:
            if e.keys is not None:  # uploaded, then something failed: keep what the server now has
                await store.set_secret(SECRET_KEY, e.keys.to_secret_dict())
            log.error("signature croisée impossible : %s", e)
            return IdentityOutcome("error")
    if result.status == "created":
        await store.set_secret(SECRET_KEY, result.keys.to_secret_dict())
        announce_recovery_key(result.recovery_key)
    elif result.status == "mismatch":
        log.error("identité de signature croisée différente sur le serveur : %s", result.detail)
        return IdentityOutcome(result.status, MISMATCH_WARNING)
    else:
        log.info("identité de signature croisée reprise, appareil %s signé", client.device_id)
    return IdentityOutcome(result.status)


def announce_recovery_key(recovery_key: str) -> None:
    """Printed once, at creation: the operator keeps it to restore the identity elsewhere."""
    banner = "=" * 72
    print(f"\n{banner}\nIdentité de signature croisée de Cercle créée.\n"
          f"Clé de récupération (à conserver hors ligne, elle ne sera plus affichée) :\n\n    {recovery_key}\n\n"
          f"Elle permet `cercle identity restore` sur une nouvelle machine.\n{banner}\n", flush=True)
