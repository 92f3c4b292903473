"""The installed package adds only `intentflow`; it never shadows `features`/`dataflows`."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path


def test_subpackages_are_inside_intentflow() -> None:
    import intentflow.dataflows
    import intentflow.features
    import intentflow.online_models
    import intentflow.sinks

    root = Path(__file__).resolve().parents[1]
    assert Path(intentflow.features.__file__).parent == root / "features"
    assert Path(intentflow.dataflows.__file__).parent == root / "dataflows"
    assert Path(intentflow.sinks.__file__).parent == root / "sinks"
    assert Path(intentflow.online_models.__file__).parent == root / "online_models"


def test_no_top_level_features_or_dataflows_outside_the_repo(tmp_path: Path) -> None:
    # From a neutral directory, the installed environment must not provide
    # `features` or `dataflows` (names that belong to other PyPI projects).
    code = (
        "import importlib.util as u, sys;"
        "print(u.find_spec('features') is None, u.find_spec('dataflows') is None,"
        " u.find_spec('intentflow.features') is not None)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["True", "True", "True"]


def test_console_script_is_declared() -> None:
    assert importlib.util.find_spec("intentflow.cli") is not None
    out = subprocess.run(
        [sys.executable, "-m", "intentflow.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    for cmd in ("demo", "run", "produce", "tail", "replay"):
        assert cmd in out.stdout


def test_every_package_is_declared_for_wheels() -> None:
    import tomllib

    root = Path(__file__).resolve().parents[1]
    meta = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = {v: k for k, v in meta["package-dir"].items()}
    found = set()
    for top, name in mapping.items():
        for init in (root / top).rglob("__init__.py"):
            rel = init.parent.relative_to(root / top)
            found.add(".".join([name, *rel.parts]) if rel.parts else name)
    # directories of data files only (no __init__.py), declared so that they ship
    data_only = set(meta["package-data"]) - found
    for pkg in data_only:
        assert (root / pkg.replace(".", "/")).is_dir(), pkg
    assert data_only == {"intentflow.defaults", "intentflow.schemas"}
    assert found | data_only == set(meta["packages"])
