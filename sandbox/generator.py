"""Deterministic bank history of one demo connection: checking, savings and deferred-debit card accounts.

Pure: `generate_connection(seed, bank, connection_key, today)` depends on nothing else (no clock, no global
random state, no hash randomisation), so the same arguments give byte-identical histories. Each account draws
from its own `random.Random` seeded with (seed, bank, connection key, account kind); what two accounts must
agree on (the monthly transfer to savings, the deferred card total debited from checking) is derived once
from the connection's persona and shared.

Amounts are integer cents everywhere; the HTTP layer turns them into Powens' JSON numbers.
"""

from __future__ import annotations

import datetime as dt
import random
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, timedelta
from enum import StrEnum
from typing import Any

from sandbox.bankdays import (
    add_business_days,
    add_months,
    business_day_on_or_after,
    days,
    days_in_month,
    last_business_day,
    month_starts,
)
from sandbox.banks import DemoBank, french_iban
from sandbox.memos import MemoWriter, bank_text, masked_card


class AccountKind(StrEnum):
    CHECKING = "checking"
    SAVINGS = "savings"
    CARD = "card"


@dataclass(frozen=True)
class Counterparty:
    label: str
    type: str  # "creditor" (we pay them) or "debtor" (they pay us), as Powens says
    iban: str | None = None

    def to_powens(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "account_scheme_name": "iban" if self.iban else None,
            "account_identification": self.iban,
            "type": self.type,
        }


@dataclass(frozen=True)
class Line:
    """One bank line as the bank gives it (no id, no timestamps: the store adds those)."""

    date: dt.date  # debit date (Powens `date`)
    rdate: dt.date  # real date, e.g. the card use
    value_cents: int
    original_wording: str
    type: str
    coming: bool = False
    vdate: dt.date | None = None
    card: str | None = None
    counterparty: Counterparty | None = None
    original_value_cents: int | None = None
    original_currency: str | None = None
    commission_cents: int | None = None
    country: str | None = None


@dataclass(frozen=True)
class AccountHistory:
    kind: AccountKind
    original_name: str
    number: str
    iban: str | None
    lines: tuple[Line, ...]
    balance_cents: int  # booked balance today
    coming_cents: int  # sum of the coming lines

    @property
    def opening_cents(self) -> int:
        """Balance before the first booked line (balance minus every booked line)."""
        return self.balance_cents - sum(line.value_cents for line in self.lines if not line.coming)


MONTHS_FR = (
    "JANVIER", "FEVRIER", "MARS", "AVRIL", "MAI", "JUIN",
    "JUILLET", "AOUT", "SEPTEMBRE", "OCTOBRE", "NOVEMBRE", "DECEMBRE",
)  # fmt: skip

