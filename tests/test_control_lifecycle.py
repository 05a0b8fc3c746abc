"""The control API through the CLI against a running gateway with authentication on, and the
registry's states as a device meets them on the wire, in both served versions.

One device is taken through its whole life while it sends documents: accepted once registered,
BLOCKED (15) with the OFD's message while blocked, accepted again once unblocked, DISCONNECTED
(19; BLOCKED in 2.0.3) while its subscription is off, still served while awaiting
deregistration, refused once deregistered (UNKNOWN_ID in 2.0.3, DEREGISTERED 18 in 2.0.4).
"""

import asyncio
import dataclasses
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import gateway_settings
from prometheus_client import generate_latest
from wire import ask, body, ticket

from ingest.app import RunningGateway, running_gateway
from ingest.cli import main
from ingest.codec import encode
from ingest.limits import FailureBudget
from ledger.access import read_key_file
from ledger.schemas import SCHEMAS
from ledger.wire import Command, ResultCode
from simulators.receipts import build_system

VERSIONS = [203, 204]
CLI_DEADLINE = 20.0  # seconds one CLI call may take, gRPC timeout included
BLOCK_MESSAGE = "Оплатите услуги ОФД / Pay the OFD: call 7000"


@dataclass(frozen=True, slots=True)
class Result:
    code: int
    out: Any  # the parsed JSON answer, or None on failure
    err: str


@dataclass(slots=True)
class Ofd:
    """The `ofd` CLI pointed at one gateway, called in a thread (gRPC there is blocking)."""

    control: str
    key: str
    capsys: pytest.CaptureFixture[str]
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def __call__(self, *argv: str, key: str | None = None) -> Result:
        code, out, err = await self.text(*argv, "--json", key=key)
        return Result(code, json.loads(out) if code == 0 and out.strip() else None, err)

    async def text(self, *argv: str, key: str | None = None) -> tuple[int, str, str]:
        """Exit code, stdout and stderr of `ofd ARGV` as printed (a table unless --json)."""
        args = ["--control", self.control, "--key-file", "/nonexistent"]
        if (key if key is not None else self.key) != "":
            args += ["--key", key if key is not None else self.key]
        async with self.lock:  # capsys is one buffer: one call at a time
            self.capsys.readouterr()
            async with asyncio.timeout(CLI_DEADLINE):
                code = await asyncio.to_thread(main, [*args, *argv])
            out, err = self.capsys.readouterr()
        return code, out, err

    async def ok(self, *argv: str, key: str | None = None) -> Any:
        result = await self(*argv, key=key)
        assert result.code == 0, result.err
        return result.out


@pytest.fixture
async def secured(tmp_path: Path, database_url: str) -> AsyncIterator[RunningGateway]:
    settings = gateway_settings(tmp_path, database_url, control_auth=True)
    async with running_gateway(settings) as running:
        yield running


