"""Cross-signing of the bot's devices and secret storage of its keys (SSSS), as Element expects them."""
from __future__ import annotations

import base64
import copy
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nio import AsyncClient, AsyncClientConfig, KeysUploadResponse, LoginResponse

from bot.cross_signing import CrossSigningClient
from bot.cross_signing_keys import (
    CrossSigningError,
    CrossSigningKeys,
    b64decode_unpadded,
    canonical_json,
    device_is_cross_signed,
    public_b64,
    sign_json,
    unpadded_b64,
    verify_signed_json,
)
from bot.secret_storage import (
    ALGORITHM,
    b58decode,
    b58encode,
    check_key,
    decode_recovery_key,
    decrypt_secret,
    encode_recovery_key,
    encrypt_secret,
    generate_recovery_key,
    key_description,
    restore_cross_signing_secrets,
)

# --- canonical JSON and signatures (spec appendix vectors) -----------------------------------

# Spec appendix "Signing JSON": this seed signs {} and {"one": 1, "two": "Two"} as below.
SPEC_SEED = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"
SPEC_PUBLIC = "XGX0JRS2Af3be3knz2fBiRbApjm2Dh61gXDJA8kcJNI"
SPEC_SIG_EMPTY = "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"
SPEC_SIG_ONE_TWO = "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"


def spec_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(b64decode_unpadded(SPEC_SEED))


def test_canonical_json_matches_the_spec_examples():
    assert canonical_json({}) == b"{}"
    assert canonical_json({"one": 1, "two": "Two"}) == b'{"one":1,"two":"Two"}'
    assert canonical_json({"b": "2", "a": "1"}) == b'{"a":"1","b":"2"}'
    assert canonical_json({"auth": {"success": True, "mxid": "@john.doe:example.com",
                                    "profile": {"display_name": "John Doe", "three_pids": [
                                        {"medium": "email", "address": "john.doe@example.org"}]}}}) == (
        b'{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":'
        b'[{"address":"john.doe@example.org","medium":"email"}]},"success":true}}')
    # UTF-8 as is, keys sorted by code point.
    assert canonical_json({"a": "日本語"}) == '{"a":"日本語"}'.encode()
    assert canonical_json({"本": 2, "日": 1}) == '{"日":1,"本":2}'.encode()
    assert canonical_json({"a": None}) == b'{"a":null}'


def test_sign_json_reproduces_the_spec_vectors():
    key = spec_key()
    assert public_b64(key) == SPEC_PUBLIC
    assert sign_json({}, "domain", "ed25519:1", key) == {"signatures": {"domain": {"ed25519:1": SPEC_SIG_EMPTY}}}
    signed = sign_json({"one": 1, "two": "Two"}, "domain", "ed25519:1", key)
    assert signed["signatures"]["domain"]["ed25519:1"] == SPEC_SIG_ONE_TWO
    # Existing signatures and `unsigned` do not enter the signed bytes, and are kept.
    again = sign_json({"one": 1, "two": "Two", "signatures": {"other": {"ed25519:x": "abc"}},
                       "unsigned": {"age": 3}}, "domain", "ed25519:1", key)
    assert again["signatures"] == {"other": {"ed25519:x": "abc"}, "domain": {"ed25519:1": SPEC_SIG_ONE_TWO}}
    assert again["unsigned"] == {"age": 3}


