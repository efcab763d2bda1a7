"""Every MongoDB query shape the services send is served by an index on the local engine.

The local engine is FerretDB v1.24 on PostgreSQL (deploy/local/ferretdb.sh). FerretDB turns a filter
into `SELECT _jsonb FROM <table> WHERE ...`, pushing down only top-level scalar equalities (`_id`
included) and `$eq`, as `_jsonb -> 'f' @> v`; `$in`, `$or`, `$nor`, ranges, `$ne` on most types and
sorts are evaluated in Go on whatever the SELECT returns. `find`, `find_one`, the filters of
`update_*`, `replace_one`, `delete_*` and `distinct`, and the first `$match` of an `aggregate`
(`count_documents` is one) all run that same SELECT. ferretdb-gin.sql gives every btree index
FerretDB creates a GIN `jsonb_path_ops` twin per column, which is what serves `@>`.

FerretDB's `explain` answers PostgreSQL's `EXPLAIN (FORMAT JSON)` of that SELECT. This module builds
each service's collections with the services' own `create_indexes` in private databases, fills them
with realistic documents (50,000 operations, thousands of everything else), runs ANALYZE so that the
planner knows the real sizes, and explains every shape of `SHAPES`. A `Seq Scan` of a collection of
thousands of rows then means that nothing of the filter reaches an index: the shape reads the whole
collection every time, and its cost grows with it. Only shapes that read (nearly) the whole
collection by design may scan, and they say why (`whole_collection`).

When a service adds or changes a query, add or change its row in `SHAPES`. Inventory (HEAD of the
services as of this file, after 2b97241): services/*/adapters.py, services/connector/adapters/mongo.py and
the filters the handlers build (services/*/handlers.py), with shared/mongo.py:find_by_ids (a find_one
by `_id` per id, or one read of a scope for more than 64). services/importer/replay.py goes through the
importer's stores (same shapes); ops/*.py reach the services over HTTP only and never MongoDB.
Collections that are only inserted into (`nightly_runs`) have no shape. Static checks keep the table
honest without an engine: every function it names exists, every function of the inventory that sends
a filter is named by a row, and no module of services/ or shared/ writes an `_id` `$in`.

The last tests check ferretdb-gin.sql itself: a twin follows its index in and out (create_index,
drop_index, a twin shared by two indexes), and the script, run again, backfills missing twins.
"""

from __future__ import annotations

import ast
import asyncio
import datetime as dt
import functools
import json
import os
import re
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from bson import Binary
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from harness.devstack import DEPLOY, ROOT, Engines
from services.categorizer.adapters.mongo import (
    OperationsRepository,
    RuleSetRepository,
    TransferRepository,
    leg_id,
    projection_sheet,
)
from services.connector.adapters.mongo import ConnectorRepository
from services.entitlements.adapters.mongo import EntitlementsRepository
from services.importer.adapters.mongo import AccountStore, OperationStore
from services.importer.adapters.replays import MongoReplayStatuses
from shared.mongo import POINT_READS_UP_TO, find_by_ids, make_client
from shared.text import search_keys

pytestmark = pytest.mark.engines

Doc = dict[str, Any]

# ---- the store: sizes, ids, documents -----------------------------------------------------------------

USERS = 1_000
ACCOUNTS_PER_USER = 2
OPERATIONS_PER_ACCOUNT = 25  # 1,000 users x 2 accounts x 25 = 50,000 operations
OPERATIONS = USERS * ACCOUNTS_PER_USER * OPERATIONS_PER_ACCOUNT
# the categorizer's projection and the connector's fingerprints keep the first lines of each account only:
# 20,000 rows each are as telling as 50,000 and fill twice as fast
MIRRORED_PER_ACCOUNT = 10
# below this many rows PostgreSQL may rightly prefer a sequential scan; every collection holds more
MIN_ROWS = 1_000
INSERT_CHUNK = 2_500
NOW = dt.datetime(2026, 12, 1, 3, 0, tzinfo=dt.UTC)
FIRST_DAY = dt.date(2025, 12, 1)


def user(u: int) -> str:
    return f"user-{u:04d}"


def agg_user(u: int) -> str:  # the aggregator's id of that user
    return str(70_000 + u)


def agg_account(u: int, a: int) -> str:
    return str(500_000 + u * ACCOUNTS_PER_USER + a)


def akey(u: int, a: int) -> str:  # `<user>:<aggregator account>`
    return f"{user(u)}:{agg_account(u, a)}"


def connection(u: int) -> str:  # connector: `<user>:<connection>`
    return f"{user(u)}:{9_000 + u}"


def account(u: int, a: int) -> str:  # importer: the app account
    return f"acc-{u:04d}-{a}"


def op_id(u: int, a: int, n: int) -> str:
    return f"op-{u:04d}-{a}-{n:03d}"


def tx_id(u: int, a: int, n: int) -> str:
    return str(10_000_000 + (u * ACCOUNTS_PER_USER + a) * OPERATIONS_PER_ACCOUNT + n)


def day(n: int) -> str:
    return (FIRST_DAY + dt.timedelta(days=(n * 14) % 365)).isoformat()


def accounts() -> Iterator[tuple[int, int]]:
    for u in range(USERS):
        for a in range(ACCOUNTS_PER_USER):
            yield u, a


def lines(per_account: int = OPERATIONS_PER_ACCOUNT) -> Iterator[tuple[int, int, int]]:
    for u, a in accounts():
        for n in range(per_account):
            yield u, a, n


MEMOS = ("CB CARREFOUR 12/03", "PRLV SEPA EDF", "VIR SALAIRE ACME", "CB SNCF INTERNET", "RETRAIT DAB 0423")


@functools.cache
def importer_docs() -> dict[str, list[Doc]]:
    operations = [
        {
            "_id": op_id(u, a, n),
            "user_id": user(u),
            "account_id": account(u, a),
            "date": day(n),
            "month": day(n)[:7],
            "amount": f"-{n + 1}.50",
            "cents": -(n + 1) * 100 - 50,
            "currency": "EUR",
            "memo": MEMOS[n % len(MEMOS)],
            "label": MEMOS[n % len(MEMOS)].title(),
            "words": search_keys(MEMOS[n % len(MEMOS)]),
            "status": "coming" if n == 0 else "booked",
            "source": "bank",
            "reconciled": False,
            "reconciled_by": None,
            "aggregator_transaction_id": tx_id(u, a, n),
            "payee": None,
            "category": None,
            "categorized_by": None,
            "cat_src": None,
            "cat_rv": -1,
            "created_at": NOW,
        }
        for u, a, n in lines()
    ]
    sheets: dict[str, Doc] = {}
    for op in operations:  # two documents per sheet (account and month), as two batches leave them
        sid = f"{op['account_id']}:{op['month']}"
        for part in (0, 1):
            sheet = sheets.setdefault(
                f"{sid}:{part}",
                {
                    "_id": f"{sid}:{part}",
                    "sheet": sid,
                    "user_id": op["user_id"],
                    "account_id": op["account_id"],
                },
            )
            entry = {"category": "alimentation", "cat_src": "global", "cat_rv": part}
            sheet.setdefault("ops", {})[op["_id"]] = entry
    return {
        "operations": operations,
        "categorizations": list(sheets.values()),
        "import_state": [
            {
                "_id": akey(u, a),
                "user_id": user(u),
                "format": 1,
                "rev": 3,
                "count": OPERATIONS_PER_ACCOUNT,
                "accounts": [account(u, a)],
                "lines": Binary(b"x\x9c" + bytes(64)),
                "updated_at": NOW,
            }
            for u, a in accounts()
        ],
        "accounts": [
            {
                "_id": account(u, a),
                "user_id": user(u),
                "name": f"Compte {a}",
                "currency": "EUR",
                "deleted": u % 50 == 0 and a == 1,
                "generation": 1,
                "announced": 1,
                "sources": [akey(u, a)],
                "manual": {},
                # the latest balance check: a few accounts in alarm, most not, some never checked
                **(
                    {"balance_rev": 3, "opening_cents": 10_000, "balance_alarm": u % 100 == 7}
                    if u % 10
                    else {}
                ),
            }
            for u, a in accounts()
        ],
        "banks": [
            {"_id": f"{user(u)}:bank-{u % 4}", "user_id": user(u), "id": f"bank-{u % 4}"}
            for u in range(USERS)
        ]
        + [{"_id": f"{user(u)}:bank-9", "user_id": user(u), "id": "bank-9"} for u in range(USERS)],
        "links": [
            {
                "_id": akey(u, a),
                "user_id": user(u),
                "aggregator_account_id": agg_account(u, a),
                "target_account_id": account(u, a),
                "import_mode": "create",
                "updated_at": NOW,
            }
            for u, a in accounts()
        ],
        # one marker per one-off migration done (a handful in life; as many as make a scan mean something)
        "migrations": [{"_id": f"migration-{n}", "at": NOW} for n in range(MIN_ROWS)],
        # replay requests of ops: a few a day, kept (as many as make a scan mean something)
        "replays": [
            {
                "_id": f"replay-{u:04d}",
                "user_id": user(u),
                "aggregator_account_id": agg_account(u, 0),
                "since": None,
                "status": "succeeded",
                "requested_at": NOW,
                "run": f"run-{u:04d}",
                "runner": "importer-0:1",
                "attempts": 1,
            }
            for u in range(USERS)
        ],
        "aggregator_accounts": [
            {
                "_id": akey(u, a),
                "user_id": user(u),
                "name": f"Compte {a}",
                "iban": f"FR76{u:08d}{a}",
                "balance": 1234.5,
            }
            for u, a in accounts()
        ],
    }


