"""Secrets of the connector: aggregator tokens encrypted at rest, and the signed webview `state`."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class TokenCipher:
    """AES-256-GCM (authenticated); the user id is bound as associated data, so a token copied to
    another user's record does not decrypt."""

    VERSION = b"v1"

    def __init__(self, key_b64: str) -> None:
        try:
            raw = base64.urlsafe_b64decode(key_b64 + "=" * (-len(key_b64) % 4))
        except (binascii.Error, ValueError) as exc:
            raise ValueError("BANKSYNC_TOKEN_KEY must be url-safe base64") from exc
        if len(raw) < 32:
            raise ValueError("BANKSYNC_TOKEN_KEY must hold at least 32 bytes")
        # derive exactly 32 bytes so any longer key works the same way
        self._aead = AESGCM(hashlib.sha256(b"banksync-token-key" + raw).digest())

    def encrypt(self, token: str, user_id: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, token.encode(), self.VERSION + user_id.encode())
        return (self.VERSION + b"." + base64.urlsafe_b64encode(nonce + sealed)).decode()

    def decrypt(self, ciphertext: str, user_id: str) -> str:
        version, _, body = ciphertext.encode().partition(b".")
        if version != self.VERSION:
            raise ValueError("unknown token encryption version")
        blob = base64.urlsafe_b64decode(body)
        try:
            return self._aead.decrypt(blob[:12], blob[12:], self.VERSION + user_id.encode()).decode()
        except InvalidTag as exc:
            raise ValueError("aggregator token does not decrypt for this user") from exc


class InvalidState(Exception):
    pass


@dataclass(frozen=True)
class ActivationState:
    user_id: str
    nonce: str
    expires_at: int


class StateSigner:
    """HMAC-SHA256 over (user, nonce, expiry): the callback trusts only states we issued."""

    def __init__(self, secret: str, ttl_s: int = 1800) -> None:
        self._key = hashlib.sha256(b"banksync-activation-state" + secret.encode()).digest()
        self.ttl_s = ttl_s

    def issue(self, user_id: str, now: float | None = None) -> tuple[str, ActivationState]:
        state = ActivationState(
            user_id, base64.urlsafe_b64encode(os.urandom(12)).decode(), int((now or time.time()) + self.ttl_s)
        )
        payload = base64.urlsafe_b64encode(
            json.dumps([state.user_id, state.nonce, state.expires_at]).encode()
        )
        signature = base64.urlsafe_b64encode(hmac.new(self._key, payload, hashlib.sha256).digest())
        return f"{payload.decode()}.{signature.decode()}", state

    def verify(self, token: str, now: float | None = None) -> ActivationState:
        payload, _, signature = token.encode().partition(b".")
        expected = base64.urlsafe_b64encode(hmac.new(self._key, payload, hashlib.sha256).digest())
        if not signature or not hmac.compare_digest(signature, expected):
            raise InvalidState("the state does not carry our signature")
        try:
            user_id, nonce, expires_at = json.loads(base64.urlsafe_b64decode(payload))
        except (ValueError, binascii.Error) as exc:
            raise InvalidState("the state is malformed") from exc
        if (now or time.time()) > expires_at:
            raise InvalidState("the state has expired: start the activation again")
        return ActivationState(str(user_id), str(nonce), int(expires_at))