def test_verify_signed_json_detects_every_tampering():
    key = Ed25519PrivateKey.generate()
    pub = public_b64(key)
    obj = {"user_id": "@a:x", "keys": {"ed25519:D": "k"}, "algorithms": ["a", "b"], "unsigned": {"n": 1}}
    signed = sign_json(obj, "@a:x", f"ed25519:{pub}", key)
    assert "signatures" not in obj, "sign_json must not modify its argument"
    assert verify_signed_json(signed, "@a:x", f"ed25519:{pub}", pub)

    unsigned_changed = copy.deepcopy(signed)
    unsigned_changed["unsigned"] = {"device_display_name": "autre"}
    assert verify_signed_json(unsigned_changed, "@a:x", f"ed25519:{pub}", pub)

    tampered = copy.deepcopy(signed)
    tampered["keys"]["ed25519:D"] = "k2"
    assert not verify_signed_json(tampered, "@a:x", f"ed25519:{pub}", pub)
    reordered = copy.deepcopy(signed)
    reordered["algorithms"] = ["b", "a"]
    assert not verify_signed_json(reordered, "@a:x", f"ed25519:{pub}", pub)

    other = public_b64(Ed25519PrivateKey.generate())
    assert not verify_signed_json(signed, "@a:x", f"ed25519:{pub}", other), "wrong public key"
    assert not verify_signed_json(signed, "@b:x", f"ed25519:{pub}", pub), "signature under another user"
    assert not verify_signed_json(signed, "@a:x", "ed25519:AUTRE", pub), "no signature under that key id"
    garbage = copy.deepcopy(signed)
    garbage["signatures"]["@a:x"][f"ed25519:{pub}"] = "pas du base64 !"
    assert not verify_signed_json(garbage, "@a:x", f"ed25519:{pub}", pub)
    assert not verify_signed_json(signed, "@a:x", f"ed25519:{pub}", "trop-court")


def test_unpadded_base64_round_trip():
    for n in range(0, 40):
        data = bytes(range(n))
        text = unpadded_b64(data)
        assert "=" not in text
        assert b64decode_unpadded(text) == data
        assert b64decode_unpadded(base64.b64encode(data).decode()) == data  # padded accepted too
    with pytest.raises(ValueError):
        b64decode_unpadded("pas du base64 !")


def test_cross_signing_keys_secrets_ids_and_upload_body():
    keys = CrossSigningKeys.generate()
    secrets = keys.to_secret_dict()
    assert set(secrets) == {"master", "self_signing", "user_signing"}
    assert all(len(b64decode_unpadded(v)) == 32 and "=" not in v for v in secrets.values())
    again = CrossSigningKeys.from_secret_dict(secrets)
    assert again == keys and again != CrossSigningKeys.generate()
    ids = keys.public_ids()
    assert ids["master"] == f"ed25519:{public_b64(keys.master)}"
    assert len({*ids.values()}) == 3
    assert secrets["master"] not in repr(keys)

    body = keys.upload_body("@bot:x")
    assert body["master_key"] == {"user_id": "@bot:x", "usage": ["master"],
                                  "keys": {ids["master"]: public_b64(keys.master)}}
    for field, role in (("self_signing_key", "self_signing"), ("user_signing_key", "user_signing")):
        assert body[field]["usage"] == [role]
        assert verify_signed_json(body[field], "@bot:x", ids["master"], public_b64(keys.master))
    with pytest.raises(ValueError):
        CrossSigningKeys.from_secret_dict({**secrets, "master": unpadded_b64(b"court")})


# --- device_is_cross_signed on a synthetic keys/query answer -----------------------------------

def synthetic_query(user_id="@bot:x", device_id="DEV"):
    keys = CrossSigningKeys.generate()
    device_key = Ed25519PrivateKey.generate()
    body = keys.upload_body(user_id)
    device = {"user_id": user_id, "device_id": device_id,
              "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
              "keys": {f"ed25519:{device_id}": public_b64(device_key), f"curve25519:{device_id}": "c" * 43}}
    device = sign_json(device, user_id, f"ed25519:{device_id}", device_key)
    device = sign_json(device, user_id, keys.public_ids()["self_signing"], keys.self_signing)
    device["unsigned"] = {"device_display_name": "Cercle"}
    query = {"device_keys": {user_id: {device_id: device}},
             "master_keys": {user_id: body["master_key"]},
             "self_signing_keys": {user_id: body["self_signing_key"]}}
    return query, keys


def resign_with(query, user_id, device_id, key_id, wrong_key):
    """The device signature under `key_id` replaced by one from `wrong_key` (same key id)."""
    forged = copy.deepcopy(query)
    device = forged["device_keys"][user_id][device_id]
    del device["signatures"][user_id][key_id]
    forged["device_keys"][user_id][device_id] = sign_json(device, user_id, key_id, wrong_key)
    return forged