@functools.cache
def categorizer_docs() -> dict[str, list[Doc]]:
    payees = [{"id": "p1", "name": "Carrefour", "category": "groceries", "keywords": ["carrefour"]}]
    return {
        "categorizer_rulesets": [
            {
                "_id": user(u),
                "version": 4,
                "examined_version": 4 if u % 100 else 3,
                "retro_pending": u % 100 == 0,
                "retro_requested_at": NOW - dt.timedelta(hours=1),
                "payees": payees,
                "categories": [],
                "snapshots": [],
                "updated_at": NOW,
                "correlation_id": f"rules:{user(u)}:4",
            }
            for u in range(USERS)
        ],
        "categorizer_sheets": list(projection_sheets().values()),
        # the operations whose wording is a transfer's (two a month per account: savings, rent)
        "categorizer_transfers": [
            {
                "_id": leg_id(user(u), op_id(u, a, n)),
                "user_id": user(u),
                "operation_id": op_id(u, a, n),
                "account_id": account(u, a),
                "currency": "EUR",
                "cents": 20_000 * (1 if a else -1),
                "date": day(n),
                "month": day(n)[:7],
                "partner": {"operation_id": op_id(u, 1 - a, n), "account_id": account(u, 1 - a)},
                "updated_at": NOW,
            }
            for u, a, n in lines(MIRRORED_PER_ACCOUNT)
        ],
        # choice numbers claimed by corrections (one an account here; a few per corrected operation)
        "categorizer_choices": [
            {
                "_id": f"{user(u)}:{op_id(u, a, 0)}:1",
                "user_id": user(u),
                "account_id": account(u, a),
                "at": NOW,
            }
            for u, a in accounts()
        ],
        # leases of rule writes, pairings and re-examinations (let go when done: a few live at a time)
        "categorizer_leases": [
            {"_id": f"{kind}:{user(u)}", "holder": f"holder-{u}", "claimed_at": NOW, "expires_at": NOW}
            for u in range(USERS)
            for kind in ("rules", "pairing")
        ],
        # one per take-over of a lease that ended (after a crash)
        "categorizer_lease_takeovers": [
            {"_id": f"rules:{user(u)}|holder-{u}|{n}|0", "lease": f"rules:{user(u)}", "at": NOW}
            for u in range(USERS)
            for n in range(2)
        ],
        # what is left of the projection kept one document each, before the sheets (adopt_legacy)
        "categorizer_operations": [
            {
                "_id": f"{user(u)}:{op_id(u, 0, 0)}",
                "user_id": user(u),
                "operation_id": op_id(u, 0, 0),
                "account_id": account(u, 0),
                "memo": MEMOS[0],
                "label": "",
                "seen_at": NOW,
                "seen_version": 4,
            }
            for u in range(USERS)
        ],
    }


def projection_sheets() -> dict[str, Doc]:
    """The categorizer's projection: two documents per sheet (user, account, month), as two batches
    leave them."""
    sheets: dict[str, Doc] = {}
    for u, a, n in lines():
        sid = projection_sheet(user(u), account(u, a), day(n)[:7])
        for part in (0, 1):
            sheet = sheets.setdefault(
                f"{sid}:{part}",
                {"_id": f"{sid}:{part}", "sheet": sid, "user_id": user(u), "account_id": account(u, a)},
            )
            sheet.setdefault("ops", {})[op_id(u, a, n)] = {
                "memo": MEMOS[n % len(MEMOS)],
                "label": MEMOS[n % len(MEMOS)].title(),
                "at": NOW,
                "seen_version": part,
                "result": {"payee_id": None, "payee_name": None, "category": None, "source": None,
                           "keyword": None},
            }  # fmt: skip
    return sheets


