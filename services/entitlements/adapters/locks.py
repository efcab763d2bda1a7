"""Who waits for whom inside one entitlements process (asyncio locks; nothing is shared across replicas)."""

from __future__ import annotations

import asyncio
import zlib


class ProcessLocks:
    """FerretDB v1 can lose one of two concurrent updates of a document even when both filter on the
    version, so changes of one user are serialised here (on one of `stripes` locks); the version guard
    is what protects writers in other replicas on MongoDB. One relay at a time in this process, so
    events leave in version order and once each. Several replicas may still repeat one: the event id is
    deterministic and consumers apply an entitlement only when its version is newer than what they hold.
    """

    def __init__(self, stripes: int = 64) -> None:
        self._writers = [asyncio.Lock() for _ in range(stripes)]
        self._relay = asyncio.Lock()

    def one_writer(self, user_id: str) -> asyncio.Lock:
        return self._writers[zlib.crc32(user_id.encode()) % len(self._writers)]

    def one_relay(self) -> asyncio.Lock:
        return self._relay
