"""The Kafka producer benchmark, run for a fraction of a second against the session's Kafka
broker: well-formed results and document, no timings (benchmarks are not tests)."""

import json
from pathlib import Path

from benchmarks import kafka_producer
from benchmarks.layers import table
from benchmarks.report import write_json

SECONDS = 0.05
BATCHES = (1, 64)
CASES_PER_BATCH = 3  # the Kafka journal, the acks=0 producer floor, the local journal floor


def test_cases_are_well_formed(kafka_bootstrap: str, tmp_path: Path) -> None:
    results = kafka_producer.run_cases(kafka_bootstrap, SECONDS, tmp_path, BATCHES)

    assert len(results) == len(BATCHES) * CASES_PER_BATCH
    assert sorted({r.batch for r in results}) == list(BATCHES)
    for r in results:
        assert r.ops > 0, r
        assert r.items == r.ops * r.batch, r
        assert r.items_per_s > 0, r
        assert 0 < r.op_p50_us <= r.op_p99_us, r
    journal = [r for r in results if not r.floor]
    assert [r.batch for r in journal] == list(BATCHES)
    for r in journal:
        assert r.layer == kafka_producer.KAFKA_LAYER
        assert r.ratio_to_floor is not None, r
        assert r.ratio_to_floor > 0, r
    assert all(r.ratio_to_floor is None for r in results if r.floor)
    assert not list(tmp_path.iterdir())  # the local journals are removed

    doc = kafka_producer.document(results, SECONDS)
    out = tmp_path / "out" / "kafka_producer.json"
    write_json(out, doc)
    loaded = json.loads(out.read_text(encoding="utf-8"))
    assert loaded["benchmark"] == "kafka_producer"
    assert len(loaded["cases"]) == len(results)
    assert loaded["config"]["mean_record_bytes"] >= kafka_producer.MIN_RECORD_BYTES
    assert "KafkaJournal.append (acks=all)" in table(results)


def test_records_are_large_and_keyed_apart() -> None:
    entries = kafka_producer.records(1024)

    assert len(entries) == 1024
    assert all(len(e.payload) >= kafka_producer.MIN_RECORD_BYTES for e in entries)
    assert len({e.key for e in entries}) == len(entries)