@functools.cache
def connector_docs() -> dict[str, list[Doc]]:
    return {
        "aggregator_users": [
            {"_id": user(u), "token_enc": "v1.AAAA", "id_user": agg_user(u), "created_at": NOW}
            for u in range(USERS)
        ],
        "activations": [
            {"_id": uuid.UUID(int=u * 2 + k).hex, "user_id": user(u), "created_at": NOW, "used": k == 0}
            for u in range(USERS)
            for k in range(2)
        ],
        "connections": [
            {
                "_id": connection(u),
                "user_id": user(u),
                "connection_id": str(9_000 + u),
                "removed": u % 40 == 0,
                "paused": False,
                "state": "valid",
                "accounts": [{"aggregator_account_id": agg_account(u, a)} for a in range(ACCOUNTS_PER_USER)],
            }
            for u in range(USERS)
        ],
        "account_sync": [
            {
                "_id": akey(u, a),
                "user_id": user(u),
                "aggregator_account_id": agg_account(u, a),
                "state": "ok",
                "last_good_start": NOW,
            }
            for u, a in accounts()
        ],
        "account_notes": [
            {
                "_id": akey(u, a),
                "user_id": user(u),
                "aggregator_account_id": agg_account(u, a),
                "account_id": account(u, a),
                "balance": {"bank_balance": "10.00", "computed_balance": "10.00", "balance_gap": "0.00"},
            }
            for u, a in accounts()
        ],
        "seen_transactions": [
            {"_id": f"{akey(u, a)}:{tx_id(u, a, n)}", "account": akey(u, a), "fp": f"{u:04x}{n:04x}"}
            for u, a, n in lines(MIRRORED_PER_ACCOUNT)
        ],
        "active_runs": [
            {
                "_id": connection(u),
                "run_id": f"run-{u}",
                "claimed_at": NOW,
                "expires_at": NOW + dt.timedelta(minutes=(u % 3 - 1) * 10),
            }
            for u in range(USERS)
        ],
        # one per take-over of a run's lease that ended (after a crash)
        "active_run_takeovers": [
            {"_id": f"{connection(u)}|run-{u}|{n}|0", "lease": connection(u), "at": NOW}
            for u in range(USERS)
            for n in range(2)
        ],
        "entitlement_projection": [
            {"_id": user(u), "plan": "premium", "options": [], "entitled": True, "version": 3}
            for u in range(USERS)
        ],
        # the webhook signatures of the last minutes (a busy night: a few webhooks a second)
        "webhook_signatures": [
            {"_id": f"{n:064x}", "at": NOW, "minute": SIGNATURE_MINUTE + n // 200} for n in range(2_000)
        ],
    }


@functools.cache
def entitlements_docs() -> dict[str, list[Doc]]:
    return {
        "entitlements": [
            {
                "_id": user(u),
                "plan": "standard",
                "options": ["auto_import"],
                "version": 3,
                "updated_at": NOW,
                "has_outbox": u % 200 == 0,
                "outbox": [],
            }
            for u in range(USERS)
        ],
        "entitlement_history": [
            {"_id": f"{user(u)}:{v}", "user_id": user(u), "version": v, "action": "plan_set", "at": NOW}
            for u in range(USERS)
            for v in (1, 2, 3)
        ],
        # the users' data keys (in production their own database, the vault: the same engine)
        "user_keys": [
            {"_id": user(u), "kid": f"{u:016x}", "wrapped": "A" * 80, "created_at": NOW}
            if u % 50
            else {"_id": user(u), "erased_at": NOW}
            for u in range(USERS)
        ],
        "erasures": [
            {"_id": f"erase-{user(u)}", "user_id": user(u), "requested_at": NOW, "services": {"importer": {}}}
            for u in range(USERS)
        ],
    }


# the minute (connector/adapters/mongo.py:signature_minute) of the first webhook signatures of the store
SIGNATURE_MINUTE = int(NOW.timestamp()) // 60


# ---- the shapes ---------------------------------------------------------------------------------------

# The store a shape runs against: a value that exists in it
U, A = 42, 1


@dataclass(frozen=True)
class Shape:
    source: str  # file:function (several when they send the same filter)
    service: str  # importer | categorizer | connector | entitlements: whose database
    collection: str
    op: str  # what the service calls (find, update_one, ...): all run the same SELECT
    filter: Doc
    # an `aggregate` sends its pipeline; the first $match is what FerretDB pushes down
    pipeline: list[Doc] | None = None
    # set when the shape reads (nearly) the whole collection by design: a sequential scan is right
    whole_collection: str = ""

    @property
    def name(self) -> str:
        return f"{self.service}.{self.collection} {self.op} {self.source}"


IMP, CAT, CON, ENT = "importer", "categorizer", "connector", "entitlements"
RUN_REF = f"{akey(U, A)}:{tx_id(U, A, 3)}"


# `source` names every function that sends the shape, as `file:Class.method, method2 (note); file2:...`
# (paths under services/, or shared/...): test_every_function_that_queries_has_a_shape reads them.
# shared/mongo.py:find_by_ids sends `find_one({"_id": id})` per id, or, for more than POINT_READS_UP_TO ids
# and a scope, one `find(scope)`: its callers have a row for each (test_find_by_ids_sends_these_shapes).
SHAPES: tuple[Shape, ...] = (
    # -- importer: services/importer/adapters/mongo.py
    Shape("importer/adapters/mongo.py:StateStore.load", IMP, "import_state", "find_one", {"_id": akey(U, A)}),
    Shape(
        "importer/adapters/mongo.py:StateStore.save",
        IMP,
        "import_state",
        "replace_one",
        {"_id": akey(U, A), "rev": 3},
    ),
    Shape(
        "importer/adapters/mongo.py:OperationStore.get, get_many (find_by_ids without a scope: a find_one "
        "per id), stored_many (without a scope, or up to 64 ids)",
        IMP,
        "operations",
        "find_one",
        {"_id": op_id(U, A, 7)},
    ),
    Shape(
        "importer/adapters/mongo.py:MongoOperations.rereconcile (OperationStore.guarded_update, empty guard)",
        IMP,
        "operations",
        "update_one",
        {"_id": op_id(U, A, 7)},
    ),
    Shape(
        "importer/adapters/mongo.py:BankOperationFactory.update, fenced (UpdateOne), "
        "MongoOperations.write_bank (DeleteOne, fenced), via OperationStore.write",
        IMP,
        "operations",
        "bulk_write",
        {"_id": op_id(U, A, 7), "src_rev": {"$not": {"$gte": 4}}},
    ),
    Shape(
        "importer/adapters/mongo.py:MongoOperations.reconcile (the claim), OperationStore.guarded_update",
        IMP,
        "operations",
        "update_one",
        {"_id": op_id(U, A, 7), "reconciled_by": {"$in": [None, RUN_REF]}},
    ),
    Shape(
        "importer/adapters/mongo.py:MongoOperations.release (a line let go, or the user undoes the match), "
        "OperationStore.guarded_update",
        IMP,
        "operations",
        "update_one",
        {"_id": op_id(U, A, 7), "reconciled_by": RUN_REF},
    ),
    Shape(
        "importer/adapters/mongo.py:CategorizationSheets.of; shared/sheets.py:Sheets.read, fold",
        IMP,
        "categorizations",
        "find",
        {"sheet": f"{account(U, A)}:{day(9)[:7]}"},
    ),
    Shape(
        "shared/sheets.py:Sheets.fold (DeleteOne of each document it merged, importer/adapters/mongo.py:"
        "CategorizationSheets)",
        IMP,
        "categorizations",
        "bulk_write",
        {"_id": f"{account(U, A)}:{day(9)[:7]}:0"},
    ),
    Shape(
        "importer/adapters/mongo.py:CategorizationSheets.delete_account",
        IMP,
        "categorizations",
        "delete_many",
        {"account_id": account(U, A)},
    ),
    Shape(
        "importer/adapters/mongo.py:OperationStore.stored_many (find_by_ids, more than 64 ids of an account: "
        "MongoCategorizations.filed_in)",
        IMP,
        "operations",
        "find",
        {"user_id": user(U), "account_id": account(U, A)},
    ),
    Shape(
        "importer/adapters/mongo.py:OperationStore.delete_account",
        IMP,
        "operations",
        "delete_many",
        {"account_id": account(U, A)},
    ),
    Shape(
        "importer/adapters/mongo.py:OperationStore.search (a month of one account: page, the listing and "
        "the CSV export of an account; the search filters are applied to what it returns)",
        IMP,
        "operations",
        "find",
        {"account_id": account(U, A), "user_id": user(U), "month": day(9)[:7]},
    ),
    Shape(
        "importer/adapters/mongo.py:OperationStore.search (a month of every account of a user: the listing "
        "of all accounts, index user_month)",
        IMP,
        "operations",
        "find",
        {"user_id": user(U), "month": day(9)[:7]},
    ),
    Shape(
        "importer/adapters/mongo.py:OperationStore.search (an account from before months were kept)",
        IMP,
        "operations",
        "find",
        {"account_id": account(U, A), "user_id": user(U)},
    ),
    Shape(
        "importer/adapters/mongo.py:OperationStore.search (`q`: the user's operations with the longest "
        "wanted word's beginning, every account and month at once, index user_words)",
        IMP,
        "operations",
        "find",
        {"user_id": user(U), "words": "carref"},
    ),
    Shape(
        "importer/adapters/mongo.py:OperationStore.add_search_keys (whether the one-off rewrite was done)",
        IMP,
        "migrations",
        "find_one",
        {"_id": "operations.search_keys"},
        whole_collection="one document per migration ever run",
    ),
    Shape(
        "importer/adapters/mongo.py:OperationStore.add_search_keys (the operations stored before search "
        "keys)",
        IMP,
        "operations",
        "find",
        {"words": {"$exists": False}},
        whole_collection="a one-off rewrite at the first start after search keys came, then never again "
        "(a marker in `migrations` says it was done)",
    ),
    Shape(
        "importer/adapters/mongo.py:OperationStore.edit_manual (a manual operation's label, or what a "
        "reconciled one may change)",
        IMP,
        "operations",
        "update_one",
        {"_id": op_id(U, A, 7), "source": "manual"},
    ),
    Shape(
        "importer/adapters/mongo.py:OperationStore.edit_manual (its date or amount: only unreconciled), "
        "delete_manual (delete_one)",
        IMP,
        "operations",
        "update_one/delete_one",
        {"_id": op_id(U, A, 7), "source": "manual", "reconciled_by": None},
    ),
    Shape(
        "importer/adapters/mongo.py:OperationStore.refuse_line (the undone match, $addToSet)",
        IMP,
        "operations",
        "update_one",
        {"_id": op_id(U, A, 7)},
    ),
    Shape(
        "importer/adapters/mongo.py:OperationStore.find_shown (the benchmarks' filter of a user; bench/"
        "pipeline.py also reads the night's operations by `created_at`, a scan it makes once at the end)",
        IMP,
        "operations",
        "find",
        {"user_id": user(U)},
    ),
    Shape(
        "importer/adapters/mongo.py:OperationStore.balances (index by_user)",
        IMP,
        "operations",
        "aggregate",
        {"user_id": user(U), "status": "booked"},
        pipeline=[
            {"$match": {"user_id": user(U), "status": "booked"}},
            {"$group": {"_id": "$account_id", "total": {"$sum": "$cents"}}},
        ],
    ),
    Shape(
        "importer/adapters/mongo.py:OperationStore.booked_cents (index account_date; status and the $or are "
        "evaluated on the account's rows)",
        IMP,
        "operations",
        "aggregate",
        {"account_id": account(U, A), "status": "booked"},
        pipeline=[
            {
                "$match": {
                    "account_id": account(U, A),
                    "status": "booked",
                    "$or": [{"source": "bank"}, {"reconciled": True, "bank_status": {"$ne": "pending"}}],
                }
            },
            {"$group": {"_id": None, "total": {"$sum": "$cents"}}},
        ],
    ),
    Shape(
        "importer/adapters/mongo.py:OperationStore.count (count_documents; no service calls it)",
        IMP,
        "operations",
        "count_documents",
        {"account_id": account(U, A)},
        pipeline=[{"$match": {"account_id": account(U, A)}}, {"$group": {"_id": 1, "n": {"$sum": 1}}}],
    ),
    Shape(
        "importer/adapters/mongo.py:AccountStore.get, mark_announced, add_sources, add_manual, "
        "remove_manual, rename",
        IMP,
        "accounts",
        "find_one/update_one",
        {"_id": account(U, A)},
    ),
    Shape(
        "importer/adapters/mongo.py:AccountStore.list_accounts",
        IMP,
        "accounts",
        "find",
        {"user_id": user(U), "deleted": False},
    ),
    Shape(
        "importer/adapters/mongo.py:AccountStore.revive",
        IMP,
        "accounts",
        "update_one",
        {"_id": account(U, A), "deleted": True, "generation": 1},
    ),
    Shape(
        "importer/adapters/mongo.py:AccountStore.store_balance (a check after others)",
        IMP,
        "accounts",
        "update_one",
        {"_id": account(U, A), "generation": 1, "balance_rev": 3},
    ),
    Shape(
        "importer/adapters/mongo.py:AccountStore.store_balance (the first check)",
        IMP,
        "accounts",
        "update_one",
        {"_id": account(U, A), "generation": 1, "balance_rev": {"$exists": False}},
    ),
    Shape(
        "importer/adapters/mongo.py:AccountStore.count_balance_gaps (count_documents, index "
        "by_balance_alarm)",
        IMP,
        "accounts",
        "count_documents",
        {"balance_alarm": True},
        pipeline=[{"$match": {"balance_alarm": True}}, {"$group": {"_id": 1, "n": {"$sum": 1}}}],
    ),
    Shape(
        "importer/adapters/mongo.py:AccountStore.add_months",
        IMP,
        "accounts",
        "update_one",
        {"_id": account(U, A), "months": {"$exists": True}},
    ),
    Shape(
        "importer/adapters/mongo.py:AccountStore.mark_deleted",
        IMP,
        "accounts",
        "update_one",
        {"_id": account(U, A), "deleted": False},
    ),
    Shape(
        "importer/adapters/mongo.py:AccountStore.put_details, get_details",
        IMP,
        "aggregator_accounts",
        "replace_one/find_one",
        {"_id": akey(U, A)},
    ),
    Shape(
        "importer/adapters/mongo.py:AccountStore.ensure_bank",
        IMP,
        "banks",
        "find_one",
        {"_id": f"{user(U)}:bank-2"},
    ),
    Shape("importer/adapters/mongo.py:AccountStore.list_banks", IMP, "banks", "find", {"user_id": user(U)}),
    Shape(
        "importer/adapters/mongo.py:AccountStore.get_link, put_link",
        IMP,
        "links",
        "find_one/replace_one",
        {"_id": akey(U, A)},
    ),
    Shape("importer/adapters/mongo.py:AccountStore.list_links", IMP, "links", "find", {"user_id": user(U)}),
    # -- categorizer: services/categorizer/adapters/mongo.py
    Shape(
        "categorizer/adapters/mongo.py:RuleSetRepository.stored, get, status, correlation_id, "
        "reexamination_done, versions (find_by_ids without a scope: a find_one per user)",
        CAT,
        "categorizer_rulesets",
        "find_one",
        {"_id": user(U)},
    ),
    Shape(
        "categorizer/adapters/mongo.py:RuleSetRepository.save, reexamination_done (guard on version)",
        CAT,
        "categorizer_rulesets",
        "update_one",
        {"_id": user(U), "version": 4},
    ),
    Shape(
        "categorizer/adapters/mongo.py:RuleSetRepository.reexamination_done (examined_version)",
        CAT,
        "categorizer_rulesets",
        "update_one",
        {"_id": user(U), "examined_version": {"$lt": 4}},
    ),
    Shape(
        "categorizer/adapters/mongo.py:RuleSetRepository.pending_since",
        CAT,
        "categorizer_rulesets",
        "find",
        {"retro_pending": True, "retro_requested_at": {"$lt": NOW}},
    ),
    Shape(
        "categorizer/adapters/mongo.py:OperationsRepository.get_many; shared/sheets.py:Sheets.read, fold",
        CAT,
        "categorizer_sheets",
        "find",
        {"sheet": projection_sheet(user(U), account(U, A), day(9)[:7])},
    ),
    Shape(
        "shared/sheets.py:Sheets.fold (DeleteOne of each document it merged, categorizer/adapters/mongo.py:"
        "ProjectionSheets)",
        CAT,
        "categorizer_sheets",
        "bulk_write",
        {"_id": f"{projection_sheet(user(U), account(U, A), day(9)[:7])}:0"},
    ),
    Shape(
        "categorizer/adapters/mongo.py:OperationsRepository._of_user (of_user, get)",
        CAT,
        "categorizer_sheets",
        "find",
        {"user_id": user(U)},
    ),
    Shape(
        "categorizer/adapters/mongo.py:OperationsRepository.adopt_legacy (a batch of what is left of the "
        "projection kept one document each before the sheets; DeleteOne by _id after)",
        CAT,
        "categorizer_operations",
        "find",
        {},
        whole_collection="a one-time move at start-up: it reads whatever is left, then deletes it "
        "(empty once moved)",
    ),
    Shape(
        "categorizer/adapters/mongo.py:OperationsRepository.delete_account",
        CAT,
        "categorizer_sheets",
        "delete_many",
        {"user_id": user(U), "account_id": account(U, A)},
    ),
    Shape(
        "categorizer/adapters/mongo.py:TransferRepository.put (UpdateOne upsert per leg), get, write "
        "(UpdateOne and DeleteOne per leg)",
        CAT,
        "categorizer_transfers",
        "find_one/bulk_write",
        {"_id": leg_id(user(U), op_id(U, A, 3))},
    ),
    Shape(
        "categorizer/adapters/mongo.py:TransferRepository.of_user (index by_user: a user's legs, a few a "
        "month)",
        CAT,
        "categorizer_transfers",
        "find",
        {"user_id": user(U)},
    ),
    Shape(
        "categorizer/adapters/mongo.py:TransferRepository.delete_account",
        CAT,
        "categorizer_transfers",
        "delete_many",
        {"user_id": user(U), "account_id": account(U, A)},
    ),
    Shape(
        "categorizer/adapters/mongo.py:OperationsRepository.delete_account (index by_user: the account's "
        "choice numbers)",
        CAT,
        "categorizer_choices",
        "delete_many",
        {"user_id": user(U), "account_id": account(U, A)},
    ),
    Shape(
        "shared/leases.py:LeaseStore._settle, release (categorizer/adapters/mongo.py:"
        "CategorizerLeases.held, if_free; LeaseHold.keep: a user's `rules:`, `pairing:` or `reexamine:`)",
        CAT,
        "categorizer_leases",
        "find_one",
        {"_id": f"rules:{user(U)}"},
    ),
    Shape(
        "shared/leases.py:LeaseStore._settle, release (the holder renews or lets go its live lease)",
        CAT,
        "categorizer_leases",
        "update_one/delete_one",
        {"_id": f"rules:{user(U)}", "holder": f"holder-{U}"},
    ),
    Shape(
        "shared/leases.py:LeaseStore._replace (the winner of a lease instance's ticket replaces it)",
        CAT,
        "categorizer_leases",
        "update_one/delete_one",
        {"_id": f"rules:{user(U)}", "holder": f"holder-{U}", "expires_at": NOW},
    ),
    Shape(
        "shared/leases.py:LeaseStore._replace (a ticket another writer holds: when it was taken)",
        CAT,
        "categorizer_lease_takeovers",
        "find_one",
        {"_id": f"rules:{user(U)}|holder-{U}|0|0"},
    ),
    # -- connector: services/connector/adapters/mongo.py
    Shape(
        "connector/adapters/mongo.py:ConnectorRepository.aggregator_user, save_aggregator_user",
        CON,
        "aggregator_users",
        "find_one",
        {"_id": user(U)},
    ),
    Shape(
        "connector/adapters/mongo.py:ConnectorRepository.connection_for_webhook",
        CON,
        "aggregator_users",
        "find",
        {"id_user": agg_user(U)},
    ),
    Shape(
        "connector/adapters/mongo.py:ConnectorRepository.use_activation",
        CON,
        "activations",
        "update_one",
        {"_id": uuid.UUID(int=U * 2 + 1).hex, "user_id": user(U), "used": False},
    ),
    Shape(
        "connector/adapters/mongo.py:ConnectorRepository.connection, connection_for_webhook, "
        "save_connection, update_connection, set_paused (UpdateOne per connection)",
        CON,
        "connections",
        "find_one/update_one/bulk_write",
        {"_id": connection(U)},
    ),
    Shape(
        "connector/adapters/mongo.py:ConnectorRepository._user_connections (user_connections, set_paused)",
        CON,
        "connections",
        "find",
        {"user_id": user(U), "removed": False},
    ),
    Shape(
        "connector/adapters/mongo.py:ConnectorRepository._user_connections (include_removed=True)",
        CON,
        "connections",
        "find",
        {"user_id": user(U)},
    ),
    Shape(
        "connector/adapters/mongo.py:ConnectorRepository.live_connections",
        CON,
        "connections",
        "find",
        {"removed": False},
        whole_collection="the nightly run reads every live connection, once a night: nearly every row (all "
        "but removed ones), which no index would make cheaper, on MongoDB either",
    ),
    Shape(
        "connector/adapters/mongo.py:ConnectorRepository.all_projected_rights",
        CON,
        "entitlement_projection",
        "find",
        {},
        whole_collection="the nightly run reads every user's projected rights, once a night, in one read "
        "instead of one per user",
    ),
    Shape(
        "connector/adapters/mongo.py:ConnectorRepository.account_states",
        CON,
        "account_sync",
        "find",
        {"user_id": user(U)},
    ),
    Shape(
        "connector/adapters/mongo.py:ConnectorRepository._set_account_states (mark_syncing, mark_closed, "
        "record_outcomes: UpdateOne upsert per account)",
        CON,
        "account_sync",
        "find_one/bulk_write",
        {"_id": akey(U, A)},
    ),
    Shape(
        "connector/adapters/mongo.py:ConnectorRepository.note_importer_facts (UpdateOne upsert per account)",
        CON,
        "account_notes",
        "bulk_write",
        {"_id": akey(U, A)},
    ),
    Shape(
        "connector/adapters/mongo.py:ConnectorRepository.account_states (the notes), erase_user",
        CON,
        "account_notes",
        "find/delete_many",
        {"user_id": user(U)},
    ),
    Shape(
        "connector/adapters/mongo.py:ConnectorRepository.known_fingerprints (up to 64 lines: a find_one "
        "each), remember_fingerprints (UpdateOne)",
        CON,
        "seen_transactions",
        "find_one/bulk_write",
        {"_id": f"{akey(U, A)}:{tx_id(U, A, 3)}"},
    ),
    Shape(
        "connector/adapters/mongo.py:ConnectorRepository.known_fingerprints (more than 64 lines: "
        "find_by_ids' scope, index on account)",
        CON,
        "seen_transactions",
        "find",
        {"account": akey(U, A)},
    ),
    Shape(
        "shared/leases.py:LeaseStore._settle, release (a lease by name: connector/adapters/mongo.py:"
        "ConnectorRepository.claim_run, claim_runs, renew_run, release_run)",
        CON,
        "active_runs",
        "find_one",
        {"_id": connection(U)},
    ),
    Shape(
        "shared/leases.py:LeaseStore._settle, release (the holder renews or lets go its live lease)",
        CON,
        "active_runs",
        "update_one/delete_one",
        {"_id": connection(U), "run_id": f"run-{U}"},
    ),
    Shape(
        "shared/leases.py:LeaseStore._replace (the winner of a lease instance's ticket replaces it)",
        CON,
        "active_runs",
        "update_one/delete_one",
        {"_id": connection(U), "run_id": f"run-{U}", "expires_at": NOW},
    ),
    Shape(
        "shared/leases.py:LeaseStore._replace (a ticket another writer holds: when it was taken)",
        CON,
        "active_run_takeovers",
        "find_one",
        {"_id": f"{connection(U)}|run-{U}|0|0"},
    ),
    Shape(
        "connector/adapters/mongo.py:ConnectorRepository.active_run",
        CON,
        "active_runs",
        "find_one",
        {"_id": connection(U), "expires_at": {"$gte": NOW}},
    ),
    Shape(
        "connector/adapters/mongo.py:ConnectorRepository.unfinished_night",
        CON,
        "active_runs",
        "count_documents",
        {"night": "2026-12-07"},
    ),
    Shape(
        "connector/adapters/mongo.py:ConnectorRepository.projected_rights",
        CON,
        "entitlement_projection",
        "find_one",
        {"_id": user(U)},
    ),
    Shape(
        "connector/adapters/mongo.py:ConnectorRepository.project_rights",
        CON,
        "entitlement_projection",
        "update_one",
        {"_id": user(U), "version": {"$lt": 4}},
    ),
    Shape(
        "connector/adapters/mongo.py:ConnectorRepository.activation (the callback reads its state's record)",
        CON,
        "activations",
        "find_one",
        {"_id": uuid.UUID(int=U * 2 + 1).hex},
    ),
    Shape(
        "connector/adapters/mongo.py:ConnectorRepository._prune_webhook_signatures (index by_minute: each "
        "minute that went by, by equality)",
        CON,
        "webhook_signatures",
        "delete_many",
        {"minute": SIGNATURE_MINUTE + 3},
    ),
    Shape(
        "connector/adapters/mongo.py:ConnectorRepository._prune_webhook_signatures (a fresh process, or "
        "after a quiet spell: one range)",
        CON,
        "webhook_signatures",
        "delete_many",
        {"minute": {"$lt": SIGNATURE_MINUTE + 3}},
        whole_collection="once per process start, or after more than 30 quiet minutes: the collection then "
        "holds only the last minutes' signatures (every accepted webhook prunes what is older)",
    ),
    # -- entitlements: services/entitlements/adapters/mongo.py
    Shape(
        "entitlements/adapters/mongo.py:EntitlementsRepository.get, outbox, mark_sent",
        ENT,
        "entitlements",
        "find_one",
        {"_id": user(U)},
    ),
    Shape(
        "entitlements/adapters/mongo.py:EntitlementsRepository.save, mark_sent (guard on version)",
        ENT,
        "entitlements",
        "update_one",
        {"_id": user(U), "version": 3},
    ),
    Shape(
        "entitlements/adapters/mongo.py:EntitlementsRepository.pending",
        ENT,
        "entitlements",
        "find",
        {"has_outbox": True},
    ),
    Shape(
        "entitlements/adapters/mongo.py:EntitlementsRepository.list_history, erase (delete_many)",
        ENT,
        "entitlement_history",
        "find",
        {"user_id": user(U)},
    ),
    # -- erasing a user (RGPD): services/*/erasure.py, and the users' data keys (shared/vault.py)
    Shape(
        "shared/vault.py:KeyVault.for_reading, for_writing (find_by_ids without a scope: a find_one per id), "
        "destroy (replace_one), BlockingOpener.open (tests and tools); "
        "entitlements/adapters/mongo.py:EntitlementsRepository.erase (delete_many on entitlements)",
        ENT,
        "user_keys",
        "find_one",
        {"_id": user(U)},
    ),
    Shape(
        "entitlements/adapters/mongo.py:ErasureRegistry.requested, answered (update_one), get",
        ENT,
        "erasures",
        "find_one",
        {"_id": f"erase-{user(U)}"},
    ),
    Shape(
        "importer/adapters/mongo.py:ImporterEraser.erase_user (find, then delete_many on operations, links, "
        "banks, accounts)",
        IMP,
        "accounts",
        "find",
        {"user_id": user(U)},
    ),
    Shape("importer/adapters/mongo.py:ImporterEraser.erase_user", IMP, "links", "find", {"user_id": user(U)}),
    Shape(
        "importer/adapters/mongo.py:ImporterEraser.erase_user",
        IMP,
        "operations",
        "delete_many",
        {"user_id": user(U)},
    ),
    Shape(
        "importer/adapters/mongo.py:ImporterEraser.erase_user",
        IMP,
        "categorizations",
        "delete_many",
        {"account_id": account(U, A)},
    ),
    Shape(
        "importer/adapters/mongo.py:ImporterEraser.erase_user",
        IMP,
        "import_state",
        "delete_many",
        {"_id": akey(U, A)},
    ),
    Shape(
        "importer/adapters/mongo.py:ImporterEraser.erase_user",
        IMP,
        "aggregator_accounts",
        "delete_many",
        {"user_id": user(U)},
    ),
    Shape(
        "importer/adapters/mongo.py:ImporterEraser.erase_user",
        IMP,
        "banks",
        "delete_many",
        {"user_id": user(U)},
    ),
    Shape(
        "importer/adapters/replays.py:MongoReplayStatuses.get, claim (what it claims)",
        IMP,
        "replays",
        "find_one",
        {"_id": f"replay-{U:04d}"},
    ),
    Shape(
        "importer/adapters/replays.py:MongoReplayStatuses.claim (guarded on the status and run it read)",
        IMP,
        "replays",
        "update_one",
        {"_id": f"replay-{U:04d}", "status": "running", "run": f"run-{U:04d}"},
    ),
    Shape(
        "importer/adapters/replays.py:MongoReplayStatuses.progress, finish (fenced on the run)",
        IMP,
        "replays",
        "update_one",
        {"_id": f"replay-{U:04d}", "run": f"run-{U:04d}"},
    ),
    Shape(
        "importer/adapters/replays.py:MongoReplayStatuses.erase_user",
        IMP,
        "replays",
        "delete_many",
        {"user_id": user(U)},
    ),
    Shape(
        "categorizer/adapters/mongo.py:CategorizerEraser.erase_user",
        CAT,
        "categorizer_rulesets",
        "delete_many",
        {"_id": user(U)},
    ),
    Shape(
        "categorizer/adapters/mongo.py:CategorizerEraser.erase_user",
        CAT,
        "categorizer_sheets",
        "delete_many",
        {"user_id": user(U)},
    ),
    Shape(
        "categorizer/adapters/mongo.py:CategorizerEraser.erase_user",
        CAT,
        "categorizer_operations",
        "delete_many",
        {"user_id": user(U)},
    ),
    Shape(
        "categorizer/adapters/mongo.py:CategorizerEraser.erase_user",
        CAT,
        "categorizer_transfers",
        "delete_many",
        {"user_id": user(U)},
    ),
    Shape(
        "categorizer/adapters/mongo.py:CategorizerEraser.erase_user (index by_user)",
        CAT,
        "categorizer_choices",
        "delete_many",
        {"user_id": user(U)},
    ),
    Shape(
        "categorizer/adapters/mongo.py:CategorizerEraser.erase_user (CategorizerLeases.forget_user); "
        "shared/leases.py:LeaseStore.forget",
        CAT,
        "categorizer_leases",
        "delete_many",
        {"_id": f"pairing:{user(U)}"},
    ),
    Shape(
        "categorizer/adapters/mongo.py:CategorizerEraser.erase_user (CategorizerLeases.forget_user); "
        "shared/leases.py:LeaseStore.forget (index by_lease)",
        CAT,
        "categorizer_lease_takeovers",
        "delete_many",
        {"lease": f"pairing:{user(U)}"},
    ),
    Shape(
        "connector/adapters/mongo.py:ConnectorRepository.erase_user",
        CON,
        "connections",
        "find",
        {"user_id": user(U)},
    ),
    Shape(
        "connector/adapters/mongo.py:ConnectorRepository.erase_user",
        CON,
        "account_sync",
        "find",
        {"user_id": user(U)},
    ),
    Shape(
        "connector/adapters/mongo.py:ConnectorRepository.erase_user",
        CON,
        "seen_transactions",
        "delete_many",
        {"account": akey(U, A)},
    ),
    Shape(
        "connector/adapters/mongo.py:ConnectorRepository.erase_user; shared/leases.py:LeaseStore.forget",
        CON,
        "active_runs",
        "delete_many",
        {"_id": connection(U)},
    ),
    Shape(
        "shared/leases.py:LeaseStore._replace (a lease's tickets older than `stale`: its few, by_lease)",
        CON,
        "active_run_takeovers",
        "delete_many",
        {"lease": connection(U), "at": {"$lt": NOW}},
    ),
    Shape(
        "shared/leases.py:LeaseStore._replace (a lease's tickets older than `stale`: its few, by_lease)",
        CAT,
        "categorizer_lease_takeovers",
        "delete_many",
        {"lease": f"rules:{user(U)}", "at": {"$lt": NOW}},
    ),
    Shape(
        "connector/adapters/mongo.py:ConnectorRepository.erase_user; shared/leases.py:LeaseStore.forget "
        "(index by_lease)",
        CON,
        "active_run_takeovers",
        "delete_many",
        {"lease": connection(U)},
    ),
    Shape(
        "connector/adapters/mongo.py:ConnectorRepository.erase_user",
        CON,
        "activations",
        "delete_many",
        {"user_id": user(U)},
    ),
    Shape(
        "connector/adapters/mongo.py:ConnectorRepository.erase_user",
        CON,
        "entitlement_projection",
        "delete_many",
        {"_id": user(U)},
    ),
    Shape(
        "connector/adapters/mongo.py:ConnectorRepository.erase_user",
        CON,
        "aggregator_users",
        "delete_many",
        {"_id": user(U)},
    ),
)


# ---- the engine ---------------------------------------------------------------------------------------


def psql(engines: Engines, sql: str = "", *, script: Path | None = None) -> list[list[str]]:
    """Rows of `sql` (or of the file `script`) on the PostgreSQL behind FerretDB
    (deploy/local/ferretdb.sh psql: its superuser, on its database), tab-separated."""
    env = dict(engines.env) if engines.owned else dict(os.environ)
    what = ["-f", str(script)] if script is not None else ["-c", sql]
    done = subprocess.run(
        [str(DEPLOY / "ferretdb.sh"), "psql", "-tA", "-F", "\t", *what],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"psql failed ({done.returncode}): {done.stderr.strip()}")
    return [line.split("\t") for line in done.stdout.splitlines() if line]


@dataclass
class Store:
    client: AsyncMongoClient[Doc]
    databases: dict[str, str]  # service -> MongoDB database (= PostgreSQL schema)

    def db(self, service: str) -> AsyncDatabase[Doc]:
        return self.client[self.databases[service]]

    def schemas(self) -> str:
        return ", ".join(f"'{name}'" for name in self.databases.values())


async def fill(db: AsyncDatabase[Doc], docs: Mapping[str, list[Doc]], parallel: int = 4) -> None:
    """`insert_many` in chunks, a few at once (FerretDB encodes each document in Go: it is CPU-bound)."""
    slots = asyncio.Semaphore(parallel)

    async def insert(name: str, rows: list[Doc]) -> None:
        async with slots:
            await db[name].insert_many(rows, ordered=False)

    for name, rows in docs.items():  # one first, so that the collection is created once
        await insert(name, rows[:1])
    await asyncio.gather(
        *(
            insert(name, rows[start : start + INSERT_CHUNK])
            for name, rows in docs.items()
            for start in range(1, len(rows), INSERT_CHUNK)
        )
    )


@pytest.fixture(scope="module")
async def store(engines: Engines) -> AsyncIterator[Store]:
    try:
        psql(engines, "SELECT 1")
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"needs the PostgreSQL behind the local FerretDB (deploy/local/ferretdb.sh psql): {exc}")
    prefix = f"qplans_{uuid.uuid4().hex[:8]}"
    databases = {s: f"{prefix}_{s[:3]}" for s in (IMP, CAT, CON, ENT)}
    client = make_client(engines.mongodb_url)
    built = Store(client, databases)
    try:
        # filled first, then indexed: PostgreSQL builds an index over a full table faster than it grows it
        # row by row (the `_id` index, made with each collection, is the exception)
        await asyncio.gather(
            fill(built.db(IMP), importer_docs()),
            fill(built.db(CAT), categorizer_docs()),
            fill(built.db(CON), connector_docs()),
            fill(built.db(ENT), entitlements_docs()),
        )
        # the services' own index definitions, as their apps create them at start-up
        await OperationStore(built.db(IMP)).create_indexes()
        await AccountStore(built.db(IMP)).create_indexes()
        await MongoReplayStatuses(built.db(IMP)).create_indexes()
        await RuleSetRepository(built.db(CAT)).create_indexes()
        await OperationsRepository(built.db(CAT)).create_indexes()
        await TransferRepository(built.db(CAT)).create_indexes()
        await ConnectorRepository(built.db(CON)).create_indexes()
        await EntitlementsRepository(built.db(ENT)).create_indexes()
        tables = psql(
            engines,
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
            f"WHERE schemaname IN ({built.schemas()}) AND tablename <> '_ferretdb_database_metadata'",
        )
        psql(engines, "ANALYZE " + ", ".join(row[0] for row in tables))
        yield built
    finally:
        for name in databases.values():
            await client.drop_database(name)
        await client.close()


