"""Storage on SQLite and PostgreSQL: migrations, encryption at rest, inbox, outbox, deadlines."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from cryptography.exceptions import InvalidTag
from sqlalchemy import select, text

from storage.crypto import FieldCipher, StorageKeyError
from storage.models import InboxEvent
from storage.repositories import IncomingEvent, open_store

NOW = datetime(2026, 3, 12, 9, 0, tzinfo=timezone.utc)


@pytest.fixture
async def store(database_url, tmp_path):
    s = await open_store(database_url, tmp_path / "storage.key")
    yield s
    await s.close()


def test_cipher_is_authenticated_and_bound_to_purpose(tmp_path):
    cipher = FieldCipher.from_key_file(tmp_path / "k")
    blob = cipher.encrypt_json({"nom": "Dupont"}, "patient:P-1")
    assert b"Dupont" not in blob
    assert cipher.decrypt_json(blob, "patient:P-1") == {"nom": "Dupont"}
    with pytest.raises(InvalidTag):
        cipher.decrypt_json(blob, "patient:P-2")  # cannot be moved to another row
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(InvalidTag):
        cipher.decrypt_json(tampered, "patient:P-1")
    other = FieldCipher.from_key_file(tmp_path / "other")
    with pytest.raises(InvalidTag):
        other.decrypt_json(blob, "patient:P-1")


def test_key_file_is_created_private_and_reused(tmp_path):
    path = tmp_path / "keys" / "storage.key"
    a = FieldCipher.from_key_file(path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    b = FieldCipher.from_key_file(path)
    assert b.decrypt_text(a.encrypt_text("x", "p"), "p") == "x"
    with pytest.raises(StorageKeyError):
        FieldCipher.from_key_file(tmp_path / "absent", create=False)
    (tmp_path / "bad").write_text("not base64!!")
    with pytest.raises(StorageKeyError):
        FieldCipher.from_key_file(tmp_path / "bad")


async def test_migrations_are_idempotent(store):
    await store.migrate()  # a second start applies nothing and fails on nothing
    async with store.session() as s:
        version = (await s.execute(text("SELECT version_num FROM alembic_version"))).scalar()
    assert version is not None


def test_latest_revision_is_alembics_head():
    """`cercle status` checks the schema without loading Alembic: its idea of the head must be Alembic's."""
    from alembic.script import ScriptDirectory

    from storage.engine import MIGRATIONS, _alembic_config, latest_revision

    config = _alembic_config(None)
    config.set_main_option("script_location", str(MIGRATIONS))
    assert latest_revision() == ScriptDirectory.from_config(config).get_current_head()


async def test_a_read_only_open_refuses_a_schema_behind_and_opens_a_current_one(database_url, tmp_path):
    """Operator commands open the store without migrating: a database the bot has not migrated yet
    is named as such instead of failing on a missing column."""
    from storage.engine import make_engine
    from storage.repositories import SchemaBehind

    engine = make_engine(database_url)  # an empty database: never migrated
    await engine.dispose()
    with pytest.raises(SchemaBehind):
        await open_store(database_url, tmp_path / "k", migrate=False)
    await (await open_store(database_url, tmp_path / "k")).close()  # the bot's start migrates
    current = await open_store(database_url, tmp_path / "k", migrate=False)
    assert await current.get_state("sync_token") is None
    await current.close()


async def test_state_and_secrets(store):
    assert await store.get_state("sync_token") is None
    await store.set_state("sync_token", "s1")
    await store.set_state("sync_token", "s2")
    assert await store.get_state("sync_token") == "s2"
    await store.set_secret("access_token", "syt_secret")
    assert await store.get_secret("access_token") == "syt_secret"
    async with store.session() as s:
        raw = (await s.execute(text("SELECT value, value_enc FROM bot_state WHERE key='access_token'"))).one()
    assert raw[0] is None and b"syt_secret" not in bytes(raw[1])


