"""`banksync`: the operations command. Thin: it parses, calls one function of ops.*, prints.

Exit codes: 0 done, 1 the platform could not do it (unreachable, refused, missing), 2 bad arguments.
Settings come from the contract's environment variables (KAFKA_BOOTSTRAP_SERVERS, CONNECTOR_URL,
IMPORTER_URL, BANKSYNC_JWT_SECRET, ...); `--bootstrap` and `--url` override them per call.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from aiokafka.errors import KafkaError
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from ops import dlq as dead_letters
from ops import lag as lag_fmt
from ops import services
from ops import topics as topics_fmt
from ops.errors import BadArgument, OpsError
from ops.kafka import inspector
from shared.settings import ServiceSettings

T = TypeVar("T")

app = typer.Typer(
    name="banksync",
    help="Operations on the bank sync: topics, consumer lag, dead letters, a user's status, replay.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
dlq_app = typer.Typer(help="Dead letters on banksync.dlq.v1: list, show, redrive.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")

err = Console(stderr=True, highlight=False, soft_wrap=True)

_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:]+\]|[A-Za-z0-9._-]+):(\d{1,5})$")

Bootstrap = Annotated[
    str | None,
    typer.Option(
        "--bootstrap",
        "-b",
        help="Kafka bootstrap servers host:port[,host:port] (default: KAFKA_BOOTSTRAP_SERVERS)",
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable JSON instead of a table.")]


# --- plumbing ------------------------------------------------------------------------------------
@app.callback()
def _root(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show the Kafka client's own logs.")
    ] = False,
) -> None:
    # aiokafka logs every failed connection attempt; the command says what failed once, in words
    logging.getLogger("aiokafka").setLevel(logging.DEBUG if verbose else logging.CRITICAL)
    if verbose:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)


def say(label: str, message: str, style: str = "bold red") -> None:
    """`label: message` on stderr; the message is printed as is (never read as rich markup)."""
    err.print(f"[{style}]{label}:[/] {escape(message)}")


def settings() -> ServiceSettings:
    try:
        return ServiceSettings()
    except ValidationError as exc:
        raise BadArgument(
            f"bad environment settings: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}"
        ) from exc


def check_bootstrap(value: str) -> str:
    servers = [s.strip() for s in value.split(",") if s.strip()]
    if not servers:
        raise BadArgument("--bootstrap is empty: give host:port, e.g. 127.0.0.1:9092")
    for server in servers:
        found = _HOST_PORT.match(server)
        if not found or not 0 < int(found.group(2)) < 65536:
            raise BadArgument(f"--bootstrap {server!r} is not host:port (e.g. 127.0.0.1:9092)")
    return ",".join(servers)


def bootstrap_of(option: str | None) -> str:
    return check_bootstrap(option if option is not None else settings().kafka_bootstrap_servers)


def check_url(what: str, value: str) -> str:
    if not re.match(r"^https?://[^\s/]+", value):
        raise BadArgument(f"{what} {value!r} is not an http(s) URL")
    return value


def run(work: Callable[[], Awaitable[T]]) -> T:
    """Runs the command's coroutine; turns known failures into a message and an exit code."""
    try:
        return asyncio.run(_guarded(work))
    except OpsError as exc:
        say("error" if exc.exit_code == 1 else "bad argument", str(exc))
        raise typer.Exit(exc.exit_code) from None


async def _guarded(work: Callable[[], Awaitable[T]]) -> T:
    try:
        return await work()
    except KafkaError as exc:
        raise OpsError(f"Kafka: {exc}") from exc


def fail_on_bad(check: Callable[[], T]) -> T:
    """Argument checks before any I/O: a BadArgument exits 2 with its message."""
    try:
        return check()
    except BadArgument as exc:
        say("bad argument", str(exc))
        raise typer.Exit(2) from None


@contextmanager
def progress(description: str, total: float | None = None) -> Iterator[tuple[Progress, Any]]:
    """A rich progress bar on stderr (only drawn on a terminal, gone once done)."""
    bar = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    with bar:
        yield bar, bar.add_task(description, total=total)


