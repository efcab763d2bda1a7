"""Sealing event payloads with users' keys, and crypto-shredding, on a small fake collection."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pymongo.errors import BulkWriteError

from shared.contract.envelope import CloudEvent
from shared.contract.topics import ENTITLEMENTS, TRANSACTIONS_RAW
from shared.settings import DEV_TOKEN_KEY
from shared.vault import (
    EventSealer,
    KeyDoesNotUnwrap,
    KeyVault,
    KeyWrapping,
    NotOpened,
    SealError,
    Shredded,
    is_sealed,
    open_data,
    open_envelope,
    seal_data,
)

Doc = dict[str, Any]


class FakeKeys:
    """The few calls KeyVault makes on its collection, in memory."""

    def __init__(self) -> None:
        self.docs: dict[str, Doc] = {}
        self.reads = 0

    async def find_one(self, query: Doc) -> Doc | None:
        self.reads += 1
        doc = self.docs.get(query["_id"])
        return dict(doc) if doc is not None else None

    async def insert_many(self, docs: list[Doc], ordered: bool = True) -> None:
        errors = []
        for doc in docs:
            if doc["_id"] in self.docs:
                errors.append({"code": 11000, "index": docs.index(doc), "keyValue": {"_id": doc["_id"]}})
            else:
                self.docs[doc["_id"]] = dict(doc)
        if errors:
            raise BulkWriteError({"writeErrors": errors})

    async def replace_one(self, query: Doc, doc: Doc, upsert: bool = False) -> None:
        self.docs[query["_id"]] = dict(doc)


def event(user: str, memo: str = "CB CARREFOUR 12/11", name: str = "transaction.observed") -> CloudEvent:
    return CloudEvent.new(
        service="connector",
        name=name,
        data={"user_id": user, "transaction": {"original_wording": memo, "value": "-42.50"}},
        user_id=user,
        correlation_id="run-1",
    )


def vault() -> tuple[KeyVault, FakeKeys]:
    keys = FakeKeys()
    return KeyVault(keys, DEV_TOKEN_KEY), keys  # type: ignore[arg-type]


async def test_a_sealed_record_hides_the_data_and_opens_with_the_users_key():
    keys_vault, _ = vault()
    sealer = EventSealer(keys_vault, "test")
    original = event("alice")
    [value] = await sealer.encode_many(TRANSACTIONS_RAW, [original])
    assert value is not None
    assert b"CARREFOUR" not in value
    assert b"42.50" not in value
    envelope = json.loads(value)
    assert is_sealed(envelope)
    assert (envelope["id"], envelope["userid"], envelope["type"]) == (original.id, "alice", original.type)
    [opened] = await sealer.open_many(TRANSACTIONS_RAW, [value])
    assert opened == original


async def test_topics_without_bank_data_stay_in_clear():
    sealer = EventSealer(vault()[0], "test")
    [value] = await sealer.encode_many(ENTITLEMENTS, [event("alice", name="entitlement.changed")])
    assert value is not None
    assert not is_sealed(json.loads(value))


async def test_two_services_racing_for_a_new_user_get_one_key():
    first, keys = vault()
    second = KeyVault(keys, DEV_TOKEN_KEY)  # type: ignore[arg-type]
    a = await first.for_writing(["bob"])
    b = await second.for_writing(["bob"])
    assert a["bob"].key_id == b["bob"].key_id
    # the loser of a real race: its insert fails on the user id, it reads the winner's key back
    keys.docs.clear()
    winner = KeyWrapping(DEV_TOKEN_KEY).new_key("carol")
    racing = KeyVault(keys, DEV_TOKEN_KEY)  # type: ignore[arg-type]
    original_insert = keys.insert_many

    async def insert_after_the_winner(docs: list[Doc], ordered: bool = True) -> None:
        keys.docs["carol"] = winner[1]
        await original_insert(docs, ordered)

    keys.insert_many = insert_after_the_winner  # type: ignore[method-assign]
    assert (await racing.for_writing(["carol"]))["carol"].key_id == winner[0].key_id


async def test_keys_are_cached_and_read_once_per_user():
    keys_vault, keys = vault()
    await keys_vault.for_writing(["dan", "eve"])
    before = keys.reads
    sealer = EventSealer(keys_vault, "test")
    values = await sealer.encode_many(TRANSACTIONS_RAW, [event("dan"), event("eve"), event("dan")])
    await sealer.open_many(TRANSACTIONS_RAW, values)
    assert keys.reads == before


async def test_an_erased_user_is_shredded_and_never_gets_a_new_key():
    keys_vault, keys = vault()
    sealer = EventSealer(keys_vault, "test")
    values = await sealer.encode_many(TRANSACTIONS_RAW, [event("frank"), event("grace")])
    await keys_vault.destroy("frank")
    assert "wrapped" not in keys.docs["frank"]
    reader = EventSealer(KeyVault(keys, DEV_TOKEN_KEY), "test")  # type: ignore[arg-type]
    frank, grace = await reader.open_many(TRANSACTIONS_RAW, values)
    assert isinstance(frank, Shredded)
    assert frank.user_id == "frank"
    assert isinstance(grace, CloudEvent)
    # nothing more is written for them: their events are dropped, no key is made again
    assert await reader.encode_many(TRANSACTIONS_RAW, [event("frank")]) == [None]
    assert "wrapped" not in keys.docs["frank"]


async def test_a_key_destroyed_by_another_replica_stops_working_here_after_the_cache_ttl():
    keys = FakeKeys()
    now = [1000.0]
    here = KeyVault(keys, DEV_TOKEN_KEY, clock=lambda: now[0])  # type: ignore[arg-type]
    elsewhere = KeyVault(keys, DEV_TOKEN_KEY)  # type: ignore[arg-type]
    sealer = EventSealer(here, "test")
    [value] = await sealer.encode_many(TRANSACTIONS_RAW, [event("heidi")])
    await elsewhere.destroy("heidi")  # the erasure is handled by the other replica
    now[0] += KeyVault.CACHE_TTL_S / 2
    assert isinstance((await sealer.open_many(TRANSACTIONS_RAW, [value]))[0], CloudEvent), "still cached"
    now[0] += KeyVault.CACHE_TTL_S
    [opened] = await sealer.open_many(TRANSACTIONS_RAW, [value])
    assert isinstance(opened, Shredded)
    assert await sealer.encode_many(TRANSACTIONS_RAW, [event("heidi")]) == [None]


async def test_a_tampered_or_moved_payload_is_a_bad_record_not_a_shredded_one():
    keys_vault, _ = vault()
    key = (await keys_vault.for_writing(["henri"]))["henri"]
    token = seal_data(key, "event-1", {"memo": "VIR SEPA LOYER"})
    assert open_data(key, "event-1", token) == {"memo": "VIR SEPA LOYER"}
    with pytest.raises(SealError):
        open_data(key, "event-2", token)  # the same payload put in another event
    protected, empty, nonce, ciphertext, tag = token.split(".")
    flipped = ciphertext[:-2] + ("A" if ciphertext[-2] != "A" else "B") + ciphertext[-1]
    with pytest.raises(SealError):
        open_data(key, "event-1", ".".join((protected, empty, nonce, flipped, tag)))
    envelope = {**json.loads(event("henri").to_json_bytes()), "datacontenttype": "application/jose"}
    envelope["data"] = "not-a-jwe"
    with pytest.raises(SealError):
        open_envelope(envelope, key)


async def test_bad_records_come_back_as_errors_for_the_dlq():
    sealer = EventSealer(vault()[0], "test")
    results = await sealer.open_many(TRANSACTIONS_RAW, [b"not json", None, b"[1]"])
    assert all(isinstance(r, ValueError) for r in results)


def test_a_wrapped_key_opens_only_for_its_user():
    wrapping = KeyWrapping(DEV_TOKEN_KEY)
    key, doc = wrapping.new_key("ines")
    unwrapped = wrapping.unwrap(doc)
    assert unwrapped is not None
    assert unwrapped.key_id == key.key_id
    with pytest.raises(KeyDoesNotUnwrap, match="BANKSYNC_TOKEN_KEY"):
        wrapping.unwrap({**doc, "_id": "someone-else"})
    assert wrapping.unwrap({"_id": "ines", "erased_at": "x"}) is None


async def test_a_reader_leaves_closed_the_sealed_records_of_types_it_does_not_handle():
    keys_vault, keys = vault()
    sealer = EventSealer(keys_vault, "test")
    values = await sealer.encode_many(
        TRANSACTIONS_RAW, [event("jules"), event("jules", name="account.synced")]
    )
    reader = EventSealer(KeyVault(keys, DEV_TOKEN_KEY), "test")  # type: ignore[arg-type]
    reads_before = keys.reads
    line, other = await reader.open_many(TRANSACTIONS_RAW, values, {event("x").type})
    assert isinstance(line, CloudEvent)
    assert isinstance(other, NotOpened)
    assert other.type.endswith("account.synced.v1")
    assert keys.reads == reads_before + 1  # one key read, for the record it opened
    assert await reader.open_many(TRANSACTIONS_RAW, values[1:], {event("x").type}) == [other]
    assert keys.reads == reads_before + 1  # a batch of records it does not handle reads no key
