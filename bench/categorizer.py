"""Categorizer: memos recognised per second, and re-examining past operations after a payee change.

- `categorizer_naive_loop`: the same memos, normalised the same way, matched rule after rule (one
  whole-word search per keyword) against 10,000 user keywords plus the built-in dictionary.
- `categorizer_memos`: the service's way, every keyword in one Aho-Corasick automaton; it must be at
  least 20 times the naive loop (and the aim is 50,000 memos per second on one core).
  Both count CPU seconds of this single-threaded process (`time.process_time`), so that a busy
  machine does not make them wrong; wall-clock rates are in the parameters.
- `categorizer_recategorize`: 20,000 past operations in the projection (real MongoDB-wire engine), a
  payee gets a keyword, and the re-examination reads them all, compares old and new results and
  publishes (real Kafka) a new categorisation for each one that changed (the categorizer alone, in
  this process).
- `reexamine`: the same change end to end, on the whole pipeline's processes: 20,000 past operations
  of one user in the importer's store and the categorizer's projection (written with `insert_many`
  in the services' shapes, bench.documents), a payee created through the categorizer's HTTP API;
  seconds from that request to the last affected operation's new payee and category stored in the
  importer's `operations` (its `categorized_at`). Fixed target: at most 5 s.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from bench.documents import drop_stack_databases, history, seed_stores
from bench.registry import Context, Limit, Measurement, benchmark, load_average
from harness.devstack import ROOT, Stack, ensure_dir, new_user, pipeline_stack, private_consumer_groups_of
from ops.kafka import KafkaInspector, inspector
from services.categorizer.adapters.kafka import CategorizationPublisher
from services.categorizer.adapters.mongo import OperationsRepository, RuleSetRepository, drop_all
from services.categorizer.domain.dictionary import builtin_dictionary, places
from services.categorizer.domain.matching import (
    Categorization,
    Dictionary,
    Matcher,
    Rule,
    _rank,
    categorize_memo,
)
from services.categorizer.domain.normalise import Memo, analyse
from services.categorizer.domain.rules import Payee, PayeeDraft, add_payee
from services.categorizer.handlers import CategorizerHandlers
from services.categorizer.ports import Seen
from services.importer.adapters.mongo import OperationStore
from shared.batch_publisher import BatchPublisher
from shared.contract.topics import CATEGORIZATIONS
from shared.mongo import make_client

USER_KEYWORDS = 10_000
DATABASE = "banksync_bench_categorizer"
# real memo shapes; {m} is a merchant, {d} dd/mm, {D} ddmmyy
SHAPES = (
    "CARTE X4021 {d} {m} PARIS 15",
    "FACTURE CARTE DU {D} {m} CARTE 4974XXXXXXXX1234",
    "CB {m} {d}/24",
    "PRLV SEPA {m} ECH/{D} ID EMETTEUR/FR12ZZZ123456 MDT/ABC123",
    "CARTE {d}/25 {m} CB*4567",
    "{m} CARTE 12345678 PAIEMENT CB 1203 STRASBOURG",
)
KNOWN = ("CARREFOUR MARKET", "FREE MOBILE", "SNCF INTERNET", "BOULANGERIE DU PORT", "AMAZON PAYMENTS", "EDF")
UNKNOWN = ("LE PETIT ZINC", "CHEZ GEGENE", "ATELIER SIMONE", "SARL LES TROIS FRERES", "ORANGERIE DU PARC")


def word(rnd: random.Random, low: int = 4, high: int = 9) -> str:
    return "".join(rnd.choice("ABCDEFGHIJKLMNOPRSTUVZ") for _ in range(rnd.randint(low, high)))


def user_payees(n_keywords: int, seed: int = 7) -> list[Payee]:
    """n keywords over n/4 payees; a third of the keywords are two words long."""
    rnd = random.Random(seed)
    keywords = sorted(
        {f"{word(rnd)} {word(rnd)}" if i % 3 == 0 else word(rnd, 6, 10) for i in range(n_keywords)}
    )
    rnd.shuffle(keywords)
    return [
        Payee(f"payee-{i}", f"Payee {i}", "divers", tuple(keywords[i * 4 : i * 4 + 4]))
        for i in range((len(keywords) + 3) // 4)
    ]


def memos(n: int, payees: list[Payee], seed: int = 11) -> list[str]:
    """n memos: a third name a user payee, a third a dictionary merchant, a third nobody known."""
    rnd = random.Random(seed)
    keywords = [k for p in payees for k in p.keywords]
    found = []
    for i in range(n):
        kind = i % 3
        merchant = rnd.choice(keywords) if kind == 0 else rnd.choice(KNOWN if kind == 1 else UNKNOWN)
        day, month = rnd.randint(1, 28), rnd.randint(1, 12)
        found.append(
            rnd.choice(SHAPES).format(m=merchant, d=f"{day:02d}/{month:02d}", D=f"{day:02d}{month:02d}24")
        )
    return found


class NaiveMatcher:
    """Rule after rule: a whole-word search per keyword, the same ranking as the automaton."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = [(f"^ {r.pattern} " if r.anchored else f" {r.pattern} ", r) for r in rules]

    def best(self, normalised: str) -> Rule | None:
        text = f"^ {normalised} "
        best: tuple[Any, Rule] | None = None
        for key, rule in self.rules:
            at = text.find(key)
            if at >= 0:
                rank = _rank(rule, at + len(key) - 1)
                if best is None or rank < best[0]:
                    best = (rank, rule)
        return None if best is None else best[1]


