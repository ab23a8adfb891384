"""Measurement 7: cold-start import time and which optional packages an import pulls in."""

from __future__ import annotations

import json
import subprocess
import sys

from benchmarks._harness import Config, Row, Section, alternate

OPTIONAL = ("langgraph", "langchain", "autogen_agentchat", "autogen_core", "redis", "opentelemetry")


def imported_optional(statement: str) -> list[str]:
    """The optional top-level packages present in ``sys.modules`` after ``statement`` in a fresh interpreter."""
    code = f"{statement}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(json.loads(out.strip().splitlines()[-1]))
    return [name for name in OPTIONAL if name in loaded]


def _importtime_by_package(module: str, limit: int = 10) -> list[str]:
    """``-X importtime`` self times summed per top-level package, largest first, as Markdown rows."""
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"], capture_output=True, text=True, check=True
    ).stderr
    totals: dict[str, int] = {}
    for line in err.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, _, name = line.removeprefix("import time:").split("|", 2)
        package = name.strip().split(".")[0]
        totals[package] = totals.get(package, 0) + int(own)
    everything = sum(totals.values())
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:limit]
    return [f"| `{name}` | {own / 1000:.0f} | {own / everything:.0%} |" for name, own in ranked]


def cold_start(config: Config) -> Section:
    def spawn(statement: str) -> None:
        subprocess.run([sys.executable, "-c", statement], check=True)

    variants = {
        "python -c pass": lambda: spawn("pass"),
        "import langchain_core": lambda: spawn("import langchain_core"),
        "import langchain_core.callbacks, langchain_core.tracers.context": lambda: spawn(
            "import langchain_core.callbacks, langchain_core.tracers.context"
        ),
        "import budget_plugins": lambda: spawn("import budget_plugins"),
    }
    if config.quick:
        del variants["import langchain_core.callbacks, langchain_core.tracers.context"]
    timings = alternate(variants, 1 if config.quick else config.rounds, warmup=0 if config.quick else 1)
    base = "import langchain_core"
    rows = []
    for name in list(variants)[2:]:
        rows.append(timings.row(name, base, label=f"`{name}` / `{base}`", note=f"{timings.median(name) * 1000:.0f} ms"))
    ours = imported_optional("import budget_plugins")
    baseline = (
        [] if config.quick else imported_optional("import langchain_core.callbacks, langchain_core.tracers.context")
    )
    section = Section(
        "7",
        "Cold start",
        "Wall time of a fresh `python -c ...` process, the variants alternated; baseline `import langchain_core`"
        f" ({timings.median(base) * 1000:.0f} ms; an empty interpreter: {timings.median('python -c pass') * 1000:.0f}"
        " ms). The middle variant imports exactly the two LangChain modules `budget_plugins._langchain` needs"
        " at import time. Target: `import budget_plugins` must not import langgraph, autogen or redis (asserted"
        " in `tests/test_benchmarks_smoke.py`).",
    )
    for row in rows:
        row.cpu = "n/a (child processes)"
    hygiene = not any(name in ours for name in ("langgraph", "autogen_agentchat", "autogen_core", "redis"))
    rows.append(
        Row(
            "`import budget_plugins` loads no langgraph/autogen/redis",
            None,
            target="none loaded",
            met=hygiene,
            note=f"optional packages loaded: {', '.join(ours) or 'none'}",
        )
    )
    section.rows = rows
    section.notes += [
        f"Optional packages in `sys.modules` after `import budget_plugins`: {', '.join(ours) or 'none'}"
        f" — langgraph/autogen/redis-free: **{'yes' if hygiene else 'NO'}**.",
        f"The same after importing only LangChain's callbacks + tracer context: {', '.join(baseline) or 'none'}"
        + (" (not checked in --quick)." if config.quick else "."),
        "",
    ]
    if "opentelemetry" in ours:
        section.notes += [
            "`opentelemetry` is loaded, but not by budget_plugins' own code: `budget_plugins._degrade` imports"
            " `langchain_core.language_models` and `budget_plugins._langchain` imports"
            " `langchain_core.tracers.context`; both import `langsmith`, whose `client.py` imports"
            " `opentelemetry.sdk.trace` whenever it is installed (it is, through the `otel` extra).",
            "",
        ]
    if not config.quick:
        section.notes += [
            "`python -X importtime -c 'import budget_plugins'`: import self time summed per top-level package:",
            "",
            "| package | self ms | share |",
            "| --- | --- | --- |",
            *_importtime_by_package("budget_plugins"),
        ]
    return section