FEMALE_NAMES = ("CAMILLE", "SARAH", "LEA", "MARIE", "CHLOE", "EMMA", "MANON", "INES", "CLAIRE", "NADIA")
MALE_NAMES = ("JULIEN", "THOMAS", "NICOLAS", "ANTOINE", "MAXIME", "LUCAS", "HUGO", "PIERRE", "KARIM", "YANN")
FIRST_NAMES = FEMALE_NAMES + MALE_NAMES
LAST_NAMES = (
    "MARTIN", "BERNARD", "DUBOIS", "THOMAS", "ROBERT", "RICHARD", "PETIT", "DURAND", "LEROY",
    "MOREAU", "SIMON", "LAURENT", "LEFEBVRE", "MICHEL", "GARCIA", "DAVID", "BERTRAND", "ROUX",
    "VINCENT", "FOURNIER", "MOREL", "GIRARD", "MERCIER", "DUPONT", "LAMBERT", "BONNET", "BENALI",
)  # fmt: skip
EMPLOYERS = (
    "SAS ATELIERS DUVAL", "SARL BOULANGERIES REUNIES", "CABINET LEROUX ET ASSOCIES",
    "SA TRANSPORTS MOREAU", "COMMUNE DE VILLEBRUNE", "SAS LOGISTIQUE DU RHONE",
    "CLINIQUE SAINT LOUIS", "SAS NUMERIA CONSEIL", "LYCEE JULES FERRY",
)  # fmt: skip
CITIES = (
    "PARIS 11", "LYON 3", "NANTES", "LILLE", "BORDEAUX", "TOULOUSE", "RENNES",
    "MONTPELLIER", "STRASBOURG", "GRENOBLE",
)  # fmt: skip
LANDLORDS = ("SCI LES TILLEULS", "FONCIA GESTION", "NEXITY LAMY", "CITYA IMMOBILIER", "M ET MME ROUSSEL")
GROCERS = (
    "CARREFOUR CITY", "CARREFOUR MARKET", "E.LECLERC", "AUCHAN SUPERMARCHE", "LIDL",
    "MONOPRIX", "INTERMARCHE SUPER", "FRANPRIX", "SUPER U",
)  # fmt: skip
OCCASIONAL_GROCERS = ("PICARD SURGELES", "BIOCOOP", "GRAND FRAIS", "NATURALIA")
BAKERIES = ("BOULANGERIE PAUL", "BOULANGERIE DU MARCHE", "AU PETRIN DORE", "MAISON KAYSER")
LUNCH = ("STARBUCKS", "PAUL", "COLUMBUS CAFE", "BRIOCHE DOREE", "SUBWAY", "MCDONALDS", "CAFE DE LA GARE")
DINNER = (
    "LE BISTROT DU COIN", "SUSHI SHOP", "PIZZA DEL ARTE", "BRASSERIE LE CENTRAL", "BURGER KING",
    "UBER EATS", "DELIVEROO", "LA CREPERIE", "HIPPOPOTAMUS",
)  # fmt: skip
MISC = (
    ("PHARMACIE DU CENTRE", 450, 3800),
    ("TABAC PRESSE LE DIPLOMATE", 250, 1800),
    ("RELAY", 290, 1450),
    ("INDIGO PARKING", 250, 1600),
    ("CINEMA PATHE", 1050, 3200),
    ("UGC CINE CITE", 990, 2980),
    ("AMZN MKTP FR", 899, 8990),
    ("FNAC", 999, 12000),
    ("ACTION", 300, 3500),
    ("LA POSTE", 150, 1700),
    ("SNCF CONNECT", 1200, 9800),
    ("RATP", 210, 2120),
    ("COIFFEUR L ATELIER", 1800, 6500),
    ("CULTURA", 800, 6000),
    ("SEPHORA", 1500, 7500),
)
CARD_SHOPS = (
    "DECATHLON", "FNAC", "DARTY", "IKEA", "LEROY MERLIN", "BOULANGER", "ZARA", "H&M",
    "KIABI", "SEPHORA", "AMZN MKTP FR", "CASTORAMA",
)  # fmt: skip
FUEL = ("TOTALENERGIES", "ESSO", "AVIA", "E.LECLERC CARBURANT", "INTERMARCHE CARBURANT")
TOLLS = ("APRR", "VINCI AUTOROUTES", "SANEF")
TRAVEL = (("SNCF CONNECT", 3500, 18000), ("AIR FRANCE", 9000, 32000), ("BOOKING.COM", 7000, 26000))
FOREIGN = (
    ("AMAZON.COM SEATTLE", "USD", "US", 108),
    ("UBER TRIP LONDON", "GBP", "GB", 86),
    ("STEAMGAMES.COM", "USD", "US", 108),
    ("PRET A MANGER LONDON", "GBP", "GB", 86),
)  # (merchant, currency, country, units of that currency per 100 EUR)
ENERGY = (("EDF CLIENTS PARTICULIERS", "FR19ZZZ000002"), ("ENGIE", "FR11ZZZ396282"))
BOXES = (("ORANGE", 4299), ("SFR", 3999), ("BOUYGUES TELECOM", 3499), ("FREE TELECOM", 2999))
MOBILES = (("FREE MOBILE", 1999), ("SFR", 1599), ("BOUYGUES TELECOM", 1299), ("SOSH", 1499))
INSURERS = ("MAIF", "MACIF", "MATMUT", "AXA FRANCE IARD")
STREAMING = (
    ("NETFLIX.COM", 1349),
    ("SPOTIFY", 1112),
    ("DEEZER", 1199),
    ("AMAZON PRIME", 699),
    ("DISNEY PLUS", 999),
)
PEOPLE_MOTIFS_OUT = (
    "RESTAU",
    "CADEAU ANNIV",
    "WEEKEND",
    "COURSES",
    "REMBOURSEMENT",
    "PLACE CONCERT",
    "CAGNOTTE",
)
PEOPLE_MOTIFS_IN = ("REMBOURSEMENT", "RESTAU", "PART LOYER VACANCES", "MERCI", "COVOITURAGE")