def naive_categorize(
    memo: Memo, user: NaiveMatcher, builtin: NaiveMatcher, transfers: NaiveMatcher
) -> str | None:
    rule = user.best(memo.text) or (transfers if memo.transfer else builtin).best(memo.text)
    return None if rule is None else rule.category


# the payee the re-examination benchmarks create, and the past operations it is about (about 46% name it)
NEW_PAYEE = PayeeDraft("Boulangerie Martin", "alimentation", ("BOULANGERIE MARTIN",))


def past_shops(rnd: random.Random) -> list[str]:
    return [f"EPICERIE {word(rnd)}" for _ in range(40)] + ["BOULANGERIE MARTIN"] * 40 + list(KNOWN)


def past_memos(n: int, seed: int = 3) -> list[str]:
    """n card-payment memos of a user's past: a shop, a day."""
    rnd = random.Random(seed)
    shops = past_shops(rnd)
    return [f"CB {rnd.choice(shops)} {rnd.randint(1, 28):02d}/{rnd.randint(1, 12):02d}" for _ in range(n)]


def setup() -> tuple[list[Payee], Matcher, Dictionary]:
    payees = user_payees(USER_KEYWORDS)
    matcher = Matcher(rule for p in payees for rule in p.rules())
    return payees, matcher, builtin_dictionary()


@benchmark("categorizer_naive_loop", timeout_s=300)
async def categorizer_naive_loop(ctx: Context) -> Measurement:
    """Memos categorised per second, rule after rule (10,000 user keywords + the dictionary)."""
    payees, _, dictionary = setup()
    n = ctx.size(full=3_000, quick=600)
    sample = memos(n, payees)
    user = NaiveMatcher([r for p in payees for r in p.rules()])
    builtin = NaiveMatcher(list(dictionary.rules))
    transfers = NaiveMatcher([r for r in dictionary.rules if r.in_transfers])
    started, cpu_started = time.perf_counter(), time.process_time()
    recognised = sum(1 for m in sample if naive_categorize(analyse(m), user, builtin, transfers) is not None)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return Measurement(
        "memos categorised per CPU second, naive loop over rules",
        "memos/s",
        round(n / cpu, 1),
        {"memos": n, "user_keywords": len(user.rules), "dictionary_keywords": len(builtin.rules),
         "recognised": recognised, "cpu_s": round(cpu, 3), "elapsed_s": round(elapsed, 3),
         "memos_per_wall_second": round(n / elapsed, 1)},
    )  # fmt: skip


@benchmark("categorizer_memos", timeout_s=300, limit=Limit("categorizer_naive_loop", target=20))
async def categorizer_memos(ctx: Context) -> Measurement:
    """Memos categorised per second on one core with 10,000 user keywords + the dictionary (Aho-Corasick)."""
    compile_started = time.perf_counter()
    payees, matcher, dictionary = setup()
    compile_s = time.perf_counter() - compile_started
    n = ctx.size(full=300_000, quick=60_000)
    sample = memos(n, payees)
    # the naive loop's answers on its sample must be the automaton's too
    check = memos(ctx.size(full=3_000, quick=600), payees)
    user = NaiveMatcher([r for p in payees for r in p.rules()])
    builtin = NaiveMatcher(list(dictionary.rules))
    transfers = NaiveMatcher([r for r in dictionary.rules if r.in_transfers])
    for memo in check[:300]:
        text = analyse(memo)
        assert categorize_memo(text, matcher, dictionary).category == naive_categorize(
            text, user, builtin, transfers
        )
    started, cpu_started = time.perf_counter(), time.process_time()
    recognised = sum(1 for m in sample if categorize_memo(analyse(m), matcher, dictionary).recognised)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    value = n / cpu
    return Measurement(
        "memos categorised per CPU second (one core), one automaton (aim: >= 50,000)",
        "memos/s",
        round(value, 1),
        {"memos": n, "user_keywords": matcher.size, "dictionary_keywords": len(dictionary.rules),
         "recognised": recognised, "cpu_s": round(cpu, 3), "elapsed_s": round(elapsed, 3),
         "memos_per_wall_second": round(n / elapsed, 1),
         "compile_user_automaton_s": round(compile_s, 3), "aim_memos_per_s": 50_000,
         "aim_met": value >= 50_000},
    )  # fmt: skip


