"""The replicated, sharded variant of the warehouse schema (ledger/warehouse/replicated.py),
generated from the one DDL, passes ClickHouse's own parser (chDB's formatQuery: parsed, not run:
no ClickHouse server can be installed here), and says what a cluster needs."""

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ledger.warehouse.backends import ChdbWarehouse, schema_statements
from ledger.warehouse.replicated import replicated_statements

Parse = Callable[[str], str]


@pytest.fixture(scope="module")
def parse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Parse]:
    """ClickHouse's parser (chDB), through a session of the warehouse's own kind."""
    engine = ChdbWarehouse(Path(tmp_path_factory.mktemp("parser")), "ofd")

    def parsed(statement: str) -> str:
        literal = statement.replace("\\", "\\\\").replace("'", "\\'")
        rows = engine.select(f"SELECT formatQuerySingleLine('{literal}') AS q")
        return str(rows[0]["q"])

    yield parsed
    engine.close()


@pytest.fixture(scope="module")
def statements() -> list[str]:
    return replicated_statements("ofd")


def test_every_statement_parses(statements: list[str], parse: Parse) -> None:
    for statement in statements:
        assert parse(statement).startswith("CREATE"), statement[:80]


def test_a_statement_clickhouse_cannot_parse_is_caught(parse: Parse) -> None:
    with pytest.raises(Exception, match=r"SYNTAX_ERROR|Syntax error"):
        parse("CREATE TABLE ofd.x ON CLUSTER ENGINE = (")


def test_every_table_is_replicated_on_the_cluster(statements: list[str]) -> None:
    local = schema_statements("ofd")
    tables = [s for s in local if s.startswith("CREATE TABLE") and "MergeTree" in s]
    replicated = [s for s in statements if "ENGINE = Replicated" in s]
    assert len(replicated) == len(tables)
    for statement in replicated:
        assert "ON CLUSTER '{cluster}'" in statement
        assert "'/clickhouse/tables/{shard}/ofd/" in statement
        assert "'{replica}'" in statement
        assert "non_replicated_deduplication_window" not in statement
    assert all("ON CLUSTER '{cluster}'" in s for s in statements)


def test_device_tables_are_sharded_by_device(statements: list[str]) -> None:
    distributed = [s for s in statements if "ENGINE = Distributed" in s]
    assert any("ofd.documents_all" in s for s in distributed)
    assert all("cityHash64(device_id)" in s for s in distributed)
    # Positions are per loader source, not per device: never sharded.
    assert not any("loader_positions_all" in s for s in distributed)
