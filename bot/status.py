"""`cercle status`: the bot's stored session, its store and two questions to the homeserver,
without syncing. Quick (issue 11: ≤ 1 s), so it imports only what it uses: no migration
(Alembic), no nio, no aiohttp; `cercle identity restore` lives in bot/identity_restore.py."""
from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone

from bot.config import Config
from bot.cross_signing_keys import device_is_cross_signed
from storage.repositories import SchemaBehind, open_store


async def stored_session(config: Config, migrate: bool = True):
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


def _ask(homeserver: str, token: str, method: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(homeserver.rstrip("/") + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)
    except urllib.error.HTTPError as e:
        raise SystemExit(f"cercle : le serveur d'accueil refuse {path} ({e.code}) : jeton du bot révoqué ? "
                         "`cercle run` se reconnecte sur le même appareil") from None
    except (urllib.error.URLError, OSError) as e:
        raise SystemExit(f"cercle : serveur d'accueil injoignable à {homeserver} ({getattr(e, 'reason', e)})") from None


async def status(config: Config) -> str:
    store, device_id, token = await stored_session(config, migrate=False)
    user = config.matrix.user_id
    try:
        query, joined = await asyncio.gather(
            asyncio.to_thread(_ask, config.matrix.homeserver, token, "POST", "/_matrix/client/v3/keys/query",
                              {"device_keys": {user: [device_id]}}),
            asyncio.to_thread(_ask, config.matrix.homeserver, token, "GET", "/_matrix/client/v3/joined_rooms"))
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
