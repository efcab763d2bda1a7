"""The benchmark registry: one decorated async function per benchmark.

A benchmark is `async def fn(ctx: Context) -> Measurement`, registered with `@benchmark(...)`. It runs
once per run, in registration order, against the engines of the run (`ctx.engines`), and is cancelled
when it outlives its hard timeout. It may read the figures measured earlier in the same run
(`ctx.value("engine_limit")`, `ctx.result(...)`); a `Limit` makes the runner compare its value with
one of them and record `limit_name`, `limit_value`, `ratio`, `target` and `passed`. A fixed limit
(`Limit.fixed(5, higher_is_better=False)`: at most 5 of the benchmark's unit) compares the value itself
with `target` and records `target` and `passed` (no `limit_name`, no ratio).

    @benchmark("importer", timeout_s=600, limit=Limit("engine_limit", target=0.5))
    async def importer(ctx: Context) -> Measurement:
        n = ctx.size(full=50_000, quick=5_000)
        ...
        return Measurement("operations imported per second", "ops/s", n / elapsed, {"n": n})
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from harness.devstack import Engines

Status = Literal["ok", "failed", "timeout", "skipped"]


@dataclass(frozen=True)
class Limit:
    """Pass when `value >= target × value of benchmark <name>` (`<=` when lower is better); a fixed
    limit (`name` empty, see `fixed`) passes when `value >= target` (`<=` when lower is better)."""

    name: str
    target: float
    higher_is_better: bool = True

    @classmethod
    def fixed(cls, target: float, *, higher_is_better: bool = True) -> Limit:
        """The value itself against `target`, in the benchmark's own unit."""
        return cls("", target, higher_is_better)

    @property
    def is_fixed(self) -> bool:
        return not self.name

    def passes(self, ratio: float) -> bool:
        """`ratio` is the value over the other benchmark's, or the value itself for a fixed limit."""
        return ratio >= self.target if self.higher_is_better else ratio <= self.target


@dataclass(frozen=True)
class Measurement:
    """What a benchmark function returns: one figure and how it was obtained."""

    metric: str
    unit: str
    value: float
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    """One benchmark of one run, as printed and written to the JSON file."""

    name: str
    status: Status
    metric: str = ""
    unit: str = ""
    value: float | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0
    peak_rss_mb: float | None = None
    limit_name: str | None = None
    limit_value: float | None = None
    ratio: float | None = None
    target: float | None = None
    higher_is_better: bool | None = None
    passed: bool | None = None
    error: str | None = None


Cleanup = Callable[[], Awaitable[None]]


@dataclass
class Context:
    """What a benchmark gets: the engines, the run's options, and the results measured so far."""

    engines: Engines
    run_id: str
    quick: bool = False
    users: int | None = None  # `--users N`: the user count of the nightly benchmarks
    results: dict[str, Result] = field(default_factory=dict)
    cleanups: list[Cleanup] = field(default_factory=list)

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def user_count(self, full: int, quick: int) -> int:
        return self.users or self.size(full, quick)

    def result(self, name: str) -> Result:
        """An earlier benchmark of this run that succeeded (LookupError otherwise)."""
        result = self.results.get(name)
        if result is None or result.status != "ok":
            raise LookupError(f"{name} was not measured in this run")
        return result

    def value(self, name: str) -> float:
        value = self.result(name).value
        assert value is not None
        return value

    def defer(self, cleanup: Cleanup) -> None:
        """Run `cleanup` at the end of the run (after every benchmark, before the engines stop)."""
        self.cleanups.append(cleanup)


def load_average() -> float | None:
    """The 1-minute load average now (what else shares the machine while a figure is measured)."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


BenchFn = Callable[[Context], Awaitable[Measurement]]


@dataclass(frozen=True)
class Benchmark:
    name: str
    fn: BenchFn
    timeout_s: float
    needs: tuple[str, ...] = ()
    limit: Limit | None = None
    description: str = ""

    @property
    def requires(self) -> tuple[str, ...]:
        """Benchmarks that must run before this one: its `needs` and its limit's."""
        if self.limit is not None and not self.limit.is_fixed and self.limit.name not in self.needs:
            return (*self.needs, self.limit.name)
        return self.needs


REGISTRY: dict[str, Benchmark] = {}


def benchmark(
    name: str,
    *,
    timeout_s: float,
    needs: Iterable[str] = (),
    limit: Limit | None = None,
) -> Callable[[BenchFn], BenchFn]:
    """Register `fn` as benchmark `name`. What it needs (and its limit) must be registered before it."""

    def register(fn: BenchFn) -> BenchFn:
        if name in REGISTRY:
            raise ValueError(f"benchmark {name!r} registered twice")
        bench = Benchmark(name, fn, timeout_s, tuple(needs), limit, (fn.__doc__ or "").strip().split("\n")[0])
        unknown = [n for n in bench.requires if n not in REGISTRY]
        if unknown:
            raise ValueError(f"benchmark {name!r} needs {unknown}, which must be registered before it")
        REGISTRY[name] = bench
        return fn

    return register


def select(only: Iterable[str] | None) -> list[Benchmark]:
    """The benchmarks to run, in registration order: `only` (all when empty) and what they require."""
    wanted = list(only or REGISTRY)
    unknown = [n for n in wanted if n not in REGISTRY]
    if unknown:
        raise KeyError(f"unknown benchmark(s) {unknown}; known: {', '.join(REGISTRY)}")
    chosen: set[str] = set()
    stack = list(wanted)
    while stack:
        name = stack.pop()
        if name not in chosen:
            chosen.add(name)
            stack.extend(REGISTRY[name].requires)
    return [bench for name, bench in REGISTRY.items() if name in chosen]
