"""SQLAlchemy models. Columns ending in `_enc` hold AES-GCM ciphertext (storage.crypto)."""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Index,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    event,
    text,
)
from sqlalchemy import false as sa_false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes on every backend (SQLite would hand back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None:
            if value.tzinfo is None:
                raise ValueError("naive datetime refused: use an aware UTC instant")
            value = value.astimezone(timezone.utc)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict: JSON, list: JSON}


class BotState(Base):
    """Small key/value store: sync token, device id, access token (encrypted), identity keys (encrypted)."""

    __tablename__ = "bot_state"
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str | None] = mapped_column(Text)
    value_enc: Mapped[bytes | None] = mapped_column(LargeBinary)


class InboxEvent(Base):
    """Every event the bot must act on, recorded before the sync token moves past it.

    status: pending -> handled (or failed). A restart resumes the pending ones; the event id
    is the primary key, so an event is never recorded (nor handled) twice. An event the bot could
    not decrypt yet is `waiting_key` until its megolm session's key arrives (-> pending, as the
    decrypted event) or the wait is over (-> failed, the sender told once).
    """

    __tablename__ = "inbox_event"
    event_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    room_id: Mapped[str] = mapped_column(String(255))
    sender: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(50))  # message | reaction | undecryptable | withheld | invite
    origin_ts: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[datetime]
    payload_enc: Mapped[bytes] = mapped_column(LargeBinary)  # the decrypted content may be clinical
    status: Mapped[str] = mapped_column(String(20), default="pending")
    handled_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    session_id: Mapped[str | None] = mapped_column(String(255))  # megolm session of a waiting_key event
    waiting_since_ms: Mapped[int | None] = mapped_column(BigInteger)  # wall time: key delivery is real time

    __table_args__ = (Index("ix_inbox_status_ts", "status", "origin_ts"),)


class RoomRecord(Base):
    """Rooms the bot is in, and why. `joined_ts` filters out backlog from before the bot arrived."""

    __tablename__ = "room"
    room_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))  # patient | coordination | direct | other
    joined_ts: Mapped[int] = mapped_column(BigInteger)
    direct_with: Mapped[str | None] = mapped_column(String(255))
    commands_published: Mapped[str | None] = mapped_column(String(64))  # hash of the advertised list
    # Room version 12 gives creators every power without listing them; nio cannot see that.
    bot_is_creator: Mapped[bool] = mapped_column(default=False, server_default=sa_false())


class Deadline(Base):
    """A timer. The row is the truth; the scheduler only wakes the bot up.

    status: pending -> fired (in the same transaction as the messages it causes, written to the
    outbox), or cancelled. An overdue row found at start fires at once, and only once.
    """

    __tablename__ = "deadline"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(50))
    ref: Mapped[str] = mapped_column(String(100))  # what it is about, e.g. "demande:12"
    due_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(20), default="pending")
    payload: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime]
    fired_at: Mapped[datetime | None]

    __table_args__ = (
        # Partial: the runner and `cercle status` only look at pending rows, a small part of a table
        # that keeps every fired one (migration 0005).
        Index("ix_deadline_pending_due", "due_at", sqlite_where=text("status = 'pending'"),
              postgresql_where=text("status = 'pending'")),
        UniqueConstraint("kind", "ref", name="uq_deadline_kind_ref"),
    )


class OutboxItem(Base):
    """Something to send to the homeserver, written in the same transaction as the state change
    that caused it (transactional outbox). Sent afterwards with `txn_id` as the Matrix transaction
    id, so a send retried after a crash is deduplicated by the homeserver."""

    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    txn_id: Mapped[str] = mapped_column(String(64), unique=True)
    action: Mapped[str] = mapped_column(String(20))  # message | invite | state | kick
    room_id: Mapped[str] = mapped_column(String(255))
    content_enc: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(20), default="pending")  # pending | sent | failed
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    event_id: Mapped[str | None] = mapped_column(String(255))  # what the homeserver answered
    ref: Mapped[str | None] = mapped_column(String(100))  # e.g. "notice:demande:3:@u" to find the event later
    error: Mapped[str | None] = mapped_column(Text)
    # Delivery bookkeeping, in wall-clock time (the homeserver's time, not the domain clock):
    # persisted so that a restart resumes the backoff instead of retrying everything in a loop.
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    next_attempt_at: Mapped[datetime | None]  # not before this instant (None: at once)
    first_try_at: Mapped[datetime | None]  # first attempt that did not deliver
    last_error: Mapped[str | None] = mapped_column(String(200))  # why it waits (no content, no identity)
    stuck_reported_at: Mapped[datetime | None]  # reported once as stuck (log and `cercle status`)

    # event_id: a vote or a reply names the bot's message it answers (rooms: POLL/REPLY_HANDLERS).
    __table_args__ = (Index("ix_outbox_status_id", "status", "id"), Index("ix_outbox_event_id", "event_id"))


