"""The catalogue of goods (NOMENCLATURE): one versioned catalogue per organization.

A version is published whole (`publish`) and never changed; a device asks with the version it
holds and is answered with one of NomenclatureResponse's results:

- RESULT_TYPE_OK with every element of the latest version (or, asked by barcode, the items
  with that barcode);
- RESULT_TYPE_VERSION_IS_ACTUAL when the device already holds the latest version;
- RESULT_TYPE_NO_VERSION when the organization has published none;
- RESULT_TYPE_ELEMENT_NOT_FOUND_BY_BARCODE when no item of the latest version has the barcode.

The Result of the answer is OK, except for a barcode not found in 2.0.3, whose ResultTypeEnum
has a code for exactly that (18, ELEMENT_NOT_FOUND_BY_BARCODE): 2.0.3 gets 18 with the same
NomenclatureResponse, so a device reading either one understands. 2.0.4 gets OK: there 18 means
DEREGISTERED, which would stop the till (protocol.md "Result codes"). Inferred, ours to choose.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from ledger.errors import InvalidRequest

Conn = asyncpg.Connection | PoolConnectionProxy

RESULT_OK, VERSION_IS_ACTUAL, NO_VERSION, NOT_FOUND_BY_BARCODE = 0, 1, 2, 3
GROUP, ITEM = 0, 1  # ElementTypeEnum
STS, VAT = 100, 100  # TaxationTypeEnum.STS, TaxTypeEnum.VAT
# A whole version travels in one answer frame (at most 1 MiB); an element is ~100-300 bytes.
MAX_ELEMENTS = 3000
# ... and the whole version must fit that frame: text bytes plus a generous 64 per element.
MAX_VERSION_BYTES = 900_000
_TEXT_FIELDS = ("title", "title_kk", "article", "barcode", "description", "measure_unit_code")
MAX_VERSION = 2**31 - 1


class CatalogueError(InvalidRequest):
    """A catalogue that cannot be published as given."""


@dataclass(frozen=True, slots=True)
class Element:
    id: int
    title: str
    is_item: bool = True
    title_kk: str = ""
    parent_group_id: int | None = None
    article: str = ""
    barcode: str = ""
    description: str = ""
    sell_price: int | None = None  # tiyn
    measure_unit_code: str = ""
    ntin: str = ""
    vat_percent: int | None = None  # hundredths of a percent


@dataclass(frozen=True, slots=True)
class CatalogueAnswer:
    result: int
    version: int = 0
    created_at: datetime | None = None
    elements: tuple[Element, ...] = ()


_COLUMNS = (
    "id, is_item, title, title_kk, parent_group_id, article, barcode, description, sell_price,"
    " measure_unit_code, ntin, vat_percent"
)


async def publish(
    conn: Conn, organization_id: int, elements: Sequence[Element], *, created_at: datetime
) -> int:
    """Publishes the next version of the organization's catalogue; returns its number."""
    if not elements:
        raise CatalogueError("a catalogue version needs at least one element")
    if len(elements) > MAX_ELEMENTS:
        raise CatalogueError(f"more than {MAX_ELEMENTS} elements")
    size = sum(
        64 + sum(len(getattr(e, name).encode()) for name in _TEXT_FIELDS) + len(e.ntin)
        for e in elements
    )
    if size > MAX_VERSION_BYTES:
        raise CatalogueError(f"about {size} bytes: more than one answer frame holds")
    ids = {e.id for e in elements}
    if len(ids) != len(elements):
        raise CatalogueError("element ids repeat")
    for element in elements:
        if element.parent_group_id is not None and element.parent_group_id not in ids:
            raise CatalogueError(f"element {element.id}: no group {element.parent_group_id}")
    async with conn.transaction():
        # Serialises publishers of one organization: versions never collide or skip.
        await conn.execute("SELECT 1 FROM organizations WHERE id = $1 FOR UPDATE", organization_id)
        latest = await conn.fetchval(
            "SELECT coalesce(max(version), 0) FROM nomenclature_versions"
            " WHERE organization_id = $1",
            organization_id,
        )
        version = int(latest) + 1
        await conn.execute(
            "INSERT INTO nomenclature_versions (organization_id, version, created_at)"
            " VALUES ($1, $2, $3)",
            organization_id,
            version,
            created_at,
        )
        await conn.executemany(
            f"INSERT INTO nomenclature_elements (organization_id, version, {_COLUMNS})"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            [
                (
                    organization_id,
                    version,
                    e.id,
                    e.is_item,
                    e.title,
                    e.title_kk,
                    e.parent_group_id,
                    e.article,
                    e.barcode,
                    e.description,
                    e.sell_price,
                    e.measure_unit_code,
                    e.ntin,
                    e.vat_percent,
                )
                for e in elements
            ],
        )
    return version


_LATEST_SQL = """
SELECT v.organization_id, v.version, v.created_at
FROM devices d
JOIN trade_points p ON p.id = d.trade_point_id
JOIN nomenclature_versions v ON v.organization_id = p.organization_id
WHERE d.system_id = $1
ORDER BY v.version DESC
LIMIT 1
"""


async def answer_for(
    conn: Conn, system_id: int, *, current_version: int, barcode: str, timeout: float
) -> CatalogueAnswer:
    """What the device's organization's catalogue answers to a NOMENCLATURE request."""
    latest = await conn.fetchrow(_LATEST_SQL, system_id, timeout=timeout)
    if latest is None:
        return CatalogueAnswer(NO_VERSION)
    org, version, created = latest["organization_id"], latest["version"], latest["created_at"]
    where = "organization_id = $1 AND version = $2"
    args: list[Any] = [org, version]
    if barcode:
        where += " AND is_item AND barcode = $3"
        args.append(barcode)
    elif current_version == version:
        return CatalogueAnswer(VERSION_IS_ACTUAL, version, created)
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM nomenclature_elements WHERE {where} ORDER BY id",
        *args,
        timeout=timeout,
    )
    if barcode and not rows:
        return CatalogueAnswer(NOT_FOUND_BY_BARCODE, version, created)
    elements = tuple(Element(**dict(r.items())) for r in rows)
    return CatalogueAnswer(RESULT_OK, version, created, elements)


def _money(target: Any, tiyn: int) -> None:
    target.bills, target.coins = divmod(tiyn, 100)


def fill(nomenclature: Any, answer: CatalogueAnswer) -> None:
    """Writes `answer` into a NomenclatureResponse (the same numbers in 2.0.3 and 2.0.4)."""
    nomenclature.version = answer.version
    nomenclature.result = answer.result
    if answer.created_at is not None:
        when = answer.created_at
        created = nomenclature.created_time
        created.date.year, created.date.month, created.date.day = when.year, when.month, when.day
        created.time.hour, created.time.minute = when.hour, when.minute
        created.time.second = when.second
    for element in answer.elements:
        out = nomenclature.elements.add(
            type=ITEM if element.is_item else GROUP, id=element.id, title=element.title
        )
        if element.title_kk:
            out.title_kk = element.title_kk
        if element.parent_group_id is not None:
            out.parent_group_id = element.parent_group_id
        if not element.is_item:
            continue
        item = out.item
        item.SetInParent()
        for name in ("article", "barcode", "description", "measure_unit_code", "ntin"):
            value = getattr(element, name)
            if value:
                setattr(item, name, value)
        if element.sell_price is not None:
            _money(item.sell_price, element.sell_price)
        if element.vat_percent is not None:
            item.taxes.add(taxation_type=STS, tax_type=VAT, tax_percent=element.vat_percent)
