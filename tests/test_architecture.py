"""The rules of docs/architecture.md, checked on the source: kinds declared once, plugins
meet only through core's public surface, core names no first-party plugin, and one new
option is one line."""

from __future__ import annotations

import ast
import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomllib

from energyat_core import hookspecs
from energyat_core.kinds import KINDS
from energyat_core.options import option
from energyat_core.plugins import canonical, requirement_name

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "energyat_core"
PLUGINS = sorted(p for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").is_file())
#: the only core modules a plugin may import (``energyat_core.testing`` in tests only)
PUBLIC_CORE = {"energyat_core", "energyat_core.api"}
PUBLIC_CORE_FOR_TESTS = PUBLIC_CORE | {"energyat_core.testing"}


def _project(plugin_dir: Path) -> dict:
    return tomllib.loads((plugin_dir / "pyproject.toml").read_text())["project"]


def _package(plugin_dir: Path) -> str:
    return canonical(_project(plugin_dir)["name"]).replace("-", "_")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in a file, relative imports resolved to nothing."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def test_every_kind_has_its_documented_hook_and_nothing_else_does():
    specs = {name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("register_")}
    kind_hooks = {k.hook for k in KINDS}
    assert kind_hooks <= specs, f"kinds without a hook spec: {kind_hooks - specs}"
    assert specs - kind_hooks == {"register_methods", "register_commands"}, "a register_* hook outside the kinds table"
    for kind in KINDS:
        assert (getattr(hookspecs, kind.hook).__doc__ or "").strip(), f"hook {kind.hook} has no docstring"


@pytest.mark.parametrize("plugin_dir", PLUGINS, ids=lambda p: p.name)
def test_plugins_import_only_public_surfaces(plugin_dir):
    own = _package(plugin_dir)
    declared = {requirement_name(d) for d in _project(plugin_dir).get("dependencies", [])}
    first_party = {_package(p): canonical(_project(p)["name"]) for p in PLUGINS}
    bad = []
    for path in sorted(plugin_dir.rglob("*.py")):
        in_tests = "tests" in path.relative_to(plugin_dir).parts
        public_core = PUBLIC_CORE_FOR_TESTS if in_tests else PUBLIC_CORE
        for line, module in _imports(path):
            top = module.split(".")[0]
            where = f"{path.relative_to(ROOT)}:{line} imports {module}"
            if top == "energyat_core" and module not in public_core:
                bad.append(f"{where} (private core module; use energyat_core.api)")
            elif top in first_party and top != own:
                if module != top:
                    bad.append(f"{where} (another plugin's private module; import its top-level names)")
                elif first_party[top] not in declared:
                    bad.append(f"{where} (dependency on {first_party[top]} not declared in pyproject.toml)")
    assert not bad, "\n".join(bad)


def _first_party_names() -> set[str]:
    """Distribution, package and entry-point names of the first-party plugins, and the names of
    the components and presets only they register."""
    from energyat_core.registry import Registry

    names: set[str] = set()
    dists = set()
    for plugin_dir in PLUGINS:
        project = _project(plugin_dir)
        dists.add(canonical(project["name"]))
        names |= {canonical(project["name"]), _package(plugin_dir)}
        names |= set(project.get("entry-points", {}).get("energyat", {}))
    registry = Registry(set())
    core = next(p for p in registry.plugins if p.name == "core")
    core_names = {item.partition(":")[2] for item in core.registered}
    for info in registry.plugins:
        if canonical(info.distribution) in dists:
            names |= {item.partition(":")[2] for item in info.registered}
    return names - core_names  # a name core registers itself (its ``pgd`` evaluator) is core's


def _code_strings(tree: ast.AST) -> list[tuple[int, str]]:
    """String constants that are not docstrings."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [
        (n.lineno, n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    ]


def _named(text: str, names: set[str]) -> list[str]:
    """First-party names a string uses as a name: the whole string, a ``name:value`` spec, or a
    distribution/package name anywhere (prose such as "the energy histogram" is not a use)."""
    words = {w.strip("`'\".,;()[]") for w in text.replace("=", " ").split()}
    hits = {text.strip()} & names
    hits |= {w for w in words if ":" in w and w.split(":")[0] in names}
    hits |= {w for w in words if w in names and w.startswith("energyat")}
    return sorted(hits)


def test_core_code_names_no_first_party_plugin():
    names = _first_party_names()
    assert "energyat-pgd" in names and "autoattack" in names  # the check sees the plugins
    bad = []
    for path in sorted(CORE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for line, module in _imports(path):
            if module.split(".")[0] in names:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
        for line, text in _code_strings(tree):
            hit = _named(text, names)
            if hit:
                bad.append(f"{path.relative_to(ROOT)}:{line} names {hit} in {text!r}")
    assert not bad, "\n".join(bad)


def test_core_tests_use_no_first_party_plugin():
    names = _first_party_names()
    bad = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        if path.name == "test_architecture.py":
            continue
        for line, module in _imports(path):
            if module.split(".")[0] in names:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
        for line, text in _code_strings(ast.parse(path.read_text())):
            presets = _named(text, names)
            if presets:
                bad.append(f"{path.relative_to(ROOT)}:{line} uses {presets}")
    assert not bad, "\n".join(bad)


def test_one_new_option_is_one_line(monkeypatch, tmp_path, cli):
    """Add ``shrink`` to the example plugin's attack (one declaration) and use it everywhere."""
    from energyat_example.plugin import UniformNoise

    @dataclass
    class Config(UniformNoise.Config):  # type: ignore[name-defined]
        shrink: float = option(1.0, "multiplies the noise radius", gt=0, le=1)  # the one line

    monkeypatch.setattr(UniformNoise, "Config", Config)
    monkeypatch.setenv("COLUMNS", "200")  # tables unwrapped
    base = ["--backbone", "small_cnn", "--set", "dataset.n_train=64", "--set", "dataset.n_test=32", "--eval-n", "32"]
    base += ["--eval-steps", "1", "--epochs", "1", "--batch-size", "32", "--device", "cpu", "--quiet"]

    code, out, _ = cli("describe", "attack", "noise")  # describe
    assert code == 0 and "shrink" in out and "multiplies the noise radius" in out and "> 0, <= 1" in out

    code, _, err = cli("train", "--attack", "noise", "--set", "attack.shrink=0.5", *base, "--out", tmp_path / "a")
    assert code == 0, err  # --set
    saved = json.loads((tmp_path / "a" / "config.json").read_text())
    assert saved["attack"] == {"name": "noise", "scale": 1.0, "shrink": 0.5}  # config.json

    toml = tmp_path / "run.toml"
    toml.write_text('[attack]\nname = "noise"\nshrink = 0.25\n')
    code, _, err = cli("train", "--config", toml, *base, "--out", tmp_path / "b")
    assert code == 0, err  # TOML
    assert json.loads((tmp_path / "b" / "config.json").read_text())["attack"]["shrink"] == 0.25

    code, _, err = cli("train", "--attack", "noise", "--set", "attack.shrink=2", *base, "--out", tmp_path / "c")
    assert code == 2 and "option 'shrink' must be > 0, <= 1, got '2'" in err  # validated, one line
    assert len(err.strip().splitlines()) == 1
