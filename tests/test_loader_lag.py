"""The loader's lag gauge for a local journal: bytes of the journal past the loader's position."""

from pathlib import Path

from prometheus_client import REGISTRY
from warehouse_journal import receipt_record, write_journal

from ledger.warehouse.backends import open_warehouse
from ledger.warehouse.loader import Loader, LoaderSettings, local_sources, read_position

RECORDS = 30
BATCH = 10


def _lag(source: str) -> float | None:
    return REGISTRY.get_sample_value("ofd_warehouse_lag_bytes", {"source": source})


def test_lag_is_the_journal_past_the_position(tmp_path: Path) -> None:
    journal = tmp_path / "journal" / "gw-lag"
    write_journal(journal, [receipt_record(7, n)[0] for n in range(1, RECORDS + 1)])
    end = sum(p.stat().st_size for p in journal.glob("*.seg"))  # one segment, based at 0
    warehouse = open_warehouse(path=tmp_path / "warehouse")
    try:
        loader = Loader(
            warehouse, lambda: local_sources(journal.parent), LoaderSettings(batch_records=BATCH)
        )
        assert loader.step() == BATCH
        position = read_position(warehouse, "local:gw-lag")
        assert 0 < position < end
        assert _lag("local:gw-lag") == end - position
        assert sum(loader.drain()) == RECORDS - BATCH
        assert _lag("local:gw-lag") == 0
    finally:
        warehouse.close()