def test_device_is_cross_signed_checks_real_signatures():
    query, keys = synthetic_query()
    assert device_is_cross_signed(query, "@bot:x", "DEV")
    assert not device_is_cross_signed(query, "@bot:x", "AUTRE")
    assert not device_is_cross_signed(query, "@autre:x", "DEV")

    ssk_id = keys.public_ids()["self_signing"]
    assert not device_is_cross_signed(resign_with(query, "@bot:x", "DEV", ssk_id, Ed25519PrivateKey.generate()),
                                      "@bot:x", "DEV"), "signature present under the right key id, wrong key"

    no_sig = copy.deepcopy(query)
    del no_sig["device_keys"]["@bot:x"]["DEV"]["signatures"]["@bot:x"][ssk_id]
    assert not device_is_cross_signed(no_sig, "@bot:x", "DEV")

    tampered = copy.deepcopy(query)
    tampered["device_keys"]["@bot:x"]["DEV"]["keys"]["curve25519:DEV"] = "d" * 43
    assert not device_is_cross_signed(tampered, "@bot:x", "DEV")

    # The self-signing key must be signed by the master key: a forged one signing the device is rejected.
    forged_ssk = Ed25519PrivateKey.generate()
    forged = copy.deepcopy(query)
    forged_id = f"ed25519:{public_b64(forged_ssk)}"
    forged["self_signing_keys"]["@bot:x"] = {"user_id": "@bot:x", "usage": ["self_signing"],
                                             "keys": {forged_id: public_b64(forged_ssk)},
                                             "signatures": {"@bot:x": {keys.public_ids()["master"]: "A" * 86}}}
    forged = resign_with(forged, "@bot:x", "DEV", ssk_id, forged_ssk)
    forged["device_keys"]["@bot:x"]["DEV"]["signatures"]["@bot:x"][forged_id] = \
        forged["device_keys"]["@bot:x"]["DEV"]["signatures"]["@bot:x"].pop(ssk_id)
    assert not device_is_cross_signed(forged, "@bot:x", "DEV")

    no_master = copy.deepcopy(query)
    del no_master["master_keys"]
    assert not device_is_cross_signed(no_master, "@bot:x", "DEV")


# --- recovery key and secret encryption (vectors from matrix-rust-sdk / matrix-js-sdk tests) ---

# matrix-rust-sdk crates/matrix-sdk-crypto/src/secret_storage.rs, test `base58_parsing`.
RUST_KEY_TEXT = "EsTpRvZTnjck8YrhRAtwXLS84Nr2r9S9LGAWDaExVAPBvLRK"
RUST_KEY_BYTES = bytes([159, 189, 70, 187, 52, 81, 113, 198, 246, 2, 44, 154, 37, 213, 104, 27, 165, 78, 236,
                        106, 108, 73, 83, 243, 173, 192, 185, 110, 157, 145, 173, 163])
# Same file, test `from_account_data_and_base58`: a key description written by another client.
RUST_CHECK_KEY = "EsTj 3yST y93F SLpB jJsz eAXc 2XzA ygD3 w69H fGaN TKBj jXEd"
RUST_CHECK_DESCRIPTION = {"algorithm": ALGORITHM, "iv": "xv5b6/p3ExEw++wTyfSHEg==",
                          "mac": "ujBBbXahnTAMkmPUX2/0+VTfUh63pGyVRuBcDMgmJC8="}


def test_base58_bitcoin_alphabet():
    # Bitcoin's own examples: leading zero bytes become "1".
    assert b58encode(b"") == "" and b58decode("") == b""
    assert b58encode(b"\x00\x00\x01") == "112"
    assert b58encode(b"Hello World!") == "2NEpo7TZRRrLZSi2U"
    assert b58decode("2NEpo7TZRRrLZSi2U") == b"Hello World!"
    assert b58decode("112") == b"\x00\x00\x01"


def test_recovery_key_decodes_the_reference_vector_and_round_trips():
    assert decode_recovery_key("EsT           pRvZTnjck8    YrhRAtw XLS84Nr2r9S9LGAWDaExVAPBvLRK   ") == RUST_KEY_BYTES
    assert encode_recovery_key(RUST_KEY_BYTES) == "EsTp RvZT njck 8Yrh RAtw XLS8 4Nr2 r9S9 LGAW DaEx VAPB vLRK"
    # matrix-js-sdk recovery-key.spec.ts mutates "EsSz" in the encoding of bytes 0..31.
    assert "EsSz" in encode_recovery_key(bytes(range(32)))
    for _ in range(50):
        key, text = generate_recovery_key()
        assert len(key) == 32
        assert all(len(group) == 4 for group in text.split(" ")[:-1])
        assert decode_recovery_key(text) == key
        assert decode_recovery_key(text.replace(" ", "")) == key
        assert decode_recovery_key("\n" + text.replace(" ", "\t") + " ") == key