async def collection_tables(engines: Engines, store: Store) -> dict[tuple[str, str], str]:
    """(schema, PostgreSQL table) -> collection, from FerretDB's own metadata table."""
    found: dict[tuple[str, str], str] = {}
    for schema in store.databases.values():
        for name, table in psql(
            engines, f"SELECT _jsonb->>'_id', _jsonb->>'table' FROM {schema}._ferretdb_database_metadata"
        ):
            found[(schema, table)] = name
    return found


# ---- reading a plan -----------------------------------------------------------------------------------


def plan_nodes(node: Any) -> Iterator[Doc]:
    if isinstance(node, dict):
        if "Node Type" in node:
            yield node
        for value in node.values():
            yield from plan_nodes(value)
    elif isinstance(node, list):
        for value in node:
            yield from plan_nodes(value)


def describe(nodes: list[Doc]) -> str:
    parts = []
    for node in nodes:
        what = node["Node Type"]
        if "Index Name" in node:
            what += f" {node['Index Name']}"
        if node["Node Type"] == "Seq Scan":
            what += f" {node.get('Relation Name')} (~{node.get('Plan Rows', 0):.0f} rows)"
        parts.append(what)
    return " > ".join(parts)


def brief(filter_: Doc, width: int = 160) -> str:
    text = json.dumps(filter_, default=str)
    return text if len(text) <= width else text[: width - 5] + " ...}"


