"""`ofd kkm get-token`, `reset-token` and `send` against a real gateway: the token a person types
into the register, and documents sent as that register, over TCP and gRPC."""

import builtins
import json
import re
import sys
from pathlib import Path

import pytest
from test_control_lifecycle import Ofd, ofd, secured  # noqa: F401  (fixtures)

from ingest.app import RunningGateway

DEVICE = "100001"
NEXT_TOKEN = re.compile(r"^NEXT TOKEN: (\d+)  \(the device must present this one", re.M)


async def registered(ofd: Ofd) -> int:  # noqa: F811
    """A registered device 100001; its first token (issued when it was added)."""
    await ofd.ok("org", "add", "--iin", "180540012345", "--title", "ТОО Дүкен")
    await ofd.ok("point", "add", "--org", "1", "--title", "Дүкен №1")
    await ofd.ok("kkm", "add", "--point", "1", "--kgd", "640300014538", "--serial", "SN-1",
                 "--model", "KKM-1", "--year", "2025")  # fmt: skip
    await ofd.ok("kkm", "activate", DEVICE)
    return int((await ofd.ok("kkm", "get-token", DEVICE))["token"])


async def current(ofd: Ofd) -> int:  # noqa: F811
    return int((await ofd.ok("kkm", "get-token", DEVICE))["token"])


async def test_get_token_shows_and_audits_reset_token_asks(
    ofd: Ofd,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = await registered(ofd)
    assert await current(ofd) == first  # showing changes nothing
    code, out, _ = await ofd.text("kkm", "get-token", DEVICE)
    assert (code, out) == (0, f"system_id  {DEVICE}\ntoken      {first}\n")
    audit = (await ofd.ok("kkm", "audit", DEVICE))["entries"]
    assert [e["action"] for e in audit][:3] == ["GetToken", "GetToken", "GetToken"]

    refused = await ofd("kkm", "reset-token", DEVICE)  # stdin is not a terminal here
    assert refused.code == 2
    assert "pass --yes to confirm" in refused.err
    assert await current(ofd) == first

    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr(builtins, "input", lambda _: "n")
    assert (await ofd("kkm", "reset-token", DEVICE)).err == "error: no new token issued\n"
    monkeypatch.setattr(builtins, "input", lambda _: "y")
    second = int((await ofd.ok("kkm", "reset-token", DEVICE))["token"])
    assert second != first
    assert await current(ofd) == second

    old_name = await ofd("kkm", "token", DEVICE, "--yes")
    assert old_name.code == 0
    assert "`ofd kkm token` is deprecated: it issues a NEW token" in old_name.err
    assert await current(ofd) == int(old_name.out["token"]) != second


async def test_send_over_tcp_and_grpc(
    secured: RunningGateway,  # noqa: F811
    ofd: Ofd,  # noqa: F811
    tmp_path: Path,
) -> None:
    token = await registered(ofd)
    tcp = f"127.0.0.1:{secured.tcp.port}"
    grpc = f"127.0.0.1:{secured.grpc_port}"

    code, out, err = await ofd.text("kkm", "send", "--id", DEVICE, "--token", str(token),
                                    "--gateway", tcp)  # fmt: skip
    assert code == 0, err
    assert re.search(r"^TICKET \(request \d+\): OK \(0\)$", out, re.M)
    sign = re.search(r"^  fiscal sign  (\d+)$", out, re.M)
    assert sign
    qr = rf"^  QR URL       http://\S+/check\?i={sign[1]}&f=640300014538&s=500\.00"
    assert re.search(qr, out, re.M)
    found = NEXT_TOKEN.search(out)
    assert found
    token = int(found[1])
    assert token == await current(ofd)  # the printed token is the one the OFD now expects

    code, out, err = await ofd.text("kkm", "send", "--id", DEVICE, "--token", str(token),
                                    "--grpc", grpc, "--protocol", "203", "--json")  # fmt: skip
    assert code == 0, err
    info, receipt = (json.loads(line) for line in out.splitlines())
    assert (info["command"], info["result_name"]) == ("INFO", "OK")
    assert (receipt["command"], receipt["result"]) == ("TICKET", 0)
    assert receipt["token"] == await current(ofd) != token
    token = receipt["token"]

    code, out, err = await ofd.text("kkm", "send", "--id", DEVICE, "--token", str(token),
                                    "--gateway", tcp, "--x-report")  # fmt: skip
    assert code == 0, err
    assert "REPORT (request" in out
    assert out.endswith(f"token unchanged: {token}\n")

    code, out, err = await ofd.text("kkm", "send", "--id", DEVICE, "--token", str(token),
                                    "--gateway", tcp, "--offline", "2", "--json")  # fmt: skip
    assert code == 0, err
    answers = [json.loads(line) for line in out.splitlines()]
    assert [a["command"] for a in answers] == ["INFO", "TICKET", "TICKET", "SYSTEM"]
    assert all(a["result"] == 0 for a in answers)
    token = answers[-1]["token"]

    code, out, err = await ofd.text("kkm", "send", "--id", DEVICE, "--token", str(token),
                                    "--grpc", grpc, "--shift-close")  # fmt: skip
    assert code == 0, err
    assert "CLOSE_SHIFT (request" in out
    assert NEXT_TOKEN.search(out)

    stale = await ofd.text("kkm", "send", "--id", DEVICE, "--token", str(token), "--gateway", tcp)
    assert stale[0] == 1
    assert stale[2] == (
        "error: the gateway refused INFO: INVALID_TOKEN (2): token is not the last one issued"
        f" (the current token: ofd kkm get-token {DEVICE})\n"
    )

    # The journal holds them, decoded: four receipts and the shift's close.
    code, out, err = await ofd.text("journal", "show", "--data-dir", str(tmp_path), "--device",
                                    DEVICE, "--decode")  # fmt: skip
    assert code == 0, err
    documents = [json.loads(line) for line in out.splitlines()]
    assert [d["command"] for d in documents] == ["TICKET"] * 4 + ["CLOSE_SHIFT"]
    assert documents[0]["fiscal_sign"] == sign[1]
    assert [d["offline"] for d in documents] == [False, False, True, True, False]
    assert documents[0]["request"]["ticket"]["amounts"]["total"]["bills"] == 500
    assert documents[0]["response"]["result"]["result_code"] == 0
