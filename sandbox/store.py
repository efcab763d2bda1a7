"""The sandbox's whole state, in memory, behind one re-entrant lock.

Timestamps: every change to transactions takes one `stamp()`, UTC with whole seconds and strictly
increasing (if the clock has not moved past the previous stamp, the next second is used). One change
(a connection's history, one append request, one booking) shares one stamp, taken under the lock, so a
client that asks for `last_update` after the greatest stamp it has seen misses nothing.

Visibility rules (Powens'):
- new accounts start disabled; the transactions of a disabled account are not listed (unless `all`);
  enabling an account stamps all its lines, so a client following `last_update` sees them then;
- deleted lines stay, with `deleted` set; listings show them only with `last_update`, `deleted` or `all`.
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sandbox.banks import DemoBank, bank_by_id
from sandbox.clock import Clock, system_clock
from sandbox.generator import AccountHistory, AccountKind, Line, generate_connection
from sandbox.listing import Page, TransactionQuery, paginate, select
from sandbox.memos import infer_type, simplify
from sandbox.models import Account, Connection, Transaction, User
from sandbox.views import account_json, connection_json, transaction_json, user_json

# Powens connection states: (message for the end user, retryable by the aggregator itself)
STATES: dict[str, tuple[str, bool]] = {
    "wrongpass": ("Identifiant ou mot de passe incorrect.", False),
    "SCARequired": ("Votre banque demande une authentification forte : reconnectez votre banque.", False),
    "webauthRequired": ("Reconnectez votre banque depuis son site.", False),
    "additionalInformationNeeded": ("Votre banque demande une information complémentaire.", False),
    "decoupled": ("Validez la connexion dans l'application de votre banque.", False),
    "validating": ("Connexion en cours de validation.", False),
    "actionNeeded": ("Une action est requise sur le site de votre banque (conditions à accepter).", False),
    "passwordExpired": ("Votre mot de passe a expiré : changez-le sur le site de votre banque.", False),
    "rateLimiting": ("Votre banque limite le nombre de connexions ; nouvel essai plus tard.", True),
    "websiteUnavailable": ("Le site de votre banque est indisponible ; nouvel essai plus tard.", True),
    "bug": ("Erreur inattendue pendant la synchronisation.", True),
}

# webview login names that choose a behaviour; any other login succeeds like `demo`
LOGIN_STATES: dict[str, str] = {
    "wrongpass": "wrongpass",
    "sca": "SCARequired",
    "actionneeded": "actionNeeded",
    "unavailable": "websiteUnavailable",
    "passwordexpired": "passwordExpired",
    "decoupled": "decoupled",
    "ratelimiting": "rateLimiting",
    "bug": "bug",
}

CODE_TTL = timedelta(minutes=30)
# the code the webview's redirect carries: exchanged once, by the client it was issued to, soon
AUTHORIZATION_CODE_TTL = timedelta(minutes=10)
# a token `POST /auth/init` gives without client credentials (Powens: temporary, 30 minutes)
TEMPORARY_TOKEN_TTL = timedelta(minutes=30)
PSD2_CONSENT = timedelta(days=180)
RETRY_DELAY = timedelta(hours=1)
PARIS = ZoneInfo("Europe/Paris")


class SandboxError(Exception):
    """An API error, Powens style: HTTP status and a body `{"code", "description", "message"?}`."""

    def __init__(self, status: int, code: str, description: str, message: str | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.code = code
        self.description = description
        self.message = message


@dataclass(frozen=True)
class NewLine:
    """A line appended through the control API."""

    date: dt.date
    value_cents: int
    original_wording: str
    coming: bool = False
    rdate: dt.date | None = None
    type: str | None = None


def state_error(connection: Connection) -> SandboxError:
    """A sync refused by the bank: HTTP 400 whatever the state, `code` is the state. Decide on the code:
    `websiteUnavailable`, `rateLimiting` and `bug` are worth a later try, the others need the user.
    """
    state = connection.state or "bug"
    message, _retryable = STATES.get(state, ("", True))
    return SandboxError(
        400, state, f"connection {connection.id} is in state {state}", connection.error_message or message
    )


@dataclass(frozen=True)
class Grant:
    """What an authorization code stands for: a user, the client whose webview issued it, the redirect
    URI it was sent to, and until when it may be exchanged."""

    user_id: int
    client_id: str
    redirect_uri: str
    expires: datetime


class Store:
    def __init__(
        self,
        *,
        seed: int = 0,
        clock: Clock = system_clock,
        today: date | None = None,
        history_months: int | None = None,
    ) -> None:
        self.seed = seed
        self.clock = clock
        self.today_override = today
        # shorter histories than the banks' own (load tests link thousands of users)
        self.history_months = history_months
        self.lock = threading.RLock()
        self._init_state()

    def _history_bank(self, connector_id: int) -> DemoBank:
        bank = bank_by_id(connector_id)
        assert bank is not None
        if self.history_months is None:
            return bank
        return replace(bank, months_to_fetch=min(bank.months_to_fetch, self.history_months))

    def _init_state(self) -> None:
        self.users: dict[int, User] = {}
        self.tokens: dict[str, int] = {}
        self.codes: dict[str, tuple[int, datetime]] = {}
        # authorization codes of the webview's redirects (single use)
        self.grants: dict[str, Grant] = {}
        # temporary tokens and when they stop working (permanent ones are not here)
        self.token_expiry: dict[str, datetime] = {}
        self.connections: dict[int, Connection] = {}
        self.accounts: dict[int, Account] = {}
        self.transactions: dict[int, Transaction] = {}
        self.account_lines: dict[int, list[int]] = {}
        # by owner, so that a sync costs the same with 10 or 10,000 users linked
        self.user_connection_ids: dict[int, list[int]] = {}
        self.connection_account_ids: dict[int, list[int]] = {}
        self._next = {"user": 1, "connection": 101, "account": 1001, "transaction": 100001}
        self._last_stamp: datetime | None = None
        # `POST /sandbox/clock` moves the sandbox's time forward (PSD2 consents expire on it)
        self.clock_offset = timedelta(0)

    def reset(self) -> None:
        with self.lock:
            self._init_state()

    # --- time ----------------------------------------------------------------------------------
    def now(self) -> datetime:
        return (self.clock() + self.clock_offset).replace(microsecond=0)

    def advance_clock(self, delta: timedelta) -> datetime:
        with self.lock:
            self.clock_offset += delta
            return self.now()

    def stamp(self) -> datetime:
        with self.lock:
            moment = self.now()
            if self._last_stamp is not None and moment <= self._last_stamp:
                moment = self._last_stamp + timedelta(seconds=1)
            self._last_stamp = moment
            return moment

    def history_today(self) -> date:
        """Last day of generated history: the injected date, else today in Paris (bank dates are local)."""
        if self.today_override is not None:
            return self.today_override
        return (self.clock() + self.clock_offset).astimezone(PARIS).date()

    def _id(self, kind: str) -> int:
        value = self._next[kind]
        self._next[kind] = value + 1
        return value

    # --- users and codes -----------------------------------------------------------------------
    def create_user(self, expires_in: timedelta | None = None) -> User:
        """A new user and its token: permanent, or temporary when `expires_in` is given."""
        with self.lock:
            user = User(self._id("user"), secrets.token_urlsafe(32), self.now())
            self.users[user.id] = user
            self.tokens[user.token] = user.id
            if expires_in is not None:
                self.token_expiry[user.token] = self.now() + expires_in
            return user

    def user_by_token(self, token: str) -> User | None:
        with self.lock:
            user_id = self.tokens.get(token)
            expiry = self.token_expiry.get(token)
            if user_id is None or (expiry is not None and expiry < self.now()):
                return None
            return self.users.get(user_id)

    def issue_code(self, user_id: int) -> str:
        with self.lock:
            code = secrets.token_urlsafe(24)
            self.codes[code] = (user_id, self.now() + CODE_TTL)
            return code

    def user_by_code(self, code: str) -> User | None:
        with self.lock:
            entry = self.codes.get(code)
            if entry is None or entry[1] < self.now():
                return None
            return self.users.get(entry[0])

    def issue_authorization_code(self, user_id: int, client_id: str, redirect_uri: str) -> str:
        """The code the webview's redirect carries, bound to the client and the redirect URI."""
        with self.lock:
            code = secrets.token_urlsafe(24)
            self.grants[code] = Grant(user_id, client_id, redirect_uri, self.now() + AUTHORIZATION_CODE_TTL)
            return code

    def redeem_authorization_code(self, code: str) -> Grant | None:
        """The grant of `code`, which is gone from now on (single use: the first attempt spends it,
        whatever comes of it); None when unknown, spent or expired."""
        with self.lock:
            grant = self.grants.pop(code, None)
            if grant is None or grant.expires < self.now() or grant.user_id not in self.users:
                return None
            return grant

    # --- connections ---------------------------------------------------------------------------
    def create_connection(self, user_id: int, connector_id: int, login: str) -> Connection:
        with self.lock:
            if bank_by_id(connector_id) is None:
                raise SandboxError(404, "connectorNotFound", f"no connector {connector_id}")
            stamp = self.stamp()
            connection = Connection(
                id=self._id("connection"),
                id_user=user_id,
                id_connector=connector_id,
                created=stamp,
                expire=stamp + PSD2_CONSENT,
            )
            self.connections[connection.id] = connection
            self.user_connection_ids.setdefault(user_id, []).append(connection.id)
            self._login(connection, login, stamp)
            return connection

    def relogin(self, user_id: int, connection_id: int, login: str) -> Connection:
        """The user typed credentials again in the webview (reconnect): the state follows the login."""
        with self.lock:
            connection = self.connection(user_id, connection_id)
            stamp = self.stamp()
            connection.expire = stamp + PSD2_CONSENT
            self._login(connection, login, stamp)
            return connection

    def _login(self, connection: Connection, login: str, stamp: datetime) -> None:
        state = LOGIN_STATES.get(login.strip().lower())
        self._set_state(connection, state, stamp)
        if state is None:
            self._discover(connection, stamp)
            connection.last_update = stamp
            for account in self._accounts_of(connection.id):
                if account.disabled is None:
                    account.last_update = stamp

    def _set_state(self, connection: Connection, state: str | None, now: datetime) -> None:
        if state is not None and state not in STATES:
            raise SandboxError(400, "invalidValue", f"unknown connection state {state!r}")
        connection.state = state
        if state is None:
            connection.error_message = None
            connection.next_try = None
            return
        message, retryable = STATES[state]
        connection.error_message = message
        connection.next_try = now + RETRY_DELAY if retryable else None

    def _discover(self, connection: Connection, stamp: datetime) -> None:
        """Creates the connection's accounts and their history the first time the bank login works."""
        if self.connection_account_ids.get(connection.id):
            return
        bank = self._history_bank(connection.id_connector)
        histories = generate_connection(self.seed, bank, str(connection.id), self.history_today())
        for kind in (AccountKind.CHECKING, AccountKind.SAVINGS, AccountKind.CARD):
            self._add_account(connection, histories[kind], stamp)

    def _add_account(self, connection: Connection, history: AccountHistory, stamp: datetime) -> Account:
        account = Account(
            id=self._id("account"),
            id_connection=connection.id,
            id_user=connection.id_user,
            kind=history.kind.value,
            original_name=history.original_name,
            name=history.original_name,
            number=history.number,
            iban=history.iban,
            opening_cents=history.opening_cents if history.kind is not AccountKind.CARD else 0,
            created=stamp,
            disabled=stamp,  # Powens: new accounts are disabled until the app activates them
        )
        self.accounts[account.id] = account
        self.connection_account_ids.setdefault(connection.id, []).append(account.id)
        self.account_lines[account.id] = []
        for line in history.lines:
            self._add_line(account, line, stamp)
        return account

    def _add_line(self, account: Account, line: Line, stamp: datetime) -> Transaction:
        simplified = simplify(line.original_wording)
        tx = Transaction(
            id=self._id("transaction"),
            id_account=account.id,
            date=line.date,
            rdate=line.rdate,
            vdate=line.vdate or line.date,
            bdate=line.date,
            value_cents=line.value_cents,
            original_wording=line.original_wording,
            simplified_wording=simplified,
            wording=simplified,
            type=line.type,
            coming=line.coming,
            last_update=stamp,
            date_scraped=stamp,
            card=line.card,
            counterparty=line.counterparty.to_powens() if line.counterparty else None,
            original_value_cents=line.original_value_cents,
            original_currency=line.original_currency,
            commission_cents=line.commission_cents,
            country=line.country,
        )
        self.transactions[tx.id] = tx
        self.account_lines[account.id].append(tx.id)
        return tx

    def connection(self, user_id: int, connection_id: int) -> Connection:
        with self.lock:
            connection = self.connections.get(connection_id)
            if connection is None or connection.id_user != user_id:
                raise SandboxError(404, "connectionNotFound", f"no connection {connection_id}")
            return connection

    def user_connections(self, user_id: int) -> list[Connection]:
        with self.lock:
            return [self.connections[c] for c in self.user_connection_ids.get(user_id, [])]

    def sync(self, user_id: int, connection_id: int) -> Connection:
        """`POST /users/me/connections/{id}`: a sync. Raises the connection's state when it has one."""
        with self.lock:
            connection = self.connection(user_id, connection_id)
            if connection.state is None and connection.expire is not None and self.now() >= connection.expire:
                # the PSD2 consent lapsed: the bank wants strong authentication again (reconnect webview)
                self._set_state(connection, "SCARequired", self.now())
            if connection.state is not None:
                self._set_state(connection, connection.state, self.now())  # moves next_try
                raise state_error(connection)
            stamp = self.stamp()
            self._discover(connection, stamp)
            connection.last_update = stamp
            bank = bank_by_id(connection.id_connector)
            assert bank is not None
            connection.next_try = stamp + timedelta(days=bank.sync_periodicity)
            for account in self._accounts_of(connection.id):
                if account.disabled is None:
                    account.last_update = stamp
            return connection

    def delete_connection(self, user_id: int, connection_id: int) -> Connection:
        with self.lock:
            connection = self.connection(user_id, connection_id)
            for account in self._accounts_of(connection.id):
                for tx_id in self.account_lines.pop(account.id, []):
                    self.transactions.pop(tx_id, None)
                del self.accounts[account.id]
            del self.connections[connection.id]
            self.connection_account_ids.pop(connection.id, None)
            self.user_connection_ids[user_id].remove(connection.id)
            return connection

    def delete_user(self, user_id: int) -> None:
        """Powens' `DELETE /users/{id}`: the user, its connections, accounts and transactions; its
        tokens stop working."""
        with self.lock:
            for connection_id in list(self.user_connection_ids.get(user_id, [])):
                self.delete_connection(user_id, connection_id)
            self.user_connection_ids.pop(user_id, None)
            user = self.users.pop(user_id, None)
            if user is not None:
                self.tokens.pop(user.token, None)
                self.token_expiry.pop(user.token, None)
            for code in [c for c, (owner, _) in self.codes.items() if owner == user_id]:
                del self.codes[code]
            for code in [c for c, grant in self.grants.items() if grant.user_id == user_id]:
                del self.grants[code]

    # --- accounts ------------------------------------------------------------------------------
    def _accounts_of(self, connection_id: int) -> list[Account]:
        return [self.accounts[a] for a in self.connection_account_ids.get(connection_id, [])]

    def connection_accounts(
        self, connection_id: int, *, include_disabled: bool, include_deleted: bool = False
    ) -> list[Account]:
        with self.lock:
            return [
                a
                for a in self._accounts_of(connection_id)
                if (include_deleted or a.deleted is None) and (include_disabled or a.disabled is None)
            ]

    def user_accounts(self, user_id: int, *, include_disabled: bool) -> list[Account]:
        """Powens: by default only enabled, not deleted accounts; `all` adds disabled and deleted ones."""
        with self.lock:
            return [
                a
                for connection_id in self.user_connection_ids.get(user_id, [])
                for a in self._accounts_of(connection_id)
                if include_disabled or (a.disabled is None and a.deleted is None)
            ]

    def account(self, user_id: int, account_id: int) -> Account:
        """One account by id, whether enabled or not (lenient: Powens wants `all` for disabled ones)."""
        with self.lock:
            account = self.accounts.get(account_id)
            if account is None or account.id_user != user_id:
                raise SandboxError(404, "accountNotFound", f"no account {account_id}")
            return account

    def update_account(
        self,
        user_id: int,
        account_id: int,
        *,
        disabled: bool | None = None,
        name: str | None = None,
        usage: str | None = None,
        display: bool | None = None,
        bookmarked: bool | None = None,
    ) -> Account:
        with self.lock:
            account = self.account(user_id, account_id)
            if disabled is False and account.disabled is not None:
                # activation: the bank's lines become part of what the user syncs, as of now
                stamp = self.stamp()
                account.disabled = None
                account.last_update = stamp
                for tx_id in self.account_lines.get(account.id, []):
                    self.transactions[tx_id].last_update = stamp
            elif disabled is True and account.disabled is None:
                account.disabled = self.now()
            if name is not None:
                account.name = name
            if usage is not None:
                account.usage = usage
            if display is not None:
                account.display = display
            if bookmarked is not None:
                account.bookmarked = bookmarked
            return account

    def figures(self, account: Account) -> tuple[int, int]:
        """(balance, coming) in cents. A deferred card's balance is its outstanding (coming) total."""
        with self.lock:
            balance, coming = account.opening_cents, 0
            for tx_id in self.account_lines.get(account.id, []):
                tx = self.transactions[tx_id]
                if tx.deleted is not None or not tx.active:
                    continue
                if tx.coming:
                    coming += tx.value_cents
                else:
                    balance += tx.value_cents
            return (coming if account.kind == AccountKind.CARD else balance), coming

    def account_view(self, account: Account) -> dict[str, Any]:
        with self.lock:
            balance, coming = self.figures(account)
            return account_json(account, balance, coming)

    def connection_view(self, connection: Connection, expand: Iterable[str] = ()) -> dict[str, Any]:
        """Connection JSON; `expand` may hold `accounts` (enabled only, as Powens) and `all_accounts`."""
        with self.lock:
            bank = bank_by_id(connection.id_connector)
            body = connection_json(connection, bank.uuid if bank else "")
            wanted = set(expand)
            if "accounts" in wanted:
                body["accounts"] = [
                    self.account_view(a)
                    for a in self.connection_accounts(connection.id, include_disabled=False)
                ]
            if "all_accounts" in wanted:
                body["all_accounts"] = [
                    self.account_view(a)
                    for a in self.connection_accounts(
                        connection.id, include_disabled=True, include_deleted=True
                    )
                ]
            if "connector" in wanted and bank is not None:
                body["connector"] = bank.to_powens()
            return body

    # --- transactions --------------------------------------------------------------------------
    def list_transactions(
        self, user_id: int, account_id: int | None, query: TransactionQuery, offset: int, limit: int
    ) -> tuple[Page, list[dict[str, Any]]]:
        with self.lock:
            if account_id is not None:
                accounts = [self.account(user_id, account_id)]
            else:
                accounts = self.user_accounts(user_id, include_disabled=True)
            visible = [a for a in accounts if query.all or (a.disabled is None and a.deleted is None)]
            rows = select(
                (self.transactions[tx_id] for a in visible for tx_id in self.account_lines.get(a.id, [])),
                query,
            )
            page = paginate(rows, offset, limit)
            return page, [transaction_json(tx) for tx in page.items]

    def transaction(self, transaction_id: int) -> Transaction:
        with self.lock:
            tx = self.transactions.get(transaction_id)
            if tx is None:
                raise SandboxError(404, "transactionNotFound", f"no transaction {transaction_id}")
            return tx

    def user_transaction(self, user_id: int, transaction_id: int) -> Transaction:
        with self.lock:
            tx = self.transaction(transaction_id)
            self.account(user_id, tx.id_account)
            return tx

    # --- control API ---------------------------------------------------------------------------
    def control_account(self, account_id: int) -> Account:
        with self.lock:
            account = self.accounts.get(account_id)
            if account is None:
                raise SandboxError(404, "accountNotFound", f"no account {account_id}")
            return account

    def link_users(self, connector_ids: list[int], enable: set[str]) -> list[tuple[User, Connection]]:
        """Load tests: one user per connector id, each with a connection whose bank login worked and the
        accounts of the kinds in `enable` enabled, as the webview and the app's selection would leave them.
        Their history is stamped a day back, as lines the aggregator had scraped before the link: a
        client's first sync reads it whole, and a later sync `last_update` since then does not read it
        again (enabled just now, a night minutes after the set-up would re-read every line)."""
        with self.lock:
            unknown = sorted({c for c in connector_ids if bank_by_id(c) is None})
            if unknown:
                raise SandboxError(404, "connectorNotFound", f"no connector {unknown[0]}")
            linked = []
            for connector_id in connector_ids:
                user = self.create_user()
                connection = self.create_connection(user.id, connector_id, "demo")
                scraped = self.now() - timedelta(days=1)
                for account in self._accounts_of(connection.id):
                    if account.kind in enable:
                        self.update_account(user.id, account.id, disabled=False)
                    for tx_id in self.account_lines[account.id]:
                        self.transactions[tx_id].last_update = scraped
                        self.transactions[tx_id].date_scraped = scraped
                linked.append((user, connection))
            return linked

    def control_connection(self, connection_id: int) -> Connection:
        with self.lock:
            connection = self.connections.get(connection_id)
            if connection is None:
                raise SandboxError(404, "connectionNotFound", f"no connection {connection_id}")
            return connection

    def append(self, account_id: int, lines: list[NewLine]) -> list[Transaction]:
        with self.lock:
            account = self.control_account(account_id)
            stamp = self.stamp()
            created = []
            for item in lines:
                line = Line(
                    date=item.date,
                    rdate=item.rdate or item.date,
                    value_cents=item.value_cents,
                    original_wording=item.original_wording,
                    type=item.type or infer_type(item.original_wording),
                    coming=item.coming,
                )
                created.append(self._add_line(account, line, stamp))
            return created

    def book(
        self, transaction_id: int, *, new_id: bool, wording: str | None, day: date | None
    ) -> tuple[Transaction, Transaction | None]:
        """A coming line becomes booked: in place (same id) or as the old line deleted plus a new id.

        Returns (the booked line, the deleted line or None).
        """
        with self.lock:
            tx = self.transaction(transaction_id)
            if tx.deleted is not None:
                raise SandboxError(409, "transactionDeleted", f"transaction {tx.id} is deleted")
            if not tx.coming:
                raise SandboxError(409, "transactionNotComing", f"transaction {tx.id} is already booked")
            stamp = self.stamp()
            changes: dict[str, Any] = {"coming": False, "last_update": stamp}
            if day is not None:
                changes.update(date=day, vdate=day, bdate=day)
            if wording is not None:
                simplified = simplify(wording)
                changes.update(original_wording=wording, simplified_wording=simplified, wording=simplified)
            if not new_id:
                for key, value in changes.items():
                    setattr(tx, key, value)
                return tx, None
            tx.deleted = stamp
            tx.last_update = stamp
            booked = replace(tx, **changes, id=self._id("transaction"), deleted=None, date_scraped=stamp)
            self.transactions[booked.id] = booked
            self.account_lines[tx.id_account].append(booked.id)
            return booked, tx

    def delete_transaction(self, transaction_id: int) -> Transaction:
        """The bank no longer shows this line: `deleted` set, kept for clients following changes."""
        with self.lock:
            tx = self.transaction(transaction_id)
            if tx.deleted is None:
                stamp = self.stamp()
                tx.deleted = stamp
                tx.last_update = stamp
            return tx

    def set_state(self, connection_id: int, state: str | None) -> Connection:
        with self.lock:
            connection = self.control_connection(connection_id)
            self._set_state(connection, state, self.now())
            return connection

    def open_account(self, connection_id: int, kind: AccountKind) -> Account:
        """The bank shows a new account on this connection (disabled, with its own history)."""
        with self.lock:
            connection = self.control_connection(connection_id)
            bank = self._history_bank(connection.id_connector)
            count = len(self._accounts_of(connection.id))
            key = f"{connection.id}/{count}"
            history = generate_connection(self.seed, bank, key, self.history_today())[kind]
            return self._add_account(connection, history, self.stamp())

    def close_account(self, account_id: int) -> Account:
        """The account vanished at the bank: `deleted` set; its lines leave the default listings."""
        with self.lock:
            account = self.control_account(account_id)
            if account.deleted is None:
                account.deleted = self.stamp()
            return account

    def all_lines(self, account_id: int) -> list[Transaction]:
        """Every line of an account ever, deleted ones included, by id: the bank's whole truth."""
        with self.lock:
            self.control_account(account_id)
            return [self.transactions[tx_id] for tx_id in sorted(self.account_lines.get(account_id, []))]

    # --- webhooks ------------------------------------------------------------------------------
    def push_payload(self, connection_id: int) -> tuple[dict[str, Any], datetime | None] | None:
        """The CONNECTION_SYNCED body: the connection, its enabled accounts and, per account, the lines
        changed since the last acknowledged push (deleted ones included). Returns (body, as_of) where
        as_of is the newest stamp the body covers; None when the connection is gone.
        """
        with self.lock:
            connection = self.connections.get(connection_id)
            if connection is None:
                return None
            user = self.users[connection.id_user]
            as_of = self._last_stamp
            since = connection.last_push
            accounts = []
            for account in self.connection_accounts(connection.id, include_disabled=False):
                lines = [
                    transaction_json(self.transactions[tx_id])
                    for tx_id in self.account_lines.get(account.id, [])
                    if since is None or self.transactions[tx_id].last_update > since
                ]
                accounts.append({**self.account_view(account), "transactions": lines})
            body = {
                "user": user_json(user),
                "connection": {**self.connection_view(connection), "accounts": accounts},
            }
            return body, as_of

    def mark_pushed(self, connection_id: int, as_of: datetime | None) -> None:
        with self.lock:
            connection = self.connections.get(connection_id)
            if connection is None or as_of is None:
                return
            if connection.last_push is None or as_of > connection.last_push:
                connection.last_push = as_of
