"""Shared fixtures: a fresh registry, a quick way to call the CLI in-process, and the example plugin.

The example third-party plugin (``tests/example_plugin``) is not installed in the development
environment: it exists only for the tests. At the start of the test session it is made visible
the way an installed distribution is, to this process and to the subprocesses tests start: its
folder and a temporary folder holding its metadata (``energyat_example_plugin-0.1.0.dist-info``
with the entry point from its ``pyproject.toml``) go on ``sys.path`` and ``PYTHONPATH``. The
entry point's distribution is ``energyat-example-plugin``, as it would be when installed.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))

EXAMPLE_PLUGIN = Path(__file__).parent / "example_plugin"


def _expose_example_plugin() -> None:
    """Put the example plugin and its distribution metadata on ``sys.path`` and ``PYTHONPATH``."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: what tests/example_plugin/pyproject.toml says
        project = {"name": "energyat-example-plugin", "version": "0.1.0"}
        project["entry-points"] = {"energyat": {"example": "energyat_example.plugin"}}
    else:
        project = tomllib.loads((EXAMPLE_PLUGIN / "pyproject.toml").read_text())["project"]
    name, version = project["name"], project["version"]
    try:
        metadata.distribution(name)
        return  # installed after all (an environment set up before it stopped being installed)
    except metadata.PackageNotFoundError:
        pass
    site = Path(tempfile.mkdtemp(prefix="energyat-example-plugin-"))
    atexit.register(shutil.rmtree, site, ignore_errors=True)
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    groups = project.get("entry-points", {})
    (info / "entry_points.txt").write_text(
        "".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) for group, eps in groups.items())
    )
    paths = [str(EXAMPLE_PLUGIN), str(site)]
    sys.path[:0] = paths
    os.environ["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [os.environ.get("PYTHONPATH")])])
    from energyat_core.registry import _cached

    _cached.cache_clear()


def pytest_configure(config: pytest.Config) -> None:
    _expose_example_plugin()


@pytest.fixture
def registry():
    from energyat_core.registry import Registry

    return Registry(set())


@pytest.fixture
def cli(capsys):
    """Run ``energyat ARGS``; returns (exit code, stdout, stderr)."""
    from energyat_core.cli import main

    def run(*args: str):
        code = 0
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