@dataclass(frozen=True)
class Persona:
    """Who the demo customer is: drawn once per connection, shared by its three accounts."""

    holder: str
    city: str
    employer: str
    salary_cents: int
    salary_day_bonus_month: int
    rent_cents: int
    rent_day: int
    landlord: str
    landlord_iban: str
    energy: tuple[str, str]
    energy_base_cents: int
    box: tuple[str, int]
    mobile: tuple[str, int]
    insurer: str
    insurance_cents: int
    streaming: tuple[tuple[str, int], ...]
    gym: bool
    loan_cents: int
    savings_monthly_cents: int
    savings_opening_cents: int
    package_fee_cents: int
    card_fee_month: int
    card4: str
    deferred_card4: str
    favourite_grocers: tuple[str, ...]
    friends: tuple[str, ...]
    checking_target_cents: int
    account_number: str
    savings_number: str
    branch_code: str
    tax_cents: int


@dataclass
class _Builder:
    """Collects lines in generation order; `seq` keeps the sort stable."""

    lines: list[tuple[date, date, int, Line]] = field(default_factory=list)

    def add(self, line: Line) -> None:
        self.lines.append((line.date, line.rdate, len(self.lines), line))

    def sorted_lines(self) -> tuple[Line, ...]:
        return tuple(item[3] for item in sorted(self.lines, key=lambda item: item[:3]))


def _rng(seed: int, bank: DemoBank, key: str, part: str) -> random.Random:
    # a str seed is hashed with SHA-512 by random.seed (version 2): stable across runs and processes
    return random.Random(f"budgetfacile-sandbox:{seed}:{bank.id}:{key}:{part}")


def _stable_digits(text: str, length: int) -> str:
    return f"{zlib.crc32(text.encode()):010d}"[-length:].rjust(length, "0")


def make_persona(seed: int, bank: DemoBank, key: str) -> Persona:
    rng = _rng(seed, bank, key, "persona")
    female = rng.random() < 0.5
    first, last = rng.choice(FEMALE_NAMES if female else MALE_NAMES), rng.choice(LAST_NAMES)
    branch = f"{rng.randrange(10000, 99999):05d}"
    landlord = rng.choice(LANDLORDS)
    friends = tuple(f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}" for _ in range(rng.randint(3, 5)))
    return Persona(
        holder=f"{'MME' if female else 'M'} {first} {last}",
        city=rng.choice(CITIES),
        employer=rng.choice(EMPLOYERS),
        salary_cents=rng.randint(1900, 3900) * 100 + rng.choice((0, 37, 52, 84)),
        salary_day_bonus_month=rng.choice((6, 11, 12)),
        rent_cents=rng.randint(520, 1150) * 100,
        rent_day=rng.randint(1, 5),
        landlord=landlord,
        landlord_iban=french_iban(
            "30004", f"{rng.randrange(10000, 99999):05d}", f"{rng.randrange(10**10):011d}"
        ),
        energy=rng.choice(ENERGY),
        energy_base_cents=rng.randint(45, 110) * 100,
        box=rng.choice(BOXES),
        mobile=rng.choice(MOBILES),
        insurer=rng.choice(INSURERS),
        insurance_cents=rng.randint(2400, 7200),
        streaming=tuple(rng.sample(STREAMING, rng.randint(1, 3))),
        gym=rng.random() < 0.4,
        loan_cents=rng.choice((0, 0, 18950, 23412)),
        savings_monthly_cents=rng.choice((5000, 10000, 15000, 20000, 30000)),
        savings_opening_cents=rng.randint(1500, 14000) * 100,
        package_fee_cents=rng.choice((250, 590, 810, 1190, 1290)),
        card_fee_month=rng.randint(1, 12),
        card4=f"{rng.randrange(10000):04d}",
        deferred_card4=f"{rng.randrange(10000):04d}",
        favourite_grocers=tuple(rng.sample(GROCERS, 3)),
        friends=friends,
        checking_target_cents=rng.randint(400, 4200) * 100 + rng.randrange(100),
        account_number=f"{rng.randrange(10**10):011d}",
        savings_number=f"{rng.randrange(10**10):011d}",
        branch_code=branch,
        tax_cents=rng.choice((0, 0, 8700, 14300, 21500)),
    )


