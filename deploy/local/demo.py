"""`make demo`: the user journey (deploy/local/journey.py) on the running local stack, shown with rich.

The stack keeps running afterwards (`make status`, `make down`). Addresses come from the same
environment variables as `make up` (127.0.0.1 and the default ports when unset).
Exit code: 0 when every step's checks passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from journey import Endpoints, Journey, JourneyError, JourneyResult
from rich.console import Console
from rich.padding import Padding
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from shared.settings import ServiceSettings


class RichReporter:
    """Each step as a heading, its details and tables indented, a live bar while it waits."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live: Progress | None = None
        self.task: TaskID | None = None
        self.quiet_since = 0.0

    def step_started(self, number: int, total: int, title: str) -> None:
        self.console.print()
        self.console.print(f"[bold cyan]▶ {number}/{total}[/] [bold]{title}[/]")
        self.quiet_since = time.monotonic()
        if not self.console.is_terminal:
            return  # a live bar only where it can redraw itself (else a line now and then)
        self.live = Progress(
            SpinnerColumn(),
            TextColumn("[dim]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self.task = self.live.add_task("working", total=None)
        self.live.start()

    def detail(self, text: str) -> None:
        self.quiet_since = time.monotonic()
        self.console.print(Padding(text, (0, 0, 0, 4)), highlight=False)

    def progress(self, text: str, done: int, total: int | None = None) -> None:
        if self.live is not None and self.task is not None:
            self.live.update(self.task, description=text, completed=done, total=total)
        elif time.monotonic() - self.quiet_since >= 30:
            self.quiet_since = time.monotonic()
            of = f"/{total}" if total is not None else ""
            self.console.print(Padding(f"[dim]… {text}: {done}{of}[/]", (0, 0, 0, 4)), highlight=False)

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        table = Table(title=title, title_justify="left", title_style="italic", box=None, padding=(0, 2, 0, 0))
        for column in columns:
            table.add_column(column, style="dim" if column in ("date", "type", "status") else None)
        for row in rows:
            table.add_row(*row)
        self.console.print(Padding(table, (0, 0, 0, 4)))

    def check(self, ok: bool, text: str) -> None:
        mark = "[green]✓[/]" if ok else "[bold red]✗[/]"
        self.console.print(Padding(f"{mark} {text}", (0, 0, 0, 4)), highlight=False)

    def step_finished(self, title: str, seconds: float) -> None:
        self.stop()
        self.console.print(Padding(f"[dim]{seconds:.1f} s[/]", (0, 0, 0, 4)))

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


def endpoints_from_env() -> Endpoints:
    env = os.environ.get
    sandbox_port = env("AGGREGATOR_SANDBOX_PORT", "8010")
    return Endpoints(
        entitlements=env("ENTITLEMENTS_URL", "http://127.0.0.1:8001"),
        connector=env("CONNECTOR_URL", "http://127.0.0.1:8002"),
        importer=env("IMPORTER_URL", "http://127.0.0.1:8003"),
        categorizer=env("CATEGORIZER_URL", "http://127.0.0.1:8004"),
        aggregator=env("AGGREGATOR_BASE_URL", f"http://127.0.0.1:{sandbox_port}"),
    )


def summary(console: Console, result: JourneyResult, endpoints: Endpoints) -> None:
    console.print()
    console.rule("[bold]Summary")
    table = Table(box=None, padding=(0, 2, 0, 0), show_header=False)
    table.add_column(justify="right", style="bold")
    table.add_column()
    table.add_row("user", result.user_id)
    table.add_row("accounts", str(result.final_accounts))
    table.add_row("operations", str(result.final_operations))
    table.add_row(
        "recognised",
        f"{result.final_recognised} ({result.recognised_share:.0%}; "
        f"{result.recognised_after_sync} at import, built-in dictionary)",
    )
    failed = [c for c in result.checks if not c.ok]
    table.add_row(
        "checks",
        f"[green]{len(result.checks)} passed[/]"
        if not failed
        else f"[red]{len(failed)} of {len(result.checks)} failed[/]",
    )
    console.print(table)
    steps = Table(box=None, padding=(0, 2, 0, 0))
    steps.add_column("step")
    steps.add_column("time", justify="right")
    for title, seconds in result.timings:
        steps.add_row(title, f"{seconds:.1f} s")
    steps.add_row("[bold]total", f"[bold]{sum(s for _, s in result.timings):.1f} s")
    console.print()
    console.print(steps)
    for check in failed:
        console.print(f"[red]✗ {check.step}: {check.text}")
    dashboard = f"http://127.0.0.1:{os.environ.get('DASHBOARD_PORT', '8090')}/"
    console.print()
    console.print("The stack keeps running: [bold]make status[/], [bold]make down[/].")
    console.print(f"Ops dashboard: [bold]{dashboard}[/]   importer API: {endpoints.importer}/docs")
    console.print("  the dashboard asks for an ops token: .venv/bin/python -m ops.dashboard --print-token")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--user", default=os.environ.get("DEMO_USER"), help="user id (default: a new one)")
    parser.add_argument(
        "--stall",
        type=float,
        default=float(os.environ.get("DEMO_STALL_S", "90")),
        help="a wait fails when what it watches has not moved for this long, seconds (DEMO_STALL_S)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=float(os.environ.get("DEMO_TIMEOUT_S", "1200")),
        help="absolute cap of one wait even while it moves, seconds (DEMO_TIMEOUT_S)",
    )
    args = parser.parse_args(argv)
    console = Console()
    endpoints = endpoints_from_env()
    reporter = RichReporter(console)
    journey = Journey(
        endpoints,
        ServiceSettings().banksync_jwt_secret.get_secret_value(),
        reporter,
        user_id=args.user,
        stall_s=args.stall,
        cap_s=args.timeout,
    )
    console.print(f"[bold]Budgetfacile banksync[/]: the user journey, as user [bold]{journey.user_id}[/]")
    try:
        result = journey.run()
    except JourneyError as exc:
        reporter.stop()
        console.print(f"\n[bold red]The journey stopped:[/] {exc}")
        console.print("Service logs: .run/stack/logs/; `make status` shows what runs.")
        return 1
    finally:
        reporter.stop()
    summary(console, result, endpoints)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
