"""``energyat new-plugin``: the generated package installs, is listed, and passes its own test.

Each kind is generated into a temporary folder and installed (editable, no dependencies) into
a fresh virtual environment that sees this environment's packages (torch, energyat-core) but
not the generated one; there ``energyat plugins`` lists the plugin as ok and the generated
package's own test passes, as generated.
"""

from __future__ import annotations

import os
import re
import site
import subprocess
import venv

import pytest

from energyat_core.cli.new_plugin import KINDS, write_plugin
from energyat_core.errors import ConfigError
from energyat_core.testing import assert_one_line_error


def _venv(tmp_path):
    """A venv without pip of its own that sees this environment's packages (their .pth files too)."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = subprocess.check_output(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], text=True
    )
    parents = [p for p in [*site.getsitepackages(), site.getusersitepackages()] if os.path.isdir(p)]
    lines = "".join(f"import site; site.addsitedir({p!r})\n" for p in parents)
    (tmp_path / "venv" / purelib.strip().split(str(env_dir) + os.sep, 1)[1] / "_parent.pth").write_text(lines)
    return python


def _run(*cmd, **kwargs):
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=300, **kwargs)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_generated_plugins_install_and_pass_their_tests(tmp_path):
    """One package of each kind, installed together in one fresh environment (one pip, one pytest)."""
    targets = {kind: write_plugin(f"my-{kind}", kind, tmp_path / "src") for kind in KINDS}
    for kind, target in targets.items():
        assert (target / "pyproject.toml").is_file() and (target / f"tests/test_my_{kind}.py").is_file()
        plugin_py = (target / f"energyat_my_{kind}/plugin.py").read_text()
        assert "option(" in plugin_py and "@hookimpl" in plugin_py
        assert re.findall(r"^(?:from|import) (energyat_core\S*)", plugin_py, re.M) == ["energyat_core.api"]

    python = _venv(tmp_path)
    editables = [arg for target in targets.values() for arg in ("-e", target)]
    _run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", *editables)
    listing = _run(python, "-m", "energyat_core", "plugins")
    for kind in KINDS:
        row = rf"[│|] my-{kind} +[│|] energyat-my-{kind} +[│|].*{kind}: my-{kind}.*[│|] ok +[│|]"
        assert re.search(row, listing), listing
    out = _run(
        python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *(t / "tests" for t in targets.values()), cwd=tmp_path
    )
    assert f"{len(KINDS)} passed" in out, out


def test_new_plugin_command_refuses_bad_names_and_existing_folders(tmp_path, cli):
    code, out, _ = cli("new-plugin", "my-loss", "--kind", "loss", "--out", tmp_path)
    assert code == 0 and (tmp_path / "energyat-my-loss/energyat_my_loss/plugin.py").is_file(), out
    code, _, err = cli("new-plugin", "my-loss", "--kind", "loss", "--out", tmp_path)
    assert_one_line_error(code, err, "already exists")
    code, _, err = cli("new-plugin", "My_Loss", "--kind", "loss", "--out", tmp_path)
    assert_one_line_error(code, err, "'My_Loss' is not valid")
    with pytest.raises(ConfigError, match="unknown kind 'dataset'"):
        write_plugin("x", "dataset", tmp_path)
