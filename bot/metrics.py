"""Prometheus metrics of one bot process (served by bot/health.py).

Labels are bounded and say nothing of anyone: a command's declared name (never the typed word),
an outcome from a fixed list, a room kind. No user id, room id, patient code or message text.
Each process (and each Bot a test opens) has its own registry, so two bots in one test process
never mix their counts.

The database-derived gauges (outbox, deadlines, rooms) are read at each scrape (`refresh`), one
small COUNT/MIN query each, rather than tracked on every write.
"""
from __future__ import annotations

from collections import OrderedDict
from datetime import datetime, timezone

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from storage.ops import counts

# Outcomes of a command (cercle_commands_total{outcome}): answered, refused with a French reason
# (permissions, bad value, wrong room), usage error, internal error.
OUTCOMES = ("ok", "refusee", "usage", "erreur")
UNKNOWN_COMMAND = "inconnue"  # the name label of a word that is not a command: never the word itself

AWAITING_MAX = 1000  # commands whose answer is not sent yet, remembered for the latency (oldest dropped)
_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)
_LATENESS_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.commands = Counter("cercle_commands", "Commandes traitées, par nom déclaré et issue",
                                ["command", "outcome"], registry=r)
        self.reply_latency = Histogram(
            "cercle_reply_latency_seconds", "De l'horodatage de la commande (serveur) à l'envoi de sa réponse dans le salon",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.sync_duration = Histogram(
            "cercle_sync_duration_seconds", "Durée d'une synchronisation (attente longue comprise) et de son "
            "enregistrement", buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60), registry=r)
        self.sync_failures = Counter("cercle_sync_failures", "Synchronisations en échec", registry=r)
        self.last_sync = Gauge("cercle_last_sync_timestamp_seconds", "Instant de la dernière synchronisation réussie",
                               registry=r)
        self.outbox_pending = Gauge("cercle_outbox_pending", "Envois en attente", registry=r)
        self.outbox_oldest = Gauge("cercle_outbox_oldest_age_seconds", "Âge du plus ancien envoi en attente",
                                   registry=r)
        self.deadlines_pending = Gauge("cercle_deadlines_pending", "Échéances en attente", registry=r)
        self.deadlines_fired = Counter("cercle_deadlines_fired", "Échéances déclenchées", registry=r)
        self.deadline_lateness = Histogram(
            "cercle_deadline_lateness_seconds", "Retard d'une échéance déclenchée sur son heure (temps du bot)",
            buckets=_LATENESS_BUCKETS, registry=r)
        self.undecryptable = Counter("cercle_undecryptable_events",
                                     "Messages restés indéchiffrables (expéditeur prévenu)", registry=r)
        self.rooms_joined = Gauge("cercle_rooms_joined", "Salons où le bot est, par type", ["kind"], registry=r)
        self.inbox_pending = Gauge("cercle_inbox_pending", "Événements enregistrés pas encore traités", registry=r)
        self.active = Gauge("cercle_active", "1 si ce processus sert (détient le verrou), 0 en attente", registry=r)
        self.homeserver_up = Gauge("cercle_homeserver_reachable", "1 si le serveur d'accueil répond", registry=r)
        self.homeserver_up.set(1)
        self._awaiting: OrderedDict[str, int] = OrderedDict()  # command event id -> its origin_ts (ms)

    # --- what the adapter reports ----------------------------------------------------------------
    def command(self, name: str | None, outcome: str) -> None:
        self.commands.labels(command=name or UNKNOWN_COMMAND, outcome=outcome).inc()

    def awaiting_reply(self, event_id: str, origin_ts_ms: int) -> None:
        """A command was handled: its answer's send (OutboxSender) closes the latency."""
        self._awaiting[event_id] = origin_ts_ms
        while len(self._awaiting) > AWAITING_MAX:  # answers sent privately, or never: not kept forever
            self._awaiting.popitem(last=False)

    def message_sent(self, content: dict, now_ms: int) -> None:
        """A message went out; if it answers an awaited command, observe event timestamp -> now."""
        replied_to = (content.get("m.relates_to") or {}).get("m.in_reply_to", {}).get("event_id")
        origin = self._awaiting.pop(replied_to, None) if replied_to else None
        if origin is not None:
            self.reply_latency.observe(max(0.0, (now_ms - origin) / 1000))

    def deadline_fired(self, due_at: datetime, now: datetime) -> None:
        self.deadlines_fired.inc()
        self.deadline_lateness.observe(max(0.0, (now - due_at).total_seconds()))

    # --- read at each scrape ---------------------------------------------------------------------
    async def refresh(self, store) -> None:
        c = await counts(store)
        self.outbox_pending.set(c.outbox_pending)
        age = 0.0 if c.outbox_oldest is None else (datetime.now(timezone.utc) - c.outbox_oldest).total_seconds()
        self.outbox_oldest.set(max(0.0, age))
        self.deadlines_pending.set(c.deadlines_pending)
        self.inbox_pending.set(c.inbox_pending)
        for kind, n in c.rooms.items():
            if kind != "left":
                self.rooms_joined.labels(kind=kind).set(n)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

