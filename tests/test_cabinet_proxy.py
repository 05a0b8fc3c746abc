"""X-Forwarded-For: the limits count the client behind a trusted proxy, and only there. A client
that writes the header itself, straight to the cabinet or to the left of what a trusted proxy
appended, still meets its own limit."""

import argparse
from ipaddress import ip_network
from pathlib import Path

import aiohttp
import pytest
from cabinet_support import LOGIN_CSRF, make_shop, web_settings

from cabinet.app import RunningCabinet, running_cabinet
from cabinet.client_address import client_address, trusted_networks
from ingest.limits import FailureBudget

BUDGET = FailureBudget(failures=3, window_seconds=60.0)
LOOPBACK = (ip_network("127.0.0.0/8"),)  # the test's client reaches the cabinet from here


async def failed_login(running: RunningCabinet, login: str, forwarded: str | None) -> int:
    """One login with a wrong password, as a fresh browser sending `forwarded` as its
    X-Forwarded-For (None: no header); the answer's status."""
    headers = {} if forwarded is None else {"X-Forwarded-For": forwarded}
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.CookieJar(unsafe=True), headers=headers
    ) as http:
        async with http.get(f"{running.url}/login") as form:
            found = LOGIN_CSRF.search(await form.text())
        assert found
        data = {"login": login, "password": "wrong password", "login_csrf": found[1]}
        async with http.post(f"{running.url}/login", data=data) as answer:
            return answer.status


@pytest.mark.adversity
async def test_a_forged_header_from_an_untrusted_peer_does_not_dodge_the_limit(
    tmp_path: Path, database_url: str
) -> None:
    shop = await make_shop(database_url)
    settings = web_settings(tmp_path, database_url, login_failures=BUDGET)
    async with running_cabinet(settings) as running:
        # Each try claims another address; no proxy is trusted, so all count for the peer.
        for n in range(3):
            assert await failed_login(running, shop.main.login, f"203.0.113.{n}") == 401
        assert await failed_login(running, shop.main.login, "198.51.100.7") == 429
        assert await failed_login(running, shop.main.login, None) == 429
        assert running.cabinet.login_failures.refused == 2


@pytest.mark.adversity
async def test_a_trusted_proxys_header_names_the_client(tmp_path: Path, database_url: str) -> None:
    shop = await make_shop(database_url)
    settings = web_settings(tmp_path, database_url, login_failures=BUDGET, trusted_proxies=LOOPBACK)
    async with running_cabinet(settings) as running:
        for _ in range(3):
            assert await failed_login(running, shop.main.login, "203.0.113.5") == 401
        assert await failed_login(running, shop.main.login, "203.0.113.5") == 429
        # The client's own entries left of what the proxy appended change nothing.
        forged = "198.51.100.1, 203.0.113.5"
        assert await failed_login(running, shop.main.login, forged) == 429
        # Another client behind the same proxy has its own budget, as does the proxy itself.
        assert await failed_login(running, shop.main.login, "203.0.113.6") == 401
        assert await failed_login(running, shop.main.login, None) == 401


def test_the_right_most_untrusted_entry_is_the_client() -> None:
    trusted = trusted_networks("10.0.0.0/8, 192.0.2.1")
    # Not from a trusted proxy: the header is ignored, whatever it says.
    assert client_address("203.0.113.9", ["198.51.100.1"], trusted) == "203.0.113.9"
    # From one: the right-most entry that is no trusted proxy, over every header received.
    assert client_address("10.1.1.1", ["198.51.100.1, 203.0.113.5"], trusted) == "203.0.113.5"
    assert client_address("10.1.1.1", ["203.0.113.5", "192.0.2.1"], trusted) == "203.0.113.5"
    assert client_address("10.1.1.1", ["2001:db8::1"], trusted) == "2001:db8::1"
    # No header, or only proxies in it: the farthest proxy known.
    assert client_address("10.1.1.1", [], trusted) == "10.1.1.1"
    assert client_address("10.1.1.1", ["10.2.2.2, 192.0.2.1"], trusted) == "10.2.2.2"
    # Garbage a proxy passed on ends the walk at that proxy: never an address of its own.
    assert client_address("10.1.1.1", ["203.0.113.5, junk, 10.3.3.3"], trusted) == "10.3.3.3"
    assert client_address("10.1.1.1", ["x" * 100], trusted) == "10.1.1.1"
    assert client_address(None, ["203.0.113.5"], trusted) == "unknown"


def test_trusted_proxies_are_addresses_or_networks() -> None:
    assert trusted_networks("") == ()
    assert trusted_networks("127.0.0.1,10.0.0.0/8") == (
        ip_network("127.0.0.1/32"),
        ip_network("10.0.0.0/8"),
    )
    with pytest.raises(argparse.ArgumentTypeError, match="not an address or a CIDR"):
        trusted_networks("10.0.0.0/8,proxy.example")
