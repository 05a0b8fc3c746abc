"""The files an archive holds for one document: a receipt, or an X/Z report beside the OFD's,
as text a person reads (Russian labels, tenge, as the pages show them) and as JSON with every
field a program reads (money in tiyn, quantities in thousandths, percents in hundredths, as the
protocol carries them)."""

import json
from dataclasses import asdict
from typing import Any

from cabinet.web import OPERATION_TITLES, PAYMENT_TITLES, percent, quantity, tenge
from ledger import registry
from ledger.warehouse.cabinet_reads import Receipt, ReportBeside
from ledger.zx_report import Value

UNITS = {"money": "tiyn", "quantity": "thousandths", "percent": "hundredths of a percent"}


def _json(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, ensure_ascii=False, indent=2) + "\n").encode()


def receipt_text(
    receipt: Receipt, device: registry.Device, point: registry.TradePoint | None, qr: str
) -> bytes:
    number = f"{receipt.printed_number}"
    if receipt.offline_number:
        number += f" (автономный № {receipt.offline_number})"
    lines = [
        f"Чек: {OPERATION_TITLES.get(receipt.operation, receipt.operation)}"
        + (f" {receipt.mark} (автономный режим)" if receipt.mark else ""),
        f"ККМ: {device.system_id} · РНМ {device.kgd_registration_number}",
    ]
    if point is not None:
        lines.append(f"Точка: {point.title} · {point.address}")
    lines += [
        f"Время: {receipt.time}",
        f"Смена: {receipt.shift_number}",
        f"Номер чека: {number}",
        "",
    ]
    for line in receipt.lines:
        lines.append(
            f"{line.name}: {quantity(line.quantity)} × {tenge(line.price)} = {tenge(line.sum)}"
        )
    lines += ["", f"Итого: {tenge(receipt.total)}"]
    for tax in receipt.taxes:
        lines.append(
            f"НДС {percent(tax.percent)}: {tenge(tax.tax)} с оборота {tenge(tax.turnover)}"
        )
    for kind, amount in receipt.payments:
        lines.append(f"{PAYMENT_TITLES.get(kind, kind)}: {tenge(amount)}")
    lines += ["", f"Фискальный признак: {receipt.fiscal_sign}", f"QR-код: {qr}"]
    return ("\n".join(lines) + "\n").encode()


def receipt_json(
    receipt: Receipt, device: registry.Device, point: registry.TradePoint | None, qr: str
) -> bytes:
    return _json(
        {
            "receipt": asdict(receipt),
            "offline_mark": receipt.mark,
            "kgd_registration_number": device.kgd_registration_number,
            "trade_point": None if point is None else asdict(point),
            "qr_url": qr,
            "units": UNITS,
        }
    )


def _shown(value: Value, money: bool) -> str:
    if value is None:
        return "—"
    return tenge(value) if money and isinstance(value, int) else str(value)


def report_text(report: ReportBeside) -> bytes:
    """The two reports in two columns, the differing rows marked with '≠'."""
    head = f"Отчёт {report.kind}, смена {report.shift_number}, {report.time}"
    if not report.device_sent:
        head += " (ККМ не прислала свой отчёт)"
    rows = [("", "Показатель", "ККМ", "ОФД")] + [
        (
            "≠" if pair.differs else "",
            pair.name,
            _shown(pair.device, pair.money),
            _shown(pair.ofd, pair.money),
        )
        for pair in report.fields
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    table = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return (head + "\n\n" + "\n".join(line.rstrip() for line in table) + "\n").encode()


def report_json(report: ReportBeside) -> bytes:
    document = asdict(report)
    document["differs"] = report.differs
    document["units"] = UNITS
    return _json(document)
