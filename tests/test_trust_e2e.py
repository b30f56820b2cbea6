"""Element must trust the bot: its device is cross-signed, stays so across restarts, and the bot
explains withheld keys; its own key sharing follows the configured trust policy."""
from __future__ import annotations

import base64
import json

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bot.cross_signing import CrossSigningClient
from tests.bot_harness import BotHarness
from tests.clinician import Clinician

pytestmark = pytest.mark.synapse


def _b64(s: str) -> bytes:
    return base64.b64decode(s + "=" * (-len(s) % 4))


def verify(obj: dict, user_id: str, key_id: str, public_b64: str) -> None:
    """Independent check (not the bot's code): Ed25519 over canonical JSON without signatures/unsigned."""
    stripped = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    message = json.dumps(stripped, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    signature = obj["signatures"][user_id][key_id]
    Ed25519PublicKey.from_public_bytes(_b64(public_b64)).verify(_b64(signature), message)


def only_key(key_obj: dict) -> tuple[str, str]:
    [(key_id, public)] = key_obj["keys"].items()
    assert key_id == f"ed25519:{public}" and "=" not in public  # unpadded, id is the key itself
    return key_id, public


async def check_bot_cross_signed(observer: Clinician, bot_user: str, device_id: str) -> dict:
    query = await observer.request_json("POST", "/_matrix/client/v3/keys/query", {"device_keys": {bot_user: []}})
    master = query["master_keys"][bot_user]
    ssk = query["self_signing_keys"][bot_user]
    device = query["device_keys"][bot_user][device_id]
    master_id, master_pub = only_key(master)
    ssk_id, ssk_pub = only_key(ssk)
    verify(ssk, bot_user, master_id, master_pub)  # self-signing key signed by the master key
    verify(device, bot_user, ssk_id, ssk_pub)  # device signed by the self-signing key
    with pytest.raises(InvalidSignature):  # the check can fail: a tampered device does not verify
        verify({**device, "device_id": "FORGED"}, bot_user, ssk_id, ssk_pub)
    return {"master": master_pub, "ssk": ssk_pub}


@pytest.fixture
async def setup(synapse, register, tmp_path):
    bot_user, bot_password = register("cercle")
    harness = BotHarness(synapse.url, bot_user, bot_password, tmp_path / "bot")
    await harness.start()
    opened = []

    async def clinician(prefix="dr", enrol=True):
        user_id, password = register(prefix)
        if enrol:
            await harness.enrol(user_id)
        c = await Clinician.login(synapse.url, user_id, password, tmp_path / f"store-{prefix}-{len(opened)}")
        opened.append(c)
        return c

    yield harness, clinician
    for c in opened:
        await c.close()
    await harness.stop()


async def test_bot_device_is_cross_signed_and_stays_so_after_restart(capsys, setup):
    harness, clinician = setup
    assert await harness.identity_status() == "created"
    assert "Clé de récupération" in capsys.readouterr().out  # printed once, at creation
    dr = await clinician()
    device = harness.bot.device_id
    before = await check_bot_cross_signed(dr, harness.user_id, device)

    await harness.restart()
    assert await harness.identity_status() == "reused"
    assert "Clé de récupération" not in capsys.readouterr().out
    assert harness.bot.device_id == device
    after = await check_bot_cross_signed(dr, harness.user_id, device)
    assert after == before  # no new keys uploaded


async def test_withheld_key_is_explained_in_french(setup):
    harness, clinician = setup
    dr = await clinician()
    room = await dr.create_room(invite=[harness.user_id])
    await dr.wait_joined(room, harness.user_id)
    sender_key = dr.client.olm.account.identity_keys["curve25519"]
    await dr.send_to_device("m.room_key.withheld", {
        harness.user_id: {harness.bot.device_id: {
            "algorithm": "m.megolm.v1.aes-sha2", "room_id": room, "session_id": "fake-session",
            "sender_key": sender_key, "code": "m.unverified", "reason": "Device not verified"}}})
    notice = await dr.wait_for_message(room, sender=harness.user_id, predicate=lambda m: "clé" in m.body)
    assert "refusé de me transmettre la clé" in notice.body
    assert "non vérifié" in notice.body
    assert dr.user_id in notice.content["m.mentions"]["user_ids"]


async def test_strict_policy_shares_keys_only_with_cross_signed_devices(setup, synapse):
    harness, clinician = setup
    await harness.stop()
    harness_config = harness.config

    def strict_config():
        c = harness_config()
        return c.model_copy(update={"trust": c.trust.model_copy(update={"unverified_devices": "cross_signed_only"})})

    harness.config = strict_config
    await harness.start()

    signed = await clinician("signed")
    async with CrossSigningClient(synapse.url, signed.user_id, signed.client.device_id, signed.client.access_token,
                                  signed.password) as cs:
        result = await cs.ensure(None, olm_ed25519=signed.client.olm.account.identity_keys["ed25519"])
    assert result.status == "created"
    unsigned = await clinician("unsigned")

    room = await signed.create_room(invite=[harness.user_id, unsigned.user_id])
    await unsigned.join(room)
    await signed.wait_joined(room, harness.user_id)
    await signed.wait_joined(room, unsigned.user_id)
    sent = await signed.send_text(room, "!aide")
    reply = await signed.wait_for_message(room, sender=harness.user_id, predicate=lambda m: m.in_reply_to() == sent)
    assert reply.encrypted
    # The device nobody cross-signed received no key: it sees the bot's answer as undecryptable.
    import asyncio

    for _ in range(100):
        if [e for e in unsigned.undecryptable(room) if e.sender == harness.user_id]:
            break
        await asyncio.sleep(0.1)
    assert [e for e in unsigned.undecryptable(room) if e.sender == harness.user_id]
    assert not [m for m in unsigned.messages(room) if m.sender == harness.user_id]


async def test_an_identity_reset_elsewhere_is_reported_not_overwritten(setup, synapse):
    from bot.coordination import ensure_coordinator_room
    from bot.cross_signing_keys import CrossSigningKeys

    harness, clinician = setup
    assert await harness.identity_status() == "created"
    coord = await clinician("coord")
    room = await ensure_coordinator_room(harness.bot, invite=[coord.user_id])
    await coord.join(await coord.wait_for_invite())
    # Someone resets the bot account's cross-signing from another session.
    other = CrossSigningKeys.generate()
    async with CrossSigningClient(synapse.url, harness.user_id, harness.bot.device_id,
                                  harness.bot.client.access_token, harness.password) as cs:
        await cs.upload_cross_signing_keys(other)
    await harness.restart()
    assert await harness.identity_status() == "mismatch"
    warning = await coord.wait_for_message(room, sender=harness.user_id, predicate=lambda m: "remplacée" in m.body)
    assert "cercle identity restore" in warning.body
    query = await coord.request_json("POST", "/_matrix/client/v3/keys/query", {"device_keys": {harness.user_id: []}})
    assert only_key(query["master_keys"][harness.user_id])[1] == other.public_keys()["master"]  # not overwritten
