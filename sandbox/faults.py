"""Fault injection for the `/2.0` API (`POST /sandbox/faults`): latency, 5xx at a rate, 429 rate limiting."""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class FaultConfig:
    error_rate: float = 0.0  # share of /2.0 requests answered 500, 502 or 503
    latency_ms: int = 0  # added to every /2.0 request
    rate_limit: bool = False  # while true, every /2.0 request gets 429 with Retry-After
    retry_after_s: int = 1  # the Retry-After value of those 429s
    fail_next: int = 0  # the next N /2.0 requests get 503, then they succeed again (deterministic retries)
    rate_limit_next: int = 0  # the next N /2.0 requests get 429

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Decision:
    latency_s: float
    status: int | None  # None: serve normally
    retry_after_s: int | None = None


class Faults:
    """Current fault settings and the dice, seeded so a run with the same requests fails the same way."""

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._lock = threading.Lock()
        self._config = FaultConfig()
        self._rng = random.Random(f"budgetfacile-sandbox-faults:{seed}")
        self.injected: dict[str, int] = {"5xx": 0, "429": 0}

    @property
    def config(self) -> FaultConfig:
        with self._lock:
            return self._config

    def configure(self, config: FaultConfig) -> FaultConfig:
        with self._lock:
            self._config = config
            return config

    def reset(self) -> None:
        with self._lock:
            self._config = FaultConfig()
            self._rng = random.Random(f"budgetfacile-sandbox-faults:{self._seed}")
            self.injected = {"5xx": 0, "429": 0}

    def decide(self) -> Decision:
        with self._lock:
            config = self._config
            latency = max(config.latency_ms, 0) / 1000
            if config.rate_limit_next > 0:
                self._config = FaultConfig(
                    **{**asdict(config), "rate_limit_next": config.rate_limit_next - 1}
                )
                self.injected["429"] += 1
                return Decision(latency, 429, config.retry_after_s)
            if config.rate_limit:
                self.injected["429"] += 1
                return Decision(latency, 429, config.retry_after_s)
            if config.fail_next > 0:
                self._config = FaultConfig(**{**asdict(config), "fail_next": config.fail_next - 1})
                self.injected["5xx"] += 1
                return Decision(latency, 503)
            if config.error_rate > 0 and self._rng.random() < config.error_rate:
                self.injected["5xx"] += 1
                return Decision(latency, self._rng.choice((500, 502, 503)))
            return Decision(latency, None)
