"""The warehouse schema for a replicated, sharded ClickHouse cluster, generated from the one DDL
(schema.sql) so that the two never drift:

- every statement runs `ON CLUSTER '{cluster}'`;
- every *MergeTree table becomes its Replicated* twin, with its ZooKeeper/Keeper path and
  replica from the servers' macros (`{shard}`, `{replica}`); replicated tables deduplicate
  retried inserts by their own window, so the non-replicated window setting goes;
- every table with a `device_id` gets a Distributed table `<name>_all` over the shards, sharded by
  the device id, for the loaders to write to and analysts to read from (one device's documents
  stay on one shard, as its partition does in Kafka).

No current ClickHouse server can be installed from the registries these machines reach, so this
is checked by ClickHouse's own parser (chDB's `formatQuery`, tests/test_warehouse_replicated.py),
not run. `python -m ledger.warehouse.replicated [DATABASE]` prints it for an operator.
"""

import re
import sys

from ledger.warehouse.backends import DEFAULT_DATABASE, schema_statements

CLUSTER = "'{cluster}'"
_ENGINE = re.compile(r"ENGINE = (\w*MergeTree)(?:\((?P<args>[^)]*)\))?")
_CREATE = re.compile(
    r"^CREATE (?P<kind>DATABASE|TABLE|MATERIALIZED VIEW|VIEW) IF NOT EXISTS (?P<name>[\w.]+)"
)
_LOCAL_SETTING = re.compile(r"\nSETTINGS non_replicated_deduplication_window = \d+")


def _on_cluster(statement: str) -> str:
    return _CREATE.sub(lambda m: f"{m.group(0)} ON CLUSTER {CLUSTER}", statement, count=1)


def _replicated_engine(statement: str, database: str, table: str) -> str:
    def engine(match: re.Match[str]) -> str:
        path = f"'/clickhouse/tables/{{shard}}/{database}/{table}', '{{replica}}'"
        args = match.group("args")
        return f"ENGINE = Replicated{match.group(1)}({path}{', ' + args if args else ''})"

    return _LOCAL_SETTING.sub("", _ENGINE.sub(engine, statement, count=1))


def replicated_statements(database: str = DEFAULT_DATABASE) -> list[str]:
    statements: list[str] = []
    for statement in schema_statements(database):
        created = _CREATE.match(statement)
        if created is None:
            raise ValueError(f"schema statement not understood: {statement[:60]!r}")
        name = created.group("name")
        table = name.rpartition(".")[2]
        clustered = _on_cluster(statement)
        if created.group("kind") == "TABLE" and _ENGINE.search(statement):
            statements.append(_replicated_engine(clustered, database, table))
            if re.search(r"^\s+device_id ", statement, flags=re.MULTILINE):
                statements.append(
                    f"CREATE TABLE IF NOT EXISTS {name}_all ON CLUSTER {CLUSTER} AS {name}"
                    f" ENGINE = Distributed({CLUSTER}, {database}, {table}, cityHash64(device_id))"
                )
        else:
            statements.append(clustered)
    return statements


def main(argv: list[str]) -> int:
    database = argv[0] if argv else DEFAULT_DATABASE
    print("\n;\n".join(replicated_statements(database)) + "\n;")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