class Professional(Base):
    """Directory (annuaire) entry. Professionals' names are not patient data: kept in clear."""

    __tablename__ = "professional"
    user_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200))
    profession: Mapped[str] = mapped_column(String(50))
    communes: Mapped[list] = mapped_column(JSON, default=list)
    cpts: Mapped[str] = mapped_column(String(200), default="")
    roles: Mapped[list] = mapped_column(JSON, default=list)  # coordinateur, referent:<parcours>, operateur_snp, secretaire:<@delegant>
    cotisation_until: Mapped[datetime | None]
    notification_hours: Mapped[str | None] = mapped_column(String(50))  # "08:00-19:00"
    absences: Mapped[list] = mapped_column(JSON, default=list)  # [[start_iso, end_iso], ...]
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime]


class Patient(Base):
    """A patient and their room. Identity only as ciphertext; the code is pseudonymous."""

    __tablename__ = "patient"
    code: Mapped[str] = mapped_column(String(20), primary_key=True)  # P-7K3Q
    room_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    identity_enc: Mapped[bytes] = mapped_column(LargeBinary)
    medecin_traitant: Mapped[str | None] = mapped_column(String(255))
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime]
    commune: Mapped[str | None] = mapped_column(String(200))  # for pool notices (no identity)
    birth_year: Mapped[int | None]  # age band for pool notices
    archived_at: Mapped[datetime | None]
    identity_event_id: Mapped[str | None] = mapped_column(String(255))


class CercleMember(Base):
    __tablename__ = "cercle_member"
    patient_code: Mapped[str] = mapped_column(String(20), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    role: Mapped[str] = mapped_column(String(50), default="habituel")  # medecin_traitant | habituel | intervenant
    added_by: Mapped[str] = mapped_column(String(255))
    added_at: Mapped[datetime]
    removed_at: Mapped[datetime | None]


class Inclusion(Base):
    __tablename__ = "inclusion"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    patient_code: Mapped[str] = mapped_column(String(20), index=True)
    parcours: Mapped[str] = mapped_column(String(50))
    included_by: Mapped[str] = mapped_column(String(255))
    included_at: Mapped[datetime]
    attestation: Mapped[str | None] = mapped_column(String(100))  # carte / document d'intégration remis
    ended_at: Mapped[datetime | None]
    end_reason_enc: Mapped[bytes | None] = mapped_column(LargeBinary)


class Act(Base):
    """Ledger line: an act the indemnity rules price (repérage, inclusion, red flag, acceptation…).

    The price is kept on the line (rooms.indemnites, domain.indemnites): `etat` (NULL until priced),
    `montant_cents` (the rule's amount; what is owed is the amount of éligible lines), `motif` (what
    is missing, or why not éligible), the rule and tariff version, and `trimestre` (the act's quarter
    in the CPTS's time zone), so that a bordereau is one indexed aggregate. A line in a validated
    bordereau (`bordereau_id`) is frozen: a later change becomes a correction line (`correction` > 0)
    in an open quarter. (user_id, kind, ref, correction) is unique: an act is never counted twice.
    """

    __tablename__ = "act"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(255), index=True)
    kind: Mapped[str] = mapped_column(String(50))
    patient_code: Mapped[str | None] = mapped_column(String(20))
    parcours: Mapped[str | None] = mapped_column(String(50))
    ref: Mapped[str | None] = mapped_column(String(100))
    at: Mapped[datetime]
    details: Mapped[dict] = mapped_column(JSON, default=dict)
    correction: Mapped[int] = mapped_column(default=0, server_default="0")
    trimestre: Mapped[str | None] = mapped_column(String(7))  # 2026-T3
    etat: Mapped[str | None] = mapped_column(String(12))  # eligible | en_attente | non_eligible
    montant_cents: Mapped[int] = mapped_column(default=0, server_default="0")
    cpam: Mapped[str | None] = mapped_column(String(60))  # shown, never added (spec §5.1)
    motif: Mapped[str | None] = mapped_column(String(300))  # no patient identity: criteria names only
    regle: Mapped[str | None] = mapped_column(String(60))
    version: Mapped[str | None] = mapped_column(String(40))
    priced_at: Mapped[datetime | None]
    bordereau_id: Mapped[int | None] = mapped_column(index=True)

    __table_args__ = (UniqueConstraint("user_id", "kind", "ref", "correction", name="uq_act_once"),
                      Index("ix_act_trimestre_user", "trimestre", "user_id", "etat"),
                      # Partial: the lines to price (new, or whose details changed) are few in a big ledger.
                      Index("ix_act_unpriced", "id", sqlite_where=text("priced_at IS NULL"),
                            postgresql_where=text("priced_at IS NULL")))


@event.listens_for(Act.details, "set", propagate=True)
def _details_changed(target: Act, value, oldvalue, initiator) -> None:
    """Whoever rewrites a line's details (criteria met) makes it due for pricing again."""
    target.priced_at = None