async def explain(store: Store, shape: Shape) -> Doc:
    db = store.db(shape.service)
    if shape.pipeline is not None:
        command: Doc = {"aggregate": shape.collection, "pipeline": shape.pipeline, "cursor": {}}
    else:
        command = {"find": shape.collection, "filter": shape.filter}
    answer: Doc = await db.command("explain", command)
    return answer


# ---- the tests ----------------------------------------------------------------------------------------


def test_every_collection_of_a_shape_is_filled() -> None:
    """A shape names a collection this module fills, with enough rows to make a scan mean something."""
    filled = {
        IMP: importer_docs,
        CAT: categorizer_docs,
        CON: connector_docs,
        ENT: entitlements_docs,
    }
    sizes: dict[tuple[str, str], int] = {}
    for service, make in filled.items():
        sizes.update(((service, name), len(rows)) for name, rows in make().items())
    for shape in SHAPES:
        assert sizes.get((shape.service, shape.collection), 0) >= MIN_ROWS, shape.name
    assert sizes[(IMP, "operations")] == OPERATIONS == 50_000


# what sends a filter to MongoDB: a collection's methods, the bulk requests, the helpers that build them
QUERY_METHODS = frozenset(
    {
        "find",
        "find_one",
        "find_one_and_update",
        "find_one_and_replace",
        "find_one_and_delete",
        "update_one",
        "update_many",
        "replace_one",
        "delete_one",
        "delete_many",
        "distinct",
        "aggregate",
        "count_documents",
        # not `bulk_write`: its filters are in the requests, built by UpdateOne & co, wherever they are
    }
)
QUERY_CALLS = frozenset(
    {"UpdateOne", "UpdateMany", "ReplaceOne", "DeleteOne", "DeleteMany", "find_by_ids", "bulk_write_chunked"}
)
# the files whose functions send every filter of the services (the inventory this table mirrors)
INVENTORY = sorted(
    [
        *(ROOT / "services").glob("*/adapters.py"),
        *(ROOT / "services").glob("*/adapters/*.py"),
        *(ROOT / "services").glob("*/handlers.py"),
        *(ROOT / "services").glob("*/handlers/*.py"),
        *(ROOT / "services").glob("*/erasure.py"),
        ROOT / "shared" / "vault.py",
        ROOT / "shared" / "leases.py",
        ROOT / "services" / "connector" / "adapters" / "mongo.py",
    ]
)