@benchmark("categorizer_recategorize", timeout_s=600)
async def categorizer_recategorize(ctx: Context) -> Measurement:
    """Seconds to re-examine 20,000 past operations after a payee change, publishing what changed."""
    n = ctx.size(full=20_000, quick=5_000)
    user_id = f"bench-{uuid.uuid4().hex[:8]}"
    client = make_client(ctx.engines.mongodb_url)
    publisher = BatchPublisher(ctx.engines.kafka_bootstrap, "bench-categorizer", "bench")
    await publisher.start()
    db = client[DATABASE]
    try:
        await drop_all(db)
        rulesets, operations = RuleSetRepository(db), OperationsRepository(db)
        await rulesets.create_indexes()
        await operations.create_indexes()
        handlers = CategorizerHandlers.build(
            rulesets, operations, CategorizationPublisher(publisher), builtin_dictionary(), places=places()
        )
        now = datetime.now(UTC)
        seen = [
            Seen(
                user_id,
                f"op-{i:06d}",
                f"acct-{i % 3}",
                memo,
                memo,
                0,
                Categorization(),
                None,
                f"2025-{i % 12 + 1:02d}",
            )
            for i, memo in enumerate(past_memos(n))
        ]
        load_started = time.perf_counter()
        for start in range(0, n, 5_000):
            await operations.write_seen(seen[start : start + 5_000], now)
        load_s = time.perf_counter() - load_started

        def create(current: Any) -> Any:
            return add_payee(current, NEW_PAYEE, "p1")

        _, _ = await handlers.rules.change(user_id, create, "bench", reexamine=False)
        started = time.perf_counter()
        report = await handlers.reexaminer.reexamine(user_id)
        elapsed = time.perf_counter() - started
    finally:
        await drop_all(db)
        await publisher.stop()
        await client.close()
    return Measurement(
        "seconds to re-examine past operations after a payee change (read, compare, publish changes)",
        "s",
        round(elapsed, 3),
        {"operations": n, "examined": report.examined, "changed_and_published": report.changed,
         "projection_load_s": round(load_s, 3), "operations_per_s": round(n / elapsed, 1)},
    )  # fmt: skip


REEXAMINE_ACCOUNTS = ("31", "32", "33", "34")
REEXAMINE_POLL_S = 0.25  # cheap signals only: the re-examination's status and the write-back's lag
REEXAMINE_READ_EVERY_S = 2.0  # a read of the user's 20,000 operations weighs on what it measures


def past_shop_picker(seed: int = 3) -> Callable[[random.Random], tuple[str, str, tuple[int, int]]]:
    """For bench.documents.history: card payments at the shops of `past_memos`."""
    shops = past_shops(random.Random(seed))
    return lambda rng: ("CB {m} {d}", rng.choice(shops), (120, 3_000))


async def seed_user(mongodb_url: str, database: str, user: str, n: int) -> tuple[set[str], dict[str, Any]]:
    """n past operations of `user` in both services' stores (bench.documents.seed_stores); returns the
    ids of those the new payee names, and how the seeding went."""
    per_account = n // len(REEXAMINE_ACCOUNTS)
    past = list(history(user, REEXAMINE_ACCOUNTS, per_account, seed=5, merchants=past_shop_picker()))
    seeded = await seed_stores(
        mongodb_url, database, [past[i : i + 5_000] for i in range(0, len(past), 5_000)]
    )
    return {op.op_id for op in past if NEW_PAYEE.keywords[0] in op.memo}, seeded


async def categorisations(stack: Stack, user: str) -> list[dict[str, Any]]:
    client = make_client(stack.engines.mongodb_url)
    try:
        return await OperationStore(client[f"{stack.database}_imp"]).find_shown({"user_id": user}, [])
    finally:
        await client.close()


@dataclass
class Rewritten:
    """What the importer's store shows once every affected operation carries the new payee."""

    operations: list[dict[str, Any]]
    done: list[dict[str, Any]]
    reexamined_s: float | None
    polls: int
    reads: int


async def write_back_lag(kafka: KafkaInspector, group: str) -> int | None:
    """Records of `operation.categorized` the importer has not committed yet (None: not known yet)."""
    _, rows = await kafka.lag([group])
    lags = [row.lag for row in rows if row.topic == CATEGORIZATIONS]
    return None if not lags or None in lags else sum(lag for lag in lags if lag is not None)


