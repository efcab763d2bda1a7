"""Secrets of the connector, without I/O: aggregator tokens encrypted at rest, the signed webview `state`,
and the signatures of the aggregator's webhooks (whether one was accepted before is the adapter's)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

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


# Powens' webhook signature headers
SIGNATURE_HEADER = "BI-Signature"
SIGNATURE_DATE_HEADER = "BI-Signature-Date"


class InvalidWebhook(Exception):
    """A webhook whose signature does not hold: `code` is the problem's stable code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class WebhookVerifier:
    """Powens' webhook signature: `BI-Signature` is base64(HMAC-SHA256(secret,
    "<METHOD>.<path>.<BI-Signature-Date>.<raw body>")), `BI-Signature-Date` the moment of signing (ISO 8601,
    or an HTTP date). A webhook is accepted when the signature matches (constant-time compare) and its date
    is within `tolerance` of our clock; that the signature was not accepted before is the repository's
    (the replay guard of adapters/mongo.py, ConnectorRepository.remember_webhook_signature), with
    `digest` as the key."""

    def __init__(self, secret: str, tolerance: timedelta = timedelta(minutes=5)) -> None:
        self._key = secret.encode()
        self.tolerance = tolerance

    def sign(self, method: str, path: str, date: str, body: bytes) -> str:
        message = b".".join([method.upper().encode(), path.encode(), date.encode(), body])
        return base64.b64encode(hmac.new(self._key, message, hashlib.sha256).digest()).decode()

    def verify(
        self,
        method: str,
        path: str,
        signature: str | None,
        date: str | None,
        body: bytes,
        now: datetime | None = None,
    ) -> str:
        """The digest that names this signature (what a replay would repeat); raises InvalidWebhook."""
        if not signature or not date:
            raise InvalidWebhook(
                "invalid_webhook_signature",
                f"The webhook carries no {SIGNATURE_HEADER} and {SIGNATURE_DATE_HEADER} headers.",
            )
        expected = self.sign(method, path, date, body)
        if not hmac.compare_digest(signature.strip().encode(), expected.encode()):
            raise InvalidWebhook("invalid_webhook_signature", "The webhook signature does not match.")
        signed_at = parse_signature_date(date)
        if signed_at is None:
            raise InvalidWebhook("invalid_webhook_signature", f"{SIGNATURE_DATE_HEADER} is not a date.")
        if abs((now or datetime.now(UTC)) - signed_at) > self.tolerance:
            raise InvalidWebhook(
                "stale_webhook_signature",
                f"The webhook was signed more than {int(self.tolerance.total_seconds())} s away from now.",
            )
        return hashlib.sha256(expected.encode()).hexdigest()


def parse_signature_date(value: str) -> datetime | None:
    """An ISO 8601 date-time (UTC when it names no offset) or an HTTP date; None when it is neither."""
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        try:
            parsed = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
