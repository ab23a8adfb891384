"""Alternating A/B timing, machine description and Markdown rendering."""

from __future__ import annotations

import gc
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


@dataclass
class Config:
    """How hard to measure: ``quick`` is the smoke-test size."""

    quick: bool = False
    rounds: int = 15

    def pick(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    @property
    def warmup(self) -> int:
        return 0 if self.quick else 1


@dataclass
class Row:
    """One line of a result table: a variant compared with the baseline."""

    name: str
    ratio: float | None
    low: float | None = None
    high: float | None = None
    q1: float | None = None
    q3: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""
    fmt: str = "{:.3f}"
    cpu: str = ""

    def value(self) -> str:
        return "—" if self.ratio is None else self.fmt.format(self.ratio)


@dataclass
class Section:
    """One measurement: its rows plus free text (method, profile, TODO)."""

    number: str
    title: str
    method: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    todo: bool = False
    columns: tuple[str, str] = ("median ratio", "spread (min-max; IQR)")


@dataclass
class Timings:
    """Seconds per sample for every variant, gathered in alternating order."""

    samples: dict[str, list[float]]
    cpu: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])

    def ratios(self, name: str, baseline: str) -> list[float]:
        return [b / a for a, b in zip(self.samples[baseline], self.samples[name], strict=True)]

    def row(
        self, name: str, baseline: str, *, label: str | None = None, target: float | None = None, note: str = ""
    ) -> Row:
        ratios = sorted(self.ratios(name, baseline))
        median = statistics.median(ratios)
        q1, q3 = _quartiles(ratios)
        cpu = ""
        if self.cpu.get(name) and self.cpu.get(baseline):
            cpu_ratios = sorted(b / a for a, b in zip(self.cpu[baseline], self.cpu[name], strict=True) if a > 0)
            if cpu_ratios:
                c1, c3 = _quartiles(cpu_ratios)
                cpu = f"{statistics.median(cpu_ratios):.3f} (IQR {c1:.3f}-{c3:.3f})"
        return Row(
            name=label or f"{name} / {baseline}",
            ratio=median,
            low=ratios[0],
            high=ratios[-1],
            q1=q1,
            q3=q3,
            target=f"≤ {target:.2f}" if target is not None else "(reference)",
            met=None if target is None else median <= target,
            note=note,
            cpu=cpu,
        )


