"""`ofd web-user add`: the operator makes an organization's main user, the password read from
stdin (never a flag); a refusal is one line and exit code 1."""

import asyncio
import io

import asyncpg
import pytest
from cabinet_support import make_shop

from ingest.cli import main
from ledger import cabinet_users


async def test_the_operator_adds_a_user_and_refusals_are_one_line(
    database_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shop = await make_shop(database_url)
    db = ["--database-url", database_url]

    def add(password: str, *argv: str) -> int:
        monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
        return main(["web-user", "add", *argv, *db])

    org = str(shop.organization.id)
    assert await asyncio.to_thread(add, "a long password", "--org", org, "--login", "kassa1") == 0
    assert (
        await asyncio.to_thread(add, "a long password", "--org", "999999", "--login", "kassa2") == 1
    )
    assert await asyncio.to_thread(add, "short", "--org", org, "--login", "kassa3") == 1
    assert await asyncio.to_thread(add, "a long password", "--org", org, "--login", "kassa1") == 1
    out = capsys.readouterr()
    assert out.out.splitlines() == [f"user kassa1 (id {shop.main.id + 1}) of organization {org}"]
    assert out.err.splitlines() == [
        "error: no organization 999999",
        "error: a password has 8 to 256 characters",
        "error: this login already exists",
    ]
    conn = await asyncpg.connect(database_url)
    try:
        found = await cabinet_users.find_login(conn, "kassa1")
    finally:
        await conn.close()
    assert found is not None
    assert cabinet_users.authenticate(found, "a long password") is not None
