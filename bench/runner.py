"""Runs the selected benchmarks once against one set of engines, prints a table, writes the JSON."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
import traceback
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.registry import Benchmark, Context, Result, load_average
from harness.devstack import DEPLOY, ROOT, Engines
from shared.mongo import make_client

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SCHEMA_VERSION = 1


# ---- peak RSS -------------------------------------------------------------------------------------------


def reset_peak_rss() -> bool:
    """Reset the peak RSS of this process (Linux: `5` into clear_refs); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mb(reset_worked: bool) -> float:
    """Peak RSS since the last reset (VmHWM), else the process's lifetime peak (getrusage)."""
    if reset_worked:
        with contextlib.suppress(OSError):
            match = re.search(r"^VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
            if match:
                return round(int(match.group(1)) / 1024, 1)
    # ru_maxrss is in KiB on Linux, bytes on macOS
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(maxrss / (1024 * 1024) if sys.platform == "darwin" else maxrss / 1024, 1)


# ---- running --------------------------------------------------------------------------------------------


def compare(bench: Benchmark, result: Result, ctx: Context) -> None:
    if bench.limit is None or result.value is None:
        return
    result.target = bench.limit.target
    result.higher_is_better = bench.limit.higher_is_better
    if bench.limit.is_fixed:
        result.passed = bench.limit.passes(result.value)
        return
    result.limit_name = bench.limit.name
    limit = ctx.results.get(bench.limit.name)
    if limit is None or limit.status != "ok" or not limit.value:
        return
    result.limit_value = limit.value
    result.ratio = round(result.value / limit.value, 4)
    result.passed = bench.limit.passes(result.ratio)


async def run_one(bench: Benchmark, ctx: Context) -> Result:
    missing = [n for n in bench.requires if ctx.results.get(n) is None or ctx.results[n].status != "ok"]
    if missing:
        return Result(bench.name, "skipped", error=f"needs {', '.join(missing)}, which did not succeed")
    reset_worked = reset_peak_rss()
    started = time.perf_counter()
    try:
        async with asyncio.timeout(bench.timeout_s) as deadline:
            measurement = await bench.fn(ctx)
    except TimeoutError:
        duration = time.perf_counter() - started
        if not deadline.expired():
            raise
        return Result(
            bench.name, "timeout", duration_s=round(duration, 2), peak_rss_mb=peak_rss_mb(reset_worked),
            error=f"hard timeout: stopped after {bench.timeout_s:g} s",
        )  # fmt: skip
    result = Result(
        bench.name,
        "ok",
        metric=measurement.metric,
        unit=measurement.unit,
        value=measurement.value,
        parameters=measurement.parameters,
        duration_s=round(time.perf_counter() - started, 2),
        peak_rss_mb=peak_rss_mb(reset_worked),
    )
    compare(bench, result, ctx)
    return result


async def run_all(benches: list[Benchmark], ctx: Context) -> None:
    try:
        for bench in benches:
            print(f"-- {bench.name}: {bench.description}", flush=True)
            started = time.perf_counter()
            try:
                result = await run_one(bench, ctx)
            except Exception as exc:
                traceback.print_exc()
                result = Result(
                    bench.name, "failed", duration_s=round(time.perf_counter() - started, 2),
                    error=f"{type(exc).__name__}: {exc}",
                )  # fmt: skip
            ctx.results[bench.name] = result
            print(f"   {summary(result)}", flush=True)
    finally:
        for cleanup in reversed(ctx.cleanups):
            try:
                await asyncio.wait_for(cleanup(), timeout=60)
            except Exception as exc:
                print(f"   cleanup failed: {type(exc).__name__}: {exc}", file=sys.stderr)


def summary(result: Result) -> str:
    if result.status != "ok":
        return f"{result.status}: {result.error}"
    text = f"{fmt_value(result.value)} {result.unit} in {result.duration_s:.1f} s"
    verdict = "passed)" if result.passed else "FAILED)"
    if result.ratio is not None:
        text += f", {result.ratio:.2f} x {result.limit_name} (target {compared(result)}: {verdict}"
    elif result.limit_name is None and result.passed is not None:
        text += f" (target {compared(result)} {result.unit}: {verdict}"
    return text


def compared(result: Result) -> str:
    """`>= 0.5`, `<= 5`: the target and its direction."""
    return f"{'<=' if result.higher_is_better is False else '>='} {result.target:g}"


# ---- machine, engines, output ---------------------------------------------------------------------------


def cpu_calibration_s() -> float:
    """Seconds a fixed pure-Python workload takes (best of 3): how fast this machine's processor is
    right now. A shared virtual machine's speed moves from hour to hour; figures of two runs compare
    only as far as their calibrations do."""

    def once() -> float:
        started = time.perf_counter()
        total = 0
        for i in range(2_000_000):
            total += i * i % 7
        table = {str(i): i for i in range(100_000)}
        json.loads(json.dumps(table))
        digest = hashlib.sha256()
        for _ in range(100_000):
            digest.update(b"x" * 64)
        return time.perf_counter() - started

    return round(min(once() for _ in range(3)), 3)


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": None,
        "memory_gb": None,
        "load_average_1m": load_average(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_calibration_s": cpu_calibration_s(),
    }
    with contextlib.suppress(OSError):
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        info["cpu_model"] = match.group(1).strip() if match else None
    with contextlib.suppress(OSError):
        match = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
        info["memory_gb"] = round(int(match.group(1)) / 1024 / 1024, 1) if match else None
    return info


def git_info() -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return done.stdout.strip() if done.returncode == 0 else ""

    try:
        return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def configured_version(variable: str) -> str | None:
    """The version the project's deploy/local scripts install (lib.sh)."""
    with contextlib.suppress(OSError):
        match = re.search(rf'^{variable}="([^"]+)"', (DEPLOY / "lib.sh").read_text(), re.MULTILINE)
        return match.group(1) if match else None
    return None


async def engines_info(engines: Engines) -> dict[str, Any]:
    info: dict[str, Any] = {
        "kafka_bootstrap": engines.kafka_bootstrap,
        "mongodb_url": engines.mongodb_url,
        "started_by_bench": engines.owned,
        "kafka": None,
        "mongodb_wire": None,
    }
    if engines.owned:
        info["kafka"] = f"Apache Kafka {configured_version('KAFKA_VERSION')} (KRaft, single node)"
    client = make_client(engines.mongodb_url)
    try:
        build: dict[str, Any] = await client.admin.command("buildInfo")
        if "ferretdbVersion" in build:
            features = build.get("ferretdbFeatures") or {}
            # the engines started here are deploy/local/ferretdb.sh's: FerretDB on PostgreSQL
            owned = f"PostgreSQL {configured_version('POSTGRES_MAJOR')}"
            backend = owned if engines.owned else features.get("backend", "?")
            version = f"FerretDB {build['ferretdbVersion']} ({backend})"
            info["mongodb_wire"] = f"{version}, MongoDB {build.get('version')}"
        else:
            info["mongodb_wire"] = f"MongoDB {build.get('version')}"
    except Exception as exc:
        info["mongodb_wire"] = f"unknown ({type(exc).__name__})"
    finally:
        await client.close()
    return info


def fmt_value(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.3g}"


def table(results: list[Result]) -> str:
    header = ("benchmark", "value", "unit", "n", "vs limit", "time s", "peak RSS MB", "status")
    rows: list[tuple[str, ...]] = [header]
    for r in results:
        verdict = "ok" if r.passed else "FAIL"
        if r.ratio is not None:
            vs = f"{r.ratio:.2f} x {r.limit_name} ({compared(r)}: {verdict})"
        elif r.limit_name is None and r.passed is not None:
            vs = f"fixed ({compared(r)} {r.unit}: {verdict})"
        elif r.limit_name is not None:
            vs = f"{r.limit_name}: not measured"
        else:
            vs = "-"
        n = r.parameters.get("n")
        rows.append((
            r.name, fmt_value(r.value), r.unit or "-", f"{n:,}" if isinstance(n, int) else "-", vs,
            f"{r.duration_s:.1f}", "-" if r.peak_rss_mb is None else f"{r.peak_rss_mb:.0f}",
            r.status if r.status == "ok" else f"{r.status.upper()}",
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    right = {1, 3, 5, 6}
    lines = [
        "  ".join(
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def write_report(report: dict[str, Any], stamp: str, results_dir: Path = RESULTS_DIR) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n"
    path = results_dir / f"{stamp}.json"
    for target in (path, results_dir / "latest.json"):
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(target)
    return path


def run(benches: list[Benchmark], quick: bool, argv: list[str], users: int | None = None) -> int:
    started_at = datetime.now(UTC)
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
    run_id = f"{stamp.lower()}-{os.getpid()}"
    machine = machine_info()  # before the engines start: the load average says what else was running
    # the services run from the working tree as it is when each benchmark starts them: the commit (and
    # whether the tree differed from it) at the start and at the end of the run
    git_at_start = git_info()
    print(f"starting the engines (benchmarks: {', '.join(b.name for b in benches)})", flush=True)
    engines = Engines.start()
    try:
        print(f"engines: Kafka {engines.kafka_bootstrap}, MongoDB wire {engines.mongodb_url}", flush=True)
        ctx = Context(engines=engines, run_id=run_id, quick=quick, users=users)

        async def main() -> dict[str, Any]:
            info = await engines_info(engines)
            await run_all(benches, ctx)
            return info

        engines_used = asyncio.run(main())
    finally:
        print("stopping the engines", flush=True)
        engines.stop()
    results = [ctx.results[b.name] for b in benches if b.name in ctx.results]
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "started_at": started_at.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "quick": quick,
        "argv": argv,
        "machine": {
            **machine,
            "load_average_1m_end": load_average(),
            "cpu_calibration_s_end": cpu_calibration_s(),
        },
        "git": {**git_info(), "at_start": git_at_start},
        "engines": engines_used,
        "peak_rss": "per benchmark: the bench process's VmHWM, reset before each benchmark "
        "(falls back to getrusage's lifetime peak where the reset is not possible)",
        "benchmarks": [asdict(r) for r in results],
    }
    path = write_report(report, stamp)
    print()
    print(table(results))
    print()
    print(f"results: {path.relative_to(ROOT)} (and {(RESULTS_DIR / 'latest.json').relative_to(ROOT)})")
    ok = all(r.status == "ok" and r.passed is not False for r in results)
    return 0 if ok else 1