@dataclass(frozen=True)
class _Context:
    seed: int
    bank: DemoBank
    key: str
    today: date
    start: date
    persona: Persona
    writer: MemoWriter

    def rng(self, part: str) -> random.Random:
        return _rng(self.seed, self.bank, self.key, part)

    def within(self, day: date) -> bool:
        return self.start <= day <= self.today

    def reference(self, rng: random.Random) -> str:
        return f"{rng.randrange(10**11, 10**12)}"

    def mandate(self, creditor: str) -> str:
        return f"{bank_text(creditor)[:3].replace(' ', 'X')}{_stable_digits(self.key + creditor, 9)}"

    @property
    def holder_iban(self) -> str:
        return french_iban(self.bank.bank_code, self.persona.branch_code, self.persona.account_number)

    @property
    def savings_iban(self) -> str:
        return french_iban(self.bank.bank_code, self.persona.branch_code, self.persona.savings_number)


def _card_booking(rdate: date, delay: int, today: date) -> tuple[date, bool]:
    """(debit date, coming) of an immediate-debit card line used on `rdate`."""
    booked = add_business_days(rdate, delay)
    if booked > today:
        return rdate, True  # not debited yet: shown as coming, dated the day of use
    return booked, False


def _deferred_debit_date(rdate: date) -> date:
    debit = last_business_day(rdate.year, rdate.month)
    if rdate > debit:
        following = add_months(date(rdate.year, rdate.month, 1), 1)
        debit = last_business_day(following.year, following.month)
    return debit


def _savings_plan(ctx: _Context) -> list[tuple[date, int, str]]:
    """Money moving between checking and savings: (date, cents seen from savings, motif)."""
    rng = ctx.rng("savings-plan")
    plan: list[tuple[date, int, str]] = []
    for month in month_starts(ctx.start, ctx.today):
        day = business_day_on_or_after(month.replace(day=6))
        withdraw = rng.random() < 0.18
        amount = rng.randint(3, 15) * 10000
        if ctx.within(day):
            plan.append((day, ctx.persona.savings_monthly_cents, "EPARGNE MENSUELLE"))
        later = business_day_on_or_after(month.replace(day=min(21, days_in_month(month.year, month.month))))
        if withdraw and ctx.within(later):
            plan.append((later, -amount, "VIREMENT DEPUIS LIVRET"))
    return plan


def _card_account(ctx: _Context) -> AccountHistory:
    rng = ctx.rng("card")
    persona, writer = ctx.persona, ctx.writer
    card = masked_card(persona.deferred_card4)
    out = _Builder()

    def purchase(day: date, merchant: str, cents: int, *, twin: bool = False) -> None:
        debit = _deferred_debit_date(day)
        line = Line(
            date=debit,
            rdate=day,
            vdate=debit,
            value_cents=-cents,
            original_wording=writer.card_payment(merchant, day, persona.deferred_card4),
            type="deferred_card",
            coming=debit > ctx.today,
            card=card,
        )
        out.add(line)
        if twin:
            out.add(line)

    next_fuel = ctx.start + timedelta(days=rng.randint(0, 8))
    fuel_station = rng.choice(FUEL)
    for day in days(ctx.start, ctx.today):
        weekend = day.weekday() >= 5
        if day >= next_fuel:
            station = fuel_station if rng.random() < 0.75 else rng.choice(FUEL)
            purchase(day, f"{station} {persona.city}", rng.randint(3800, 8400))
            next_fuel = day + timedelta(days=rng.randint(7, 13))
        if rng.random() < (0.18 if weekend else 0.1):
            purchase(day, rng.choice(CARD_SHOPS), rng.randint(1200, 22000))
        if rng.random() < (0.2 if weekend else 0.08):
            purchase(day, rng.choice(DINNER), rng.randint(1500, 9000))
        if rng.random() < (0.12 if weekend else 0.03):
            # a return trip through the same toll barrier: the same amount twice on the same day
            purchase(day, rng.choice(TOLLS), rng.randint(210, 2460), twin=rng.random() < 0.35)
        if rng.random() < 0.012:
            merchant, low, high = rng.choice(TRAVEL)
            purchase(day, merchant, rng.randint(low, high))
        if rng.random() < 0.02:
            merchant = rng.choice(CARD_SHOPS)
            debit = _deferred_debit_date(day)
            out.add(
                Line(
                    date=debit,
                    rdate=day,
                    vdate=debit,
                    value_cents=rng.randint(900, 6000),
                    original_wording=writer.card_refund(merchant, day, persona.deferred_card4),
                    type="payback",
                    coming=debit > ctx.today,
                    card=card,
                )
            )
    lines = out.sorted_lines()
    coming = sum(line.value_cents for line in lines if line.coming)
    return AccountHistory(
        kind=AccountKind.CARD,
        original_name="CARTE VISA PREMIER DIFFERE",
        number=card,
        iban=None,
        lines=lines,
        balance_cents=coming,  # a deferred card's balance is what will be debited next
        coming_cents=coming,
    )


