"""The query service's kept connections (ledger/warehouse/service.py, service_client.py) and the
cabinet's reader over them (cabinet/warehouse.ServiceReader), against a real `ofd load` service
on chDB: one connection answers request after request; a request refused before its body is read
ends its connection (the body is never read as a request); the reader follows a restarted
service to its new port and its new key, and says so when none runs."""

import http.client
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from cabinet.warehouse import ServiceReader, WarehouseUnavailable
from ledger.warehouse.service import (
    KEY_FILE,
    ServiceSettings,
    ensure_analyst_key,
    run_service,
    service_address,
)

SERVICE_WAIT = 60.0  # seconds a service may take to start or stop (a bound, not a timing)
QUERY = {"sql": "SELECT 1 AS one"}


@dataclass
class Running:
    stop: threading.Event
    thread: threading.Thread
    address: tuple[str, int]

    def end(self) -> None:
        self.stop.set()
        self.thread.join(SERVICE_WAIT)
        assert not self.thread.is_alive()


def _start(data_dir: Path, port: int = 0) -> Running:
    """`ofd load` answering queries only (nothing to load), in this process."""
    stop = threading.Event()
    settings = ServiceSettings(data_dir=data_dir, port=port, load=False)
    thread = threading.Thread(target=run_service, args=(settings, stop), name="service")
    thread.start()
    deadline = time.monotonic() + SERVICE_WAIT
    while (address := service_address(data_dir)) is None:
        assert thread.is_alive()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return Running(stop, thread, address)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Running]:
    running = _start(tmp_path)
    try:
        yield running
    finally:
        running.end()


def _post(
    connection: http.client.HTTPConnection, key: str, body: bytes
) -> http.client.HTTPResponse:
    connection.request("POST", "/query", body=body, headers={"Authorization": f"Bearer {key}"})
    return connection.getresponse()


def _unauthorized() -> float:
    labels = {"outcome": "unauthorized"}
    return REGISTRY.get_sample_value("ofd_warehouse_queries_total", labels) or 0.0


def test_one_connection_answers_request_after_request(service: Running, tmp_path: Path) -> None:
    key = ensure_analyst_key(tmp_path)
    connection = http.client.HTTPConnection(*service.address, timeout=SERVICE_WAIT)
    try:
        for _ in range(3):
            answer = _post(connection, key, json.dumps(QUERY).encode())
            assert answer.status == 200
            assert json.loads(answer.read()) == {"rows": [{"one": 1}]}
            assert not answer.will_close
            assert connection.sock is not None  # still the one connection
            sock = connection.sock
        assert connection.sock is sock
    finally:
        connection.close()


def test_a_request_refused_before_its_body_is_read_ends_its_connection(
    service: Running,
) -> None:
    # A body that is itself a request: kept on the connection, it would be answered as one.
    smuggled = b"GET /metrics HTTP/1.1\r\nHost: service\r\n\r\n"
    connection = http.client.HTTPConnection(*service.address, timeout=SERVICE_WAIT)
    try:
        answer = _post(connection, "not the key", smuggled)
        assert answer.status == 401
        assert answer.will_close
        answer.read()
        assert connection.sock is None  # closed on the service's word
    finally:
        connection.close()


def test_the_reader_follows_a_restarted_service_to_its_new_port_and_key(tmp_path: Path) -> None:
    reader = ServiceReader(tmp_path)
    first = _start(tmp_path)
    try:
        assert reader.select("SELECT 1 AS one") == [{"one": 1}]
    finally:
        first.end()
    with pytest.raises(WarehouseUnavailable, match="no warehouse service runs"):
        reader.select("SELECT 1 AS one")
    old_key = ensure_analyst_key(tmp_path)
    (tmp_path / KEY_FILE).unlink()  # the next service makes a new key
    second = _start(tmp_path)
    try:
        assert ensure_analyst_key(tmp_path) != old_key
        assert reader.select("SELECT 2 AS two") == [{"two": 2}]
    finally:
        second.end()


def test_the_reader_presents_a_new_key_on_the_same_port(tmp_path: Path) -> None:
    reader = ServiceReader(tmp_path)
    first = _start(tmp_path)
    try:
        assert reader.select("SELECT 1 AS one") == [{"one": 1}]  # its address and key kept
    finally:
        first.end()
    (tmp_path / KEY_FILE).unlink()
    # The same port: the kept address answers, and refuses the kept key (401) until read again.
    second = _start(tmp_path, port=first.address[1])
    refused = _unauthorized()
    try:
        assert second.address == first.address
        assert reader.select("SELECT 2 AS two") == [{"two": 2}]
        assert _unauthorized() == refused + 1  # the kept key, once
    finally:
        second.end()