@pytest.mark.parametrize("text, message", [
    ("EsTpRvZTnjck8YrhRAtwXLS84Nr2r9S9LGAWDaExVAPBvLRk", "parité"),   # last char typo
    (encode_recovery_key(bytes(range(32))).replace("EsSz", "EsSZ"), "parité"),
    # Parity is checked before the prefix, as Element does (a typo near the start garbles the prefix).
    ("AATpRvZTnjck8YrhRAtwXLS84Nr2r9S9LGAWDaExVAPBvLRk", "parité"),
    (b58encode(b"\x8c\x01" + bytes(32) + bytes([0x8c ^ 0x01])), "préfixe"),  # right parity, wrong prefix
    ("AATpRvZTnjck8YrhRAtwXLS84Nr2r9S9", "longueur"),
    ("AATpRvZTnjck8YrhRAtwXLS84Nr0OIl", "base58"),
    ("   ", "vide"),
])
def test_bad_recovery_keys_are_refused_in_french(text, message):
    with pytest.raises(ValueError, match=message):
        decode_recovery_key(text)


def test_key_check_matches_a_description_written_by_another_client():
    key = decode_recovery_key(RUST_CHECK_KEY)
    assert check_key(key, RUST_CHECK_DESCRIPTION)
    assert not check_key(RUST_KEY_BYTES, RUST_CHECK_DESCRIPTION)
    assert not check_key(key, {**RUST_CHECK_DESCRIPTION, "algorithm": "m.secret_storage.custom"})
    own = key_description(key)
    assert own["algorithm"] == ALGORITHM and check_key(key, own) and not check_key(RUST_KEY_BYTES, own)
    # Deterministic with a given IV: our check MAC for the reference IV is the reference MAC.
    assert key_description(key, iv=base64.b64decode(RUST_CHECK_DESCRIPTION["iv"])) == RUST_CHECK_DESCRIPTION


def test_secret_encryption_round_trip_and_tampering():
    key, _ = generate_recovery_key()
    plaintext = unpadded_b64(bytes(range(32))).encode()
    payload = encrypt_secret(key, "m.cross_signing.master", plaintext)
    assert set(payload) == {"iv", "ciphertext", "mac"}
    assert len(base64.b64decode(payload["iv"])) == 16 and len(base64.b64decode(payload["mac"])) == 32
    assert decrypt_secret(key, "m.cross_signing.master", payload) == plaintext
    # Unpadded base64 (as some clients write it) reads the same.
    unpadded = {k: v.rstrip("=") for k, v in payload.items()}
    assert decrypt_secret(key, "m.cross_signing.master", unpadded) == plaintext

    with pytest.raises(ValueError, match="authentification"):
        decrypt_secret(key, "m.cross_signing.self_signing", payload)  # the name is bound in by HKDF
    with pytest.raises(ValueError, match="authentification"):
        decrypt_secret(generate_recovery_key()[0], "m.cross_signing.master", payload)
    ciphertext = bytearray(base64.b64decode(payload["ciphertext"]))
    ciphertext[0] ^= 1
    with pytest.raises(ValueError, match="authentification"):
        decrypt_secret(key, "m.cross_signing.master", {**payload, "ciphertext": base64.b64encode(ciphertext).decode()})

    # Bit 63 of the IV is always cleared, even when the caller's IV has it set.
    for _ in range(20):
        assert base64.b64decode(encrypt_secret(key, "x", b"y")["iv"])[8] & 0x80 == 0
    fixed = encrypt_secret(key, "x", b"secret", iv=b"\xff" * 16)
    assert base64.b64decode(fixed["iv"]) == b"\xff" * 8 + b"\x7f" + b"\xff" * 7
    assert fixed == encrypt_secret(key, "x", b"secret", iv=b"\xff" * 16)


# --- against the real Synapse ----------------------------------------------------------------

