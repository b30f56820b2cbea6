"""Operator commands that use the bot's stored session without syncing: status, identity restore."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from bot.config import Config
from bot.cross_signing import CrossSigningClient
from bot.cross_signing_keys import CrossSigningKeys, device_is_cross_signed
from bot.identity import SECRET_KEY
from bot.secret_storage import restore_cross_signing_secrets
from storage.repositories import SchemaBehind, open_store


async def _session(config: Config, migrate: bool = True):
    try:
        store = await open_store(config.storage.url(), config.storage.key_path(), create_key=False, migrate=migrate)
    except SchemaBehind:
        raise SystemExit("cercle : la base du bot précède cette version de Cercle ; le prochain démarrage du "
                         "bot (`cercle run`) la met à jour, `cercle status` ensuite") from None
    device_id = await store.get_state("device_id")
    token = await store.get_secret("access_token")
    if not device_id or not token:
        await store.close()
        raise SystemExit("cercle : le bot ne s'est encore jamais connecté (lancez `cercle run` une première fois)")
    return store, device_id, token


async def status(config: Config) -> str:
    # Read-only, and quick (issue 11: ≤ 1 s): no migration (Alembic), no nio.
    store, device_id, token = await _session(config, migrate=False)
    user = config.matrix.user_id
    try:
        async with CrossSigningClient(config.matrix.homeserver, user, device_id, token, None) as cs:
            _, query = await cs.request("POST", "/_matrix/client/v3/keys/query", {"device_keys": {user: [device_id]}})
            _, joined = await cs.request("GET", "/_matrix/client/v3/joined_rooms")
        signed = device_is_cross_signed(query, user, device_id)
        # Counted by the database: the deadline table keeps every fired row, and loading 100,000
        # pending ones to print 20 took 11 s.
        kinds = await store.room_counts()
        n_deadlines, deadlines = await store.pending_deadline_summary(first=20)
        lines = [
            f"Compte          : {user}",
            f"Appareil        : {device_id}",
            f"Signé (croisé)  : {'oui, chaîne de signatures vérifiée' if signed else 'NON : Element peut exclure cet appareil'}",
            f"Salons rejoints : {len(joined.get('joined_rooms', []))} "
            f"({', '.join(f'{k} : {n}' for k, n in sorted(kinds.items())) or 'aucun enregistré'})",
            f"Échéances       : {n_deadlines} en attente",
        ]
        for d in deadlines:
            lines.append(f"  - {d.due_at:%d/%m/%Y %H:%M} UTC  {d.kind:<12} {d.ref}")
        lines.append(f"Événements en attente de traitement : {await store.pending_event_count()}")
        lines += await outbox_lines(store, config.delivery.stuck_after_s)
        return "\n".join(lines)
    finally:
        await store.close()


async def outbox_lines(store, stuck_after_s: float, now: datetime | None = None) -> list[str]:
    """Pending sends, and those stuck longer than the threshold (the bot also logs each once)."""
    now = now or datetime.now(timezone.utc)
    pending, n_stuck, stuck = await store.outbox_backlog_summary(now - timedelta(seconds=stuck_after_s), first=20)
    limit = f"{stuck_after_s / 60:.0f} min" if stuck_after_s >= 60 else f"{stuck_after_s:.0f} s"
    line = f"Envois en attente : {pending}"
    if n_stuck:
        line += f", dont {n_stuck} bloqués depuis plus de {limit}"
    lines = [line]
    for i in stuck:
        since = f"{i.first_try_at:%d/%m/%Y %H:%M} UTC" if i.first_try_at else "?"
        lines.append(f"  - n°{i.id} {i.action:<8} {i.room_id or 'conversation directe'} {i.ref or ''} : "
                     f"depuis {since}, {i.attempts} essais, {i.last_error or '?'}")
    return lines


async def restore_identity(config: Config, recovery_key: str) -> str:
    """Fetch the cross-signing keys from secret storage with the recovery key, and sign this device."""
    from nio import AsyncClient, AsyncClientConfig  # here: `cercle status` does without it

    store, device_id, token = await _session(config)
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