async def test_inbox_records_once_with_the_token_and_keeps_order(store):
    events = [IncomingEvent(f"$e{i}", "!r", "@a", "message", 1000 + i, {"body": f"!aide {i}"}) for i in range(3)]
    assert await store.record_sync(events, "tok1", NOW) == 3
    assert await store.record_sync(events[1:] + [IncomingEvent("$e9", "!r", "@a", "message", 999, {})], "tok2", NOW) == 1
    assert await store.get_state("sync_token") == "tok2"
    pending = await store.pending_events()
    assert [e.event_id for e in pending] == ["$e9", "$e0", "$e1", "$e2"]  # by origin time
    assert pending[1].payload == {"body": "!aide 0"}
    await store.mark_event("$e0", "handled", NOW)
    assert "$e0" not in [e.event_id for e in await store.pending_events()]
    assert await store.record_event(IncomingEvent("$e0", "!r", "@a", "message", 1, {}), NOW) is False
    async with store.session() as s:
        blob = (await s.scalars(select(InboxEvent.payload_enc).where(InboxEvent.event_id == "$e1"))).one()
    assert b"aide" not in blob  # content is encrypted at rest


async def test_outbox_and_deadlines(store):
    async with store.session.begin() as s:
        txn = store.queue(s, "message", "!r", {"body": "Bonjour"}, NOW, ref="notice:1")
        await store.add_deadline("relance", "demande:1", NOW + timedelta(hours=6), NOW, session=s)
        await store.add_deadline("escalade", "demande:1", NOW + timedelta(hours=8), NOW, session=s)
    [(item, content)] = await store.pending_outbox()
    assert item.txn_id == txn and content == {"body": "Bonjour"}
    await store.outbox_done(item.id, NOW, event_id="$sent")
    assert await store.pending_outbox() == []
    assert await store.outbox_event_ids("notice:1") == ["$sent"]

    assert await store.next_deadline() == NOW + timedelta(hours=6)
    assert await store.due_deadlines(NOW + timedelta(hours=5)) == []
    due = await store.due_deadlines(NOW + timedelta(hours=9))
    assert [d.kind for d in due] == ["relance", "escalade"]
    assert due[0].due_at.tzinfo is not None
    async with store.session.begin() as s:
        assert await store.take_deadline(s, due[0].id, NOW) is True
        assert await store.take_deadline(s, due[0].id, NOW) is False  # fires once
    await store.cancel_deadlines("demande:1")
    assert await store.due_deadlines(NOW + timedelta(days=1)) == []


async def test_a_rolled_back_handler_leaves_no_outbox_row(store):
    with pytest.raises(RuntimeError):
        async with store.session.begin() as s:
            store.queue(s, "message", "!r", {"body": "half"}, NOW)
            raise RuntimeError("crash in the handler")
    assert await store.pending_outbox() == []


async def test_concurrent_writes_to_a_request_do_not_overwrite_each_other(store):
    """A timer and an answer on the same request at once: no write computed from what the other had
    already changed. PostgreSQL (several connections): the second commit fails on the version
    check. SQLite (one connection, storage.engine): the second waits, then reads the first's write."""
    import asyncio

    from sqlalchemy.orm.exc import StaleDataError

    from storage.models import Demande

    async with store.session.begin() as s:
        s.add(Demande(patient_code="P-2345", room_id="!r", numero=1, flow="consultation", etat="en_attente",
                      demandeur="@a:b", created_at=NOW, data_enc=b"v1"))
    seen: dict[str, str] = {}

    async def act(name: str, new_state: str):
        async with store.session() as session:
            row = (await session.scalars(select(Demande))).one()
            seen[name] = row.etat
            await asyncio.sleep(0.05)  # the other one runs meanwhile, if it can
            if row.etat == "en_attente":
                row.etat, row.data_enc = new_state, new_state.encode()
            await session.commit()

    results = await asyncio.gather(act("timer", "expiree"), act("answer", "acceptee"), return_exceptions=True)
    async with store.session() as s:
        final = (await s.scalars(select(Demande))).one().etat
    stale = [name for name, r in zip(("timer", "answer"), results) if isinstance(r, StaleDataError)]
    assert not [r for r in results if r is not None and not isinstance(r, StaleDataError)], results
    if stale:  # both read "en_attente": the first commit stands, the second failed
        assert len(stale) == 1 and seen == {"timer": "en_attente", "answer": "en_attente"}
        assert final == {"timer": "acceptee", "answer": "expiree"}[stale[0]]
    else:  # one after the other: the second saw the first's write and left it
        assert final == "expiree" and seen == {"timer": "en_attente", "answer": "expiree"}