async def e2e_login(homeserver: str, user_id: str, password: str, store: Path) -> AsyncClient:
    """A nio client with encryption whose device keys are published (what the bot has at start)."""
    store.mkdir(parents=True, exist_ok=True)
    client = AsyncClient(homeserver, user_id, store_path=str(store),
                         config=AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True))
    response = await client.login(password, device_name="Cercle (test)")
    assert isinstance(response, LoginResponse), response
    uploaded = await client.keys_upload()
    assert isinstance(uploaded, KeysUploadResponse), uploaded
    return client


async def plain_query(homeserver: str, user_id: str, password: str, target: str) -> dict:
    """keys/query for `target` as another user would do it (no crypto library involved)."""
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{homeserver}/_matrix/client/v3/login", json={
                "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user_id},
                "password": password}) as r:
            assert r.status == 200, await r.text()
            token = (await r.json())["access_token"]
        async with http.post(f"{homeserver}/_matrix/client/v3/keys/query",
                             json={"device_keys": {target: []}},
                             headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 200, await r.text()
            return await r.json()


def cs_client(homeserver: str, client: AsyncClient, password: str | None) -> CrossSigningClient:
    return CrossSigningClient(homeserver, client.user_id, client.device_id, client.access_token, password)


def server_master(query: dict, user_id: str) -> dict:
    return query["master_keys"][user_id]


@pytest.mark.synapse
async def test_ensure_creates_then_reuses_and_never_overwrites(synapse, register, tmp_path, monkeypatch):
    bot_user, bot_password = register("csbot")
    observer, observer_password = register("csobs")
    nio_bot = await e2e_login(synapse.url, bot_user, bot_password, tmp_path / "bot")
    cs = cs_client(synapse.url, nio_bot, bot_password)
    nio_bot2 = None
    try:
        olm_key = nio_bot.olm.account.identity_keys["ed25519"]
        with pytest.raises(CrossSigningError, match="olm"):
            await cs.ensure(None, olm_ed25519="A" * 43)  # refuses before writing anything
        assert not (await cs.query_own_keys()).get("master_keys")

        created = await cs.ensure(None, olm_ed25519=olm_key)
        assert created.status == "created", created.detail
        assert created.keys is not None and created.recovery_key
        assert len(decode_recovery_key(created.recovery_key)) == 32

        # Another user, verifying the signatures itself, sees the bot's device cross-signed.
        seen = await plain_query(synapse.url, observer, observer_password, bot_user)
        assert device_is_cross_signed(seen, bot_user, nio_bot.device_id)
        master_before = server_master(seen, bot_user)
        assert set(master_before["keys"].values()) == {public_b64(created.keys.master)}
        assert "user_signing_keys" not in seen or bot_user not in seen["user_signing_keys"]
        own = await cs.query_own_keys()
        assert set(own["user_signing_keys"][bot_user]["keys"]) == {created.keys.public_ids()["user_signing"]}

        # Restart with the stored keys: nothing is uploaded again.
        async def no_upload(keys):
            raise AssertionError("ensure must not upload keys when the server already has ours")
        monkeypatch.setattr(cs, "upload_cross_signing_keys", no_upload)
        reused = await cs.ensure(created.keys, olm_ed25519=olm_key)
        assert (reused.status, reused.recovery_key) == ("reused", None), reused.detail
        assert reused.keys == created.keys
        seen = await plain_query(synapse.url, observer, observer_password, bot_user)
        assert server_master(seen, bot_user) == master_before
        assert device_is_cross_signed(seen, bot_user, nio_bot.device_id)

        # Keys that are not the server's: reported, server untouched.
        mismatch = await cs.ensure(CrossSigningKeys.generate(), olm_ed25519=olm_key)
        assert mismatch.status == "mismatch" and mismatch.recovery_key is None
        assert "restore" in mismatch.detail
        lost = await cs.ensure(None, olm_ed25519=olm_key)
        assert lost.status == "mismatch" and lost.keys is None and "identity restore" in lost.detail
        seen = await plain_query(synapse.url, observer, observer_password, bot_user)
        assert server_master(seen, bot_user) == master_before
        assert device_is_cross_signed(seen, bot_user, nio_bot.device_id)

        # The recovery key gives the private keys back from account data.
        restored = await restore_cross_signing_secrets(cs, created.recovery_key)
        assert restored == created.keys
        assert await restore_cross_signing_secrets(cs, created.recovery_key.replace(" ", "")) == created.keys
        with pytest.raises(ValueError, match="n'ouvre pas"):
            await restore_cross_signing_secrets(cs, generate_recovery_key()[1])
        default = await cs.get_account_data("m.secret_storage.default_key")
        description = await cs.get_account_data(f"m.secret_storage.key.{default['key']}")
        assert description["algorithm"] == ALGORITHM and {"iv", "mac"} <= set(description)
        stored_master = await cs.get_account_data("m.cross_signing.master")
        assert set(stored_master["encrypted"]) == {default["key"]}
        assert created.keys.to_secret_dict()["master"] not in str(stored_master)

        # A second device of the bot: not cross-signed until ensure() signs it with the restored keys.
        nio_bot2 = await e2e_login(synapse.url, bot_user, bot_password, tmp_path / "bot2")
        cs2 = cs_client(synapse.url, nio_bot2, bot_password)
        seen = await plain_query(synapse.url, observer, observer_password, bot_user)
        assert not device_is_cross_signed(seen, bot_user, nio_bot2.device_id)
        assert device_is_cross_signed(seen, bot_user, nio_bot.device_id)
        # A signature by a key that is not the self-signing key: forged locally, refused by the server.
        ssk_id = created.keys.public_ids()["self_signing"]
        forged = resign_with(seen, bot_user, nio_bot.device_id, ssk_id, Ed25519PrivateKey.generate())
        assert not device_is_cross_signed(forged, bot_user, nio_bot.device_id)
        with pytest.raises(CrossSigningError):
            await cs2.sign_device(CrossSigningKeys.generate())
        seen = await plain_query(synapse.url, observer, observer_password, bot_user)
        assert not device_is_cross_signed(seen, bot_user, nio_bot2.device_id)

        second = await cs2.ensure(restored, olm_ed25519=nio_bot2.olm.account.identity_keys["ed25519"])
        assert second.status == "reused", second.detail
        seen = await plain_query(synapse.url, observer, observer_password, bot_user)
        assert device_is_cross_signed(seen, bot_user, nio_bot2.device_id)
        assert server_master(seen, bot_user) == master_before
        await cs2.close()
    finally:
        await cs.close()
        await nio_bot.close()
        if nio_bot2 is not None:
            await nio_bot2.close()


@pytest.mark.synapse
async def test_replacing_keys_needs_the_password_and_then_reads_as_mismatch(synapse, register, tmp_path):
    bot_user, bot_password = register("csreset")
    nio_bot = await e2e_login(synapse.url, bot_user, bot_password, tmp_path / "bot")
    olm_key = nio_bot.olm.account.identity_keys["ed25519"]
    try:
        async with cs_client(synapse.url, nio_bot, bot_password) as cs:
            created = await cs.ensure(None, olm_ed25519=olm_key)
            assert created.status == "created"

        replacement = CrossSigningKeys.generate()
        async with cs_client(synapse.url, nio_bot, None) as no_password:
            with pytest.raises(CrossSigningError, match="mot de passe"):
                await no_password.upload_cross_signing_keys(replacement)
        async with cs_client(synapse.url, nio_bot, "mauvais") as wrong_password:
            with pytest.raises(CrossSigningError, match="mot de passe refusé"):
                await wrong_password.upload_cross_signing_keys(replacement)

        # "Reset elsewhere": the identity is replaced (through password UIA) behind the bot's back.
        async with cs_client(synapse.url, nio_bot, bot_password) as cs:
            await cs.upload_cross_signing_keys(replacement)
            query = await cs.query_own_keys()
            assert set(server_master(query, bot_user)["keys"]) == {replacement.public_ids()["master"]}
            assert not device_is_cross_signed(query, bot_user, nio_bot.device_id)

            result = await cs.ensure(created.keys, olm_ed25519=olm_key)
            assert result.status == "mismatch", result.detail
            query = await cs.query_own_keys()
            assert set(server_master(query, bot_user)["keys"]) == {replacement.public_ids()["master"]}
    finally:
        await nio_bot.close()
