"""Reading a cursor-paged listing of the importer's API to its end (`items`, `next_cursor`).

`pages` follows the cursors over any way of fetching one page (an httpx client, a journey's checked
call); `every_item` reads every item of a path with an httpx client;
`operations_by_account` reads every operation of a user, account by account.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx

Params = dict[str, str | int]
Page = dict[str, Any]


def pages(fetch: Callable[[Params], Page], limit: int | None, **params: str | int) -> Iterator[Page]:
    """Each page's body in order: `fetch(params)` with `limit` (none: the API's default) and, after the
    first, the previous page's `next_cursor`, until a page has none."""
    cursor: str | None = None
    if limit is not None:
        params["limit"] = limit
    while True:
        body = fetch({**params, **({"cursor": cursor} if cursor else {})})
        yield body
        cursor = body["next_cursor"]
        if not cursor:
            return


def every_item(
    client: httpx.Client, path: str, limit: int = 500, **params: str | int
) -> list[dict[str, Any]]:
    """Every item of the listing at `path`, each page fetched with `client` (any error status raises)."""

    def fetch(page_params: Params) -> Page:
        answer = client.get(path, params=page_params)
        answer.raise_for_status()
        body: Page = answer.json()
        return body

    return [item for body in pages(fetch, limit, **params) for item in body["items"]]


def operations_path(user: str, account_id: str) -> str:
    return f"/v1/users/{user}/accounts/{account_id}/operations"


def operations_by_account(
    client: httpx.Client, user: str, limit: int = 500
) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Every operation the importer's API lists for `user`: (account, its operations) for each account."""
    accounts = client.get(f"/v1/users/{user}/accounts")
    accounts.raise_for_status()
    return [
        (account, every_item(client, operations_path(user, account["account_id"]), limit))
        for account in accounts.json()
    ]