def _savings_account(ctx: _Context, plan: list[tuple[date, int, str]]) -> AccountHistory:
    rng = ctx.rng("savings")
    persona, writer = ctx.persona, ctx.writer
    out = _Builder()
    for day, cents, motif in plan:
        if cents > 0:
            wording = writer.transfer_in(persona.holder, motif, ctx.reference(rng))
            party = Counterparty(persona.holder, "debtor", ctx.holder_iban)
        else:
            wording = writer.transfer_out(persona.holder, motif, ctx.reference(rng))
            party = Counterparty(persona.holder, "creditor", ctx.holder_iban)
        out.add(Line(day, day, cents, wording, "transfer", vdate=day, counterparty=party))
    # yearly interest, credited on the last business day of December, about 2.4% of the average balance
    balance = persona.savings_opening_cents
    by_year: dict[int, list[int]] = {}
    plan_by_day = Counter[date]()
    for day, cents, _motif in plan:
        plan_by_day[day] += cents
    for day in days(ctx.start, ctx.today):
        balance += plan_by_day.get(day, 0)
        by_year.setdefault(day.year, []).append(balance)
    for year, balances in sorted(by_year.items()):
        credit_day = last_business_day(year, 12)
        if ctx.within(credit_day):
            interest = sum(balances) * 24 // 1000 // 365
            out.add(
                Line(
                    credit_day,
                    credit_day,
                    max(interest, 1),
                    writer.interest(year),
                    "deposit",
                    vdate=credit_day,
                )
            )
    lines = out.sorted_lines()
    final = persona.savings_opening_cents + sum(line.value_cents for line in lines)
    return AccountHistory(
        kind=AccountKind.SAVINGS,
        original_name="LIVRET A",
        number=persona.savings_number,
        iban=ctx.savings_iban,
        lines=lines,
        balance_cents=final,
        coming_cents=0,
    )