# --- topics, lag ---------------------------------------------------------------------------------
@app.command()
def topics(
    bootstrap: Bootstrap = None,
    everything: Annotated[bool, typer.Option("--all", help="Also topics outside the contract.")] = False,
    as_json: AsJson = False,
) -> None:
    """Partitions, retention, records (end minus start offsets) and size on disk of each topic.

    Exits 1 when a contract topic is missing or the raw topic keeps less than the contract's 400 days."""
    server = fail_on_bad(lambda: bootstrap_of(bootstrap))
    partitions = fail_on_bad(settings).kafka_topic_partitions

    async def work() -> list[topics_fmt.TopicInfo]:
        with progress("reading topic metadata and offsets"):
            async with inspector(server) as kafka:
                return await kafka.topic_infos()

    infos = run(work)
    shown = [i for i in infos if everything or i.contract]
    typer.echo(topics_fmt.topics_json(shown) if as_json else topics_fmt.format_topics(shown))
    problems = topics_fmt.contract_problems(infos, expected_partitions=partitions)
    for problem in problems:
        say("contract", problem, "bold yellow")
    if problems:
        raise typer.Exit(1)


@app.command()
def lag(
    bootstrap: Bootstrap = None,
    group: Annotated[
        list[str] | None, typer.Option("--group", "-g", help="Only this group (repeatable).")
    ] = None,
    summary: Annotated[bool, typer.Option("--summary", help="One line per group: total lag.")] = False,
    as_json: AsJson = False,
) -> None:
    """Every consumer group's lag per topic and partition.

    The numbers are those of `kafka-consumer-groups --describe --all-groups`."""
    server = fail_on_bad(lambda: bootstrap_of(bootstrap))
    wanted = fail_on_bad(lambda: [_check_group(g) for g in group] if group else None)

    async def work() -> tuple[list[lag_fmt.GroupSnapshot], list[lag_fmt.LagRow]]:
        async with inspector(server) as kafka:
            if wanted:
                known = set(await kafka.group_ids())
                missing = [g for g in wanted if g not in known]
                if missing:
                    known_text = ", ".join(sorted(known)) or "none"
                    raise OpsError(f"no consumer group {', '.join(missing)} (known: {known_text})")
            return await kafka.lag(wanted)

    snapshots, rows = run(work)
    if as_json:
        typer.echo(lag_fmt.rows_json(rows))
    elif summary:
        typer.echo(lag_fmt.format_totals(lag_fmt.totals(snapshots, rows)))
    elif not snapshots:
        typer.echo("no consumer groups")
    else:
        typer.echo(lag_fmt.format_rows(rows))


def _check_group(name: str) -> str:
    if not name.strip() or len(name) > 255:
        raise BadArgument(f"--group {name!r} is not a consumer group name")
    return name


# --- dead letters --------------------------------------------------------------------------------
@dlq_app.command("list")
def dlq_list(
    bootstrap: Bootstrap = None,
    topic: Annotated[
        str | None, typer.Option("--topic", "-t", help="Only dead letters from this topic.")
    ] = None,
    waiting: Annotated[bool, typer.Option("--waiting", help="Only those not redriven yet.")] = False,
    as_json: AsJson = False,
) -> None:
    """Dead letters with their original topic, partition, offset and error."""
    server = fail_on_bad(lambda: bootstrap_of(bootstrap))

    async def work() -> dead_letters.DlqView:
        with progress("reading banksync.dlq.v1"):
            async with inspector(server) as kafka:
                return await dead_letters.load(kafka)

    view = run(work)
    letters = [
        d
        for d in view.dead_letters
        if (topic is None or d.original_topic == topic) and not (waiting and d.redriven)
    ]
    if as_json:
        typer.echo(json.dumps([_letter_json(d) for d in letters], indent=2, ensure_ascii=False))
        return
    if not letters:
        typer.echo("no dead letters" + (f" from {topic}" if topic else ""))
        return
    typer.echo(dead_letters.format_list(letters))
    typer.echo(f"\n{len(letters)} dead letter(s), {sum(1 for d in letters if not d.redriven)} waiting")


