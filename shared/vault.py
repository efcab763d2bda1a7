"""Per-user data keys, and the sealing of event payloads with them (crypto-shredding).

The event log keeps bank lines for 400 days, so deleting a user's documents does not erase them. Every
payload that carries a user's bank data is therefore encrypted with a key of that user; erasing the
user destroys the key, and the records stay in Kafka unreadable.

- Keys: one random AES-256 key per user, stored wrapped (AES-256-GCM under a key derived from
  `BANKSYNC_TOKEN_KEY`) in the MongoDB collection `user_keys` of the vault database, which every service
  reaches. A key is created by whichever service first publishes for that user: the insert is keyed by
  the user id, so two services racing get one key (the loser reads the winner's). Erasing replaces the
  document by a tombstone, which also stops anyone from creating a new key for that user.
- Sealing: the CloudEvent keeps its attributes in clear (`id`, `type`, `subject`, `userid`, `time`, ...)
  and its `data` becomes a JWE compact serialisation (RFC 7516: `alg` `dir`, `enc` `A256GCM`, `kid` the
  user's key id, and the event id in the protected header, which is the associated data: a payload
  copied into another event does not open), with `datacontenttype` `application/jose`.
- Opening: a record whose key is gone (erased) is `Shredded`: counted and skipped by consumers, replays
  and ops tools, never a DLQ entry or a crash.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError

from shared.contract.envelope import CloudEvent
from shared.contract.topics import SEALED_TOPICS
from shared.jsonutil import dumps_canonical
from shared.metrics import SHREDDED_RECORDS
from shared.mongo import DUPLICATE_KEY, find_by_ids

Doc = dict[str, Any]
SEALED_CONTENT_TYPE = "application/jose"
VAULT_COLLECTION = "user_keys"


class KeyDoesNotUnwrap(Exception):
    """A stored user key does not open with this process's BANKSYNC_TOKEN_KEY: a configuration error
    (every service must share one key), never a bad record."""


@dataclass(frozen=True)
class UserKey:
    user_id: str
    key_id: str
    aead: AESGCM


@dataclass(frozen=True)
class NotOpened:
    """A sealed record of a type its reader does not handle: left closed (no key read, nothing decrypted)."""

    type: str


@dataclass(frozen=True)
class Shredded:
    """A sealed record whose user's key is gone (the user was erased)."""

    user_id: str
    event_id: str


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class KeyVault:
    """The users' data keys, with a bounded cache.

    Keys never change, but an erasure destroys one, and only the replica that handles the erasure is told
    (`forget`): every other replica reads its cached keys again after `CACHE_TTL_S`, so a key destroyed
    elsewhere stops opening and sealing records here within that time (see shared.erasure's second sweep).
    """

    CACHED_KEYS = 100_000
    CACHE_TTL_S = 30.0

    def __init__(
        self,
        collection: AsyncCollection[Doc],
        token_key_b64: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.coll = collection
        self.wrapping = KeyWrapping(token_key_b64)
        self.clock = clock
        self._cache: OrderedDict[str, tuple[UserKey, float]] = OrderedDict()

    # -- reading and creating

    async def for_reading(self, user_ids: Iterable[str]) -> dict[str, UserKey]:
        """The keys of these users that exist (one query for those not cached); erased users are absent."""
        found, missing = self._cached(user_ids)
        if missing:
            for doc in (await find_by_ids(self.coll, sorted(missing))).values():
                key = self.wrapping.unwrap(doc)
                if key is not None:
                    found[key.user_id] = self._remember(key)
        return found

    async def for_writing(self, user_ids: Iterable[str]) -> dict[str, UserKey]:
        """The keys of these users, created where missing (one read, one write); erased users are absent."""
        found, missing = self._cached(user_ids)
        if not missing:
            return found
        # a stored document is a key, or the tombstone of an erased user (no key is ever made for them)
        stored = await find_by_ids(self.coll, sorted(missing))
        for doc in stored.values():
            key = self.wrapping.unwrap(doc)
            if key is not None:
                found[key.user_id] = self._remember(key)
        new = [self.wrapping.new_key(user) for user in sorted(missing - set(stored))]
        if not new:
            return found
        raced: list[str] = []
        try:
            await self.coll.insert_many([doc for _, doc in new], ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(error.get("code") != DUPLICATE_KEY for error in errors):
                raise
            # another service created these users' keys first: theirs are the keys
            raced = [new[error["index"]][0].user_id for error in errors]
        for key, _ in new:
            if key.user_id not in raced:
                found[key.user_id] = self._remember(key)
        for doc in (await find_by_ids(self.coll, raced)).values():
            key = self.wrapping.unwrap(doc)
            if key is not None:
                found[key.user_id] = self._remember(key)
        return found

    async def destroy(self, user_id: str) -> None:
        """Crypto-shredding: the key becomes a tombstone; the user's sealed records never open again."""
        self.forget(user_id)
        await self.coll.replace_one(
            {"_id": user_id}, {"_id": user_id, "erased_at": datetime.now(UTC)}, upsert=True
        )

    def forget(self, user_id: str) -> None:
        self._cache.pop(user_id, None)

    # -- internals

    def _cached(self, user_ids: Iterable[str]) -> tuple[dict[str, UserKey], set[str]]:
        found: dict[str, UserKey] = {}
        missing: set[str] = set()
        fresh_since = self.clock() - self.CACHE_TTL_S
        for user in user_ids:
            cached = self._cache.get(user)
            if cached is None or cached[1] < fresh_since:
                missing.add(user)
            else:
                self._cache.move_to_end(user)
                found[user] = cached[0]
        return found, missing

    def _remember(self, key: UserKey) -> UserKey:
        self._cache[key.user_id] = (key, self.clock())
        self._cache.move_to_end(key.user_id)
        while len(self._cache) > self.CACHED_KEYS:
            self._cache.popitem(last=False)
        return key


class KeyWrapping:
    """Users' data keys wrapped (AES-256-GCM, bound to the user and key id) under `BANKSYNC_TOKEN_KEY`."""

    def __init__(self, token_key_b64: str) -> None:
        try:
            raw = _unb64(token_key_b64)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("BANKSYNC_TOKEN_KEY must be url-safe base64") from exc
        if len(raw) < 32:
            raise ValueError("BANKSYNC_TOKEN_KEY must hold at least 32 bytes")
        self._wrap = AESGCM(hashlib.sha256(b"banksync-user-key-wrap" + raw).digest())

    def new_key(self, user_id: str) -> tuple[UserKey, Doc]:
        """A fresh key for the user, and the document that stores it wrapped."""
        raw, key_id, nonce = AESGCM.generate_key(256), os.urandom(8).hex(), os.urandom(12)
        wrapped = self._wrap.encrypt(nonce, raw, self._aad(user_id, key_id))
        doc = {
            "_id": user_id,
            "kid": key_id,
            "wrapped": _b64(nonce + wrapped),
            "created_at": datetime.now(UTC),
        }
        return UserKey(user_id, key_id, AESGCM(raw)), doc

    def unwrap(self, doc: Doc) -> UserKey | None:
        """The key a stored document holds; None for a tombstone (the user was erased)."""
        if "wrapped" not in doc:
            return None
        user_id, key_id = str(doc["_id"]), str(doc["kid"])
        blob = _unb64(doc["wrapped"])
        try:
            raw = self._wrap.decrypt(blob[:12], blob[12:], self._aad(user_id, key_id))
        except InvalidTag:
            raise KeyDoesNotUnwrap(
                f"the data key of {user_id} does not open with this BANKSYNC_TOKEN_KEY: "
                "every service must run with the same one"
            ) from None
        return UserKey(user_id, key_id, AESGCM(raw))

    @staticmethod
    def _aad(user_id: str, key_id: str) -> bytes:
        return f"banksync-user-key\x1f{user_id}\x1f{key_id}".encode()


# ---- sealing event payloads -----------------------------------------------------------------------------


def seal_data(key: UserKey, event_id: str, data: dict[str, Any]) -> str:
    """`data` as a JWE compact serialisation (dir, A256GCM), bound to the event id."""
    header = {"alg": "dir", "enc": "A256GCM", "kid": key.key_id, "cty": "json", "ceid": event_id}
    protected = _b64(json.dumps(header, separators=(",", ":")).encode())
    nonce = os.urandom(12)
    sealed = key.aead.encrypt(nonce, dumps_canonical(data), protected.encode())
    return f"{protected}..{_b64(nonce)}.{_b64(sealed[:-16])}.{_b64(sealed[-16:])}"


class SealError(ValueError):
    """A sealed payload that is malformed or does not authenticate (a bad record, for the DLQ)."""


def jwe_header(token: str) -> dict[str, Any]:
    try:
        header = json.loads(_unb64(token.split(".", 1)[0]))
    except (ValueError, binascii.Error) as exc:
        raise SealError("sealed data: unreadable JWE header") from exc
    if not isinstance(header, dict):
        raise SealError("sealed data: unreadable JWE header")
    return header


def open_data(key: UserKey, event_id: str, token: str) -> dict[str, Any]:
    parts = token.split(".")
    if len(parts) != 5 or parts[1]:
        raise SealError("sealed data: not a JWE compact serialisation with direct encryption")
    header = jwe_header(token)
    if header.get("ceid") != event_id:
        raise SealError("sealed data: sealed for another event")
    try:
        nonce, ciphertext, tag = (_unb64(p) for p in parts[2:])
        plain = key.aead.decrypt(nonce, ciphertext + tag, parts[0].encode())
        data = json.loads(plain)
    except (InvalidTag, ValueError, binascii.Error) as exc:
        raise SealError("sealed data: does not authenticate") from exc
    if not isinstance(data, dict):
        raise SealError("sealed data: not a JSON object")
    return data


def is_sealed(envelope: dict[str, Any]) -> bool:
    return envelope.get("datacontenttype") == SEALED_CONTENT_TYPE


class EventSealer:
    """Turns events into record values (sealed on the topics that carry bank data) and back."""

    def __init__(self, vault: KeyVault, service: str = "", topics: frozenset[str] = SEALED_TOPICS) -> None:
        self.vault = vault
        self.service = service
        self.topics = topics

    async def encode_many(self, topic: str, events: Sequence[CloudEvent]) -> list[bytes | None]:
        """Each event's record value; None for an event of an erased user (it must not be written)."""
        if topic not in self.topics:
            return [event.to_json_bytes() for event in events]
        keys = await self.vault.for_writing({e.userid for e in events if e.userid})
        values: list[bytes | None] = []
        for event in events:
            if not event.userid:
                values.append(event.to_json_bytes())
                continue
            key = keys.get(event.userid)
            if key is None:
                SHREDDED_RECORDS.labels(self.service, topic, "not_written").inc()
                values.append(None)
                continue
            envelope = event.model_dump(mode="json", exclude_none=True)
            envelope["data"] = seal_data(key, event.id, event.data)
            envelope["datacontenttype"] = SEALED_CONTENT_TYPE
            values.append(json.dumps(envelope, separators=(",", ":")).encode())
        return values

    async def open_many(
        self, topic: str, values: Sequence[bytes | None], types: Collection[str] | None = None
    ) -> list[CloudEvent | Shredded | NotOpened | Exception]:
        """Each record value as its event (opened), `Shredded` when its key is gone, or the reason it is
        not a valid record (for the DLQ). With `types` (CloudEvents `type`s), a sealed record of another
        type is `NotOpened`: its key is not looked up and nothing is decrypted."""
        envelopes: list[dict[str, Any] | Exception] = []
        for value in values:
            try:
                if value is None:
                    raise ValueError("empty record value")
                parsed = json.loads(value)
                if not isinstance(parsed, dict):
                    raise ValueError("not a JSON object")
                envelopes.append(parsed)
            except ValueError as exc:
                envelopes.append(exc)

        def unwanted(envelope: dict[str, Any]) -> bool:
            kind = envelope.get("type")
            return types is not None and is_sealed(envelope) and isinstance(kind, str) and kind not in types

        sealed_users = {
            str(e.get("userid"))
            for e in envelopes
            if isinstance(e, dict) and is_sealed(e) and e.get("userid") and not unwanted(e)
        }
        keys = await self.vault.for_reading(sealed_users) if sealed_users else {}
        opened: list[CloudEvent | Shredded | NotOpened | Exception] = []
        for envelope in envelopes:
            if isinstance(envelope, Exception):
                opened.append(envelope)
                continue
            if unwanted(envelope):
                opened.append(NotOpened(str(envelope["type"])))
                continue
            try:
                opened.append(self._open(topic, envelope, keys))
            except ValueError as exc:  # pydantic's ValidationError is a ValueError
                opened.append(exc)
        return opened

    def _open(self, topic: str, envelope: dict[str, Any], keys: dict[str, UserKey]) -> CloudEvent | Shredded:
        opened = open_envelope(envelope, keys.get(str(envelope.get("userid"))))
        if isinstance(opened, Shredded):
            SHREDDED_RECORDS.labels(self.service, topic, "skipped").inc()
        return opened


def open_envelope(envelope: dict[str, Any], key: UserKey | None) -> CloudEvent | Shredded:
    """A parsed record value as its event, its data opened with `key` (the user's) where it is sealed."""
    if not is_sealed(envelope):
        return CloudEvent.model_validate(envelope)
    user, event_id, token = envelope.get("userid"), envelope.get("id"), envelope.get("data")
    if not isinstance(user, str) or not isinstance(event_id, str) or not isinstance(token, str):
        raise SealError("sealed record without userid, id or JWE data")
    if key is None or key.user_id != user or jwe_header(token).get("kid") != key.key_id:
        return Shredded(user, event_id)
    return CloudEvent.model_validate(
        {**envelope, "data": open_data(key, event_id, token), "datacontenttype": "application/json"}
    )


class BlockingOpener:
    """Opens record values one at a time with keys read by a blocking client: for tests, benchmarks and
    ops tools that read topics outside an event loop. Found keys are cached; a user erased meanwhile
    is seen by a new opener."""

    def __init__(
        self, mongodb_url: str, token_key_b64: str, database: str = "banksync_vault", timeout_ms: int = 30_000
    ) -> None:
        import pymongo

        self._client: pymongo.MongoClient[Doc] = pymongo.MongoClient(
            mongodb_url, tz_aware=True, serverSelectionTimeoutMS=timeout_ms
        )
        self.coll = self._client[database][VAULT_COLLECTION]
        self.wrapping = KeyWrapping(token_key_b64)
        self._keys: dict[str, UserKey] = {}

    def open(self, value: bytes | None) -> CloudEvent | Shredded:
        """The record's event; `Shredded` when its user's key is gone. Raises ValueError on a bad record,
        or when the vault cannot be read."""
        envelope = self._envelope(value)
        user = str(envelope.get("userid") or "")
        if is_sealed(envelope) and user and user not in self._keys:
            import pymongo.errors

            try:
                doc = self.coll.find_one({"_id": user})
            except pymongo.errors.PyMongoError as exc:
                raise ValueError(f"the vault cannot be read: {type(exc).__name__}") from exc
            try:
                key = None if doc is None else self.wrapping.unwrap(doc)
            except KeyDoesNotUnwrap:  # wrapped under another BANKSYNC_TOKEN_KEY: not this opener's to read
                key = None
            if key is not None:
                self._keys[user] = key
        return open_envelope(envelope, self._keys.get(user))

    def user_of(self, value: bytes | None) -> str:
        """The user a record names (its `userid`), read without opening it."""
        return str(self._envelope(value).get("userid") or "")

    @staticmethod
    def _envelope(value: bytes | None) -> dict[str, Any]:
        envelope = json.loads(value or b"")
        if not isinstance(envelope, dict):
            raise ValueError("not a JSON object")
        return envelope

    def close(self) -> None:
        self._client.close()
