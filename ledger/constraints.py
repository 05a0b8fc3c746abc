"""PostgreSQL's refusals in the registry's words: what was wrong, never a constraint's name or SQL.

A CHECK constraint named `<table>_<column>_check` becomes a sentence about that column (the
known ones say what a good value is); a foreign key's detail `Key (organization_id)=(9) is not
present in table "organizations"` becomes `no organization 9`; a unique key's detail names the
value that is taken.
"""

import re

import asyncpg

from ledger.errors import AlreadyExists, InvalidRequest, NotFound, RegistryError

# What a good value is, for the CHECK constraints a caller can run into.
CHECKS = {
    "organizations_iin_check": "an IIN or BIN is 12 digits",
    "organizations_title_check": "an organization's title must not be empty",
    "organizations_head_check": "the head's name is at most 200 characters",
    "trade_points_title_check": "a trade point's title must not be empty",
    "trade_points_latitude_check": "latitude is in micro-degrees, 0 to 2147483647",
    "trade_points_longitude_check": "longitude is in micro-degrees, 0 to 2147483647",
    "devices_year_check": "a device's year of manufacture is 1990 to 2100",
    "devices_kgd_registration_number_check": "the KGD registration number must not be empty",
    "devices_system_id_check": "a system id is 1 to 4294967295",
    "devices_block_message_check": "a block message is at most 500 characters",
    "api_keys_name_check": "a key's name must not be empty",
}
NOUNS = {
    "organizations": "organization",
    "trade_points": "trade point",
    "devices": "device",
    "api_keys": "key",
    "cabinet_groups": "group",
    "cabinet_users": "user",
}
_KEY = re.compile(r"Key \((?P<columns>[^)]*)\)=\((?P<values>[^)]*)\)")
_MISSING = re.compile(r'is not present in table "(?P<table>\w+)"')


def _noun(table: str | None) -> str:
    return NOUNS.get(table or "", (table or "row").replace("_", " ").removesuffix("s"))


def _article(noun: str) -> str:
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def translate(err: asyncpg.PostgresError) -> RegistryError:
    """The registry error a database refusal stands for."""
    detail = getattr(err, "detail", None) or ""
    key = _KEY.search(detail)
    if isinstance(err, asyncpg.UniqueViolationError):
        if key is None:
            return AlreadyExists(f"that {_noun(err.table_name)} already exists")
        column = key["columns"].replace("_", " ")
        return AlreadyExists(
            f"{_article(_noun(err.table_name))} with {column} {key['values']} already exists"
        )
    if isinstance(err, asyncpg.ForeignKeyViolationError):
        missing = _MISSING.search(detail)
        if key is None or missing is None:
            return NotFound("it refers to something that does not exist")
        return NotFound(f"no {_noun(missing['table'])} {key['values']}")
    if isinstance(err, asyncpg.NotNullViolationError):
        return InvalidRequest(f"{(err.column_name or 'a value').replace('_', ' ')} is required")
    if isinstance(err, asyncpg.CheckViolationError):
        name = err.constraint_name or ""
        if name in CHECKS:
            return InvalidRequest(CHECKS[name])
        column = name.removeprefix(f"{err.table_name}_").removesuffix("_check")
        return InvalidRequest(f"invalid {column.replace('_', ' ') or 'value'}")
    return InvalidRequest(f"refused by the database: {type(err).__name__}")