def defined_functions(path: Path) -> dict[str, ast.AST]:
    """`name` and `Class.name` of the module's functions and methods (nested ones belong to theirs)."""
    tree = ast.parse(path.read_text(), str(path))
    found: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found[node.name] = node
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    found[f"{node.name}.{item.name}"] = item
    return found


def sends_a_filter(function: ast.AST) -> bool:
    for node in ast.walk(function):
        if not isinstance(node, ast.Call):
            continue
        if isinstance(node.func, ast.Attribute) and node.func.attr in QUERY_METHODS:
            return True
        if isinstance(node.func, ast.Name) and node.func.id in QUERY_CALLS:
            return True
    return False


def source_path(name: str) -> Path:
    return ROOT / name if name.startswith("shared/") else ROOT / "services" / name


def named_functions(source: str) -> Iterator[tuple[str, str]]:
    """(file, function) of each function a Shape.source names: `file:Class.method, method2 (note); ...`,
    a bare name being the file's function of that name, else a method of the class named before it."""
    text = re.sub(r"\bvia\b", " ", re.sub(r"\([^()]*\)", " ", source))
    for match in re.finditer(r"([\w/]+\.py):([^:]*?)(?=[\w/]+\.py:|$)", text):
        file, names = match.group(1), match.group(2)
        defined = defined_functions(source_path(file))
        owner = ""
        for name in filter(None, (n.strip() for n in re.split(r"[,;]", names))):
            if name not in defined and owner and f"{owner}.{name}" in defined:
                name = f"{owner}.{name}"
            if "." in name:
                owner = name.split(".")[0]
            yield file, name


