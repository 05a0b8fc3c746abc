"""Charts drawn on the server as SVG geometry (no script, no library): the template places the
shapes, every label escaped like any other text."""

from dataclasses import dataclass

WIDTH, HEIGHT = 720, 220  # the drawing's own units; it scales with the page
LEFT, BOTTOM, TOP = 8, 28, 18  # room for the day labels below and the values above
GAP = 0.2  # of each bar's slot left empty
MAX_SLOT = 90  # a week's bars are not a month's wide


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str  # under the bar
    value: int  # above it (tiyn)


def bars(points: list[tuple[str, int]]) -> list[Bar]:
    """One bar per (label, value); negative values (a day of returns) draw as empty bars."""
    if not points:
        return []
    top = max(1, *(v for _, v in points))
    slot = min((WIDTH - LEFT) / len(points), MAX_SLOT)
    area = HEIGHT - BOTTOM - TOP
    drawn = []
    for i, (label, value) in enumerate(points):
        height = area * max(value, 0) / top
        drawn.append(
            Bar(
                x=round(LEFT + i * slot + slot * GAP / 2, 1),
                y=round(TOP + area - height, 1),
                width=round(slot * (1 - GAP), 1),
                height=round(height, 1),
                label=label,
                value=value,
            )
        )
    return drawn
