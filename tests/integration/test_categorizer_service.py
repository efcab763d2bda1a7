"""The categorizer on the real stack: a year of operations imported, then the payee journey.

Operation events go to the real operations topic as the importer writes them; the categorizer runs as
its own process; what it decides is read back from the categorizations topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from harness.devstack import ServiceProcess, bearer
from harness.waiting import wait_for_async
from shared.contract.envelope import CloudEvent, account_key
from shared.contract.payloads import Operation, OperationCategorized, OperationEvent
from shared.contract.topics import CATEGORIZATIONS, OPERATIONS
from shared.kafka import cloudevent_headers
from tests.kafka_helpers import opened

pytestmark = pytest.mark.engines

# (memo template, every how many days, amount): {d} is dd/mm, {D} ddmmyy, {y} dd/mm/yy
YEAR_OF_MEMOS: tuple[tuple[str, int, str], ...] = (
    ("CB BOULANGERIE MARTIN {d}", 7, "-6.40"),
    ("CARTE X4021 {d} CARREFOUR MARKET PARIS 15", 10, "-54.20"),
    ("CB LE PETIT ZINC {d}", 14, "-18.50"),
    ("PRLV SEPA CLUB DE JUDO DES LILAS ECH/{D} ID EMETTEUR/FR12ZZZ445566 MDT/JUDO42", 30, "-35.00"),
    ("VIR SEPA RECU /DE ACME CONSULTING SAS /MOTIF SALAIRE", 30, "2450.00"),
    ("FACTURE CARTE DU {D} GARAGE DES LILAS CARTE 4974XXXXXXXX1234", 60, "-120.00"),
    ("RETRAIT DAB {y} 14H05 BNP PARIBAS PARIS", 21, "-40.00"),
    ("VIR SEPA RECU /DE MME LUCIE MARTIN /MOTIF REMBOURSEMENT", 45, "25.00"),
)


@dataclass
class Imported:
    operation: Operation
    template: str


def a_year(user: str, accounts: tuple[str, str], start: dt.date) -> list[Imported]:
    found: list[Imported] = []
    for index, (template, every, amount) in enumerate(YEAR_OF_MEMOS):
        day = start + dt.timedelta(days=index)
        while day < start + dt.timedelta(days=365):
            memo = template.format(d=f"{day:%d/%m}", D=f"{day:%d%m%y}", y=f"{day:%d/%m/%y}")
            found.append(Imported(an_operation(accounts[index % 2], day, amount, memo), template))
            day += dt.timedelta(days=every)
    return found


def an_operation(account: str, day: dt.date, amount: str, memo: str) -> Operation:
    return Operation(
        id=f"op-{uuid.uuid4().hex[:12]}",
        account_id=account,
        date=day,
        amount=amount,
        currency="EUR",
        memo=memo,
        label=memo.title()[:30],
        status="booked",
        source="bank",
    )


def imported_event(user: str, operation: Operation, name: str = "operation.imported") -> CloudEvent:
    return CloudEvent.new(
        service="importer",
        name=name,
        data=OperationEvent(user_id=user, operation=operation).model_dump(mode="json"),
        user_id=user,
        correlation_id=f"sync-{user}",
        subject=operation.id,
    )


async def publish(bootstrap: str, user: str, operations: list[Operation], name: str = "operation.imported"):
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        sends = []
        for op in operations:
            event = imported_event(user, op, name)
            sends.append(
                await producer.send(
                    OPERATIONS,
                    event.to_json_bytes(),
                    key=account_key(user, op.account_id).encode(),
                    headers=[(k, v.encode()) for k, v in cloudevent_headers(event).items()],
                )
            )
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


@dataclass
class Categorizations:
    """Everything the categorizer published for one user, collected in the background."""

    user: str
    events: list[tuple[str, CloudEvent]] = field(default_factory=list)

    def of(self, operation_id: str) -> list[OperationCategorized]:
        return [
            OperationCategorized.model_validate(e.data)
            for _, e in self.events
            if e.data["operation_id"] == operation_id
        ]

    def latest(self, operation_id: str) -> OperationCategorized | None:
        found = self.of(operation_id)
        return found[-1] if found else None

    async def wait_for(self, condition: Callable[[], bool], within_s: float = 30, what: str = "") -> None:
        """Until `condition()` holds, looked at every 0.2 s while the events come in."""
        await wait_for_async(condition, within_s, f"{what} (among {self.user}'s categorisations)", 0.2)


@contextlib.asynccontextmanager
async def categorizations(bootstrap: str, user: str) -> AsyncIterator[Categorizations]:
    consumer = AIOKafkaConsumer(
        CATEGORIZATIONS,
        bootstrap_servers=bootstrap,
        group_id=f"test-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    found = Categorizations(user)

    async def collect() -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    if record.key and record.key.decode().startswith(f"{user}:"):
                        found.events.append((record.key.decode(), opened(record.value)))

    task = asyncio.create_task(collect())
    try:
        yield found
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await consumer.stop()


def api_for(proc: ServiceProcess, user: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=proc.url, headers=bearer(user), timeout=30)


async def wait_reexamined(api: httpx.AsyncClient, user: str, version: int) -> None:
    async def status() -> dict:
        return (await api.get(f"/v1/users/{user}/rules/status")).json()

    await wait_for_async(
        status,
        30,
        f"the re-examination of rules version {version}",
        0.2,
        until=lambda s: s["rules_version"] >= version and not s["reexamination_pending"],
    )


async def test_a_year_then_the_payee_journey(categorizer, engines):
    user = f"user-{uuid.uuid4().hex[:8]}"
    accounts = (f"acc-{uuid.uuid4().hex[:6]}", f"acc-{uuid.uuid4().hex[:6]}")
    year = a_year(user, accounts, dt.date(2024, 3, 1))
    by_template: dict[str, list[Operation]] = {}
    for item in year:
        by_template.setdefault(item.template, []).append(item.operation)
    bakery, carrefour, zinc, judo, salary, garage, cash, friend = (
        by_template[t] for t, _, _ in YEAR_OF_MEMOS
    )

    async with categorizations(engines.kafka_bootstrap, user) as seen, api_for(categorizer, user) as api:
        # 1. a year imported: one categorisation each, by the built-in dictionary or none
        await publish(engines.kafka_bootstrap, user, [i.operation for i in year])
        await seen.wait_for(
            lambda: all(seen.of(i.operation.id) for i in year), within_s=60, what="the year's categorisations"
        )
        await asyncio.sleep(1.0)
        assert all(len(seen.of(i.operation.id)) == 1 for i in year)
        assert {key for key, _ in seen.events} == {f"{user}:{a}" for a in accounts}
        first = {i.operation.id: seen.latest(i.operation.id) for i in year}
        assert all(c is not None and c.source != "user" for c in first.values())
        assert {first[op.id].category for op in carrefour} == {"alimentation"}  # type: ignore[union-attr]
        assert {first[op.id].source for op in carrefour} == {"global"}  # type: ignore[union-attr]
        assert {first[op.id].category for op in salary} == {"revenus/salaire"}  # type: ignore[union-attr]
        assert {first[op.id].category for op in cash} == {"especes"}  # type: ignore[union-attr]
        # a generic word gives a category without a payee
        assert all(first[op.id].payee is None for op in bakery)  # type: ignore[union-attr]
        assert {first[op.id].category for op in bakery} == {"alimentation"}  # type: ignore[union-attr]
        for unknown in (zinc, judo, friend):
            assert all(first[op.id].category is None for op in unknown)  # type: ignore[union-attr]
            assert all(first[op.id].payee is None for op in unknown)  # type: ignore[union-attr]
        print(
            f"\n{len(year)} operations imported; recognised by the dictionary: "
            f"{sum(1 for c in first.values() if c and c.category)}"
        )

        # 2. the user corrects one Carrefour line by hand, to a payee without keywords
        courses = await api.post(
            f"/v1/users/{user}/payees", json={"name": "Courses", "category": "alimentation", "keywords": []}
        )
        assert courses.status_code == 201, courses.text
        manual_op = carrefour[0]
        corrected = await api.post(
            f"/v1/users/{user}/operations/{manual_op.id}/payee", json={"payee_id": courses.json()["id"]}
        )
        assert corrected.status_code == 200, corrected.text
        assert corrected.json()["suggested_keywords"][0] == "CARREFOUR MARKET"
        assert corrected.json()["matching_operations"] == len(carrefour) - 1
        await seen.wait_for(lambda: seen.latest(manual_op.id).source == "manual", what="the manual choice")  # type: ignore[union-attr]

        # 3. payees with keywords: every matching past operation is recognised again, at once
        started = asyncio.get_running_loop().time()
        martin = await api.post(
            f"/v1/users/{user}/payees",
            json={
                "name": "Boulangerie Martin",
                "category": "alimentation",
                "keywords": ["Boulangerie Martin"],
            },
        )
        assert martin.status_code == 201, martin.text
        supermarket = await api.post(
            f"/v1/users/{user}/payees",
            json={
                "name": "Carrefour du quartier",
                "category": "alimentation/courses",
                "keywords": ["carrefour"],
            },
        )
        assert supermarket.status_code == 422
        assert supermarket.json()["code"] == "unknown_category"
        category = await api.post(
            f"/v1/users/{user}/categories", json={"id": "alimentation/courses", "label": "Courses"}
        )
        assert category.status_code == 201, category.text
        supermarket = await api.post(
            f"/v1/users/{user}/payees",
            json={
                "name": "Carrefour du quartier",
                "category": "alimentation/courses",
                "keywords": ["carrefour"],
            },
        )
        assert supermarket.status_code == 201, supermarket.text
        judo_payee = await api.post(
            f"/v1/users/{user}/operations/{judo[0].id}/payee",
            json={"new_payee": {"name": "Club de judo", "category": "loisirs"}},
        )
        assert judo_payee.status_code == 200, judo_payee.text
        assert judo_payee.json()["suggested_keywords"][0] == "CLUB DE JUDO"
        assert judo_payee.json()["payee"]["keywords"] == ["CLUB DE JUDO"]
        assert judo_payee.json()["matching_operations"] == len(judo) - 1

        def recognised(ops: list[Operation], payee_id: str, skip: str = "") -> bool:
            return all(
                (c := seen.latest(op.id)) is not None
                and c.source == "user"
                and c.payee
                and c.payee.id == payee_id
                for op in ops
                if op.id != skip
            )

        martin_id, carrefour_id = martin.json()["id"], supermarket.json()["id"]
        judo_id = judo_payee.json()["payee"]["id"]
        await seen.wait_for(
            lambda: (
                recognised(bakery, martin_id)
                and recognised(carrefour, carrefour_id, skip=manual_op.id)
                and recognised(judo, judo_id, skip=judo[0].id)
            ),
            what="past operations recognised by the new payees",
        )
        elapsed = asyncio.get_running_loop().time() - started
        again = len(bakery) + len(carrefour) + len(judo)
        print(f"payees created and {again} past operations re-recognised in {elapsed:.1f}s")
        assert all(seen.latest(op.id).category == "alimentation/courses" for op in carrefour[1:])  # type: ignore[union-attr]
        assert all(seen.latest(op.id).keyword == "carrefour" for op in carrefour[1:])  # type: ignore[union-attr]
        status = (await api.get(f"/v1/users/{user}/rules/status")).json()
        await wait_reexamined(api, user, status["rules_version"])
        await asyncio.sleep(1.0)
        # manual choices untouched; operations no rule changed got nothing new
        assert [c.source for c in seen.of(manual_op.id)] == ["global", "manual"]
        assert [c.source for c in seen.of(judo[0].id)] == [None, "manual"]
        for untouched in (zinc, salary, garage, cash, friend):
            assert all(len(seen.of(op.id)) == 1 for op in untouched), [
                (op.memo, seen.of(op.id)) for op in untouched if len(seen.of(op.id)) != 1
            ][:2]
        assert all(len(seen.of(op.id)) == 2 for op in bakery), [
            [(c.source, c.rules_version, c.payee) for c in seen.of(op.id)] for op in bakery
        ][:2]
        versions = [c.rules_version for op in bakery for c in seen.of(op.id)]
        assert max(versions) >= 2

        # 4. a new operation after the fact is recognised by the user rule straight away
        newcomer = an_operation(
            accounts[0], dt.date(2025, 3, 3), "-7.10", "CARTE X4021 03/03 BOULANGERIE MARTIN PARIS"
        )
        await publish(engines.kafka_bootstrap, user, [newcomer])
        await seen.wait_for(lambda: bool(seen.of(newcomer.id)), what="the new operation's categorisation")
        latest = seen.latest(newcomer.id)
        assert latest is not None
        assert latest.source == "user"
        assert latest.payee is not None
        assert latest.payee.id == martin_id
        assert latest.keyword == "Boulangerie Martin"

        # 5. changing and deleting a payee re-examines again; deleting gives the dictionary back
        renamed = await api.put(
            f"/v1/users/{user}/payees/{martin_id}",
            json={"name": "Martin", "category": "alimentation", "keywords": ["BOULANGERIE MARTIN"]},
        )
        assert renamed.status_code == 200, renamed.text
        await seen.wait_for(
            lambda: all(seen.latest(op.id).payee.name == "Martin" for op in bakery),  # type: ignore[union-attr]
            what="the renamed payee on past operations",
        )
        deleted = await api.delete(f"/v1/users/{user}/payees/{carrefour_id}")
        assert deleted.status_code == 204
        await seen.wait_for(
            lambda: all(seen.latest(op.id).source == "global" for op in carrefour[1:]),  # type: ignore[union-attr]
            what="the dictionary back on Carrefour lines",
        )
        assert seen.latest(manual_op.id).source == "manual"  # type: ignore[union-attr]

        # 6. an updated memo is categorised again; an unchanged update is not
        changed = manual_op.model_copy(update={"memo": "CB BOULANGERIE MARTIN 05/03"})
        same = zinc[0]
        before = len(seen.of(same.id))
        await publish(engines.kafka_bootstrap, user, [changed, same], name="operation.updated")
        await asyncio.sleep(2.0)
        assert len(seen.of(same.id)) == before
        assert seen.latest(manual_op.id).source == "manual"  # type: ignore[union-attr]


async def test_validation_preview_and_categories(categorizer):
    user = f"user-{uuid.uuid4().hex[:8]}"
    async with api_for(categorizer, user) as api:
        tree = (await api.get("/v1/categories")).json()
        assert [c["id"] for c in tree][:3] == ["alimentation", "restaurants", "logement"]
        assert len(tree) == 20
        labels = {c["id"]: c["label"] for c in tree}
        assert labels["energie"] == "Énergie et eau"
        assert labels["especes"] == "Retraits d'espèces"
        assert "energie/electricite" in {child["id"] for c in tree for child in c["children"]}

        async def problem(method: str, path: str, body: object, status: int, code: str) -> None:
            answer = await api.request(method, f"/v1/users/{user}{path}", json=body)
            assert answer.status_code == status, answer.text
            assert answer.headers["content-type"].startswith("application/problem+json")
            assert answer.json()["code"] == code, answer.json()

        await problem(
            "POST",
            "/payees",
            {"name": "X", "category": "loisirs", "keywords": [" "]},
            422,
            "validation_error",
        )
        await problem(
            "POST",
            "/payees",
            {"name": "X", "category": "loisirs", "keywords": ["CB 12/03"]},
            422,
            "validation_error",
        )
        await problem(
            "POST",
            "/payees",
            {"name": "X", "category": "voyages", "keywords": ["ABC"]},
            422,
            "unknown_category",
        )
        await problem(
            "POST",
            "/payees",
            {"name": "", "category": "loisirs", "keywords": ["ABC"]},
            422,
            "validation_error",
        )
        await problem("POST", "/payees", {"category": "loisirs"}, 422, "validation_error")
        created = await api.post(
            f"/v1/users/{user}/payees", json={"name": "Piscine", "category": "loisirs", "keywords": ["AQUA"]}
        )
        assert created.status_code == 201
        await problem(
            "POST",
            "/payees",
            {"name": "piscine", "category": "loisirs", "keywords": []},
            409,
            "duplicate_payee",
        )
        await problem(
            "POST",
            "/payees",
            {"name": "Autre", "category": "loisirs", "keywords": ["aqua"]},
            409,
            "duplicate_keyword",
        )
        await problem("GET", "/payees/nope", None, 404, "unknown_payee")
        await problem(
            "POST", "/operations/nope/payee", {"payee_id": created.json()["id"]}, 404, "unknown_operation"
        )
        await problem("POST", "/operations/nope/payee", {}, 422, "validation_error")
        await problem("POST", "/categories", {"id": "voyages/ete", "label": "Été"}, 422, "unknown_category")
        await problem("POST", "/categories", {"id": "loisirs/Été", "label": "Été"}, 422, "validation_error")
        assert (
            await api.post(f"/v1/users/{user}/categories", json={"id": "loisirs/ete", "label": "Été"})
        ).status_code == 201
        await problem("POST", "/categories", {"id": "loisirs/ete", "label": "Été"}, 409, "duplicate_category")
        assert (await api.get(f"/v1/users/{user}/categories")).json() == [
            {"id": "loisirs/ete", "label": "Été", "parent": "loisirs"}
        ]
        version = (await api.get(f"/v1/users/{user}/rules/status")).json()["rules_version"]

        preview = await api.post(
            f"/v1/users/{user}/categorize/preview",
            json={"memos": ["CB AQUA CLUB 12/03", "PRLV SEPA FREE MOBILE ECH/010324", "CB FREELANCE 12/03"]},
        )
        assert preview.status_code == 200
        answers = preview.json()
        assert answers[0]["source"] == "user"
        assert answers[0]["payee"] == {"id": created.json()["id"], "name": "Piscine"}
        assert answers[0]["keyword"] == "AQUA"
        assert answers[1]["category"] == "telecom"
        assert answers[1]["source"] == "global"
        assert answers[2] == {
            "memo": "CB FREELANCE 12/03",
            "payee": None,
            "category": None,
            "source": None,
            "keyword": None,
        }
        assert (await api.get(f"/v1/users/{user}/rules/status")).json()["rules_version"] == version

    forbidden = httpx.get(f"{categorizer.url}/v1/users/{user}/payees", headers=bearer("someone-else"))
    assert forbidden.status_code == 403
    assert httpx.get(f"{categorizer.url}/v1/categories").status_code == 401


async def test_updates_and_deletions_keep_the_projection_right(categorizer, engines):
    user = f"user-{uuid.uuid4().hex[:8]}"
    kept, gone = f"acc-{uuid.uuid4().hex[:6]}", f"acc-{uuid.uuid4().hex[:6]}"
    ops = [
        an_operation(kept, dt.date(2025, 1, 2), "-9.90", "CB LA FERME DE JULIE 02/01"),
        an_operation(kept, dt.date(2025, 1, 3), "-9.90", "CB LA FERME DE JULIE 03/01"),
        an_operation(gone, dt.date(2025, 1, 4), "-9.90", "CB LA FERME DE JULIE 04/01"),
        an_operation(kept, dt.date(2025, 1, 5), "-30.00", "CB PENDING LINE 05/01"),
    ]
    async with categorizations(engines.kafka_bootstrap, user) as seen, api_for(categorizer, user) as api:
        await publish(engines.kafka_bootstrap, user, ops)
        await seen.wait_for(lambda: all(seen.of(op.id) for op in ops), what="first categorisations")
        assert all(seen.latest(op.id).category is None for op in ops)  # type: ignore[union-attr]

        # the bank's wording changes: categorised again; the same wording again: nothing new
        booked = ops[3].model_copy(update={"memo": "CARTE X4021 05/01 MONOPRIX PARIS 15"})
        await publish(engines.kafka_bootstrap, user, [booked], name="operation.updated")
        await seen.wait_for(lambda: len(seen.of(booked.id)) == 2, what="the updated memo's categorisation")
        assert seen.latest(booked.id).category == "alimentation"  # type: ignore[union-attr]

        # one operation deleted, one account deleted: they are forgotten
        await publish(engines.kafka_bootstrap, user, [ops[1]], name="operation.deleted")
        producer = AIOKafkaProducer(bootstrap_servers=engines.kafka_bootstrap, acks="all")
        await producer.start()
        try:
            event = CloudEvent.new(
                service="importer",
                name="account.deleted",
                data={"user_id": user, "account_id": gone},
                user_id=user,
                correlation_id="req-delete",
            )
            await producer.send_and_wait(
                OPERATIONS,
                event.to_json_bytes(),
                key=account_key(user, gone).encode(),
                headers=[(k, v.encode()) for k, v in cloudevent_headers(event).items()],
            )
        finally:
            await producer.stop()
        await asyncio.sleep(2.0)
        farm = await api.post(
            f"/v1/users/{user}/payees",
            json={"name": "La ferme de Julie", "category": "alimentation", "keywords": ["FERME DE JULIE"]},
        )
        assert farm.status_code == 201
        await seen.wait_for(lambda: len(seen.of(ops[0].id)) == 2, what="the kept operation recognised")
        await wait_reexamined(api, user, 1)
        await asyncio.sleep(1.0)
        assert seen.latest(ops[0].id).source == "user"  # type: ignore[union-attr]
        assert len(seen.of(ops[1].id)) == 1
        assert len(seen.of(ops[2].id)) == 1
        assert len(seen.of(booked.id)) == 2


async def test_a_category_alone_then_forgetting_the_choice(categorizer, engines):
    """`{"category"}` is a manual choice without a payee that later rules never replace; `{"clear": true}`
    forgets it and the rules apply again, then follow the rules' changes."""
    user = f"user-{uuid.uuid4().hex[:8]}"
    account = f"acc-{uuid.uuid4().hex[:6]}"
    farm = an_operation(account, dt.date(2025, 2, 3), "-12.00", "CB LA FERME DE JULIE 03/02")
    market = an_operation(
        account, dt.date(2025, 2, 4), "-54.20", "CARTE X4021 04/02 CARREFOUR MARKET PARIS 15"
    )
    async with categorizations(engines.kafka_bootstrap, user) as seen, api_for(categorizer, user) as api:
        await publish(engines.kafka_bootstrap, user, [farm, market])
        await seen.wait_for(
            lambda: bool(seen.of(farm.id) and seen.of(market.id)), what="first categorisations"
        )
        correct = f"/v1/users/{user}/operations/{farm.id}/payee"

        # what the body may be: exactly one of payee_id, new_payee, category, clear: true
        for body in (
            {},
            {"clear": False},
            {"category": "loisirs", "clear": True},
            {"category": "loisirs", "payee_id": "x"},
        ):
            refused = await api.post(correct, json=body)
            assert refused.status_code == 422, body
            assert refused.json()["code"] == "validation_error"
        unknown = await api.post(correct, json={"category": "loisirs/escalade"})
        assert unknown.status_code == 422
        assert unknown.headers["content-type"].startswith("application/problem+json")
        assert unknown.json()["code"] == "unknown_category"
        missing = await api.post(f"/v1/users/{user}/operations/op-nope/payee", json={"clear": True})
        assert (missing.status_code, missing.json()["code"]) == (404, "unknown_operation")

        # a category alone: the user's own category, no payee
        made = await api.post(
            f"/v1/users/{user}/categories", json={"id": "loisirs/escalade", "label": "Escalade"}
        )
        assert made.status_code == 201
        chosen = await api.post(correct, json={"category": "loisirs/escalade"})
        assert chosen.status_code == 200, chosen.text
        answer = chosen.json()
        assert (answer["payee"], answer["category"], answer["source"]) == (None, "loisirs/escalade", "manual")
        await seen.wait_for(lambda: len(seen.of(farm.id)) == 2, what="the category alone")
        manual = seen.latest(farm.id)
        assert manual is not None
        assert (manual.payee, manual.category, manual.source, manual.keyword) == (
            None,
            "loisirs/escalade",
            "manual",
            None,
        )
        assert manual.choice_version == 1

        # a payee whose keyword recognises it: the rules change, the choice stays
        payee = await api.post(
            f"/v1/users/{user}/payees",
            json={"name": "La ferme de Julie", "category": "alimentation", "keywords": ["FERME DE JULIE"]},
        )
        assert payee.status_code == 201
        await wait_reexamined(api, user, 2)
        await asyncio.sleep(1.0)
        assert len(seen.of(farm.id)) == 2
        assert seen.latest(farm.id).category == "loisirs/escalade"  # type: ignore[union-attr]

        # forgotten: what the rules say now, with a higher choice number than the manual one
        cleared = await api.post(correct, json={"clear": True})
        assert cleared.status_code == 200, cleared.text
        answer = cleared.json()
        assert (answer["category"], answer["source"]) == ("alimentation", "user")
        assert answer["payee"]["id"] == payee.json()["id"]
        await seen.wait_for(lambda: len(seen.of(farm.id)) == 3, what="the rules' result after clear")
        ruled = seen.latest(farm.id)
        assert ruled is not None
        assert (ruled.category, ruled.source, ruled.choice_version) == ("alimentation", "user", 2)
        assert ruled.payee is not None
        assert ruled.payee.id == payee.json()["id"]

        # and the rules' later changes reach it again
        changed = await api.put(
            f"/v1/users/{user}/payees/{payee.json()['id']}",
            json={"name": "La ferme de Julie", "category": "restaurants", "keywords": ["FERME DE JULIE"]},
        )
        assert changed.status_code == 200
        await seen.wait_for(lambda: len(seen.of(farm.id)) == 4, what="the rule change after clear")
        again = seen.latest(farm.id)
        assert again is not None
        assert (again.category, again.source, again.choice_version) == ("restaurants", "user", 2)

        # forgetting on an operation the user never chose for: what the rules say (the built-in ones)
        plain = await api.post(f"/v1/users/{user}/operations/{market.id}/payee", json={"clear": True})
        assert plain.status_code == 200
        assert (plain.json()["category"], plain.json()["source"], plain.json()["payee"]) == (
            "alimentation",
            "global",
            None,
        )