async def wait_payee_stored(
    stack: Stack,
    api: httpx.Client,
    user: str,
    payee_id: str,
    named: set[str],
    since: datetime,
    timeout_s: float,
) -> Rewritten:
    """Until every operation in `named` carries `payee_id` (bounded). The store is read only once the
    re-examination is done and the importer has committed every categorisation (or every
    REEXAMINE_READ_EVERY_S after that), so that the polls do not slow down what they time."""
    deadline = time.monotonic() + timeout_s
    found = Rewritten([], [], None, 0, 0)
    last_read = -float("inf")
    group = private_consumer_groups_of(stack.database)["IMPORTER_CATEGORIZATIONS_GROUP_ID"]
    async with inspector(stack.engines.kafka_bootstrap) as kafka:
        while True:
            found.polls += 1
            if found.reexamined_s is None:
                status = (await asyncio.to_thread(api.get, f"/v1/users/{user}/rules/status")).json()
                if not status["reexamination_pending"]:
                    found.reexamined_s = (datetime.now(UTC) - since).total_seconds()
            drained = found.reexamined_s is not None and await write_back_lag(kafka, group) == 0
            if drained and time.monotonic() - last_read >= REEXAMINE_READ_EVERY_S:
                last_read = time.monotonic()
                found.reads += 1
                found.operations = await categorisations(stack, user)
                found.done = [
                    op
                    for op in found.operations
                    if op["_id"] in named and (op.get("payee") or {}).get("id") == payee_id
                ]
                if len(found.done) >= len(named):
                    return found
            if time.monotonic() > deadline:
                examined = "done" if found.reexamined_s is not None else "still pending"
                raise TimeoutError(
                    f"after {timeout_s:g} s: {len(found.done)} of {len(named)} operations carry the new "
                    f"payee (re-examination {examined}, {found.reads} reads of the store)"
                )
            await asyncio.sleep(REEXAMINE_POLL_S)


@benchmark("reexamine", timeout_s=900, limit=Limit.fixed(5, higher_is_better=False))
async def reexamine(ctx: Context) -> Measurement:
    """A new payee over 20,000 past operations: from its creation (HTTP) to every new payee stored."""
    n = ctx.size(full=20_000, quick=5_000)
    database = f"bench_reexam_{ctx.run_id[-6:]}"
    user = new_user("reexam")
    named, seeded = await seed_user(ctx.engines.mongodb_url, database, user, n)
    payee = {"name": NEW_PAYEE.name, "category": NEW_PAYEE.category, "keywords": [*NEW_PAYEE.keywords]}
    try:
        with (
            pipeline_stack(
                ctx.engines,
                ensure_dir(ROOT / ".run" / "bench-logs"),
                database,
                common_env={"LOG_LEVEL": "WARNING"},
            ) as stack,
            stack.client("categorizer", user) as api,
        ):
            load_before = load_average()
            since = datetime.now(UTC)
            answer = await asyncio.to_thread(api.post, f"/v1/users/{user}/payees", json=payee)
            answer.raise_for_status()
            created_s = (datetime.now(UTC) - since).total_seconds()
            found = await wait_payee_stored(
                stack, api, user, answer.json()["id"], named, since, timeout_s=600
            )
    finally:  # not left to weigh on the benchmarks after this one
        await drop_stack_databases(ctx.engines.mongodb_url, database)
    stored = sorted(op["categorized_at"].replace(tzinfo=UTC) for op in found.done)
    others_touched = sum(
        1
        for op in found.operations
        if op["_id"] not in named and op["categorized_at"].replace(tzinfo=UTC) > since
    )
    wrong = sum(1 for op in found.done if op.get("category") != NEW_PAYEE.category)
    if others_touched or wrong:
        raise RuntimeError(
            f"{others_touched} operations the payee does not name rewritten, {wrong} wrong category"
        )
    value = (stored[-1] - since).total_seconds()
    return Measurement(
        "seconds from a new payee's creation (HTTP) to every affected operation's payee stored (importer)",
        "s",
        round(value, 3),
        {
            "n": n,
            "operations": len(found.operations),
            "affected": len(named),
            **seeded,
            "payee_request_s": round(created_s, 3),
            "reexamination_done_s_by_poll": None
            if found.reexamined_s is None
            else round(found.reexamined_s, 1),
            "first_affected_stored_s": round((stored[0] - since).total_seconds(), 3),
            "last_affected_stored_s": round(value, 3),
            "write_back_ops_per_s": round(
                len(stored) / max(1e-3, (stored[-1] - stored[0]).total_seconds()), 1
            ),
            "poll_every_s": REEXAMINE_POLL_S,
            "polls": found.polls,
            "store_reads": found.reads,
            "load_average_1m_before_after": [load_before, load_average()],
        },
    )
