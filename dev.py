#!/usr/bin/env python3
"""Set up the environment and run the demo or the whole test suite.

    python3 dev.py demo [intentflow demo options]   # the demo on embedded defaults
    python3 dev.py test [pytest options]            # lint, types and every test

Needs only Python 3.11+ and git: creates ``.venv`` next to this file,
installs the project with its dev extras when ``pyproject.toml`` changed, then
runs the command. Safe to re-run.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
STAMP = VENV / ".intentflow-installed"


def _run(cmd: list[str], **kw: object) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, **kw)  # type: ignore[call-overload]


def setup() -> None:
    """Create the virtualenv and install the project when needed."""
    if sys.version_info < (3, 11):  # noqa: UP036 - this file runs before any install
        sys.exit(f"intentflow needs Python 3.11 or newer, this is {sys.version.split()[0]}")
    if not PY.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == want:
        return
    _run([str(PY), "-m", "pip", "install", "--quiet", "--upgrade", "pip"])
    _run([str(PY), "-m", "pip", "install", "--quiet", "-e", ".[dev]"])
    STAMP.write_text(want)


def demo(argv: list[str]) -> int:
    return subprocess.call([str(BIN / "intentflow"), "demo", *argv], cwd=ROOT)


MAPPED = ("dataflows", "features", "online_models", "sinks")


def typecheck_tree() -> Path:
    """A symlink tree that mirrors the installed layout, for mypy.

    The repository keeps ``dataflows/`` etc. at the top level while they are
    installed as ``intentflow.dataflows`` etc.; mypy cannot follow that
    mapping, so it checks this tree (rebuilt on every run) instead.
    """
    tree = VENV / "typecheck"
    pkg = tree / "intentflow"
    if tree.exists():
        for link in sorted(tree.rglob("*"), reverse=True):
            if link.is_symlink() or link.is_file():
                link.unlink()
            elif link.is_dir():
                link.rmdir()
    pkg.mkdir(parents=True)
    for item in (ROOT / "intentflow").iterdir():
        if item.name != "__pycache__":
            (pkg / item.name).symlink_to(item)
    for name in MAPPED:
        (pkg / name).symlink_to(ROOT / name)
    return tree


def test(argv: list[str]) -> int:
    tree = typecheck_tree()
    steps: list[tuple[str, list[str], dict[str, str]]] = [
        ("ruff", [str(PY), "-m", "ruff", "check", "."], {}),
        ("ruff format", [str(PY), "-m", "ruff", "format", "--check", "."], {}),
        ("mypy", [str(PY), "-m", "mypy", str(tree / "intentflow")], {}),
        (
            "pytest",
            [
                str(PY),
                "-m",
                "pytest",
                "--doctest-modules",
                "intentflow",
                "dataflows",
                "features",
                "online_models",
                "sinks",
                "tests",
                *argv,
            ],
            {},
        ),
        (
            "pytest (kernels without JIT)",
            [
                str(PY),
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "-k",
                "kernel or feature",
                "tests",
            ],
            {"NUMBA_DISABLE_JIT": "1"},
        ),
    ]
    for name, cmd, env in steps:
        print(f"\n=== {name}", flush=True)
        rc = subprocess.call(cmd, cwd=ROOT, env={**os.environ, **env})
        if rc != 0:
            print(f"\n{name} failed (exit {rc})", flush=True)
            return rc
    return 0


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in {"demo", "test", "setup"}:
        print(__doc__)
        return 2
    setup()
    cmd, rest = sys.argv[1], sys.argv[2:]
    if cmd == "setup":
        return 0
    return demo(rest) if cmd == "demo" else test(rest)


if __name__ == "__main__":
    sys.exit(main())
