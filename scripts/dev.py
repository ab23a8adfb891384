#!/usr/bin/env python3
"""The README's commands: ``python scripts/dev.py demo`` and ``python scripts/dev.py test``.

Needs only Python 3.11+ and pip. Creates (or reuses) ``.venv`` beside the
project, installs the project with every extra into it when pyproject.toml
changed, then runs the demo, the whole test suite (ruff, mypy strict, pytest
including notebooks and the Redis suite, which starts its own redis-server),
or the benchmarks.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("BUDGET_PLUGINS_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".budget-plugins-installed"


def run(*args: str | Path, **kwargs: object) -> None:
    print("+", " ".join(str(a) for a in args), flush=True)
    completed = subprocess.run([str(a) for a in args], cwd=ROOT, check=False, **kwargs)  # type: ignore[call-overload]
    if completed.returncode != 0:
        sys.exit(completed.returncode)


def ensure_env() -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"budget-plugins needs Python 3.11+, this is {sys.version.split()[0]}")
    if not PY.exists():
        print(f"creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == wanted:
        return
    run(PY, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    run(PY, "-m", "pip", "install", "--quiet", "-e", ".[all,dev]")
    STAMP.write_text(wanted)


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in {"demo", "test", "bench", "env"}:
        sys.exit("usage: python scripts/dev.py {demo|test|bench|env} [args...]")
    command, rest = argv[0], argv[1:]
    ensure_env()
    os.environ.setdefault("PYTHONUTF8", "1")
    if command == "env":
        return
    if command == "demo":
        run(PY, "-m", "budget_plugins", "demo", *rest)
    elif command == "bench":
        run(PY, "-m", "benchmarks", *rest)
    else:
        run(PY, "-m", "ruff", "check", ".")
        run(PY, "-m", "ruff", "format", "--check", ".")
        run(PY, "-m", "mypy")
        run(PY, "-m", "pytest", *(rest or ["-q"]))


if __name__ == "__main__":
    main(sys.argv[1:])