@pytest.fixture
def ofd(secured: RunningGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Ofd:
    key = read_key_file(tmp_path)
    assert key, "ofd serve writes DATA_DIR/operator.key on first start"
    return Ofd(f"127.0.0.1:{secured.control_port}", key, capsys)


async def add_org(ofd: Ofd, key: str | None = None) -> int:
    iin = f"{secrets.randbelow(10**12):012d}"
    org = await ofd.ok("org", "add", "--iin", iin, "--title", "ТОО Тест", key=key)
    return int(org["id"])


async def add_point(ofd: Ofd, org: int, key: str | None = None) -> int:
    point = await ofd.ok(
        "point", "add", "--org", str(org), "--title", "Дүкен", "--lat", "43238949", "--lon",
        "76889709", key=key,
    )  # fmt: skip
    return int(point["id"])


async def add_device(ofd: Ofd, point: int, key: str | None = None) -> int:
    kgd = f"{secrets.randbelow(10**12):012d}"
    device = await ofd.ok(
        "kkm", "add", "--point", str(point), "--kgd", kgd, "--serial", "SN-1", "--model", "KKM",
        "--year", "2025", key=key,
    )  # fmt: skip
    return int(device["system_id"])


class Till:
    """One device on the wire: request numbers count up, the token follows every OK."""

    def __init__(self, port: int, version: int, system_id: int, token: int) -> None:
        self.port, self.version, self.system_id, self.token = port, version, system_id, token
        self.request_number = 0
        self.document_number = 0

    async def send(self, command: Command, request: Any = None) -> tuple[int, str]:
        self.request_number += 1
        if request is not None:
            payload = body(request)
        elif command == Command.TICKET:
            self.document_number += 1
            payload = body(ticket(self.version, self.document_number))
        else:
            payload = body(build_system(SCHEMAS[self.version]))
        frame = encode(self.version, self.system_id, self.token, self.request_number, payload)
        answer = await ask(self.port, frame)
        if answer.code == ResultCode.OK:
            self.token = answer.header.token
        elif command == Command.TICKET:
            self.document_number -= 1  # refused: the till prints nothing, the number is free
        return answer.code, answer.response.result.result_text


@pytest.mark.parametrize("version", VERSIONS)
async def test_one_device_through_its_whole_life(
    secured: RunningGateway, ofd: Ofd, version: int
) -> None:
    org = await add_org(ofd)
    point = await add_point(ofd, org)
    other_point = await add_point(ofd, org)
    system_id = await add_device(ofd, point)
    sid = str(system_id)
    token = int((await ofd.ok("kkm", "reset-token", sid, "--yes"))["token"])
    till = Till(secured.tcp.port, version, system_id, token)

    assert (await till.send(Command.TICKET))[0] == ResultCode.UNKNOWN_ID  # awaiting registration
    assert (await ofd.ok("kkm", "activate", sid))["status"] == "registered"
    assert (await till.send(Command.TICKET))[0] == ResultCode.OK

    blocked = await ofd.ok("kkm", "block", sid, "--message", BLOCK_MESSAGE)
    assert blocked["blocked"] is True
    assert await till.send(Command.TICKET) == (ResultCode.BLOCKED, BLOCK_MESSAGE)
    assert await till.send(Command.SYSTEM) == (ResultCode.BLOCKED, BLOCK_MESSAGE)
    await ofd.ok("kkm", "unblock", sid)
    assert (await till.send(Command.SYSTEM))[0] == ResultCode.OK
    assert (await till.send(Command.TICKET))[0] == ResultCode.OK

    await ofd.ok("kkm", "subscription", sid, "off")
    code, _ = await till.send(Command.TICKET)
    assert code == (ResultCode.DISCONNECTED if version == 204 else ResultCode.BLOCKED)
    await ofd.ok("kkm", "subscription", sid, "on")
    assert (await till.send(Command.TICKET))[0] == ResultCode.OK

    # Awaiting deregistration it is still registered at KGD: it may drain its backlog.
    await ofd.ok("kkm", "deregister-request", sid)
    assert (await till.send(Command.TICKET))[0] == ResultCode.OK
    await ofd.ok("kkm", "deregister", sid)
    gone = ResultCode.CODE_18 if version == 204 else ResultCode.UNKNOWN_ID
    assert (await till.send(Command.TICKET))[0] == gone
    assert (await till.send(Command.SYSTEM))[0] == gone

    moved = await ofd.ok("kkm", "reregister", sid, "--point", str(other_point))
    assert moved["status"] == "awaiting_registration"
    assert int(moved["trade_point_id"]) == other_point
    assert (await till.send(Command.TICKET))[0] == ResultCode.UNKNOWN_ID
    await ofd.ok("kkm", "activate", sid)
    assert (await till.send(Command.TICKET))[0] == ResultCode.OK

    system = build_system(SCHEMAS[version])
    module = system.service.software_information.module_infos.add()
    module.name, module.version = "kassa", "3.1.4"
    system.service.software_information.os_family = "Android"
    assert (await till.send(Command.SYSTEM, system))[0] == ResultCode.OK

    shown = await ofd.ok("kkm", "show", sid)
    assert int(shown["documents_accepted"]) == till.document_number == 5
    assert shown["protocol_version"] == version
    assert shown["software"] == "kassa 3.1.4; os Android"
    assert shown["last_contact"].endswith("Z")

    # The audit log says who did what, newest first; a token never appears in it.
    audit = (await ofd.ok("kkm", "audit", sid))["entries"]
    actions = [entry["action"] for entry in reversed(audit)]
    assert actions == [
        "AddDevice", "IssueToken", "ActivateDevice", "BlockDevice", "UnblockDevice",
        "SetSubscription", "SetSubscription", "RequestDeregistration", "Deregister",
        "Reregister", "ActivateDevice",
    ]  # fmt: skip
    assert {entry["actor"] for entry in audit} == {"bootstrap"}
    assert all(entry["at"].endswith("Z") for entry in audit)
    assert str(token) not in json.dumps(audit)


async def test_lifecycle_refuses_moves_it_does_not_have(ofd: Ofd) -> None:
    system_id = str(await add_device(ofd, await add_point(ofd, await add_org(ofd))))
    refused = await ofd("kkm", "deregister", system_id)
    assert refused.code == 1
    assert "failed_precondition" in refused.err
    await ofd.ok("kkm", "activate", system_id)
    assert "failed_precondition" in (await ofd("kkm", "activate", system_id)).err
    assert "failed_precondition" in (await ofd("kkm", "deregister-cancel", system_id)).err
    await ofd.ok("kkm", "deregister-request", system_id)
    back = await ofd.ok("kkm", "deregister-cancel", system_id)
    assert back["status"] == "registered"
    blank = await ofd("kkm", "block", system_id, "--message", " ")
    assert "invalid_argument" in blank.err
    assert "not_found" in (await ofd("kkm", "show", "4000000000")).err


async def test_devices_by_organization_point_and_status(ofd: Ofd) -> None:
    org_a, org_b = await add_org(ofd), await add_org(ofd)
    point_a1, point_a2, point_b = (
        await add_point(ofd, org_a),
        await add_point(ofd, org_a),
        await add_point(ofd, org_b),
    )
    a1 = await add_device(ofd, point_a1)
    a2 = await add_device(ofd, point_a2)
    b = await add_device(ofd, point_b)
    await ofd.ok("kkm", "activate", str(a2))

    def ids(answer: Any) -> list[int]:
        return [int(d["system_id"]) for d in answer.get("devices", [])]

    assert ids(await ofd.ok("kkm", "list", "--org", str(org_a))) == [a1, a2]
    assert ids(await ofd.ok("kkm", "list", "--point", str(point_b))) == [b]
    registered = await ofd.ok("kkm", "list", "--org", str(org_a), "--status", "registered")
    assert ids(registered) == [a2]
    assert ids(await ofd.ok("kkm", "list", "--org", str(org_a), "--limit", "1")) == [a1]
    assert ids(await ofd.ok("kkm", "list", "--org", str(org_a), "--after", str(a1))) == [a2]


async def test_organizations_and_points_are_listed_and_changed_in_scope(
    secured: RunningGateway, ofd: Ofd
) -> None:
    iin = f"{secrets.randbelow(10**12):012d}"
    org_a = int((await ofd.ok("org", "add", "--iin", iin, "--title", "ТОО Бірінші"))["id"])
    org_b = await add_org(ofd)
    point_a, point_b = await add_point(ofd, org_a), await add_point(ofd, org_b)
    system_id = await add_device(ofd, point_a)
    token = int((await ofd.ok("kkm", "reset-token", str(system_id), "--yes"))["token"])
    await ofd.ok("kkm", "activate", str(system_id))
    till = Till(secured.tcp.port, 204, system_id, token)
    assert (await till.send(Command.TICKET))[0] == ResultCode.OK  # the state is cached now

    def ids(answer: Any, key: str) -> list[int]:
        return [int(item["id"]) for item in answer.get(key, [])]

    assert ids(await ofd.ok("org", "list", "--iin", iin), "organizations") == [org_a]
    everyone = await ofd.ok("org", "list", "--after", str(org_a - 1), "--limit", "2")
    assert ids(everyone, "organizations") == [org_a, org_b]
    assert ids(await ofd.ok("point", "list", "--org", str(org_a)), "trade_points") == [point_a]

    org_key = (await ofd.ok("key", "add", "--name", "shop-a", "--role", "organization",
                            "--org", str(org_a)))["key"]  # fmt: skip
    assert ids(await ofd.ok("org", "list", key=org_key), "organizations") == [org_a]
    assert ids(await ofd.ok("point", "list", key=org_key), "trade_points") == [point_a]
    renamed = await ofd.ok(
        "org", "update", "--id", str(org_a), "--title", "ТОО Жаңа", "--address", "Алматы, Абай 10",
        "--head", "Айгүл Сейітова", key=org_key,
    )  # fmt: skip
    assert (renamed["title"], renamed["iin"]) == ("ТОО Жаңа", iin)
    assert renamed["head"] == "Айгүл Сейітова"
    # The device is told its organization's new facts at once, whatever the gateway cached.
    till.request_number += 1
    system = encode(204, system_id, till.token, till.request_number,
                    body(build_system(SCHEMAS[204])))  # fmt: skip
    answer = await ask(secured.tcp.port, system)
    assert answer.code == ResultCode.OK
    assert answer.response.service.reg_info.org.title == "ТОО Жаңа"
    assert answer.response.service.reg_info.org.address == "Алматы, Абай 10"
    till.token = answer.header.token

    for argv in (
        ("org", "update", "--id", str(org_b), "--title", "x"),
        ("point", "list", "--org", str(org_b)),
        ("org", "add", "--iin", "123456789012", "--title", "x"),
    ):
        refused = await ofd(*argv, key=org_key)
        assert "permission_denied" in refused.err, (argv, refused.err)
    audit = (await ofd.ok("kkm", "audit", "--limit", "20"))["entries"]
    assert ("UpdateOrganization", "shop-a") in {(e["action"], e["actor"]) for e in audit}
    assert "not_found" in (await ofd("org", "update", "--id", "999999999", "--title", "x")).err
    # Nothing about point_b leaked into the organization's view.
    assert point_b not in ids(await ofd.ok("point", "list", key=org_key), "trade_points")


async def test_a_key_narrowed_to_trade_points_reaches_only_those(ofd: Ofd) -> None:
    """A shop manager's key: its organization's key, limited to some of its trade points."""
    org, other_org = await add_org(ofd), await add_org(ofd)
    mine, sibling = await add_point(ofd, org), await add_point(ofd, org)
    foreign = await add_point(ofd, other_org)
    device, sibling_device = await add_device(ofd, mine), await add_device(ofd, sibling)
    refused_spec = await ofd("key", "add", "--name", "x", "--role", "organization", "--org",
                             str(org), "--point", str(foreign))  # fmt: skip
    assert "invalid_argument" in refused_spec.err  # another organization's point
    manager = (await ofd.ok("key", "add", "--name", "manager-1", "--role", "organization",
                            "--org", str(org), "--point", str(mine)))["key"]  # fmt: skip
    me = await ofd.ok("whoami", key=manager)
    assert [int(p) for p in me["trade_point_ids"]] == [mine]

    await ofd.ok("kkm", "show", str(device), key=manager)
    await ofd.ok("kkm", "reset-token", str(device), "--yes", key=manager)
    listed = await ofd.ok("kkm", "list", key=manager)
    assert [int(d["system_id"]) for d in listed["devices"]] == [device]
    points = await ofd.ok("point", "list", key=manager)
    assert [int(p["id"]) for p in points["trade_points"]] == [mine]
    await ofd.ok("point", "update", "--id", str(mine), "--title", "Дүкен 1", "--lat", "43238949",
                 "--lon", "76889709", key=manager)  # fmt: skip
    for argv in (
        ("kkm", "show", str(sibling_device)),
        ("kkm", "reset-token", str(sibling_device), "--yes"),
        ("kkm", "list", "--point", str(sibling)),
        ("point", "update", "--id", str(sibling), "--title", "x"),
        ("point", "add", "--org", str(org), "--title", "x"),  # organization-wide acts
        ("org", "update", "--id", str(org), "--title", "x"),
        ("kkm", "add", "--point", str(sibling), "--kgd", "1", "--serial", "S", "--model", "M",
         "--year", "2025"),
    ):  # fmt: skip
        refused = await ofd(*argv, key=manager)
        assert "permission_denied" in refused.err, (argv, refused.err)
    # Its device moved to the sibling point by the operator leaves the manager's reach.
    for step in ("activate", "deregister-request", "deregister"):
        await ofd.ok("kkm", step, str(device))
    await ofd.ok("kkm", "reregister", str(device), "--point", str(sibling))
    assert "permission_denied" in (await ofd("kkm", "show", str(device), key=manager)).err


async def test_coordinates_change_at_most_once_a_day(ofd: Ofd) -> None:
    point = str(await add_point(ofd, await add_org(ofd)))
    base = ("point", "update", "--id", point, "--title", "Дүкен 2")
    renamed = await ofd.ok(*base, "--lat", "43238949", "--lon", "76889709")
    assert renamed["title"] == "Дүкен 2"
    moved = await ofd.ok(*base, "--lat", "43240000", "--lon", "76889709")
    assert moved["latitude"] == 43240000
    again = await ofd(*base, "--lat", "43250000", "--lon", "76889709")
    assert again.code == 1
    assert "failed_precondition" in again.err
    assert "once a day" in again.err
    # The same coordinates with another title is no move.
    await ofd.ok("point", "update", "--id", point, "--title", "Дүкен 3", "--lat", "43240000",
                 "--lon", "76889709")  # fmt: skip


async def test_callers_are_held_to_their_scope(ofd: Ofd) -> None:
    org_a, org_b = await add_org(ofd), await add_org(ofd)
    point_a, point_b = await add_point(ofd, org_a), await add_point(ofd, org_b)
    device_a, device_b = await add_device(ofd, point_a), await add_device(ofd, point_b)
    device_c = await add_device(ofd, point_b)

    # No key, a wrong key: unauthenticated.
    assert "unauthenticated" in (await ofd("kkm", "show", str(device_a), key="")).err
    assert "unauthenticated" in (await ofd("kkm", "show", str(device_a), key="ofd_nope")).err

    org_key = (await ofd.ok("key", "add", "--name", "shop-a", "--role", "organization",
                            "--org", str(org_a)))["key"]  # fmt: skip
    me = await ofd.ok("whoami", key=org_key)
    assert (me["name"], me["role"]) == ("shop-a", "organization")
    # Its own trade points and devices...
    assert (await ofd.ok("kkm", "show", str(device_a), key=org_key))["device"]["system_id"]
    issued = await ofd.ok("kkm", "reset-token", str(device_a), "--yes", key=org_key)
    got = await ofd.ok("kkm", "get-token", str(device_a), key=org_key)
    assert got["token"] == issued["token"]
    shown = await ofd.ok("kkm", "show", str(device_a), key=org_key)
    assert shown["token"] is None  # only operators see it without an audited GetToken
    audit = (await ofd.ok("kkm", "audit", str(device_a), key=org_key))["entries"]
    assert [(e["action"], e["actor"]) for e in audit[:2]] == [
        ("GetToken", "shop-a"),
        ("IssueToken", "shop-a"),
    ]
    own_point = await add_point(ofd, org_a, key=org_key)
    await add_device(ofd, own_point, key=org_key)
    listed = await ofd.ok("kkm", "list", key=org_key)
    assert {int(d["system_id"]) for d in listed["devices"]} >= {device_a}
    assert device_b not in {int(d["system_id"]) for d in listed["devices"]}
    # ...and nothing else.
    for argv in (
        ("kkm", "show", str(device_b)),
        ("kkm", "reset-token", str(device_b), "--yes"),
        ("kkm", "get-token", str(device_b)),
        ("kkm", "deregister-request", str(device_b)),
        # Scope before state: refused as out of reach, not as "device ... is awaiting_registration"
        # (which told one organization another's device status).
        ("kkm", "deregister-cancel", str(device_b)),
        ("kkm", "list", "--org", str(org_b)),
        ("point", "add", "--org", str(org_b), "--title", "x"),
        ("kkm", "block", str(device_a), "--message", "no"),  # the OFD's act, not the shop's
        ("kkm", "activate", str(device_a)),  # KGD's confirmation comes through the OFD
        ("kkm", "audit",),
        ("org", "add", "--iin", "123456789012", "--title", "x"),
        ("key", "add", "--name", "x", "--role", "operator"),
        ("kkm", "add", "--point", str(own_point), "--kgd", "123456789012", "--serial", "S",
         "--model", "M", "--year", "2025", "--system-id", "4000000000"),
    ):  # fmt: skip
        refused = await ofd(*argv, key=org_key)
        assert refused.code == 1, argv
        assert "permission_denied" in refused.err, (argv, refused.err)
        assert "awaiting" not in refused.err, (argv, refused.err)

    centre_key = (await ofd.ok(
        "key", "add", "--name", "centre-1", "--role", "service_centre", "--device",
        str(device_b), "--module", "show", "--module", "block",
    ))["key"]  # fmt: skip
    await ofd.ok("kkm", "show", str(device_b), key=centre_key)
    await ofd.ok("kkm", "block", str(device_b), "--message", "Сервис: ремонт", key=centre_key)
    await ofd.ok("kkm", "unblock", str(device_b), key=centre_key)
    listed = await ofd.ok("kkm", "list", key=centre_key)
    assert [int(d["system_id"]) for d in listed["devices"]] == [device_b]
    for argv in (
        ("kkm", "show", str(device_c)),  # a device not granted
        ("kkm", "reset-token", str(device_b), "--yes"),  # a module not granted
        ("kkm", "subscription", str(device_b), "off"),
        ("point", "add", "--org", str(org_b), "--title", "x"),
    ):
        refused = await ofd(*argv, key=centre_key)
        assert "permission_denied" in refused.err, (argv, refused.err)

    # The audit log names the key that acted.
    audit = (await ofd.ok("kkm", "audit", str(device_b)))["entries"]
    assert [e["actor"] for e in audit[:2]] == ["centre-1", "centre-1"]

    # A revoked key stops working at once; only operators revoke.
    centre_id = (await ofd.ok("whoami", key=centre_key))["name"]
    assert centre_id == "centre-1"
    keys = (await ofd.ok("kkm", "audit", "--limit", "50"))["entries"]
    [created] = [e["detail"] for e in keys if e["action"] == "CreateApiKey"
                 and e["detail"]["name"] == "centre-1"]  # fmt: skip
    assert "permission_denied" in (await ofd("key", "revoke", str(created["id"]), key=org_key)).err
    await ofd.ok("key", "revoke", str(created["id"]))
    assert "unauthenticated" in (await ofd("kkm", "show", str(device_b), key=centre_key)).err
    assert "not_found" in (await ofd("key", "revoke", str(created["id"]))).err


async def test_the_cli_reads_the_bootstrap_key_file(
    secured: RunningGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --key the CLI presents DATA_DIR/operator.key, written by the gateway at start."""
    argv = ["--control", f"127.0.0.1:{secured.control_port}", "--key-file"]
    code = await asyncio.to_thread(main, [*argv, str(tmp_path / "operator.key"), "whoami"])
    out, _ = capsys.readouterr()
    assert code == 0
    assert "bootstrap" in out
    assert (tmp_path / "operator.key").stat().st_mode & 0o077 == 0  # the owner's only
    code = await asyncio.to_thread(main, [*argv, str(tmp_path / "missing.key"), "whoami"])
    assert code == 1
    assert "unauthenticated" in capsys.readouterr().err


async def test_key_guessing_is_refused_past_the_budget_and_counted(
    tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Failed keys from one address are logged and counted; past the budget that address is
    refused before any key is looked at, for the rest of the window."""
    settings = dataclasses.replace(
        gateway_settings(tmp_path, database_url, control_auth=True),
        control_auth_failures=FailureBudget(failures=3, window_seconds=60),
    )
    async with running_gateway(settings) as running:
        key = read_key_file(tmp_path)
        assert key is not None
        ofd = Ofd(f"127.0.0.1:{running.control_port}", key, capsys)
        await ofd.ok("whoami")
        for _ in range(3):
            assert "unauthenticated" in (await ofd("whoami", key=f"ofd_{secrets.token_hex(8)}")).err
        refused = await ofd("whoami")  # even the right key, from this address, this minute
        assert "resource_exhausted" in refused.err
        scraped = generate_latest(running.metrics.registry).decode()
        assert 'ofd_limited_failures_total{limit="control_key"} 3.0' in scraped
        assert 'ofd_limited_refusals_total{limit="control_key"} 1.0' in scraped