def _checking_account(
    ctx: _Context, plan: list[tuple[date, int, str]], card_lines: tuple[Line, ...]
) -> AccountHistory:
    rng = ctx.rng("checking")
    persona, writer, today = ctx.persona, ctx.writer, ctx.today
    card = masked_card(persona.card4)
    out = _Builder()

    def card_purchase(day: date, merchant: str, cents: int) -> Line:
        booked, coming = _card_booking(day, 1 if rng.random() < 0.7 else 2, today)
        line = Line(
            date=booked,
            rdate=day,
            vdate=booked,
            value_cents=-cents,
            original_wording=writer.card_payment(merchant, day, persona.card4),
            type="card",
            coming=coming,
            card=card,
        )
        out.add(line)
        if rng.random() < 0.012:  # a genuine twin: the same purchase twice, two lines
            out.add(line)
        return line

    def debit(day: date, creditor: str, creditor_id: str, label: str, cents: int) -> None:
        if ctx.within(day):
            wording = writer.direct_debit(
                creditor, creditor_id, ctx.mandate(creditor), ctx.reference(rng), label, day
            )
            party = Counterparty(bank_text(creditor), "creditor")
            out.add(Line(day, day, -cents, wording, "order", vdate=day, counterparty=party))

    def transfer(
        day: date, who: str, motif: str, cents: int, iban: str | None = None, instant: bool = False
    ) -> None:
        if not ctx.within(day):
            return
        if cents >= 0:
            wording = writer.transfer_in(who, motif, ctx.reference(rng), instant)
            party = Counterparty(bank_text(who), "debtor", iban)
        else:
            wording = writer.transfer_out(who, motif, ctx.reference(rng), instant)
            party = Counterparty(bank_text(who), "creditor", iban)
        out.add(Line(day, day, cents, wording, "transfer", vdate=day, counterparty=party))

    # --- fixed monthly life ---------------------------------------------------------------------
    for month in month_starts(ctx.start, today):
        y, m = month.year, month.month
        mois = f"{MONTHS_FR[m - 1]} {y}"

        def on(day_of_month: int, y: int = y, m: int = m) -> date:
            return business_day_on_or_after(date(y, m, min(day_of_month, days_in_month(y, m))))

        fee_day = on(2)
        if ctx.within(fee_day):
            out.add(
                Line(
                    fee_day, fee_day, -persona.package_fee_cents, writer.package_fee(), "bank", vdate=fee_day
                )
            )
        transfer(
            on(persona.rent_day),
            persona.landlord,
            f"LOYER {mois}",
            -persona.rent_cents,
            persona.landlord_iban,
        )
        insurer = persona.insurer
        debit(
            on(5),
            insurer,
            f"FR{_stable_digits(insurer, 2)}ZZZ{_stable_digits(insurer + 'ics', 6)}",
            f"COTISATION {mois}",
            persona.insurance_cents,
        )
        winter = m in (11, 12, 1, 2, 3)
        energy, energy_ics = persona.energy
        debit(
            on(8),
            energy,
            energy_ics,
            f"ECHEANCE {mois}",
            persona.energy_base_cents * (135 if winter else 85) // 100 + rng.randint(0, 99),
        )
        if m in (1, 4, 7, 10):
            debit(on(15), "VEOLIA EAU", "FR54ZZZ306105", f"FACTURE EAU {mois}", rng.randint(3500, 7200))
        box, box_cents = persona.box
        debit(
            on(12),
            box,
            f"FR{_stable_digits(box, 2)}ZZZ{_stable_digits(box + 'ics', 6)}",
            f"FACTURE INTERNET {mois}",
            box_cents,
        )
        mobile, mobile_cents = persona.mobile
        debit(
            on(20),
            mobile,
            f"FR{_stable_digits(mobile, 2)}ZZZ{_stable_digits(mobile + 'm', 6)}",
            f"FACTURE MOBILE {mois}",
            mobile_cents + (rng.choice((0, 0, 0, 150, 399))),
        )
        if persona.gym:
            debit(on(3), "BASIC FIT", "FR77ZZZ857034", f"ABONNEMENT {mois}", 2999)
        if persona.tax_cents:
            debit(on(15), "DGFIP IMPOT", "FR46ZZZ005002", "PRELEVEMENT A LA SOURCE", persona.tax_cents)
        if persona.loan_cents:
            loan_day = on(10)
            if ctx.within(loan_day):
                ref = _stable_digits(ctx.key + "loan", 11)
                out.add(
                    Line(
                        loan_day,
                        loan_day,
                        -persona.loan_cents,
                        writer.loan_payment(ref, loan_day),
                        "loan_payment",
                        vdate=loan_day,
                    )
                )
        for index, (service, cents) in enumerate(persona.streaming):
            use = date(y, m, min(9 + 6 * index, days_in_month(y, m)))
            if ctx.within(use):
                card_purchase(use, service, cents)
        if m == persona.card_fee_month:
            fee = on(9)
            if ctx.within(fee):
                out.add(Line(fee, fee, -4500, writer.card_fee(persona.card4), "bank", vdate=fee))
        pay_day = last_business_day(y, m)
        salary = persona.salary_cents + rng.randint(-4000, 6000)
        if m == persona.salary_day_bonus_month:
            salary += persona.salary_cents // 2
        transfer(
            pay_day, persona.employer, f"SALAIRE {mois}", salary, french_iban("30003", "01234", "00020012345")
        )

    for day, cents, motif in plan:
        transfer(day, persona.holder, motif, -cents, ctx.savings_iban)

    # the deferred card's monthly total, debited from checking
    totals = Counter[date]()
    for line in card_lines:
        if not line.coming:
            totals[line.date] += line.value_cents
    for debit_day, total in sorted(totals.items()):
        if ctx.within(debit_day):
            wording = writer.deferred_card_summary(persona.deferred_card4, debit_day)
            out.add(
                Line(
                    debit_day,
                    debit_day,
                    total,
                    wording,
                    "summary_card",
                    vdate=debit_day,
                    card=masked_card(persona.deferred_card4),
                )
            )

    # --- everyday life --------------------------------------------------------------------------
    shopping: list[tuple[date, str, int]] = []
    for day in days(ctx.start, today):
        weekday = day.weekday()
        if rng.random() < (0.5, 0.45, 0.5, 0.45, 0.55, 0.8, 0.2)[weekday]:
            grocer = (
                rng.choice(persona.favourite_grocers)
                if rng.random() < 0.85
                else rng.choice(OCCASIONAL_GROCERS)
            )
            cents = rng.randint(4500, 16000) if weekday == 5 else rng.randint(650, 5200)
            card_purchase(day, f"{grocer} {persona.city}", cents)
        if rng.random() < (0.55 if weekday >= 5 else 0.45):
            card_purchase(day, rng.choice(BAKERIES), rng.randint(110, 980))
        if weekday < 5 and rng.random() < 0.42:
            card_purchase(day, rng.choice(LUNCH), rng.randint(350, 1690))
        if rng.random() < (0.3 if weekday in (4, 5) else 0.08):
            card_purchase(day, rng.choice(DINNER), rng.randint(1800, 7500))
        if rng.random() < 0.42:
            merchant, low, high = rng.choice(MISC)
            line = card_purchase(day, merchant, rng.randint(low, high))
            if merchant in ("AMZN MKTP FR", "FNAC", "CULTURA", "SEPHORA") and rng.random() < 0.12:
                shopping.append((day + timedelta(days=rng.randint(3, 20)), merchant, -line.value_cents))
        if rng.random() < (0.09 if weekday >= 4 else 0.04):
            use = day
            booked, coming = _card_booking(use, 1, today)
            out.add(
                Line(
                    date=booked,
                    rdate=use,
                    vdate=booked,
                    value_cents=-rng.choice((2000, 3000, 4000, 5000, 6000, 8000, 10000)),
                    original_wording=writer.withdrawal(
                        persona.city, use, rng.randint(8, 21), rng.randint(0, 59), persona.card4
                    ),
                    type="withdrawal",
                    coming=coming,
                    card=card,
                )
            )
        if rng.random() < 0.06:
            transfer(
                day,
                rng.choice(persona.friends),
                rng.choice(PEOPLE_MOTIFS_OUT),
                -rng.randint(5, 80) * 100,
                instant=rng.random() < 0.6,
            )
        if rng.random() < 0.04:
            transfer(
                day,
                rng.choice(persona.friends),
                rng.choice(PEOPLE_MOTIFS_IN),
                rng.randint(5, 120) * 100,
                instant=rng.random() < 0.6,
            )
        if rng.random() < 0.025:
            doctor = f"DR {rng.choice(LAST_NAMES)}"
            card_purchase(day, doctor, 3000)
            refund_day = business_day_on_or_after(day + timedelta(days=rng.randint(3, 8)))
            transfer(refund_day, f"CPAM {persona.city.split()[0]}", "REMBOURSEMENT SOINS", 2000)
        if rng.random() < 0.008:
            number = f"{rng.randrange(10**6, 10**7)}"
            cashed = add_business_days(day, rng.randint(2, 9))
            if ctx.within(cashed):
                out.add(
                    Line(
                        cashed,
                        cashed,
                        -rng.randint(2000, 15000),
                        writer.check_paid(number),
                        "check",
                        vdate=cashed,
                    )
                )
        if rng.random() < 0.004:
            number = f"{rng.randrange(10**6, 10**7)}"
            credited = add_business_days(day, 1)
            if ctx.within(credited):
                out.add(
                    Line(
                        credited,
                        credited,
                        rng.randint(3000, 20000),
                        writer.check_deposit(number),
                        "deposit",
                        vdate=credited + timedelta(days=1),
                    )
                )
        if rng.random() < 0.006:
            merchant, currency, country, per_100 = rng.choice(FOREIGN)
            original = rng.randint(500, 9000)
            cents = original * 100 // per_100
            commission = max(cents * 2 // 100, 25)
            booked, coming = _card_booking(day, 2, today)
            out.add(
                Line(
                    date=booked,
                    rdate=day,
                    vdate=booked,
                    value_cents=-cents,
                    original_wording=writer.card_payment(merchant, day, persona.card4),
                    type="card",
                    coming=coming,
                    card=card,
                    original_value_cents=-original,
                    original_currency=currency,
                    commission_cents=-commission,
                    country=country,
                )
            )
            if not coming:
                out.add(
                    Line(
                        booked,
                        day,
                        -commission,
                        writer.bank_fee("PAIEMENT HORS ZONE EURO"),
                        "bank",
                        vdate=booked,
                    )
                )
        if rng.random() < 0.003 and weekday < 5:
            out.add(Line(day, day, -800, writer.bank_fee("COMMISSION INTERVENTION"), "bank", vdate=day))
        for due, merchant, cents in [item for item in shopping if item[0] == day]:
            booked, coming = _card_booking(due, 1, today)
            out.add(
                Line(
                    date=booked,
                    rdate=due,
                    vdate=booked,
                    value_cents=cents if rng.random() < 0.7 else cents // 2,
                    original_wording=writer.card_refund(merchant, due, persona.card4),
                    type="payback",
                    coming=coming,
                    card=card,
                )
            )

    lines = _ensure_twins_and_coming(ctx, list(out.sorted_lines()), rng)
    return AccountHistory(
        kind=AccountKind.CHECKING,
        original_name="COMPTE CHEQUES",
        number=persona.account_number,
        iban=ctx.holder_iban,
        lines=lines,
        balance_cents=persona.checking_target_cents,
        coming_cents=sum(line.value_cents for line in lines if line.coming),
    )


def _ensure_twins_and_coming(ctx: _Context, lines: list[Line], rng: random.Random) -> tuple[Line, ...]:
    """At least two booked twin pairs and two coming lines, whatever the dice said."""
    booked_cards = [line for line in lines if line.type == "card" and not line.coming]
    twins = sum(1 for count in Counter(booked_cards).values() if count >= 2)
    extra: list[Line] = []
    if twins < 2:
        recent = [line for line in booked_cards if line.date <= ctx.today - timedelta(days=7)]
        older = [line for line in booked_cards if line.date >= ctx.start + timedelta(days=60)]
        for candidate in (recent[-1:] + older[:1])[: 2 - twins]:
            extra.append(candidate)
    coming = sum(1 for line in lines if line.coming)
    writer, persona = ctx.writer, ctx.persona
    for index in range(max(0, 2 - coming)):
        merchant = BAKERIES[index] if index % 2 == 0 else f"{persona.favourite_grocers[0]} {persona.city}"
        extra.append(
            Line(
                date=ctx.today,
                rdate=ctx.today,
                vdate=ctx.today,
                value_cents=-rng.randint(180, 4200),
                original_wording=writer.card_payment(merchant, ctx.today, persona.card4),
                type="card",
                coming=True,
                card=masked_card(persona.card4),
            )
        )
    merged = _Builder()
    for line in lines:
        merged.add(line)
    for line in extra:
        merged.add(line)
    return merged.sorted_lines()


def generate_connection(
    seed: int, bank: DemoBank, connection_key: str, today: date
) -> dict[AccountKind, AccountHistory]:
    """The three accounts of one demo connection, about `bank.months_to_fetch` months up to `today`."""
    start = add_months(today, -bank.months_to_fetch)
    ctx = _Context(
        seed=seed,
        bank=bank,
        key=connection_key,
        today=today,
        start=start,
        persona=make_persona(seed, bank, connection_key),
        writer=MemoWriter(bank.style),
    )
    plan = _savings_plan(ctx)
    card = _card_account(ctx)
    savings = _savings_account(ctx, plan)
    checking = _checking_account(ctx, plan, card.lines)
    return {AccountKind.CHECKING: checking, AccountKind.SAVINGS: savings, AccountKind.CARD: card}
