"""The user journey of `make demo`, through the public HTTP APIs only.

One Standard user, from refusal to pause: refused, subscribes to Auto-Import, links two demo banks in
the aggregator's webview (its HTML form parsed and posted as a browser would), chooses the accounts,
a reconciliation account and import modes, syncs a year of history, sees accounts and operations,
creates payees (one from an operation, as a correction) and sees the past recognised, has a pending
card line booked at the bank and syncs again, deletes an account and gets it back by an ops replay,
then cancels the option and is paused.

The aggregator sandbox's control API plays the bank (its truth: which lines an account has; booking a
pending line); everything else goes through the four services' contract APIs with JWTs signed with
`BANKSYNC_JWT_SECRET`. `deploy/local/demo.py` runs it on the local stack and shows the progress;
`tests/integration/test_journey.py` runs the same code on a private pipeline and checks every outcome
in `JourneyResult` precisely.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol, TypeVar

import httpx

from harness.devstack import WebviewForm
from harness.paging import Page, Params, operations_path, pages
from shared.auth import issue_token

Json = dict[str, Any]
T = TypeVar("T")
_NOTHING = object()  # what a wait has "seen move" before its first answer

CENT = Decimal("0.01")
# the importer's `reconcile` mode matches a manual operation at most this many days from the bank line
MANUAL_WINDOW_DAYS = 4
PREVIEW_CHUNK = 1000
PAGE = 500

# payees the user creates with their keywords (the built-in dictionary knows neither bakery)
PAYEES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Au Pétrin Doré", "alimentation", ("PETRIN DORE",)),
    ("Maison Kayser", "alimentation", ("MAISON KAYSER",)),
)
# an operation the user corrects by creating its payee from it (keywords suggested from the memo)
CORRECTION: tuple[str, str, str] = ("COIFFEUR L ATELIER", "Coiffeur L'Atelier", "shopping")


class JourneyError(RuntimeError):
    """The stack did not answer or behave as the journey needs (the message says what it saw)."""


class CallFailed(JourneyError):
    """One HTTP call failed: `status` is the answer's status code, None when no answer came."""

    def __init__(self, message: str, status: int | None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def transient(self) -> bool:
        """No answer (timeout, connection refused or reset) or a 5xx: worth asking again."""
        return self.status is None or self.status >= 500


class Stalled(JourneyError):
    """A wait saw nothing move for its stall window, or reached its absolute cap."""


# ---- what it talks to and how it tells ----------------------------------------------------------------


@dataclass(frozen=True)
class Endpoints:
    """Base URLs of the four services and of the aggregator sandbox (the bank)."""

    entitlements: str
    connector: str
    importer: str
    categorizer: str
    aggregator: str


class Reporter(Protocol):
    """Where the journey says what happens (a terminal, a test log)."""

    def step_started(self, number: int, total: int, title: str) -> None: ...

    def detail(self, text: str) -> None: ...

    def progress(self, text: str, done: int, total: int | None = None) -> None: ...

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None: ...

    def check(self, ok: bool, text: str) -> None: ...

    def step_finished(self, title: str, seconds: float) -> None: ...


class PlainReporter:
    """Plain lines through `write` (print by default): for logs and tests."""

    def __init__(self, write: Callable[[str], None] = print) -> None:
        self.write = write

    def step_started(self, number: int, total: int, title: str) -> None:
        self.write(f"[{number}/{total}] {title}")

    def detail(self, text: str) -> None:
        self.write(f"    {text}")

    def progress(self, text: str, done: int, total: int | None = None) -> None:
        pass

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        self.write(f"    {title}: " + " | ".join(columns))
        for row in rows:
            self.write("      " + " | ".join(row))

    def check(self, ok: bool, text: str) -> None:
        self.write(f"    {'ok' if ok else 'FAILED'}: {text}")

    def step_finished(self, title: str, seconds: float) -> None:
        self.write(f"    done in {seconds:.1f} s")


# ---- what it found -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    step: str
    text: str
    ok: bool


@dataclass
class ChosenAccount:
    """One bank account the user synced, and where its lines go."""

    aggregator_account_id: str
    connection_id: str
    bank: str
    name: str
    type: str
    import_mode: str
    target_account_id: str | None
    app_account_id: str | None = None
    # the live lines the bank shows when the first sync starts (aggregator transaction ids)
    bank_txids: list[str] = field(default_factory=list)

    @property
    def bank_lines(self) -> int:
        return len(self.bank_txids)


@dataclass
class Reconciliation:
    manual_account_id: str = ""
    # manual operation id -> the bank line (aggregator transaction id) it was typed after, or None
    manual: dict[str, str | None] = field(default_factory=dict)


@dataclass
class PayeeOutcome:
    payee: Json
    how: str  # "keywords" or "correction"
    # operations whose memo holds one of its keywords (what the user expects), plus a corrected one
    expected: set[str] = field(default_factory=set)
    recognised_before: set[str] = field(default_factory=set)
    recognised: set[str] = field(default_factory=set)


@dataclass
class BookingOutcome:
    account_id: str = ""
    pending_txid: str = ""
    booked_txid: str = ""
    before: Json = field(default_factory=dict)
    after: Json | None = None
    operations_before: int = 0
    operations_after: int = 0
    with_pending_txid: int = 0
    with_booked_txid: int = 0
    sync_run_id: str = ""
    # the card purchase of today the user made when the card had no pending line yet (else "")
    purchase_txid: str = ""


@dataclass
class ReplayOutcome:
    account_id: str = ""
    aggregator_account_id: str = ""
    account_before: Json = field(default_factory=dict)
    account_after: Json | None = None
    before: dict[str, Json] = field(default_factory=dict)
    after: dict[str, Json] = field(default_factory=dict)
    listed_after_delete: bool = True
    operations_status_after_delete: int = 0
    replay: Json = field(default_factory=dict)
    others_before: dict[str, dict[str, Json]] = field(default_factory=dict)
    others_after: dict[str, dict[str, Json]] = field(default_factory=dict)


@dataclass
class ResyncOutcome:
    """The help page's advice: payees created, the account deleted in Settings, a sync again."""

    account_id: str = ""
    aggregator_account_id: str = ""
    before: dict[str, Json] = field(default_factory=dict)
    after: dict[str, Json] = field(default_factory=dict)
    marked: Json = field(default_factory=dict)
    sync_run_id: str = ""
    gaps: dict[str, str | None] = field(default_factory=dict)


@dataclass
class ReconnectOutcome:
    connection_id: str = ""
    failed: list[Json] = field(default_factory=list)
    offer: Json = field(default_factory=dict)
    callback: Json = field(default_factory=dict)
    repaired: list[Json] = field(default_factory=list)
    operations_before: int = 0
    operations_after: int = 0
    gaps: dict[str, str | None] = field(default_factory=dict)


@dataclass
class PauseOutcome:
    entitlements: Json = field(default_factory=dict)
    status: list[Json] = field(default_factory=list)
    connection_states: list[str] = field(default_factory=list)
    sync_answer: int = 0
    sync_problem: Json = field(default_factory=dict)
    operations_before: int = 0
    operations_after: int = 0


@dataclass
class JourneyResult:
    user_id: str
    checks: list[Check] = field(default_factory=list)
    timings: list[tuple[str, float]] = field(default_factory=list)
    # every wait: what, how long it took, the longest it saw nothing move (seconds)
    waits: list[tuple[str, float, float]] = field(default_factory=list)
    refusal_status: int = 0
    refusal_content_type: str = ""
    refusal: Json = field(default_factory=dict)
    # the user's own token asking for Premium: (status, problem code)
    self_grant: tuple[int, str] = (0, "")
    entitlements: Json = field(default_factory=dict)
    connections: list[Json] = field(default_factory=list)
    chosen: list[ChosenAccount] = field(default_factory=list)
    not_chosen: list[str] = field(default_factory=list)
    reconciliation: Reconciliation = field(default_factory=Reconciliation)
    sync_status: list[Json] = field(default_factory=list)
    accounts: list[Json] = field(default_factory=list)
    # app account id -> its operations by id, after the first sync
    history: dict[str, dict[str, Json]] = field(default_factory=dict)
    recognised_after_sync: int = 0
    payees: list[PayeeOutcome] = field(default_factory=list)
    corrected_operation: Json = field(default_factory=dict)
    booking: BookingOutcome = field(default_factory=BookingOutcome)
    replay: ReplayOutcome = field(default_factory=ReplayOutcome)
    resync: ResyncOutcome = field(default_factory=ResyncOutcome)
    reconnect: ReconnectOutcome = field(default_factory=ReconnectOutcome)
    pause: PauseOutcome = field(default_factory=PauseOutcome)
    final_accounts: int = 0
    final_operations: int = 0
    final_recognised: int = 0

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def recognised_share(self) -> float:
        return self.final_recognised / self.final_operations if self.final_operations else 0.0

    def chosen_by_id(self, aggregator_account_id: str) -> ChosenAccount:
        return next(c for c in self.chosen if c.aggregator_account_id == aggregator_account_id)


# ---- helpers ---------------------------------------------------------------------------------------------


def amount_of(value: object) -> Decimal:
    """A Powens JSON number or a contract decimal string, exact to the cent."""
    return Decimal(str(value)).quantize(CENT)


def is_live(line: Json) -> bool:
    """A bank line the bank still shows (not deleted, active)."""
    return not line.get("deleted") and line.get("active", True) is not False


def short(text: str, width: int = 46) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def categorization_of(op: Json) -> tuple[str | None, str | None]:
    payee = op.get("payee")
    return (payee["id"] if payee else None, op.get("category"))


TRANSFER_LEG = (None, "epargne")


def expected_of(
    expected: dict[str, tuple[str | None, str | None]], op_id: str, op: Json
) -> tuple[str | None, str | None]:
    """What an operation should carry: one leg of a transfer between the user's own accounts is savings
    (no payee) unless the user chose; any other what today's rules say."""
    by = op.get("categorized_by") or {}
    if op.get("transfer") and by.get("source") != "manual":
        return TRANSFER_LEG
    return expected[op_id]


class Journey:
    """The whole journey for one new user; `run()` returns what it saw, step by step."""

    STEPS: tuple[tuple[str, str], ...] = (
        ("A Standard user asks for automatic sync", "refused"),
        ("They subscribe to the Auto-Import option", "subscribe"),
        ("They link two demo banks in the aggregator's webview", "link_banks"),
        ("They choose accounts, a reconciliation account and import modes", "choose_accounts"),
        ("A year of history is synced", "first_sync"),
        ("They look at their accounts and operations", "look"),
        ("They create payees: the past is recognised", "create_payees"),
        ("The bank books a pending card line; they sync again", "booking"),
        ("They delete an account; ops get it back by replay", "delete_and_replay"),
        ("They delete an account in Settings and sync again: all comes back", "delete_and_resync"),
        ("Their bank refuses the password: they reconnect", "reconnect"),
        ("They cancel the option: sync is paused", "cancel"),
    )

    def __init__(
        self,
        endpoints: Endpoints,
        jwt_secret: str,
        reporter: Reporter | None = None,
        *,
        user_id: str | None = None,
        stall_s: float = 90.0,
        cap_s: float = 1200.0,
        poll_s: float = 0.5,
    ) -> None:
        self.endpoints = endpoints
        self.reporter = reporter or PlainReporter()
        self.user_id = user_id or f"demo-{uuid.uuid4().hex[:8]}"
        # every wait is on progress: it fails when what it watches has not moved for `stall_s`, and
        # whatever moves, after `cap_s` (so nothing hangs); it polls every `poll_s` or more (see _wait)
        self.stall_s = stall_s
        self.cap_s = cap_s
        self.poll_s = poll_s
        self.result = JourneyResult(self.user_id)
        user_token = issue_token(jwt_secret, self.user_id, ttl_s=3 * 3600)
        ops_token = issue_token(jwt_secret, "journey-ops", scopes="ops", ttl_s=3 * 3600)
        # plans and options change only through Budgetfacile's billing backend, after payment
        billing_token = issue_token(jwt_secret, "journey-billing", scopes="billing", ttl_s=3 * 3600)

        def client(base: str, token: str | None = None) -> httpx.Client:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return httpx.Client(base_url=base, headers=headers, timeout=60)

        self.entitlements = client(endpoints.entitlements, user_token)
        self.billing = client(endpoints.entitlements, billing_token)
        self.connector = client(endpoints.connector, user_token)
        self.importer = client(endpoints.importer, user_token)
        self.categorizer = client(endpoints.categorizer, user_token)
        self.importer_ops = client(endpoints.importer, ops_token)
        self.bank = client(endpoints.aggregator)
        self._step = ""

    # -- running

    def run(self) -> JourneyResult:
        try:
            for number, (title, action) in enumerate(self.STEPS, start=1):
                self._step = title
                self.reporter.step_started(number, len(self.STEPS), title)
                started = time.perf_counter()
                getattr(self, action)()
                elapsed = time.perf_counter() - started
                self.result.timings.append((title, elapsed))
                self.reporter.step_finished(title, elapsed)
            self.summarise()
            return self.result
        finally:
            self.close()

    def close(self) -> None:
        for api in (
            self.entitlements,
            self.billing,
            self.connector,
            self.importer,
            self.categorizer,
            self.importer_ops,
            self.bank,
        ):
            api.close()

    # -- plumbing

    def _check(self, ok: bool, text: str) -> bool:
        self.result.checks.append(Check(self._step, text, ok))
        self.reporter.check(ok, text)
        return ok

    def _call(
        self, api: httpx.Client, method: str, path: str, expect: Sequence[int] = (200,), **kwargs: Any
    ) -> httpx.Response:
        try:
            answer = api.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise CallFailed(f"{method} {api.base_url}{path}: {type(exc).__name__}: {exc}", None) from exc
        if answer.status_code not in expect:
            raise CallFailed(
                f"{method} {api.base_url}{path} answered {answer.status_code}: {answer.text[:500]}",
                answer.status_code,
            )
        return answer

    def _json(
        self, api: httpx.Client, method: str, path: str, expect: Sequence[int] = (200,), **kw: Any
    ) -> Any:
        return self._call(api, method, path, expect, **kw).json()

    def _wait(
        self,
        what: str,
        probe: Callable[[], T],
        done: Callable[[T], bool],
        *,
        measure: Callable[[T], object] | None = None,
        progress: Callable[[T], tuple[int, int | None]] | None = None,
        describe: Callable[[T], str] | None = None,
        judge_stall: bool = False,
    ) -> T:
        """Polls `probe` until `done(value)` and returns that value: a wait on progress, not on a clock.

        `measure(value)` is what counts as progress (default: the value itself); the wait gives up only
        when it has not moved for `stall_s`, or, however it moves, after `cap_s`. Giving up raises
        `Stalled` saying what it waited for, the last value seen (`describe`, else `progress`, else
        repr) and how long nothing had moved; with `judge_stall` it reports that and returns the last
        value instead, so the caller's check judges it (and fails) and the journey goes on. A probe that
        fails for a transient reason (no answer, 5xx) counts as no movement. Between polls: `poll_s`,
        or twice what the probe took when longer (reading every operation loads the engine), at most 5 s.
        """
        started = last_move = time.monotonic()
        seen: list[T] = []
        moved: object = _NOTHING
        error: CallFailed | None = None
        longest_still = 0.0
        while True:
            asked = time.monotonic()
            try:
                value = probe()
            except CallFailed as exc:
                if not exc.transient:
                    raise
                error = exc
            else:
                error = None
                seen[:] = [value]
                if progress is not None:
                    finished, total = progress(value)
                    self.reporter.progress(what, finished, total)
                if done(value):
                    now = time.monotonic()
                    self.result.waits.append((what, now - started, max(longest_still, now - last_move)))
                    return value
                now_moved = measure(value) if measure is not None else value
                if now_moved != moved:
                    moved, last_move = now_moved, time.monotonic()
            now = time.monotonic()
            still, elapsed = now - last_move, now - started
            longest_still = max(longest_still, still)
            if still >= self.stall_s or elapsed >= self.cap_s:
                shown = self._shown(seen[0], progress, describe) if seen else "no answer yet"
                why = (
                    f"nothing moved for {still:.0f} s (stall window {self.stall_s:.0f} s)"
                    if still >= self.stall_s
                    else f"it moved {still:.0f} s ago, but the absolute cap of {self.cap_s:.0f} s is reached"
                )
                message = f"{what}: not done after {elapsed:.0f} s, {why}; last seen: {shown[:1500]}" + (
                    f"; last probe failed: {error}" if error is not None else ""
                )
                self.result.waits.append((what, elapsed, longest_still))
                if not judge_stall or not seen:
                    raise Stalled(message)
                self.reporter.detail(f"gave up waiting: {message}")
                return seen[0]
            took = time.monotonic() - asked
            time.sleep(min(max(self.poll_s, 2 * took), max(self.poll_s, 5.0)))

    @staticmethod
    def _shown(
        value: T,
        progress: Callable[[T], tuple[int, int | None]] | None,
        describe: Callable[[T], str] | None,
    ) -> str:
        if describe is not None:
            return describe(value)
        if progress is not None:
            finished, total = progress(value)
            return f"{finished} of {total}" if total is not None else str(finished)
        return repr(value)

    # -- reading the stack

    def bank_lines(self, aggregator_account_id: str) -> list[Json]:
        """The bank's truth for one account (the sandbox's control API), deleted lines included."""
        found: list[Json] = self._json(
            self.bank, "GET", f"/sandbox/accounts/{aggregator_account_id}/transactions/all"
        )["transactions"]
        return found

    def app_accounts(self) -> list[Json]:
        found: list[Json] = self._json(self.importer, "GET", f"/v1/users/{self.user_id}/accounts")
        return found

    def operations(self, account_id: str) -> dict[str, Json]:
        def fetch(params: Params) -> Page:
            page: Page = self._json(
                self.importer, "GET", operations_path(self.user_id, account_id), params=params
            )
            return page

        return {op["id"]: op for page in pages(fetch, PAGE) for op in page["items"]}

    def operations_if_back(self, account_id: str) -> dict[str, Json]:
        """The operations of an account being rebuilt; none while it is not back yet (404)."""
        try:
            return self.operations(account_id)
        except CallFailed as exc:
            if exc.status == 404:
                return {}
            raise

    def all_operations(self) -> dict[str, dict[str, Json]]:
        return {a["account_id"]: self.operations(a["account_id"]) for a in self.app_accounts()}

    def sync_status(self) -> list[Json]:
        found: list[Json] = self._json(self.connector, "GET", f"/v1/users/{self.user_id}/sync/status")
        return found

    def preview(self, memos: Sequence[str]) -> list[Json]:
        answers: list[Json] = []
        for start in range(0, len(memos), PREVIEW_CHUNK):
            answers += self._json(
                self.categorizer,
                "POST",
                f"/v1/users/{self.user_id}/categorize/preview",
                json={"memos": list(memos[start : start + PREVIEW_CHUNK])},
            )
        return answers

    def expected_categorizations(self, ops: dict[str, Json]) -> dict[str, tuple[str | None, str | None]]:
        """What today's rules say of each operation (the categorizer's pure preview); a user's own
        choice stays, and a manual entry no bank line reconciled has nothing to recognise."""
        expected: dict[str, tuple[str | None, str | None]] = {}
        to_preview: list[tuple[str, str]] = []
        for op_id, op in ops.items():
            by = op.get("categorized_by") or {}
            if by.get("source") == "manual":
                expected[op_id] = categorization_of(op)
            elif op["source"] == "manual" and not op["reconciled"]:
                expected[op_id] = (None, None)
            else:
                to_preview.append((op_id, op["memo"] if op["memo"].strip() else op["label"]))
        answers = self.preview([memo for _, memo in to_preview])
        for (op_id, _), answer in zip(to_preview, answers, strict=True):
            payee = answer.get("payee")
            expected[op_id] = (payee["id"] if payee else None, answer.get("category"))
        return expected

    def wait_categorized(self, what: str) -> dict[str, dict[str, Json]]:
        """Until every operation carries what today's rules say (categorisation flows through Kafka)."""
        expected = self.expected_categorizations(
            {k: v for ops in self.all_operations().values() for k, v in ops.items()}
        )

        def probe() -> dict[str, dict[str, Json]]:
            return self.all_operations()

        def agreeing(all_ops: dict[str, dict[str, Json]]) -> int:
            return sum(
                1
                for ops in all_ops.values()
                for op_id, op in ops.items()
                if op_id in expected and expected_of(expected, op_id, op) == categorization_of(op)
            )

        found = self._wait(
            what,
            probe,
            lambda all_ops: agreeing(all_ops) == len(expected),
            # progress: operations as today's rules say (and how many there are)
            measure=lambda all_ops: (agreeing(all_ops), sum(len(ops) for ops in all_ops.values())),
            progress=lambda all_ops: (agreeing(all_ops), len(expected)),
            judge_stall=True,
            describe=lambda all_ops: self._disagreements(expected, all_ops),
        )
        agree = agreeing(found)
        self._check(
            agree == len(expected),
            f"{what}: all {len(expected)} operations as today's rules say"
            if agree == len(expected)
            else f"{what}: {self._disagreements(expected, found)}",
        )
        return found

    @staticmethod
    def _disagreements(
        expected: dict[str, tuple[str | None, str | None]], all_ops: dict[str, dict[str, Json]]
    ) -> str:
        ops = {k: v for account in all_ops.values() for k, v in account.items()}
        wrong = [
            k
            for k in expected
            if k not in ops or categorization_of(ops[k]) != expected_of(expected, k, ops[k])
        ]
        samples = [
            f"{ops[k]['memo'][:60]!r}: expected {expected_of(expected, k, ops[k])}, "
            f"got {categorization_of(ops[k])}"
            if k in ops
            else f"{k}: missing"
            for k in wrong[:5]
        ]
        return f"{len(wrong)} of {len(expected)} operations differ, e.g. " + "; ".join(samples)

    # -- the steps

    def refused(self) -> None:
        rights = self._json(self.entitlements, "GET", f"/v1/users/{self.user_id}/entitlements")
        self.reporter.detail(
            f"user {self.user_id}: plan {rights['plan']}, options {rights['options'] or 'none'}"
        )
        answer = self._call(
            self.connector, "POST", f"/v1/users/{self.user_id}/sync/activate", expect=(200, 403)
        )
        r = self.result
        r.refusal_status = answer.status_code
        r.refusal_content_type = answer.headers.get("content-type", "")
        r.refusal = answer.json()
        self.reporter.detail(f"{answer.status_code} {r.refusal.get('code')}: {r.refusal.get('detail')}")
        self._check(
            answer.status_code == 403
            and r.refusal.get("code") == "not_entitled"
            and r.refusal_content_type.startswith("application/problem+json"),
            "activation refused: 403 not_entitled problem document",
        )

    def subscribe(self) -> None:
        own = self.entitlements.put(f"/v1/users/{self.user_id}/plan", json={"plan": "premium"})
        self.result.self_grant = (own.status_code, str(own.json().get("code")))
        self.reporter.detail(
            f"the user's own token asking for Premium: {own.status_code} {own.json().get('code')}"
        )
        self._check(
            self.result.self_grant == (403, "forbidden"),
            "a user cannot grant itself Premium: 403 forbidden",
        )
        # billing subscribes the user to Auto-Import once the payment went through
        rights = self._json(self.billing, "POST", f"/v1/users/{self.user_id}/options/auto_import")
        self.result.entitlements = rights
        self.reporter.detail(
            f"options {rights['options']}; auto_sync_allowed={rights['auto_sync_allowed']}"
            + (f" ({rights['reason']})" if rights.get("reason") else "")
        )
        self._check(rights["auto_sync_allowed"] is True, "automatic sync allowed")

    def link_banks(self) -> None:
        for bank_index in (0, 1):
            connection = self._link_bank(bank_index)
            self.result.connections.append(connection)
            self.reporter.table(
                f"{connection['bank']['name']} (connection {connection['connection_id']})",
                ("account", "type", "balance"),
                [(a["name"], a["type"], f"{a['balance']} {a['currency']}") for a in connection["accounts"]],
            )
        banks = {c["bank"]["id"] for c in self.result.connections}
        self._check(
            len(banks) == 2 and all(c["accounts"] and c["state"] is None for c in self.result.connections),
            "two banks linked, their accounts discovered",
        )

    def _link_bank(self, bank_index: int) -> Json:
        """Activation, then the webview as a browser fills it (bank, login), then back to the callback."""
        activation = self._json(self.connector, "POST", f"/v1/users/{self.user_id}/sync/activate")
        return self._through_webview(activation["connect_url"], bank_index)

    def _through_webview(self, connect_url: str, bank_index: int | None) -> Json:
        """The aggregator's webview as a browser fills it (the bank to pick, unless it is a reconnect,
        and the login), then back to the connector's callback; returns the callback's answer."""
        with httpx.Client(timeout=60, follow_redirects=False) as browser:
            page = browser.get(connect_url)
            if page.status_code != 200:
                raise JourneyError(f"the webview answered {page.status_code}: {page.text[:300]}")
            form = WebviewForm()
            form.feed(page.text)
            chosen: dict[str, str] = {}
            if bank_index is not None:
                if len(form.banks) <= bank_index:
                    raise JourneyError(f"the webview offers {len(form.banks)} banks")
                chosen["connector_id"] = form.banks[bank_index]
            posted = browser.post(
                httpx.URL(connect_url).join(form.action or connect_url),
                data={
                    **form.fields,
                    **chosen,
                    "login": "demo",
                    "password": "typed-in-the-webview-only",
                },
            )
            if posted.status_code != 303:
                raise JourneyError(f"the webview login answered {posted.status_code}: {posted.text[:300]}")
            back = browser.get(posted.headers["location"])
            if back.status_code != 200:
                raise JourneyError(f"the callback answered {back.status_code}: {back.text[:300]}")
            linked: Json = back.json()
            return linked

    def choose_accounts(self) -> None:
        """Bank 1: its checking account reconciles with the manual account the user kept by hand; its
        savings and card accounts get new app accounts. Bank 2: its savings and card accounts, not
        its checking account (a joint account the user leaves out)."""
        r = self.result
        first, second = r.connections
        by_type = {c["connection_id"]: {a["type"]: a for a in c["accounts"]} for c in r.connections}
        checking = by_type[first["connection_id"]]["checking"]
        plan: list[tuple[Json, Json, str]] = [(first, checking, "reconcile")]
        plan += [(first, a, "create") for a in first["accounts"] if a is not checking]
        plan += [(second, a, "create") for a in second["accounts"] if a["type"] != "checking"]
        r.not_chosen = [
            a["aggregator_account_id"]
            for c in r.connections
            for a in c["accounts"]
            if all(a is not chosen for _, chosen, _ in plan)
        ]

        manual = self._json(
            self.importer,
            "POST",
            f"/v1/users/{self.user_id}/accounts",
            expect=(201,),
            json={"name": "Compte courant (tenu à la main)", "currency": "EUR"},
        )
        r.reconciliation.manual_account_id = manual["account_id"]
        self._type_manual_entries(checking["aggregator_account_id"])

        for connection, account, mode in plan:
            target = manual["account_id"] if mode == "reconcile" else None
            self._json(
                self.importer,
                "PUT",
                f"/v1/users/{self.user_id}/links/{account['aggregator_account_id']}",
                json={"target_account_id": target, "import_mode": mode},
            )
            r.chosen.append(
                ChosenAccount(
                    aggregator_account_id=account["aggregator_account_id"],
                    connection_id=connection["connection_id"],
                    bank=connection["bank"]["name"],
                    name=account["name"],
                    type=account["type"],
                    import_mode=mode,
                    target_account_id=target,
                    app_account_id=target,
                )
            )
        self.reporter.table(
            "sync settings",
            ("bank", "account", "import mode", "into"),
            [
                (
                    c.bank,
                    c.name,
                    c.import_mode,
                    manual["name"] if c.target_account_id else "a new app account",
                )
                for c in r.chosen
            ]
            + [(self._bank_of(a), self._name_of(a), "not synced", "") for a in r.not_chosen],
        )
        # choosing the accounts starts their first sync (about a year of history)
        for connection in r.connections:
            selected = [
                c.aggregator_account_id for c in r.chosen if c.connection_id == connection["connection_id"]
            ]
            view = self._json(
                self.connector,
                "PUT",
                f"/v1/users/{self.user_id}/connections/{connection['connection_id']}/accounts",
                json={"selected": selected},
            )
            shown = {a["aggregator_account_id"] for a in view["accounts"] if a["selected"]}
            self._check(
                shown == set(selected), f"{connection['bank']['name']}: {len(selected)} accounts selected"
            )

    def _bank_of(self, aggregator_account_id: str) -> str:
        return str(
            next(
                c["bank"]["name"]
                for c in self.result.connections
                if any(a["aggregator_account_id"] == aggregator_account_id for a in c["accounts"])
            )
        )

    def _name_of(self, aggregator_account_id: str) -> str:
        return str(
            next(
                a["name"]
                for c in self.result.connections
                for a in c["accounts"]
                if a["aggregator_account_id"] == aggregator_account_id
            )
        )

    def _type_manual_entries(self, aggregator_account_id: str) -> None:
        """What the user typed by hand before syncing: three recent payments as they remember them (a day
        or two before the bank booked them), and a cheque the payee has not cashed yet."""
        lines = [line for line in self.bank_lines(aggregator_account_id) if is_live(line)]
        today = max(dt.date.fromisoformat(line["date"]) for line in lines)
        amounts: Counter[Decimal] = Counter()
        for line in lines:
            amounts[amount_of(line["value"])] += 1
        recent = [
            line
            for line in lines
            if not line["coming"]
            and dt.timedelta(days=10) <= today - dt.date.fromisoformat(line["date"]) <= dt.timedelta(days=60)
            and amounts[amount_of(line["value"])] == 1  # unambiguous: no other line of that amount
        ]
        recent.sort(key=lambda line: (-abs(amount_of(line["value"])), line["id"]))
        entries: list[tuple[dt.date, Decimal, str, str | None]] = [
            (
                dt.date.fromisoformat(line["date"]) - dt.timedelta(days=1 + i % 2),
                amount_of(line["value"]),
                short(str(line["simplified_wording"] or line["wording"]).title(), 60),
                str(line["id"]),
            )
            for i, line in enumerate(recent[:3])
        ]
        cheque = Decimal("-87.30")
        while cheque in amounts:
            cheque -= CENT
        entries.append((today - dt.timedelta(days=2), cheque, "Chèque n°0001234 (pas encore encaissé)", None))
        manual_id = self.result.reconciliation.manual_account_id
        for day, amount, label, txid in entries:
            op = self._json(
                self.importer,
                "POST",
                f"/v1/users/{self.user_id}/accounts/{manual_id}/operations",
                expect=(201,),
                json={"date": day.isoformat(), "amount": str(amount), "currency": "EUR", "label": label},
            )
            self.result.reconciliation.manual[op["id"]] = txid
        self.reporter.table(
            "typed by hand in the manual account",
            ("date", "label", "amount"),
            [(d.isoformat(), label, str(a)) for d, a, label, _ in entries],
        )

    def first_sync(self) -> None:
        r = self.result
        for chosen in r.chosen:
            chosen.bank_txids = [
                str(line["id"]) for line in self.bank_lines(chosen.aggregator_account_id) if is_live(line)
            ]
        wanted = {c.aggregator_account_id for c in r.chosen}

        def fetched(status: list[Json]) -> int:
            return sum(
                1
                for s in status
                if s["aggregator_account_id"] in wanted and s["state"] == "ok" and s["last_run"]
            )

        status = self._wait(
            "accounts fetched from the aggregator",
            self.sync_status,
            lambda s: fetched(s) == len(wanted) or any(x["state"] in ("error", "action_needed") for x in s),
            progress=lambda s: (fetched(s), len(wanted)),
        )  # progress: any change of the accounts' status (a run started or finished, a state)
        r.sync_status = status
        lines = sum(s["last_run"]["transactions"] for s in status if s["last_run"])
        self.reporter.detail(f"the connector fetched {lines} bank lines from {len(status)} accounts")
        self._check(
            {s["aggregator_account_id"] for s in status} == wanted
            and all(s["state"] == "ok" for s in status),
            "every chosen account synced (state ok)",
        )

        def imported() -> tuple[dict[str, int], dict[str, int]]:
            self._map_app_accounts()
            expected = self._expected_counts()
            # an app account not created yet ("?" + its bank account) has none; the others count already
            return {k: 0 if k.startswith("?") else len(self.operations(k)) for k in expected}, expected

        counts, expected = self._wait(
            "operations imported",
            imported,
            lambda c: self._all_mapped() and c[0] == c[1],
            measure=lambda c: c[0],  # progress: app accounts created, operations imported into each
            progress=lambda c: (sum(c[0].values()), sum(c[1].values())),
            judge_stall=True,
        )
        total = sum(expected.values())
        live = sum(c.bank_lines for c in r.chosen)
        self._check(
            counts == expected,
            f"{sum(counts.values())} operations imported, {total} expected: one per live bank line "
            f"({live}) plus the manual entries no bank line matched ({total - live})",
        )
        categorized = self.wait_categorized("operations recognised by the built-in dictionary")
        r.history = {k: v for k, v in categorized.items() if k in expected}
        r.recognised_after_sync = sum(
            1 for ops in r.history.values() for op in ops.values() if op["category"]
        )
        every = sum(len(ops) for ops in r.history.values())
        self.reporter.detail(
            f"{r.recognised_after_sync} of {every} operations recognised at once "
            f"({r.recognised_after_sync / max(every, 1):.0%}, built-in dictionary)"
        )
        manual = r.history.get(r.reconciliation.manual_account_id, {})
        reconciled = [op_id for op_id in r.reconciliation.manual if manual.get(op_id, {}).get("reconciled")]
        self.reporter.detail(
            f"reconcile mode: {len(reconciled)} of {len(r.reconciliation.manual)} manual entries matched "
            "by a bank line instead of a new operation"
        )
        self._check(
            set(reconciled) == {k for k, v in r.reconciliation.manual.items() if v is not None},
            "the manual entries with a bank line are reconciled, the uncashed cheque is not",
        )

    def _expected_counts(self) -> dict[str, int]:
        """App account -> operations it should show: one per live bank line of the accounts it takes
        (reconcile mode: a matched manual entry stands for its line) plus unmatched manual entries."""
        r = self.result
        self._map_app_accounts()
        expected: Counter[str] = Counter()
        for chosen in r.chosen:
            expected[chosen.app_account_id or f"?{chosen.aggregator_account_id}"] += chosen.bank_lines
        manual_id = r.reconciliation.manual_account_id
        expected[manual_id] += sum(1 for txid in r.reconciliation.manual.values() if txid is None)
        return dict(expected)

    def _all_mapped(self) -> bool:
        return all(c.app_account_id for c in self.result.chosen)

    def _map_app_accounts(self) -> None:
        if self._all_mapped():
            return
        by_aggregator = {a["aggregator_account_id"]: a["account_id"] for a in self.app_accounts()}
        for chosen in self.result.chosen:
            chosen.app_account_id = chosen.app_account_id or by_aggregator.get(chosen.aggregator_account_id)

    def look(self) -> None:
        r = self.result
        r.accounts = self.app_accounts()
        banks = {
            b["id"]: b["name"] for b in self._json(self.importer, "GET", f"/v1/users/{self.user_id}/banks")
        }
        self.reporter.table(
            "accounts",
            ("account", "bank", "balance", "operations"),
            [
                (
                    a["name"],
                    banks.get(a["bank_id"] or "", "(manual)"),
                    f"{a['balance']} {a['currency']}",
                    str(len(r.history.get(a["account_id"], {}))),
                )
                for a in r.accounts
            ],
        )
        checking = next(c for c in r.chosen if c.import_mode == "reconcile")
        assert checking.app_account_id is not None
        latest = self._json(
            self.importer,
            "GET",
            f"/v1/users/{self.user_id}/accounts/{checking.app_account_id}/operations",
            params={"limit": 8},
        )["items"]
        self.reporter.table(
            f"latest operations of the manual account, reconciled with {checking.bank} · {checking.name}",
            ("date", "label", "amount", "status", "category"),
            [
                (
                    op["date"],
                    short(op["label"] or op["memo"], 34),
                    op["amount"],
                    op["status"],
                    (op["payee"]["name"] + " · " if op["payee"] else "") + (op["category"] or "—"),
                )
                for op in latest
            ],
        )
        shown = {a["account_id"] for a in r.accounts}
        self._check(
            shown == set(r.history) and len(r.accounts) == len(r.chosen),
            f"{len(r.accounts)} app accounts, one per synced bank account (reconciled: the manual one)",
        )

    def create_payees(self) -> None:
        r = self.result
        replayed = self._second_card().app_account_id
        before = {k: v for ops in self.all_operations().values() for k, v in ops.items()}
        for name, category, keywords in PAYEES:
            matching = self._matching(before, keywords)
            if not matching:
                continue
            payee = self._json(
                self.categorizer,
                "POST",
                f"/v1/users/{self.user_id}/payees",
                expect=(201,),
                json={"name": name, "category": category, "keywords": list(keywords)},
            )
            r.payees.append(
                PayeeOutcome(
                    payee,
                    "keywords",
                    expected=matching,
                    recognised_before={k for k in matching if before[k]["payee"]},
                )
            )
            self.reporter.detail(f"payee {name!r} ({category}), keywords {list(keywords)}")
        keyword, name, category = CORRECTION
        candidates = sorted(
            (op for op in before.values() if keyword in op["memo"].upper() and op["account_id"] != replayed),
            key=lambda op: (op["date"], op["id"]),
            reverse=True,
        )
        if candidates:
            chosen = candidates[0]
            answer = self._json(
                self.categorizer,
                "POST",
                f"/v1/users/{self.user_id}/operations/{chosen['id']}/payee",
                json={"new_payee": {"name": name, "category": category}},
            )
            keywords = tuple(answer["suggested_keywords"][:1])
            payee = answer["payee"]
            matching = self._matching(before, tuple(payee["keywords"])) | {chosen["id"]}
            r.payees.append(
                PayeeOutcome(
                    payee,
                    "correction",
                    expected=matching,
                    recognised_before={k for k in matching if before[k]["payee"]},
                )
            )
            r.corrected_operation = chosen
            self.reporter.detail(
                f"corrected {short(chosen['memo'])!r}: new payee {name!r} ({category}), "
                f"suggested keywords {list(keywords)}, {answer['matching_operations']} other operations match"
            )
        all_ops = self.wait_categorized("past operations re-examined with the new payees")
        flat = {k: v for ops in all_ops.values() for k, v in ops.items()}
        for outcome in r.payees:
            outcome.recognised = {
                k for k, op in flat.items() if (op["payee"] or {}).get("id") == outcome.payee["id"]
            }
            self.reporter.detail(
                f"{outcome.payee['name']}: {len(outcome.recognised)} operations recognised "
                f"({len(outcome.recognised_before)} before)"
            )
            self._check(
                outcome.recognised == outcome.expected,
                f"{outcome.payee['name']}: every operation whose memo names it, past ones included",
            )
        if r.corrected_operation:
            corrected = flat.get(r.corrected_operation["id"], {})
            self._check(
                (corrected.get("categorized_by") or {}).get("source") == "manual",
                "the corrected operation keeps the user's choice (source manual)",
            )

    @staticmethod
    def _matching(ops: dict[str, Json], keywords: Sequence[str]) -> set[str]:
        """Operations from the bank whose memo holds one of the keywords (what the user expects)."""
        return {
            op_id
            for op_id, op in ops.items()
            if (op["source"] == "bank" or op["reconciled"])
            and any(k.upper() in (op["memo"] or op["label"]).upper() for k in keywords)
        }

    def _second_card(self) -> ChosenAccount:
        """Where the bank books a pending line, and the account deleted then replayed: bank 2's
        deferred-debit card account (its app account created by the import)."""
        second = self.result.connections[1]["connection_id"]
        chosen = next(c for c in self.result.chosen if c.type == "card" and c.connection_id == second)
        assert chosen.app_account_id is not None
        return chosen

    def _pending_lines(self, chosen: ChosenAccount, ops: dict[str, Json]) -> list[Json]:
        """The account's pending bank lines imported as pending operations, with no other line of the same
        amount within a week (so that the booking can only match one), newest first."""
        lines = [line for line in self.bank_lines(chosen.aggregator_account_id) if is_live(line)]
        by_txid = {op["aggregator_transaction_id"]: op for op in ops.values()}

        def alone(line: Json) -> bool:
            day, amount = dt.date.fromisoformat(line["date"]), amount_of(line["value"])
            return not any(
                other["id"] != line["id"]
                and amount_of(other["value"]) == amount
                and abs((dt.date.fromisoformat(other["date"]) - day).days) <= 7
                for other in lines
            )

        return sorted(
            (
                line
                for line in lines
                if line["coming"]
                and alone(line)
                and by_txid.get(str(line["id"]), {}).get("status") == "pending"
            ),
            key=lambda line: (line["date"], line["id"]),
            reverse=True,
        )

    def _sync_and_wait(self, what: str) -> tuple[str, list[Json]]:
        """An on-demand sync of every account, until each has finished it: (run id, sync status)."""
        run = self._json(self.connector, "POST", f"/v1/users/{self.user_id}/sync", expect=(202,))
        run_id = str(run["sync_run_id"])

        def finished(status: list[Json]) -> int:
            return sum(
                1
                for s in status
                if s["last_run"] and s["last_run"]["sync_run_id"] == run_id and s["state"] != "syncing"
            )

        status = self._wait(
            what,
            self.sync_status,
            lambda s: bool(s) and finished(s) == len(s),
            progress=lambda s: (finished(s), len(s)),
        )  # progress: any change of the accounts' status (the run's state per account)
        return run_id, status

    def _card_purchase_today(self, chosen: ChosenAccount) -> None:
        """Early in a month a deferred-debit card has no pending line yet: the user pays by card today
        (pending until the month's end, when the card's total is debited) and syncs."""
        today = dt.date.today()
        debited = (today.replace(day=28) + dt.timedelta(days=4)).replace(day=1) - dt.timedelta(days=1)
        line = {
            "date": debited.isoformat(),
            "rdate": today.isoformat(),
            "value": "-18.70",
            "original_wording": f"CB BOULANGERIE DU MARCHE {today:%d/%m}",
            "coming": True,
        }
        account = chosen.aggregator_account_id
        path = f"/sandbox/accounts/{account}/transactions"
        made = self._json(self.bank, "POST", path, json=[line], expect=(201,))
        self.result.booking.purchase_txid = str(made["ids"][0])
        self.reporter.detail(f"no pending line this month: a card purchase today, {line['original_wording']}")
        self._sync_and_wait("the card purchase synced")
        assert chosen.app_account_id is not None
        [recognised] = self.preview([str(line["original_wording"])])
        category = recognised.get("category")

        def imported_and_recognised(ops: dict[str, Json]) -> bool:
            # the booking compares the operation before and after: it must be recognised before it is booked
            by_txid = {op["aggregator_transaction_id"]: op for op in ops.values()}
            purchase = by_txid.get(self.result.booking.purchase_txid)
            return purchase is not None and purchase.get("category") == category

        self._wait(
            "the card purchase imported as pending and recognised",
            lambda: self.operations(chosen.app_account_id or ""),
            imported_and_recognised,
            progress=lambda ops: (len(ops), None),
        )  # progress: the account's operations

    def booking(self) -> None:
        outcome = self.result.booking
        chosen = self._second_card()
        assert chosen.app_account_id is not None
        outcome.account_id = chosen.app_account_id
        ops = self.operations(chosen.app_account_id)
        pending = self._pending_lines(chosen, ops)
        if not pending:
            self._card_purchase_today(chosen)
            ops = self.operations(chosen.app_account_id)
            pending = self._pending_lines(chosen, ops)
        if not pending:
            raise JourneyError(f"no pending line to book in {chosen.name}")
        by_txid = {op["aggregator_transaction_id"]: op for op in ops.values()}
        line = pending[0]
        outcome.pending_txid = str(line["id"])
        outcome.before = by_txid[outcome.pending_txid]
        outcome.operations_before = len(ops)
        self.reporter.detail(
            f"pending: {line['date']} {short(line['original_wording'])} {amount_of(line['value'])} "
            f"(operation {outcome.before['id'][:8]}…, {outcome.before['status']})"
        )
        booked = self._json(
            self.bank, "POST", f"/sandbox/transactions/{line['id']}/book", json={"new_id": True}
        )
        outcome.booked_txid = str(booked["transaction"]["id"])
        self.reporter.detail(
            f"the bank books it under a new id ({outcome.pending_txid} deleted, {outcome.booked_txid} booked)"
        )
        outcome.sync_run_id, status = self._sync_and_wait("accounts synced again")
        changed = sum(s["last_run"]["transactions"] for s in status)
        self.reporter.detail(f"sync {outcome.sync_run_id[:8]}…: {changed} new or changed bank lines")

        def booked_op(ops: dict[str, Json]) -> bool:
            found = ops.get(outcome.before["id"])
            return found is not None and found["aggregator_transaction_id"] == outcome.booked_txid

        after = self._wait(
            "the booking reaches the operation",
            lambda: self.operations(chosen.app_account_id or ""),
            booked_op,
            judge_stall=True,
            describe=lambda ops: f"{len(ops)} operations, the pending one: {ops.get(outcome.before['id'])!r}",
        )  # progress: any change of the account's operations
        outcome.after = after.get(outcome.before["id"])
        outcome.operations_after = len(after)
        txids = Counter(op["aggregator_transaction_id"] for op in after.values())
        outcome.with_pending_txid = txids[outcome.pending_txid]
        outcome.with_booked_txid = txids[outcome.booked_txid]
        if outcome.after is not None:
            self.reporter.detail(
                f"operation {outcome.after['id'][:8]}…: {outcome.after['status']}, "
                f"bank id {outcome.after['aggregator_transaction_id']}; "
                f"{outcome.operations_after} operations in the account ({outcome.operations_before} before)"
            )
        self._check(
            outcome.after is not None
            and outcome.after["status"] == "booked"
            and outcome.operations_after == outcome.operations_before
            and outcome.with_booked_txid == 1
            and outcome.with_pending_txid == 0,
            "the pending operation is now booked: one operation, no duplicate",
        )

    def delete_and_replay(self) -> None:
        outcome = self.result.replay
        chosen = self._second_card()
        assert chosen.app_account_id is not None
        outcome.account_id, outcome.aggregator_account_id = (
            chosen.app_account_id,
            chosen.aggregator_account_id,
        )
        everything = self.all_operations()
        outcome.before = everything[outcome.account_id]
        outcome.others_before = {k: v for k, v in everything.items() if k != outcome.account_id}
        outcome.account_before = next(a for a in self.app_accounts() if a["account_id"] == outcome.account_id)

        self._call(
            self.importer, "DELETE", f"/v1/users/{self.user_id}/accounts/{outcome.account_id}", expect=(204,)
        )
        outcome.listed_after_delete = any(a["account_id"] == outcome.account_id for a in self.app_accounts())
        outcome.operations_status_after_delete = self._call(
            self.importer,
            "GET",
            f"/v1/users/{self.user_id}/accounts/{outcome.account_id}/operations",
            expect=(200, 404),
        ).status_code
        self.reporter.detail(
            f"deleted {chosen.bank} · {chosen.name} and its {len(outcome.before)} operations "
            f"(operations now answer {outcome.operations_status_after_delete})"
        )
        started = self._json(
            self.importer_ops,
            "POST",
            "/v1/ops/replay",
            expect=(202,),
            json={"user_id": self.user_id, "aggregator_account_id": outcome.aggregator_account_id},
        )
        replay_id = started["replay_id"]
        outcome.replay = self._wait(
            "replaying the account from banksync.transactions.raw.v1",
            lambda: self._json(self.importer_ops, "GET", f"/v1/ops/replays/{replay_id}"),
            lambda view: view["status"] != "running",
            # progress: the replay's status and the records of the partition it has read
            measure=lambda view: (view["status"], view.get("processed"), view.get("total")),
            progress=lambda view: (int(view.get("processed") or 0), view.get("total")),
        )
        result = outcome.replay.get("result") or {}
        stats = result.get("stats") or {}
        self.reporter.detail(
            f"replay {outcome.replay['status']}: "
            f"{result.get('records_matched', 0)} raw records of the account "
            f"(partition {result.get('partition')}), {stats.get('imported', 0)} operations imported again"
        )
        self._check(outcome.replay["status"] == "succeeded", "the replay succeeded")

        def same_as_before(ops: dict[str, Json]) -> int:
            return sum(1 for k, op in ops.items() if outcome.before.get(k) == op)

        outcome.after = self._wait(
            "operations back, categorised with today's rules",
            lambda: self.operations_if_back(outcome.account_id),
            lambda ops: ops == outcome.before,
            # progress: operations back, and how many are exactly as before (payee and category too)
            measure=lambda ops: (len(ops), same_as_before(ops)),
            progress=lambda ops: (same_as_before(ops), len(outcome.before)),
            judge_stall=True,
            describe=lambda ops: (
                f"{len(ops)} operations back, {same_as_before(ops)} of {len(outcome.before)} as before"
            ),
        )
        outcome.account_after = next(
            (a for a in self.app_accounts() if a["account_id"] == outcome.account_id), None
        )
        outcome.others_after = {k: v for k, v in self.all_operations().items() if k != outcome.account_id}
        self._check(
            outcome.after == outcome.before and outcome.account_after == outcome.account_before,
            f"the account is back with exactly its {len(outcome.before)} operations",
        )
        self._check(outcome.others_after == outcome.others_before, "the other accounts are untouched")

    def _gaps(self) -> dict[str, str | None]:
        """Each bank-fed app account's balance gap (bank − computed from its operations)."""
        return {a["account_id"]: a.get("balance_gap") for a in self.app_accounts() if a.get("bank_balance")}

    def delete_and_resync(self) -> None:
        outcome = self.result.resync
        second_card = self._second_card().aggregator_account_id
        chosen = next(
            c
            for c in self.result.chosen
            if c.import_mode == "create" and c.app_account_id and c.aggregator_account_id != second_card
        )
        assert chosen.app_account_id is not None
        outcome.account_id, outcome.aggregator_account_id = (
            chosen.app_account_id,
            chosen.aggregator_account_id,
        )
        outcome.before = self.operations(outcome.account_id)
        self._call(
            self.importer, "DELETE", f"/v1/users/{self.user_id}/accounts/{outcome.account_id}", expect=(204,)
        )
        self.reporter.detail(
            f"deleted {chosen.bank} · {chosen.name} in Settings, with its {len(outcome.before)} operations"
        )

        def of_account(status: list[Json]) -> Json:
            return next(s for s in status if s["aggregator_account_id"] == outcome.aggregator_account_id)

        outcome.marked = of_account(
            self._wait(
                "the connector marks it for a whole re-import at its next sync",
                self.sync_status,
                lambda status: bool(of_account(status)["reimport_pending"]),
            )
        )
        outcome.sync_run_id, _ = self._sync_and_wait("syncing again")

        outcome.after = self._wait(
            "every operation back, recognised with today's rules",
            lambda: self.operations_if_back(outcome.account_id),
            lambda ops: ops == outcome.before,
            measure=len,
            progress=lambda ops: (len(ops), len(outcome.before)),
            judge_stall=True,
        )
        outcome.gaps = self._wait(
            "balance checks: the bank's balances equal the operations'",
            self._gaps,
            lambda gaps: all(g is not None and Decimal(g) == 0 for g in gaps.values()),
            judge_stall=True,
        )
        self.reporter.detail(
            f"{len(outcome.after)} operations back after the sync; "
            f"balance gaps {sorted({str(g) for g in outcome.gaps.values()})}"
        )
        self._check(
            outcome.after == outcome.before,
            f"the sync brought back exactly its {len(outcome.before)} operations, payees and categories",
        )
        self._check(
            all(g is not None and Decimal(g) == 0 for g in outcome.gaps.values()),
            "every bank account's balance equals its operations' (gap 0)",
        )

    def reconnect(self) -> None:
        outcome = self.result.reconnect
        connection = self.result.connections[0]
        outcome.connection_id = str(connection["connection_id"])
        mine = {
            c.aggregator_account_id for c in self.result.chosen if c.connection_id == outcome.connection_id
        }
        outcome.operations_before = sum(len(ops) for ops in self.all_operations().values())
        # the bank changed the rules: the stored login is refused from now on
        self._call(
            self.bank,
            "POST",
            f"/sandbox/connections/{outcome.connection_id}/state",
            json={"state": "wrongpass"},
        )
        _, status = self._sync_and_wait("syncing with the refused password")
        outcome.failed = [s for s in status if s["aggregator_account_id"] in mine]
        first = outcome.failed[0] if outcome.failed else {}
        self.reporter.detail(f"status {first.get('state')}: {first.get('message')}")
        self._check(
            bool(outcome.failed)
            and all(s["state"] == "action_needed" and s["action"] == "reconnect" for s in outcome.failed),
            "the accounts say the bank needs them, and the action: reconnect",
        )
        outcome.offer = self._json(
            self.connector, "POST", f"/v1/users/{self.user_id}/connections/{outcome.connection_id}/reconnect"
        )
        outcome.callback = self._through_webview(outcome.offer["connect_url"], None)
        outcome.repaired = [
            s
            for s in self._wait(
                "the sync after the reconnect",
                self.sync_status,
                lambda status: all(s["state"] == "ok" for s in status if s["aggregator_account_id"] in mine),
                progress=lambda status: (
                    sum(1 for s in status if s["aggregator_account_id"] in mine and s["state"] == "ok"),
                    len(mine),
                ),
            )
            if s["aggregator_account_id"] in mine
        ]
        outcome.operations_after = sum(len(ops) for ops in self.all_operations().values())
        outcome.gaps = self._gaps()
        self.reporter.detail(
            f"connection state {outcome.callback.get('state') or 'ok'}; "
            f"{outcome.operations_after} operations (was {outcome.operations_before})"
        )
        self._check(
            outcome.callback.get("state") is None
            and all(s["state"] == "ok" for s in outcome.repaired)
            and outcome.operations_after == outcome.operations_before
            and all(g is not None and Decimal(g) == 0 for g in outcome.gaps.values()),
            "reconnected: synced again from the kept cursor, nothing twice, nothing missed (gap 0)",
        )

    def cancel(self) -> None:
        outcome = self.result.pause
        outcome.operations_before = sum(len(ops) for ops in self.all_operations().values())
        outcome.entitlements = self._json(
            self.billing, "DELETE", f"/v1/users/{self.user_id}/options/auto_import"
        )
        self.reporter.detail(
            f"options {outcome.entitlements['options'] or 'none'}; "
            f"auto_sync_allowed={outcome.entitlements['auto_sync_allowed']}"
        )
        outcome.status = self._wait(
            "syncs paused",
            self.sync_status,
            lambda s: bool(s) and all(x["state"] == "paused" for x in s),
            progress=lambda s: (sum(1 for x in s if x["state"] == "paused"), len(s)),
        )  # progress: any change of the accounts' status
        connections = self._json(self.connector, "GET", f"/v1/users/{self.user_id}/connections")
        outcome.connection_states = [c["state"] for c in connections]
        answer = self._call(self.connector, "POST", f"/v1/users/{self.user_id}/sync", expect=(202, 403))
        outcome.sync_answer = answer.status_code
        outcome.sync_problem = answer.json()
        outcome.operations_after = sum(len(ops) for ops in self.all_operations().values())
        self.reporter.detail(
            f"status: {len(outcome.status)} accounts paused; sync now answers {answer.status_code} "
            f"{outcome.sync_problem.get('code', '')}; {outcome.operations_after} operations kept"
        )
        self._check(
            all(s["state"] == "paused" for s in outcome.status)
            and set(outcome.connection_states) == {"paused"}
            and outcome.sync_answer == 403
            and outcome.sync_problem.get("code") == "not_entitled"
            and outcome.operations_after == outcome.operations_before,
            "paused: sync refused, every operation kept",
        )

    def summarise(self) -> None:
        r = self.result
        all_ops = self.all_operations()
        r.final_accounts = len(all_ops)
        r.final_operations = sum(len(ops) for ops in all_ops.values())
        r.final_recognised = sum(1 for ops in all_ops.values() for op in ops.values() if op["category"])