def _letter_json(letter: dead_letters.DeadLetter) -> dict[str, Any]:
    found = asdict(letter)
    found["id"] = dead_letters.format_ref(letter.ref)
    found["value"] = letter.value.decode(errors="replace")
    found["headers"] = {k: v.decode(errors="replace") for k, v in letter.headers}
    return found


@dlq_app.command("show")
def dlq_show(
    ref: Annotated[
        str, typer.Argument(metavar="ID", help="PARTITION:OFFSET of the dead letter, as `dlq list` shows it.")
    ],
    bootstrap: Bootstrap = None,
    as_json: AsJson = False,
) -> None:
    """One dead letter in full: headers, error, and the record's value."""
    server = fail_on_bad(lambda: bootstrap_of(bootstrap))
    wanted = fail_on_bad(lambda: dead_letters.parse_ref(ref))

    async def work() -> dead_letters.DeadLetter:
        async with inspector(server) as kafka:
            view = await dead_letters.load(kafka, partitions=[wanted[0]])
        found = view.find(wanted)
        if found is None:
            raise OpsError(f"no dead letter at {ref} (see `banksync dlq list`)")
        return found

    letter = run(work)
    typer.echo(
        json.dumps(_letter_json(letter), indent=2, ensure_ascii=False)
        if as_json
        else dead_letters.format_show(letter)
    )