def test_every_shape_names_functions_that_exist() -> None:
    """Each `file:function` of the table is a function of that file at HEAD (renames show here)."""
    missing = [
        f"{shape.name}: {file}:{name}"
        for shape in SHAPES
        for file, name in named_functions(shape.source)
        if name not in defined_functions(source_path(file))
    ]
    assert not missing, "shapes naming functions that do not exist:\n" + "\n".join(missing)
    assert all(list(named_functions(shape.source)) for shape in SHAPES)


def test_every_function_that_queries_has_a_shape() -> None:
    """A function of the inventory that sends a filter to MongoDB is named by a shape: a new query (on an
    unindexed field, say) cannot go in without a row here, and the row is explained below."""
    named = {(source_path(file), name) for shape in SHAPES for file, name in named_functions(shape.source)}
    unnamed = [
        f"{path.relative_to(ROOT)}:{name}"
        for path in INVENTORY
        for name, function in defined_functions(path).items()
        if sends_a_filter(function) and (path, name) not in named
    ]
    assert not unnamed, "functions that query MongoDB without a row in SHAPES:\n" + "\n".join(unnamed)


def test_no_filter_puts_in_on_id() -> None:
    """`{"_id": {"$in": ...}}` is a sequential scan of the whole collection on the local engine (the
    control below shows it): no service or shared module writes one (shared.mongo.find_by_ids instead)."""
    found = []
    for path in sorted([*(ROOT / "services").rglob("*.py"), *(ROOT / "shared").rglob("*.py")]):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Dict):
                continue
            for key, value in zip(node.keys, node.values, strict=True):
                if (
                    isinstance(key, ast.Constant)
                    and key.value == "_id"
                    and isinstance(value, ast.Dict)
                    and any(isinstance(k, ast.Constant) and k.value in ("$in", "$nin") for k in value.keys)
                ):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not found, "_id $in filters (a sequential scan on the local engine):\n" + "\n".join(found)
    in_on_id = [s.name for s in SHAPES if isinstance(s.filter.get("_id"), dict) and "$in" in s.filter["_id"]]
    assert not in_on_id, in_on_id


class RecordingCollection:
    """Stands in for a collection: records the filters shared.mongo.find_by_ids sends, finds nothing."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Doc]] = []

    async def find_one(self, filter_: Doc) -> Doc | None:
        self.sent.append(("find_one", filter_))
        return None

    def find(self, filter_: Doc) -> AsyncIterator[Doc]:
        self.sent.append(("find", filter_))
        return self._nothing()

    async def _nothing(self) -> AsyncIterator[Doc]:
        nothing: list[Doc] = []
        for doc in nothing:
            yield doc


async def test_find_by_ids_sends_these_shapes() -> None:
    """The rows of find_by_ids' callers: a find_one by `_id` per id up to POINT_READS_UP_TO (and for any
    number without a scope), one read of the scope beyond; never an `_id` `$in`."""
    scope = {"account": akey(U, A)}
    for count, with_scope, expected in [
        (3, True, {("find_one", "_id")}),
        (POINT_READS_UP_TO, True, {("find_one", "_id")}),
        (POINT_READS_UP_TO + 1, True, {("find", "account")}),
        (POINT_READS_UP_TO * 2 + 1, False, {("find_one", "_id")}),
    ]:
        recorder = RecordingCollection()
        ids = [f"{akey(U, A)}:{n}" for n in range(count)]
        await find_by_ids(cast(Any, recorder), ids, scope if with_scope else None)
        assert {(op, next(iter(f))) for op, f in recorder.sent} == expected, (count, with_scope)
        assert all(len(f) == 1 and not isinstance(next(iter(f.values())), dict) for _, f in recorder.sent)
        if expected == {("find", "account")}:
            assert recorder.sent == [("find", scope)]
        else:
            assert len(recorder.sent) == count


async def test_the_planner_sees_real_sizes_and_the_detector_sees_scans(
    engines: Engines, store: Store
) -> None:
    """Controls: ANALYZE gave every table its real size; a filter with nothing pushed down is a Seq Scan
    and an `_id` equality is an index scan, so the verdicts below are the planner's, not an artefact."""
    rows = psql(
        engines,
        "SELECT n.nspname, c.relname, c.reltuples::bigint FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE c.relkind = 'r' AND n.nspname IN ({store.schemas()}) "
        "AND c.relname <> '_ferretdb_database_metadata'",
    )
    tables = await collection_tables(engines, store)
    sizes = {tables[(schema, table)]: int(tuples) for schema, table, tuples in rows}
    assert sizes["operations"] >= OPERATIONS * 0.9, sizes
    assert all(n >= MIN_ROWS * 0.9 for n in sizes.values()), sizes

    scan = await explain(store, Shape("control", IMP, "operations", "find", {"cents": {"$gt": 0}}))
    assert not scan["filterPushdown"]
    assert [n["Node Type"] for n in plan_nodes(scan["queryPlanner"])] == ["Seq Scan"]
    point = await explain(store, Shape("control", IMP, "operations", "find", {"_id": op_id(U, A, 7)}))
    assert point["filterPushdown"]
    assert "Seq Scan" not in {n["Node Type"] for n in plan_nodes(point["queryPlanner"])}
    # what the table must never hold: an `_id` `$in`, an equality on a field no index has
    ids = {"_id": {"$in": [op_id(U, A, n) for n in range(3)]}}
    for control in ({**ids}, {"memo": MEMOS[0]}, {"memo": MEMOS[0], "cents": -150}):
        answer = await explain(store, Shape("control", IMP, "operations", "find", control))
        assert "Seq Scan" in {n["Node Type"] for n in plan_nodes(answer["queryPlanner"])}, control