class Bordereau(Base):
    """A validated (paid) bordereau: one professional, one quarter; its lines are frozen."""

    __tablename__ = "bordereau"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(255))
    trimestre: Mapped[str] = mapped_column(String(7))
    total_cents: Mapped[int]
    lignes: Mapped[int]
    valide_par: Mapped[str] = mapped_column(String(255))
    valide_le: Mapped[datetime]

    __table_args__ = (UniqueConstraint("user_id", "trimestre", name="uq_bordereau_user_trimestre"),)


class Demande(Base):
    """A déclenchement in a patient room. The whole domain object (domain.demandes.Demande) is
    kept encrypted in `data_enc` (it holds the comment and the compte-rendu); the plain columns
    are what lookups and the ladder need, and carry no patient identity."""

    __tablename__ = "demande"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    patient_code: Mapped[str] = mapped_column(String(20), index=True)
    room_id: Mapped[str] = mapped_column(String(255))
    numero: Mapped[int]
    flow: Mapped[str] = mapped_column(String(50))
    etat: Mapped[str] = mapped_column(String(20))
    demandeur: Mapped[str] = mapped_column(String(255))
    acceptee_par: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime]
    version: Mapped[int] = mapped_column(default=1)  # optimistic lock: first acceptance wins, once
    data_enc: Mapped[bytes] = mapped_column(LargeBinary)

    __table_args__ = (UniqueConstraint("room_id", "numero", name="uq_demande_room_numero"),
                      {"sqlite_autoincrement": True})
    # A timer and an answer may touch the same request at once: the later write fails
    # (StaleDataError) and is retried on fresh data, instead of silently undoing the other.
    __mapper_args__ = {"version_id_col": version}



class Observation(Base):
    """A donnée de base or an élément de suivi recorded for a patient (`!donnees`, `!suivi`).

    Append-only: a new value is a new row pointing at the one it replaces (`previous_id`), so each
    value keeps who, when and the previous value. The value and the date it refers to are health
    data: only as ciphertext (`value_enc`, storage.suivi)."""

    __tablename__ = "observation"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    patient_code: Mapped[str] = mapped_column(String(20))
    parcours: Mapped[str] = mapped_column(String(50))
    kind: Mapped[str] = mapped_column(String(10))  # donnee | suivi
    element: Mapped[str] = mapped_column(String(60))
    value_enc: Mapped[bytes] = mapped_column(LargeBinary)
    recorded_by: Mapped[str] = mapped_column(String(255))
    recorded_at: Mapped[datetime]
    previous_id: Mapped[int | None]

    __table_args__ = (Index("ix_observation_patient", "patient_code", "parcours", "kind", "element"),)


class QuestionnaireRun(Base):
    """One questionnaire (vigie J0/J7/J30…) for one inclusion: who answers it, where it stands.

    status: programme (waiting for its day or for the addressee's notification hours) → en_cours
    ↔ en_pause → termine. The answers are clinical: encrypted JSON in `answers_enc`. `current` is
    the question asked now (its poll or message carries the ref `questionnaire:<id>:<n>`).
    """

    __tablename__ = "questionnaire"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    patient_code: Mapped[str] = mapped_column(String(20), index=True)
    room_id: Mapped[str] = mapped_column(String(255))
    inclusion_id: Mapped[int]
    code: Mapped[str] = mapped_column(String(50))  # file code: vigie-j7
    status: Mapped[str] = mapped_column(String(20), default="programme")
    addressee: Mapped[str | None] = mapped_column(String(255))
    current: Mapped[int | None]
    current_ref: Mapped[str | None] = mapped_column(String(100))  # the outbox ref of the question asked now
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    answers_enc: Mapped[bytes | None] = mapped_column(LargeBinary)
    # Who answered what, when: [{"q": 1, "par": "@u", "at": iso, "via": "vote|texte"}] (no clinical content)
    trail: Mapped[list] = mapped_column(JSON, default=list)
    told: Mapped[list] = mapped_column(JSON, default=list)  # "<question ref> <user>" told once their vote does not count

    __table_args__ = (UniqueConstraint("inclusion_id", "code", name="uq_questionnaire_inclusion_code"),)


class TcimRecord(Base):
    """What a TCIM adds to its request (issue 12), one row per request. The state (eligibility
    answers, charter, slot, video link, interruption motif…) is encrypted in `data_enc`; `etat`
    and the people are plain for lookups and carry no patient identity."""

    __tablename__ = "tcim"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    demande_id: Mapped[int] = mapped_column(unique=True)
    patient_code: Mapped[str] = mapped_column(String(20), index=True)
    etat: Mapped[str] = mapped_column(String(20))
    infirmier: Mapped[str] = mapped_column(String(255))
    medecin: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime]
    data_enc: Mapped[bytes] = mapped_column(LargeBinary)