@dlq_app.command("redrive")
def dlq_redrive(
    refs: Annotated[
        list[str], typer.Argument(metavar="ID...", help="PARTITION:OFFSET of each dead letter to send back.")
    ],
    bootstrap: Bootstrap = None,
    value_file: Annotated[
        Path | None,
        typer.Option(
            "--value-file",
            help="Send this fixed value instead of the dead letter's (one id only).",
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Send dead letters back to their original topic (original key, headers minus dlq.*), once each."""
    server = fail_on_bad(lambda: bootstrap_of(bootstrap))
    wanted = fail_on_bad(lambda: [dead_letters.parse_ref(r) for r in refs])
    value = fail_on_bad(lambda: _fixed_value(value_file, len(wanted)))
    if len(set(wanted)) != len(wanted):
        fail_on_bad(lambda: _raise(BadArgument("the same dead letter is named twice")))

    async def work() -> tuple[list[dead_letters.RedriveResult], list[str]]:
        done: list[dead_letters.RedriveResult] = []
        refused: list[str] = []
        with progress("redriving", total=len(wanted)) as (bar, task):
            async with inspector(server) as kafka:
                for ref in wanted:
                    try:
                        done.append(await dead_letters.redrive(kafka, ref, value=value))
                    except OpsError as exc:
                        refused.append(str(exc))
                    bar.advance(task)
        return done, refused

    done, refused = run(work)
    for result in done:
        fixed = " (fixed value)" if result.fixed else ""
        where = f"{result.topic} partition {result.partition} offset {result.offset}"
        typer.echo(f"redriven {dead_letters.format_ref(result.ref)} -> {where}{fixed}")
    for reason in refused:
        say("refused", reason)
    if refused:
        raise typer.Exit(1)


def _fixed_value(path: Path | None, count: int) -> bytes | None:
    if path is None:
        return None
    if count != 1:
        raise BadArgument("--value-file fixes one dead letter: name exactly one id")
    try:
        value = path.read_bytes()
    except OSError as exc:
        raise BadArgument(f"--value-file {path}: {exc.strerror}") from None
    try:
        json.loads(value)
    except ValueError:
        raise BadArgument(f"--value-file {path} is not JSON (records are CloudEvents in JSON)") from None
    return value


def _raise(exc: Exception) -> None:
    raise exc


# --- HTTP: status, replay ------------------------------------------------------------------------
@app.command()
def status(
    user: Annotated[str, typer.Option("--user", "-u", help="The user id.")],
    url: Annotated[
        str | None, typer.Option("--url", help="Connector base URL (default: CONNECTOR_URL).")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """A user's connections, accounts, last syncs and errors, from the connector (ops token)."""
    found = fail_on_bad(settings)
    user_id = fail_on_bad(lambda: services.check_id("user", user))
    base = fail_on_bad(lambda: check_url("--url", url or found.connector_url))
    connector = services.ServiceClient("connector", base, services.ops_token(found.token_policy()))
    result = run(lambda: services.fetch_status(connector, user_id))
    if as_json:
        typer.echo(json.dumps({"connections": result.connections, "sync_status": result.accounts}, indent=2))
    else:
        typer.echo(services.format_status(result))


@app.command()
def replay(
    user: Annotated[str, typer.Option("--user", "-u", help="The user id.")],
    account: Annotated[str, typer.Option("--account", "-a", help="The aggregator account id.")],
    since: Annotated[
        str | None, typer.Option("--since", help="Only lines dated from this day (YYYY-MM-DD).")
    ] = None,
    url: Annotated[
        str | None, typer.Option("--url", help="Importer base URL (default: IMPORTER_URL).")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Follow the replay while the importer reports progress.")
    ] = True,
    timeout: Annotated[float, typer.Option("--timeout", min=1, help="Seconds to wait for it.")] = 600.0,
    direct: Annotated[
        bool,
        typer.Option(
            "--direct",
            help="Run the importer's replay in this process (its MONGODB_URL/MONGODB_DATABASE), "
            "not over HTTP: for when the importer service is down.",
        ),
    ] = False,
) -> None:
    """Rebuild one account's operations from the raw topic, through the importer's replay."""
    found = fail_on_bad(settings)
    since_day = fail_on_bad(lambda: services.parse_since(since))
    body = fail_on_bad(lambda: services.replay_body(user, account, since_day))
    base = fail_on_bad(lambda: check_url("--url", url or found.importer_url))
    importer = services.ServiceClient(
        "importer", base, services.ops_token(found.token_policy()), timeout_s=timeout
    )
    label = f"replaying {body['user_id']}:{body['aggregator_account_id']}"

    async def work() -> tuple[dict[str, Any], services.ReplayProgress | None]:
        with progress(label) as (bar, task):
            if direct:
                return await services.replay_direct(found, user, account, since_day), None
            started = await services.start_replay(importer, body)
            if not wait or started.status_path is None:
                return started.answer, None

            def show(p: services.ReplayProgress) -> None:
                bar.update(task, total=p.total, completed=p.processed or 0, description=f"replay {p.state}")

            final = await services.follow_replay(importer, started.status_path, show, timeout_s=timeout)
            return started.answer, final

    answer, final = run(work)
    typer.echo(json.dumps(final.body if final else answer, indent=2, ensure_ascii=False))
    if final is not None and final.failed:
        reason = final.body.get("error") or final.body.get("detail") or ""
        say("error", f"the replay ended {final.state}" + (f": {reason}" if reason else ""))
        raise typer.Exit(1)


# --- AsyncAPI ------------------------------------------------------------------------------------
@app.command()
def asyncapi(
    check: Annotated[
        bool, typer.Option("--check", help="Fail (exit 1) if the file is not what the code generates.")
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Where the document goes (default: docs/asyncapi.json).", dir_okay=False
        ),
    ] = None,
) -> None:
    """Generate the AsyncAPI document of every topic and event from the code (faststream)."""
    from ops import asyncapi as spec

    path = output or spec.DOCUMENT_PATH
    if check:
        if not spec.is_current(path):
            say("error", f"{path} is not current: run `banksync asyncapi` and commit it")
            raise typer.Exit(1)
        typer.echo(f"{path} is current")
        return
    spec.write(path)
    typer.echo(f"wrote {path}")


def main() -> None:
    app(prog_name="banksync")


if __name__ == "__main__":  # pragma: no cover
    main()
