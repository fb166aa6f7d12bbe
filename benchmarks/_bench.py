"""Helpers shared by the benchmark scripts: machine load, a neighbour-CPU meter, markdown tables."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import resource
import time
from pathlib import Path


def _cpuinfo(key: str) -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="ignore").splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    return ""


def load_avg() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


class OtherCpu:
    """Average cores kept busy by *other* processes over a window: /proc/stat busy time minus this process's CPU time.

    The load average cannot tell a busy neighbour from the benchmark itself; this can. 0.0 = the machine was ours.
    """

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        try:
            v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
            busy = (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK")  # user nice system irq softirq
        except (OSError, ValueError, IndexError):
            busy = float("nan")
        own = resource.getrusage(resource.RUSAGE_SELF)
        return time.perf_counter(), busy, own.ru_utime + own.ru_stime

    def cores(self) -> float:
        wall, busy, own = (b - a for a, b in zip(self.start, self._sample()))
        return max(0.0, (busy - own) / wall) if wall > 0 else float("nan")


def other_cpu_now(seconds: float = 1.0) -> float:
    """Cores other processes use right now, sampled over `seconds` while this one sleeps."""
    meter = OtherCpu()
    time.sleep(seconds)
    return meter.cores()


def print_table(headers: list[str], rows: list[list[object]]) -> None:
    """A markdown table, numbers right-aligned, so docs/benchmarks.md can paste the output as is."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(r[i][:1].isdigit() or r[i] in ("-", "") for r in cells[1:]) for i in range(len(headers))]
    for k, r in enumerate(cells):
        print("| " + " | ".join(c.rjust(w) if numeric[i] and k else c.ljust(w)
                                for i, (c, w) in enumerate(zip(r, widths))) + " |")
        if k == 0:
            print("|" + "|".join("-" * (w + 1) + (":" if numeric[i] else "-") for i, w in enumerate(widths)) + "|")


def print_machine_header(title: str, software: str) -> None:
    """Title, date, machine, software line, and how busy the machine is right now."""
    print(f"# {title}")
    print(f"date      {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine   {_cpuinfo('model name') or platform.processor()}, {os.cpu_count()} cores")
    print(f"software  {software}")
    other = other_cpu_now()
    print(f"load avg  {load_avg()} (1/5/15 min); other processes use {other:.2f} cores now"
          + (" -- the machine is busy, expect slow and noisy numbers" if other > 0.2 else ""))
