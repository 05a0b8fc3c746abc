"""CPU time and peak memory of server processes, read from /proc (Linux only).

CPU is sampled at the edges of the measurement window and the difference taken, so start-up
(initdb, imports) is not charged to the requests. The embedded PostgreSQL is daemonised by
pg_ctl, not a child of the gateway: its postmaster is found by the data directory on its command
line, its backends by parent pid, and backends that exited inside the window are still counted
through the postmaster's reaped-children time (cutime, cstime).
"""

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
# Fields of /proc/<pid>/stat after the ")" that ends the command name (man 5 proc, 1-based):
# state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17).
_PPID, _UTIME, _STIME, _CUTIME, _CSTIME = 4, 14, 15, 16, 17
_AFTER_COMM = 3  # the first field after the command name is field 3
CLEAR_PEAK_RSS = "5"  # written to /proc/<pid>/clear_refs: VmHWM := VmRSS


@dataclass(frozen=True, slots=True)
class ProcTimes:
    ppid: int
    own: int  # ticks: utime + stime, every thread of the process
    children: int  # ticks: cutime + cstime, children already reaped


def read_times(pid: int) -> ProcTimes | None:
    """None when the process is gone."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()

    def field(number: int) -> int:
        return int(fields[number - _AFTER_COMM])

    return ProcTimes(field(_PPID), field(_UTIME) + field(_STIME), field(_CUTIME) + field(_CSTIME))


def peak_rss_kib(pid: int) -> int | None:
    """VmHWM: the process's peak resident set so far."""
    try:
        status = (PROC / str(pid) / "status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def reset_peak_rss(pid: int) -> None:
    """Sets VmHWM back to the current resident set, so a later read gives the peak since now
    (man 5 proc, clear_refs "5"); without the right to do it the peak stays the lifetime's."""
    with contextlib.suppress(OSError):
        (PROC / str(pid) / "clear_refs").write_text(CLEAR_PEAK_RSS)


def _pids() -> Iterable[int]:
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            yield int(entry.name)


def children_of(parents: set[int]) -> list[int]:
    kids = []
    for pid in _pids():
        times = read_times(pid)
        if times is not None and times.ppid in parents:
            kids.append(pid)
    return kids


@dataclass(frozen=True, slots=True)
class CpuSample:
    """Ticks per pid at one instant, plus the reaped-children ticks of the roots."""

    own: dict[int, int]
    reaped: int


def sample(roots: list[int], with_children: bool) -> CpuSample:
    pids = list(roots)
    if with_children:
        pids += children_of(set(roots))
    own: dict[int, int] = {}
    reaped = 0
    for pid in pids:
        times = read_times(pid)
        if times is None:
            continue
        own[pid] = times.own
        if pid in roots:
            reaped += times.children
    return CpuSample(own, reaped)


def cpu_seconds_between(before: CpuSample, after: CpuSample) -> float:
    """CPU used between two samples: processes born in between count whole; one that died is
    counted through its parent's reaped time, which holds its whole life, so the part it had
    used before the window is taken back out."""
    ticks = after.reaped - before.reaped
    for pid, used in after.own.items():
        ticks += used - before.own.get(pid, 0)
    for pid, used in before.own.items():
        if pid not in after.own:
            ticks -= used
    return ticks / TICKS_PER_SECOND