def _quartiles(values: Sequence[float]) -> tuple[float, float]:
    if len(values) < 4:
        return values[0], values[-1]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def alternate(variants: dict[str, Callable[[], object]], rounds: int, *, warmup: int = 1) -> Timings:
    """Time each variant once per round, rotating the order every round.

    Each sample is one call of the variant's function (make it loop inside to
    reach a measurable duration). The garbage collector runs before every
    sample so that one variant does not pay for another's garbage.
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        order = names[shift:] + names[:shift]
        if index % 2:
            order.reverse()
        for name in order:
            gc.collect()
            start_cpu = time.process_time()
            start = time.perf_counter()
            variants[name]()
            samples[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return Timings(samples, cpu)


def package_versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for name in (
        "budget-plugins",
        "langchain-core",
        "langchain",
        "langgraph",
        "langsmith",
        "pydantic",
        "genai-prices",
        "autogen-agentchat",
        "redis",
        "opentelemetry-sdk",
    ):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def machine() -> list[str]:
    """A description of this machine and environment, as Markdown bullet lines."""
    nproc = "n/a"
    if shutil.which("nproc"):
        nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip()
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = ""
    if hasattr(os, "getloadavg"):
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    versions = ", ".join(f"{k} {v}" for k, v in package_versions().items())
    return [
        f"- code: {code_state()}",
        f"- platform: {platform.platform()}",
        f"- python: {sys.version.split()[0]} ({platform.python_implementation()}, {sys.executable})",
        f"- cpu: {cpu or 'unknown'}; os.cpu_count() = {os.cpu_count()}; nproc = {nproc}",
        f"- load average at start (1/5/15 min): {load or 'n/a'}",
        f"- packages: {versions}",
    ]


def code_state() -> str:
    """The commit measured, and whether the library's working tree differs from it."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return "not a git checkout"
    changed = [line[3:] for line in git("status", "--porcelain", "--", "budget_plugins", "integrations").splitlines()]
    if not changed:
        return f"git {head}, library working tree clean"
    shown = ", ".join(f"`{name}`" for name in changed[:8]) + (" ..." if len(changed) > 8 else "")
    return f"git {head} plus uncommitted library changes in {len(changed)} file(s) at run time: {shown}"


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def render(sections: Sequence[Section], config: Config, elapsed: float) -> str:
    """The whole RESULTS.md text."""
    lines = [
        "# Benchmark results",
        "",
        "Generated by `python -m benchmarks"
        + (" --quick" if config.quick else "")
        + f"` (README: `python3 scripts/dev.py bench`) in {elapsed:.0f} s,"
        + f" {config.rounds} alternating rounds per measurement.",
        "",
        "Every ratio is *variant / baseline* measured in the same process, the variants interleaved",
        "round by round (A B, B A, ...); the table shows the median of the per-round ratios and their",
        "spread (min-max and the interquartile range). This machine is shared and noisy: read the",
        "spread before reading the third digit. Targets are judged on the wall-time median; the",
        "*CPU ratio* column is the same comparison in this process's CPU time (all its threads), which",
        "other tenants of the machine disturb much less. No test asserts any of these numbers.",
        "",
        "## Machine",
        "",
        *machine(),
        "",
        "## Summary",
        "",
        "| # | measurement | variant | median | target | met |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for section in sections:
        if section.todo:
            lines.append(f"| {section.number} | {section.title} | — | — | — | TODO: not measured yet |")
            continue
        for row in section.rows:
            if row.met is None and not row.target.startswith("≤") and not row.target.startswith("<"):
                continue
            met = "—" if row.met is None else ("yes" if row.met else "**no**")
            lines.append(f"| {section.number} | {section.title} | {row.name} | {row.value()} | {row.target} | {met} |")
    for section in sections:
        lines += ["", f"## {section.number}. {section.title}", ""]
        if section.todo:
            lines.append("**TODO — not measured yet.**")
            lines.append("")
        lines.append(section.method)
        if section.rows:
            first, second = section.columns
            lines += [
                "",
                f"| variant | {first} | {second} | CPU ratio | target | met | note |",
                "| --- | --- | --- | --- | --- | --- | --- |",
            ]
            for row in section.rows:
                met = "—" if row.met is None else ("yes" if row.met else "**no**")
                if row.low is None:
                    spread = "—"
                elif row.q1 is None:
                    spread = f"{_fmt(row.low)}-{_fmt(row.high)}"
                else:
                    spread = f"{_fmt(row.low)}-{_fmt(row.high)}; IQR {_fmt(row.q1)}-{_fmt(row.q3)}"
                lines.append(
                    f"| {row.name} | {row.value()} | {spread} | {row.cpu or '—'} | {row.target} | {met} | {row.note} |"
                )
        if section.notes:
            lines.append("")
            lines += section.notes
    analysis = Path(__file__).with_name("ANALYSIS.md")
    if analysis.exists() and not config.quick:
        lines += ["", analysis.read_text(encoding="utf-8").rstrip()]
    lines.append("")
    return "\n".join(lines)


def profile(fn: Callable[[], object], *, focus: str = "budget_plugins", limit: int = 12) -> list[str]:
    """cProfile ``fn`` once; the top functions by cumulative time under ``focus``, as Markdown."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    fn()
    profiler.disable()
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream)
    total = stats.total_tt  # type: ignore[attr-defined]
    entries = []
    for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if focus in filename or focus in func:
            short = filename.split("site-packages/")[-1].split("/work/main/")[-1]
            if cumtime < total / 2:  # wrappers around the whole run say nothing about the hot path
                entries.append((cumtime, tottime, ncalls, f"{short}:{line}({func})"))
    entries.sort(reverse=True)
    lines = [
        f"cProfile of one guarded run (total {total * 1000:.0f} ms under the profiler), top `{focus}` functions"
        " (wrappers that span more than half of the run left out):",
        "",
        "| cumulative ms | share of run | own ms | calls | function |",
        "| --- | --- | --- | --- | --- |",
    ]
    for cumtime, tottime, ncalls, where in entries[:limit]:
        lines.append(f"| {cumtime * 1000:.1f} | {cumtime / total:.0%} | {tottime * 1000:.1f} | {ncalls} | `{where}` |")
    return lines
