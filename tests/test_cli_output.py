"""What the list commands print, against a real gateway: snapshots of the tables and the JSON.

A fresh database per test makes ids predictable (organization 1, device 100001); times are the
one thing that varies, and are replaced by <time> after checking they are ISO 8601 in UTC.
"""

import json
import re
from typing import Any

from test_control_lifecycle import Ofd, ofd, secured  # noqa: F401  (fixtures)

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z")
IIN = "180540012345"


def masked(text: str, *, keep_width: bool = True) -> str:
    """Times replaced by a placeholder, as wide in a table (its columns stay as printed)."""
    return ISO_UTC.sub(lambda found: "<time>".ljust(len(found[0]) if keep_width else 0), text)


async def table(ofd: Ofd, *argv: str) -> str:  # noqa: F811
    code, out, err = await ofd.text(*argv)
    assert code == 0, err
    return "".join(line.rstrip() + "\n" for line in masked(out).splitlines())


async def as_json(ofd: Ofd, *argv: str) -> Any:  # noqa: F811
    code, out, err = await ofd.text(*argv, "--json")
    assert code == 0, err
    return json.loads(masked(out, keep_width=False))


async def registry(ofd: Ofd) -> None:  # noqa: F811
    await ofd.ok("org", "add", "--iin", IIN, "--title", "ТОО Дүкен", "--address",
                 "Алматы, Абай 10", "--oked", "47111", "--head", "Айгүл Сейітова")  # fmt: skip
    await ofd.ok("point", "add", "--org", "1", "--title", "Дүкен №1", "--lat", "43238949",
                 "--lon", "76889709")  # fmt: skip
    await ofd.ok("kkm", "add", "--point", "1", "--kgd", "640300014538", "--serial", "SN-1",
                 "--model", "KKM-1", "--year", "2025")  # fmt: skip
    await ofd.ok("kkm", "activate", "100001")
    await ofd.ok("kkm", "get-token", "100001")


async def test_empty_lists_say_so(ofd: Ofd) -> None:  # noqa: F811
    assert await table(ofd, "org", "list") == "no organizations\n"
    assert await table(ofd, "point", "list") == "no trade points\n"
    assert await table(ofd, "kkm", "list") == "no devices\n"
    assert await as_json(ofd, "org", "list") == {"organizations": []}
    assert await table(ofd, "kkm", "audit", "100001") == "no audit entries\n"


async def test_organization_and_point_lists(ofd: Ofd) -> None:  # noqa: F811
    await registry(ofd)
    assert await table(ofd, "org", "list") == (
        "id  iin           title      address          oked\n"
        "--  ------------  ---------  ---------------  -----\n"
        "1   180540012345  ТОО Дүкен  Алматы, Абай 10  47111\n"
    )
    assert await as_json(ofd, "org", "list") == {
        "organizations": [
            {
                "id": 1,
                "iin": IIN,
                "title": "ТОО Дүкен",
                "address": "Алматы, Абай 10",
                "address_kz": "",
                "oked": "47111",
                "head": "Айгүл Сейітова",
            }
        ]
    }
    assert await table(ofd, "point", "list", "--org", "1") == (
        "id  organization_id  title     address  latitude   longitude\n"
        "--  ---------------  --------  -------  ---------  ---------\n"
        "1   1                Дүкен №1           43.238949  76.889709\n"
    )
    (point,) = (await as_json(ofd, "point", "list"))["trade_points"]
    assert point == {
        "id": 1,
        "organization_id": 1,
        "title": "Дүкен №1",
        "address": "",
        "address_kz": "",
        "latitude": 43238949,
        "longitude": 76889709,
    }
    assert await table(ofd, "org", "list", "--csv") == (
        'id,iin,title,address,oked\n1,180540012345,ТОО Дүкен,"Алматы, Абай 10",47111\n'
    )


async def test_device_list_show_and_audit(ofd: Ofd) -> None:  # noqa: F811
    await registry(ofd)
    assert await table(ofd, "kkm", "list") == (
        "system_id  status      blocked  subscription_active  trade_point_id"
        "  kgd_registration_number  serial_number  model  year\n"
        "---------  ----------  -------  -------------------  --------------"
        "  -----------------------  -------------  -----  ----\n"
        "100001     registered  no       yes                  1             "
        "  640300014538             SN-1           KKM-1  2025\n"
    )
    assert await as_json(ofd, "kkm", "list", "--status", "registered") == {
        "devices": [
            {
                "system_id": 100001,
                "kgd_registration_number": "640300014538",
                "serial_number": "SN-1",
                "model": "KKM-1",
                "year": 2025,
                "trade_point_id": 1,
                "status": "registered",
                "blocked": False,
                "block_message": "",
                "subscription_active": True,
            }
        ]
    }
    rule = "-" * 60  # the widest a cell is shown; --json has it whole
    assert await table(ofd, "kkm", "audit", "100001") == (
        "at                    actor      action          system_id  detail\n"
        f"--------------------  ---------  --------------  ---------  {rule}\n"
        "<time>                bootstrap  GetToken        100001     {}\n"
        "<time>                bootstrap  ActivateDevice  100001     "
        '{"point":1,"status":"registered","override":"kgd_applicatio…\n'
        '<time>                bootstrap  AddDevice       100001     {"point":1}\n'
    )
    entries = (await as_json(ofd, "kkm", "audit"))["entries"]
    assert entries[-1] == {
        "at": "<time>",
        "actor": "bootstrap",
        "action": "AddOrganization",
        "system_id": 0,
        "detail": {"id": 1},
    }
    shown = await as_json(ofd, "kkm", "show", "100001")
    assert (shown["last_command"], shown["last_request_number"], shown["last_contact"]) == (
        None,
        None,
        None,
    )  # it never sent anything
    assert shown["device"]["status"] == "registered"
    assert isinstance(shown["token"], int)


async def test_key_list(ofd: Ofd) -> None:  # noqa: F811
    await registry(ofd)
    await ofd.ok("key", "add", "--name", "manager-1", "--role", "organization", "--org", "1",
                 "--point", "1")  # fmt: skip
    await ofd.ok("key", "add", "--name", "sc1", "--role", "service_centre", "--device", "100001",
                 "--module", "show", "--module", "block")  # fmt: skip
    await ofd.ok("key", "revoke", "2")
    assert await table(ofd, "key", "list") == (
        "id  name       role            organization_id  trade_point_ids  system_ids  modules"
        "     created_at            revoked_at\n"
        "--  ---------  --------------  ---------------  ---------------  ----------  ----------"
        "  --------------------  --------------------\n"
        "1   bootstrap  operator        0                                                       "
        "  <time>                -\n"
        "2   manager-1  organization    1                1                                      "
        "  <time>                <time>\n"
        "3   sc1        service_centre  0                                 100001      block,show"
        "  <time>                -\n"
    )
    keys = (await as_json(ofd, "key", "list"))["keys"]
    assert keys[1] == {
        "id": 2,
        "name": "manager-1",
        "role": "organization",
        "organization_id": 1,
        "system_ids": [],
        "modules": [],
        "trade_point_ids": [1],
        "created_at": "<time>",
        "revoked_at": "<time>",
    }
    assert keys[2]["revoked_at"] is None
    assert keys[2]["modules"] == ["block", "show"]
    code, out, _ = await ofd.text("key", "list", "--json")
    assert code == 0
    assert "ofd_" not in out  # the keys themselves are nowhere