async def test_every_index_column_has_its_gin_twin(engines: Engines, store: Store) -> None:
    """ferretdb-gin.sql: each column of each btree index FerretDB made (`_id` and compound ones included)
    has a GIN jsonb_path_ops index on the same expression, the only kind that serves FerretDB's `@>`."""
    rows = psql(
        engines,
        f"""
        SELECT n.nspname, t.relname, c.relname, k, pg_get_indexdef(i.indexrelid, k, false),
               EXISTS (
                 SELECT 1 FROM pg_index g
                   JOIN pg_class gc ON gc.oid = g.indexrelid
                   JOIN pg_am gam ON gam.oid = gc.relam
                  WHERE g.indrelid = i.indrelid AND gam.amname = 'gin' AND g.indnatts = 1
                    AND pg_get_indexdef(g.indexrelid, 1, false) = pg_get_indexdef(i.indexrelid, k, false)
                    AND pg_get_indexdef(g.indexrelid) LIKE '%jsonb_path_ops%'
               )
          FROM pg_index i
          JOIN pg_class c ON c.oid = i.indexrelid
          JOIN pg_am am ON am.oid = c.relam
          JOIN pg_class t ON t.oid = i.indrelid
          JOIN pg_namespace n ON n.oid = t.relnamespace
          CROSS JOIN LATERAL generate_series(1, i.indnatts) AS k
         WHERE am.amname = 'btree' AND n.nspname IN ({store.schemas()})
           AND t.relname <> '_ferretdb_database_metadata'
        """,
    )
    tables = await collection_tables(engines, store)
    columns = [
        (tables[(schema, table)], index, int(k), expr, twin == "t")
        for schema, table, index, k, expr, twin in rows
    ]
    missing = [f"{coll} {index} column {k}: {expr}" for coll, index, k, expr, twin in columns if not twin]
    assert not missing, "btree index columns without a GIN jsonb_path_ops twin:\n" + "\n".join(missing)
    # the ones this check must have seen: an `_id` index per collection, and compound indexes column by column
    seen = {(coll, expr) for coll, _, _, expr, _ in columns}
    for coll in {shape.collection for shape in SHAPES}:
        assert (coll, "((_jsonb -> '_id'::text))") in seen, coll
    for coll, field in [
        ("operations", "account_id"),
        ("operations", "date"),
        ("operations", "month"),
        ("entitlement_history", "version"),
    ]:
        assert (coll, f"((_jsonb -> '{field}'::text))") in seen, (coll, field)


async def test_every_query_shape_is_served_by_an_index(store: Store) -> None:
    report: list[str] = []
    scans: list[str] = []
    for shape in SHAPES:
        answer = await explain(store, shape)
        nodes = list(plan_nodes(answer["queryPlanner"]))
        seq = [n for n in nodes if n["Node Type"] == "Seq Scan"]
        verdict = "index"
        if seq and shape.whole_collection:
            verdict = f"seq scan, by design ({shape.whole_collection})"
        elif seq:
            verdict = "SEQ SCAN"
            scans.append(
                f"{shape.source}\n    {shape.op} on {shape.collection}: {brief(shape.filter)}"
                f"\n    pushed down: {answer.get('filterPushdown')}; plan: {describe(nodes)}"
            )
        report.append(f"{verdict:<9} {shape.name}: {describe(nodes)}")
    print("\n".join(report))
    assert not scans, (
        f"{len(scans)} of {len(SHAPES)} query shapes read their whole collection:\n" + "\n".join(scans)
    )


# ---- ferretdb-gin.sql: twins follow FerretDB's indexes ------------------------------------------------


def twins(engines: Engines, schema: str) -> set[str]:
    """The fields of the GIN jsonb_path_ops twins of the collections of one FerretDB database."""
    rows = psql(
        engines,
        "SELECT pg_get_indexdef(g.indexrelid, 1, false) FROM pg_index g "
        "JOIN pg_class gc ON gc.oid = g.indexrelid JOIN pg_class t ON t.oid = g.indrelid "
        "JOIN pg_namespace n ON n.oid = t.relnamespace JOIN pg_opclass oc ON oc.oid = g.indclass[0] "
        f"WHERE n.nspname = '{schema}' AND oc.opcname = 'jsonb_path_ops' "
        "AND t.relname <> '_ferretdb_database_metadata'",
    )
    fields = set()
    for (expr,) in rows:
        found = re.fullmatch(r"\(\(_jsonb -> '(\w+)'::text\)\)", expr)
        assert found, expr
        fields.add(found.group(1))
    return fields


@pytest.fixture
async def scratch(engines: Engines) -> AsyncIterator[tuple[AsyncDatabase[Doc], str]]:
    """An empty FerretDB database (a PostgreSQL schema of its name) with one small collection."""
    name = f"qplans_gin_{uuid.uuid4().hex[:8]}"
    client = make_client(engines.mongodb_url)
    try:
        await client[name]["things"].insert_many([{"_id": f"t{n}", "a": n % 7, "b": n} for n in range(50)])
        yield client[name], name
    finally:
        await client.drop_database(name)
        await client.close()


async def test_a_dropped_index_takes_its_twins_unless_another_index_has_them(
    engines: Engines, store: Store, scratch: tuple[AsyncDatabase[Doc], str]
) -> None:
    """create_index gives each field its twin; drop_index takes a twin along once no btree index of the
    collection has that field, so the local engine never answers from an index MongoDB would not have."""
    db, schema = scratch
    things = db["things"]
    assert twins(engines, schema) == {"_id"}
    await things.create_index([("a", 1)], name="a")
    await things.create_index([("a", 1), ("b", -1)], name="a_b")  # shares the twin of `a`
    await things.create_index([("c", 1)], name="c")
    assert twins(engines, schema) == {"_id", "a", "b", "c"}
    await things.drop_index("a")
    assert twins(engines, schema) == {"_id", "a", "b", "c"}, "a_b still has `a`: its twin stays"
    await things.drop_index("c")
    assert twins(engines, schema) == {"_id", "a", "b"}
    await things.drop_index("a_b")
    assert twins(engines, schema) == {"_id"}
    # and the plans say so: no index on `a` any more, the `_id` one still serves
    scan = await db.command("explain", {"find": "things", "filter": {"a": 3}})
    assert "Seq Scan" in {n["Node Type"] for n in plan_nodes(scan["queryPlanner"])}
    await things.create_index([("a", 1)], name="a")
    assert twins(engines, schema) == {"_id", "a"}, "an index made again gets its twin again"


async def test_the_script_backfills_twins_on_an_existing_database(
    engines: Engines, store: Store, scratch: tuple[AsyncDatabase[Doc], str]
) -> None:
    """Indexes made before the trigger existed (twins missing) get them when the script runs again, as
    `ferretdb.sh start` runs it; a second run changes nothing."""
    db, schema = scratch
    await db["things"].create_index([("a", 1), ("b", 1)], name="a_b")
    assert twins(engines, schema) == {"_id", "a", "b"}
    # an older database: the twins removed by hand (dropping a twin does not touch anything else)
    for (name,) in psql(
        engines,
        f"SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE n.nspname = '{schema}' AND c.relkind = 'i' AND c.relname ~ '^gin_[0-9a-f]{{32}}$'",
    ):
        psql(engines, f'DROP INDEX "{schema}"."{name}"')
    assert twins(engines, schema) == set()
    script = DEPLOY / "ferretdb-gin.sql"
    psql(engines, script=script)
    assert twins(engines, schema) == {"_id", "a", "b"}
    indexes = "SELECT count(*) FROM pg_indexes WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
    before = psql(engines, indexes)
    psql(engines, script=script)
    assert psql(engines, indexes) == before
    # the filled store of this module already had all its twins: the backfill found nothing to add there
    point = await explain(store, Shape("control", IMP, "operations", "find", {"_id": op_id(U, A, 7)}))
    assert "Seq Scan" not in {n["Node Type"] for n in plan_nodes(point["queryPlanner"])}
