"""The operators' command line (`banksync`, ops/cli.py) run as an operator runs it: its own process."""

from __future__ import annotations

import asyncio
import sys

from harness.devstack import ROOT


async def run_banksync(
    *args: str, env: dict[str, str] | None = None, within_s: float = 60
) -> tuple[int, str, str]:
    """`python -m ops.cli ARGS` from the repository's root, with `env` (default: this process's), given
    `within_s` seconds; (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ops.cli",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), within_s)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
