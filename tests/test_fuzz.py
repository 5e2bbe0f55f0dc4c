"""Fuzz: random and mutated command lines, config files, safetensors headers, metrics lines and images.

Every case runs ``energyat`` in-process with the current directory, ``HOME`` and every
cache in a temporary folder. Whatever the input, a case must end with exit code 0 or 2
(2: one ``error:`` line, or a usage message of the command line parser), print no
traceback, and write nothing outside that folder. The cases are drawn from a fixed seed,
so a failure names an input that reproduces it.

A valid run is not trained for long: :class:`Guard` stops a run that is not tiny (small CNN,
a few hundred images, a few epochs) before it builds anything, and a tiny one before it
trains once :data:`REAL_FITS` runs have trained (:class:`WouldTrain`). Most cases are
invalid anyway, and end before that point. ``ENERGYAT_FUZZ_SEED`` draws other cases, and
``ENERGYAT_FUZZ_LOG=FILE`` writes every case and its message to FILE.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import struct
import traceback
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from energyat_core.cli import main

REPO = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("ENERGYAT_FUZZ_SEED", "14"))  # another seed explores other inputs
TINY = (
    "--backbone", "small_cnn", "--set", "dataset.n_train=64", "--set", "dataset.n_test=32", "--eval-n", "32",
    "--eval-steps", "1", "--epochs", "1", "--batch-size", "32", "--device", "cpu", "--quiet",
)  # fmt: skip
#: an evaluation of a trained run that takes a fraction of a second
QUICK_EVAL = ("--n", "8", "--no-sanity", "--set", "evaluator.pgd.steps=1", "--device", "cpu")
#: real trainings allowed per test (the rest of the valid runs stop before training)
REAL_FITS = 3


class WouldTrain(SystemExit):
    """A valid run that is not tiny: stopped before it builds anything (a ``SystemExit``: the CLI lets it through)."""

    def __init__(self) -> None:
        super().__init__(0)


@dataclass
class Guard:
    """Lets tiny runs train (at most ``fits`` of them), stops the others at the Trainer."""

    fits: int = REAL_FITS
    stopped: int = 0
    trained: int = 0

    @staticmethod
    def tiny(cfg: Any) -> bool:
        """A run that builds and trains in about a second on a CPU."""
        dataset = cfg.parts.get("dataset")
        if cfg.spec("backbone") != "small_cnn" or dataset is None or cfg.parts.get("source") is not None:
            return False
        if cfg.epochs > 2 or cfg.eval_steps > 2 or cfg.eval_n > 256 or cfg.compile:
            return False
        opts = dataset.options
        if dataset.name == "synthetic":
            ok = opts.get("n_train", 10**9) <= 256 and opts.get("n_test", 10**9) <= 256
        elif dataset.name == "imagefolder":
            path = Path(opts.get("path") or cfg.data_dir or "/").resolve()
            inside = path == Path.cwd() or Path.cwd() in path.parents
            ok = inside and (opts.get("image_size") or 0) <= 32 and opts.get("workers", 0) <= 1
        else:
            return False
        width = cfg.parts["backbone"].options.get("width", 0)
        small_parts = all(
            not isinstance(v, int) or isinstance(v, bool) or abs(v) <= 10
            for kind in ("attack", "loss", "weighter")
            if kind in cfg.parts
            for v in cfg.parts[kind].options.values()
        )
        return ok and small_parts and isinstance(width, int) and width <= 64

    @contextlib.contextmanager
    def installed(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[Guard]:
        from energyat_core.trainer import Trainer

        real_init, real_fit = Trainer.__init__, Trainer.fit
        guard = self

        def init(trainer: Any, cfg: Any, *args: Any, **kwargs: Any) -> None:
            if not guard.tiny(cfg):
                guard.stopped += 1
                raise WouldTrain
            real_init(trainer, cfg, *args, **kwargs)

        def fit(trainer: Any, *args: Any, **kwargs: Any) -> Any:
            streamed = getattr(getattr(trainer, "data", None), "streamed", False)  # DataLoader worker processes
            if guard.trained >= guard.fits or streamed:
                guard.stopped += 1
                raise WouldTrain
            guard.trained += 1
            return real_fit(trainer, *args, **kwargs)

        monkeypatch.setattr(Trainer, "__init__", init)
        monkeypatch.setattr(Trainer, "fit", fit)
        yield self


@dataclass
class Fuzz:
    """Runs cases in the sandbox and collects the ones that break the rules."""

    capsys: pytest.CaptureFixture
    root: Path
    guard: Guard
    failures: list[str] = field(default_factory=list)
    codes: dict[str, int] = field(default_factory=dict)

    def __call__(self, what: str, *argv: Any) -> tuple[Any, str]:
        """Run ``energyat ARGV``; record a failure if it crashes, exits with another code or prints a traceback."""
        args = [str(a) for a in argv]
        crash = None
        try:
            main(args)
            code: Any = 0
        except WouldTrain:
            code = "would train"
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Exception:
            code, crash = "crash", traceback.format_exc(limit=-4)
        out = self.capsys.readouterr()
        if os.environ.get("ENERGYAT_FUZZ_LOG"):  # every case and its outcome, to read the messages
            with open(os.environ["ENERGYAT_FUZZ_LOG"], "a") as log:
                log.write(f"[{what}] {args!r}\n  -> {code}: {out.err.strip()[-600:]}\n")
        key = str(code)
        self.codes[key] = self.codes.get(key, 0) + 1
        problem = ""
        if crash is not None:
            problem = f"uncaught exception:\n{crash}"
        elif code not in (0, 2, "would train"):
            problem = f"exit code {code}"
        elif "Traceback" in out.err or "Traceback" in out.out:
            problem = "a traceback was printed"
        elif code == 2 and not _one_error_line(out.err):
            problem = "exit 2 without one 'error:' line or a usage message"
        elif "probably a bug" in out.err:  # the error boundary's line for an exception nobody translated
            problem = "an unexpected exception reached the error boundary"
        if problem:
            tail = "\n".join(out.err.strip().splitlines()[-8:])
            self.failures.append(f"[{what}] energyat {' '.join(map(repr, args))}\n  {problem}\n  stderr: {tail}")
        return code, out.err

    def check(self) -> None:
        assert not self.failures, f"{len(self.failures)} failing cases; the first ones:\n\n" + "\n\n".join(
            self.failures[:8]
        )


def _one_error_line(err: str) -> bool:
    lines = [line for line in err.strip().splitlines() if line.strip() and not _is_warning(line)]
    if any("Usage:" in line for line in lines):  # the parser's own message (unknown flag, bad INT)
        return True
    return len([line for line in lines if line.startswith("error:")]) == 1


def _is_warning(line: str) -> bool:
    return line.startswith(("note:", "warning:")) or "Warning:" in line or line.startswith("  ")


# -- the sandbox ---------------------------------------------------------------------------
def _outside_snapshot() -> set[str]:
    """What the repository's top level holds (a stray run directory or cache would show here)."""
    return {p.name for p in REPO.iterdir()}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A tiny run of two epochs, stopped after the first (so that --resume has an epoch to train)."""
    root = tmp_path_factory.mktemp("fuzz-base")
    with pytest.MonkeyPatch.context() as mp:
        _isolate(mp, root)
        code = _quiet_main(["train", *TINY, "--epochs", "2", "--stop-after", "1", "--out", str(root / "run")])
    assert code == 0
    return root / "run"


def _quiet_main(argv: list[str]) -> Any:
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        try:
            main(argv)
        except SystemExit as e:
            return e.code
    return 0


def _isolate(mp: pytest.MonkeyPatch, root: Path) -> None:
    """The current directory, HOME and every cache inside ``root``."""
    home = root / "home"
    (root / "cwd").mkdir(parents=True, exist_ok=True)
    home.mkdir(exist_ok=True)
    mp.chdir(root / "cwd")
    mp.setenv("HOME", str(home))
    for var, sub in (
        ("ENERGYAT_CACHE_DIR", "cache/energyat"),
        ("ENERGYAT_DATA_DIR", "data"),
        ("XDG_CACHE_HOME", "cache"),
        ("TORCH_HOME", "cache/torch"),
        ("MPLCONFIGDIR", "cache/matplotlib"),
    ):
        mp.setenv(var, str(root / sub))
    mp.delenv("ENERGYAT_DISABLE_PLUGINS", raising=False)
    mp.delenv("ENERGYAT_DEBUG", raising=False)  # tracebacks are what the cases look for


@pytest.fixture
def fuzz(tmp_path, monkeypatch, capsys) -> Iterator[Fuzz]:
    before = _outside_snapshot()
    _isolate(monkeypatch, tmp_path)
    guard = Guard()
    with guard.installed(monkeypatch):
        runner = Fuzz(capsys, tmp_path / "cwd", guard)
        yield runner
    appeared = {name for name in _outside_snapshot() - before if not name.startswith(".")}  # not tool caches
    assert not appeared, f"files appeared at the top of the repository: {sorted(appeared)}"
    assert not (REPO / "runs").exists() or "runs" in before
    stray = [p for p in (tmp_path / "home").rglob("*") if p.is_file()]
    assert not stray, f"files written to the home folder: {stray[:5]}"


def _copy_run(base: Path, dest: Path) -> Path:
    shutil.copytree(base, dest)
    return dest


# -- random values ---------------------------------------------------------------------------
INTS = ["0", "1", "2", "-1", "3", "7", "64", "1000000000", "1e3", "x", "", " 7 ", "0x10", "9" * 25, "2.5", "nan"]
FLOATS = ["0", "1", "-1", "2", "0.5", "8/255", "1/0", "0/0", "nan", "inf", "-inf", "1e-300", "1e309", "abc", "", "2/"]
WORDS = ["", "x", "none", "pgd", "ce", "-", "--", ":", "pgd:", "none:3", "small_cnn", "☃", "a" * 300, "synthetic"]
#: values of evaluation options: small or invalid, never a long attack
SMALL = ["-1", "0", "1", "2", "x", "1.5", "nan", "inf", "", "-0"]


def rand_value(rng: random.Random, metavar: str | None) -> str:
    if metavar == "INT":
        return rng.choice(INTS)
    if metavar == "FLOAT":
        return rng.choice(FLOATS)
    if metavar and "|" in metavar:
        return rng.choice([*metavar.split("|"), "bogus", ""])
    if metavar == "FLOAT,...":
        return rng.choice(["0.5,0.75", "0.5", "", ",", "2,3", "-1", "a,b", "0.9,0.1", "nan"])
    return rng.choice([*WORDS, *INTS[:4], *FLOATS[:4]])


def component_options(registry: Any) -> dict[str, list[str]]:
    """Option names by kind, from the registered components' configs."""
    import dataclasses

    from energyat_core.kinds import KINDS

    out: dict[str, list[str]] = {}
    for kind in KINDS:
        names = set()
        for name in registry.names(kind.name):
            config = getattr(registry.get(kind.name, name).cls, "Config", None)
            if config is not None:
                names.update(f.name for f in dataclasses.fields(config))
        out[kind.name] = sorted(names)
    return out


def train_params() -> list[tuple[list[str], list[str], bool, str | None]]:
    """(options, negations, is_flag, metavar) of every `energyat train` parameter, from the command itself."""
    import typer

    from energyat_core.cli import build_app

    command = typer.main.get_command(build_app())
    params = command.commands["train"].params  # type: ignore[attr-defined]
    return [(list(p.opts), list(p.secondary_opts), bool(p.is_flag), p.metavar) for p in params]


def rand_set(rng: random.Random, options: dict[str, list[str]], kinds: list[str]) -> str:
    kind = rng.choice([*kinds, "bogus", ""])
    name = rng.choice([*options.get(kind, []), "x", ""]) if rng.random() < 0.9 else "a.b"
    value = rng.choice([*INTS, *FLOATS, *WORDS, "true", "false", "[1]"])
    return rng.choice([f"{kind}.{name}={value}", f"{kind}.{name}", f"{kind}={value}", f"{kind}.{name}=={value}"])


# -- 1. command lines --------------------------------------------------------------------------
def test_random_command_lines(fuzz, base_run):
    from energyat_core.kinds import RUN_KINDS
    from energyat_core.registry import get_registry

    rng = random.Random(SEED)
    registry = get_registry()
    options = component_options(registry)
    params = train_params()
    run_kinds = [k.name for k in RUN_KINDS]
    (fuzz.root / "afile").write_text("not a directory\n")
    for i in range(150):
        pick = rng.random()
        if pick < 0.55:  # train with random flags, --set and sometimes the tiny base
            argv: list[str] = ["train"]
            if rng.random() < 0.4:
                argv += TINY
            for _ in range(rng.randint(1, 5)):
                opts, negations, is_flag, metavar = rng.choice(params)
                flag = rng.choice(opts + negations)
                if flag in ("--resume", "--config", "--out", "-o"):
                    target = rng.choice(["afile", f"out{i}", "nowhere/deeper", "run", "."])
                    if target == "run":
                        target = str(_copy_run(base_run, fuzz.root / f"copy{i}"))
                    argv += [flag, target]
                elif is_flag:
                    argv.append(flag)
                elif flag == "--set":
                    argv += [flag, rand_set(rng, options, run_kinds)]
                else:
                    argv += [flag, rand_value(rng, metavar)]
            if "--out" not in argv and "-o" not in argv and rng.random() < 0.7:
                argv += ["--out", f"out{i}"]
            fuzz("train", *argv)
        elif pick < 0.7:  # describe and plugins
            argv = [rng.choice(["describe", "plugins"])]
            argv += [rng.choice([*run_kinds, "evaluator", "sampler", "method", "run", "bogus", ""])]
            if rng.random() < 0.7:
                argv.append(rng.choice([*registry.names("attack"), *registry.methods, *WORDS]))
            if rng.random() < 0.2:
                argv = [
                    "--disable-plugins",
                    rng.choice(["energyat-example-plugin", "x", "", ",", "energyat-core"]),
                    *argv,
                ]
            fuzz("describe", *argv)
        elif pick < 0.92:  # eval on the tiny run or on nothing at all
            run = _copy_run(base_run, fuzz.root / f"copy{i}")
            argv = ["eval", rng.choice([str(run), "nowhere", "afile", str(run / "model.safetensors")])]
            argv += ["--device", "cpu", "--no-sanity", "--n", rng.choice(["8", "0", "-3", "x", "100000"])]
            argv += ["--set", f"evaluator.pgd.steps={rng.choice(SMALL)}"]
            for _ in range(rng.randint(0, 3)):
                flag = rng.choice(["--batch-size", "--eps", "--norm", "--checkpoint", "--evaluator", "--set", "--out"])
                value = {
                    "--batch-size": rng.choice(["0", "-1", "1", "3", "100000", "x"]),
                    "--eps": rng.choice(FLOATS),
                    "--norm": rng.choice(["linf", "l2", "l1", ""]),
                    "--checkpoint": rng.choice(["model", "best", "state", "../x", ""]),
                    "--evaluator": rng.choice(["pgd", f"pgd:{rng.choice(SMALL)}", "bogus", "nosuch:nope", ":"]),
                    "--set": rng.choice(
                        [f"evaluator.restarts={rng.choice(SMALL)}", "evaluator.bogus=1", "attack.steps=1", "x"]
                    ),
                    "--out": rng.choice(["afile/x.json", f"e{i}.json", ".", "run"]),
                }[flag]
                argv += [flag, value]
            fuzz("eval", *argv)
        else:  # plot and generate, with bounded work
            run = _copy_run(base_run, fuzz.root / f"copy{i}")
            if rng.random() < 0.6:
                argv = ["plot", rng.choice([str(run), str(run), "nowhere", "afile"]), "--device", "cpu"]
                argv += ["--n", rng.choice(["4", "4", "0", "-1", "x"]), "--steps", rng.choice(["0", "1", "2", "-1"])]
                argv += [
                    rng.choice(["--histogram", "--no-histogram"]),
                    "--batch-size",
                    rng.choice(["0", "4", "-2", "4"]),
                ]
                argv += rng.choice([[], ["--checkpoint", rng.choice(["best", "x", ""])], ["--out", "afile"]])
            else:
                argv = [
                    "generate",
                    rng.choice(["nowhere", "afile", str(run / "model.safetensors"), str(run)]),
                    "--device",
                    "cpu",
                ]
                argv += ["--n", rng.choice(["-1", "0", "2"]), "--steps", rng.choice(["-1", "0", "1"])]
                argv += ["--metrics", rng.choice(["bogus", ""]), "--batch-size", rng.choice(["0", "-1", "2"])]
            fuzz(argv[0], *argv)
    fuzz.check()
    assert fuzz.codes.get("0", 0) >= 5 and fuzz.codes.get("2", 0) >= 50, fuzz.codes


# -- 2. config files ---------------------------------------------------------------------------
BASE_TOML = """\
epochs = 1
batch_size = 32
eval_n = 32
eval_steps = 1
device = "cpu"
lr = 0.05

[backbone]
name = "small_cnn"

[dataset]
name = "synthetic"
n_train = 64
n_test = 32
"""

TOML_VALUES = ["-1", "0", "1e999", "nan", "inf", "-inf", '"x"', '""', "[]", "[1, 2]", "{}", "{ a = 1 }", "true", "3.5"]
JSON_VALUES: list[Any] = [-1, 0, 1e300, None, "x", "", [], [1, "a"], {}, {"name": 5}, True, 3.5, "8/255", 10**30]


def mutate_text(rng: random.Random, text: str) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 6)):
        op = rng.random()
        pos = rng.randrange(len(chars) + 1)
        if op < 0.3 and chars:
            del chars[min(pos, len(chars) - 1)]
        elif op < 0.6:
            chars.insert(pos, rng.choice(list('[]{}="\n#.,:\\\x00x1-') + ["\u00e9", "\ufffd"]))
        elif op < 0.8 and chars:
            chars[min(pos, len(chars) - 1)] = chr(rng.randrange(32, 127))
        else:
            chars = chars[:pos]
    return "".join(chars)


def mutate_toml(rng: random.Random) -> str:
    lines = BASE_TOML.splitlines()
    op = rng.random()
    if op < 0.4:
        return mutate_text(rng, BASE_TOML)
    if op < 0.75:  # a value of another type, or out of range
        keyed = [i for i, line in enumerate(lines) if "=" in line]
        i = rng.choice(keyed)
        lines[i] = lines[i].split("=")[0] + "= " + rng.choice(TOML_VALUES)
    elif op < 0.9:  # an unknown key or table, or a table where a value belongs
        lines.insert(rng.randrange(len(lines) + 1), rng.choice(["bogus = 1", "[bogus]", "[attack]", "epochs.x = 1"]))
    else:
        lines = [line for line in lines if "name" not in line or rng.random() < 0.5]
    return "\n".join(lines) + "\n"


def mutate_json(rng: random.Random, document: dict[str, Any]) -> str:
    op = rng.random()
    if op < 0.3:
        return mutate_text(rng, json.dumps(document, indent=1))
    if op < 0.4:
        return json.dumps(rng.choice([[], [document], 5, "x", None, True]))
    doc = json.loads(json.dumps(document))
    key = rng.choice(sorted(doc))
    if op < 0.8:
        doc[key] = rng.choice(JSON_VALUES)
    elif isinstance(doc.get("dataset"), dict):
        doc["dataset"][rng.choice(["n_train", "name", "bogus", "seed"])] = rng.choice(JSON_VALUES)
    else:
        doc.pop(key)
    return json.dumps(doc)


def test_mutated_config_files(fuzz, base_run):
    rng = random.Random(SEED + 1)
    document = json.loads((base_run / "config.json").read_text())
    for i in range(45):
        if rng.random() < 0.5:
            path = fuzz.root / f"c{i}.toml"
            path.write_text(mutate_toml(rng), encoding="utf-8", errors="surrogateescape")
        else:
            path = fuzz.root / f"c{i}.json"
            path.write_text(mutate_json(rng, document), encoding="utf-8", errors="surrogateescape")
        if rng.random() < 0.1:
            path.write_bytes(path.read_bytes()[:20] + b"\xff\xfe\x80" + path.read_bytes()[20:])
        extra = rng.choice([(), ("--epochs", "1"), ("--set", "dataset.n_train=64")])
        fuzz("config", "train", "--config", path, *extra, "--out", f"out{i}", "--quiet")
    run = _copy_run(base_run, fuzz.root / "resumed")
    for _ in range(10):  # a damaged config.json of a run, then --resume
        (run / "config.json").write_text(mutate_json(rng, document), encoding="utf-8", errors="surrogateescape")
        fuzz("config.json", "train", "--resume", run, "--quiet")
    fuzz.check()


# -- 3. safetensors headers ----------------------------------------------------------------------
DTYPES = ["F16", "BF16", "F64", "I8", "U8", "I64", "BOOL", "F8_E4M3", "XYZ", "", 5]


def split_safetensors(blob: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def join_safetensors(header: Any, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def mutate_safetensors(rng: random.Random, blob: bytes) -> bytes:
    header, data = split_safetensors(blob)
    raw = blob[8 : len(blob) - len(data)]
    op = rng.randrange(12)
    if op == 0:  # random bytes, or a plausible but wrong value, in the 8-byte length
        length = rng.choice(
            [rng.randbytes(8), struct.pack("<Q", len(raw) + rng.randint(-40, 40)), struct.pack("<Q", 0)]
            + [struct.pack("<Q", 2**64 - 1), struct.pack("<Q", len(blob))]
        )
        return length + blob[8:]
    if op == 1:  # the file cut anywhere
        return blob[: rng.randrange(len(blob))]
    if op == 2:  # the header JSON truncated (its length kept or fixed)
        cut = raw[: rng.randrange(len(raw))]
        length = len(cut) if rng.random() < 0.5 else len(raw)
        return struct.pack("<Q", length) + cut + data
    if op == 3:  # garbled bytes in the header
        garbled = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            garbled[rng.randrange(len(garbled))] = rng.randrange(256)
        return blob[:8] + bytes(garbled) + data
    names = [k for k in header if k != "__metadata__"]
    name = rng.choice(names)
    entry = header[name]
    if op == 4:  # wrong offsets: swapped, beyond the file, overlapping, negative, not numbers
        begin, end = entry["data_offsets"]
        entry["data_offsets"] = rng.choice(
            [[end, begin], [begin, end + 4], [begin + 4, end + 4], [0, end - begin], [-4, end], ["a", end], [begin]]
            + [[begin, len(data) * 2], [2**63, 2**63 + end - begin]]
        )
    elif op == 5:
        entry["dtype"] = rng.choice(DTYPES)
    elif op == 6:
        entry["shape"] = rng.choice([[], [-1], [0], [2**40, 2**40], [1] * 40, "x", [1.5]])
    elif op == 7:  # a tensor removed or added
        if rng.random() < 0.5:
            header.pop(name)
        else:
            header["net.extra"] = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
    else:  # the metadata: a damaged run config, wrong types, or none
        meta = header.setdefault("__metadata__", {})
        config = meta.get("config", "{}")
        meta["config"] = rng.choice(
            [
                config[: rng.randrange(len(config) + 1)],
                "[1, 2]",
                "null",
                '"x"',
                json.dumps(json.dumps({"backbone": {"name": "bogus"}})),
                json.dumps({"dataset": {"name": "synthetic", "n_test": -5}, "backbone": "small_cnn"}),
                json.dumps({"epochs": "x", "backbone": "small_cnn"}),
                "[" * 100000,
                json.dumps({"backbone": {"name": "small_cnn", "width": 10**9}, "dataset": "synthetic"}),
            ]
        )
        if op == 11 and rng.random() < 0.5:
            header["__metadata__"] = rng.choice([{"config": 5}, [], "x", None])
    return join_safetensors(header, data)


def test_mutated_safetensors_files(fuzz, base_run):
    rng = random.Random(SEED + 2)
    model = (base_run / "model.safetensors").read_bytes()
    state = (base_run / "state.safetensors").read_bytes()
    for i in range(70):
        run = _copy_run(base_run, fuzz.root / f"run{i}")
        if rng.random() < 0.65:
            (run / "model.safetensors").write_bytes(mutate_safetensors(rng, model))
            if rng.random() < 0.7:
                fuzz("model", "eval", run, *QUICK_EVAL)
            else:
                fuzz("weights", "eval", "--weights", run / "model.safetensors", "--backbone", "small_cnn",
                     "--dataset", "synthetic", *QUICK_EVAL)  # fmt: skip
        else:
            (run / "state.safetensors").write_bytes(mutate_safetensors(rng, state))
            fuzz("state", "train", "--resume", run, "--quiet")
    fuzz.check()


def test_mutated_training_state_values(fuzz, base_run):
    """A state file that is valid safetensors but holds nonsense: counters, missing parts, wrong types."""
    from energyat_core.checkpoint import load_state, save_state

    rng = random.Random(SEED + 3)
    original = load_state(base_run / "state.safetensors")
    for i in range(20):
        state = dict(original)
        key = rng.choice(["epoch", "step", "best_robust", "elapsed", "model", "optimizer", "rng", "components"])
        if rng.random() < 0.2:
            state.pop(key)
        else:
            state[key] = rng.choice([-1, -(10**12), 10**18, math.nan, math.inf, "x", None, [], {}, True, 2.5, 7])
        run = _copy_run(base_run, fuzz.root / f"run{i}")
        save_state(run / "state.safetensors", state)
        fuzz("state values", "train", "--resume", run, "--quiet")
    fuzz.check()


# -- 4. metrics lines ------------------------------------------------------------------------------
def mutate_metrics(rng: random.Random, text: str) -> bytes:
    lines = text.splitlines()
    op = rng.randrange(8)
    if op == 0:  # a torn last line (the run was killed during the append)
        return (text + lines[-1][: rng.randrange(1, len(lines[-1]))]).encode()
    if op == 1:
        return text.encode()[: rng.randrange(len(text))]
    if op == 2:
        return text.encode() + rng.randbytes(rng.randint(1, 40))
    if op == 3:
        line = rng.choice(["[]", "null", "5", '"x"', "{}", '{"epoch": "x"}', '{"epoch": -1}', '{"epoch": NaN}'])
        return (text + line + "\n").encode()
    if op == 4:
        record = json.loads(lines[0])
        record[rng.choice(sorted(record))] = rng.choice([None, "x", -1, 1e308, [], {}, float("nan")])
        return (json.dumps(record) + "\n").encode()
    if op == 5:
        return b""
    if op == 6:
        return b"\xff\xfe\x00garbage\n" + text.encode()
    return (text * rng.randint(2, 5)).encode()


def test_mutated_metrics_lines(fuzz, base_run):
    rng = random.Random(SEED + 4)
    text = (base_run / "metrics.jsonl").read_text()
    for i in range(30):
        run = _copy_run(base_run, fuzz.root / f"run{i}")
        if rng.random() < 0.15:
            (run / "metrics.jsonl").unlink()
        else:
            (run / "metrics.jsonl").write_bytes(mutate_metrics(rng, text))
        if rng.random() < 0.5:
            fuzz("metrics", "plot", run, "--no-histogram", "--device", "cpu")
        else:
            fuzz("metrics", "train", "--resume", run, "--quiet")
    fuzz.check()


# -- 5. images ---------------------------------------------------------------------------------------
def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_claiming(width: int, height: int, depth: int = 8, colour: int = 2) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` with (almost) no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def make_images(root: Path) -> list[Path]:
    files = []
    for split, n in (("train", 3), ("test", 2)):
        for label, colour in (("cat", (200, 30, 30)), ("dog", (10, 220, 40))):
            for k in range(n):
                path = root / split / label / f"{k}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 8), colour).save(path)
                files.append(path)
    return files


def mutated_image(rng: random.Random, blob: bytes, tmp: Path) -> bytes:
    op = rng.randrange(10)
    if op == 0:
        return blob[: rng.randrange(len(blob))]
    if op == 1:
        garbled = bytearray(blob)
        for _ in range(rng.randint(1, 8)):
            garbled[rng.randrange(len(garbled))] = rng.randrange(256)
        return bytes(garbled)
    if op == 2:
        return rng.randbytes(rng.randint(0, 300))
    if op == 3:  # a header that claims a huge (or empty, or odd) image
        size = rng.choice([(100_000, 100_000), (20_000, 9_000), (0, 8), (8, 0), (2**31, 1), (1, 1), (64, 3)])
        return png_claiming(*size, depth=rng.choice([8, 16, 1, 3]), colour=rng.choice([0, 2, 3, 4, 6, 7]))
    # images that decode: other modes and formats, 16-bit, odd sizes
    if op == 4:
        im = Image.fromarray(np.full((8, 8), rng.randrange(65536), dtype=np.uint16))
    elif op == 5:
        im = Image.new(rng.choice(["1", "L", "P", "RGBA", "LA", "CMYK", "I", "F"]), (8, 8))
    elif op == 6:
        im = Image.new("RGB", rng.choice([(1, 1), (8, 9), (64, 2)]), (1, 2, 3))
    else:
        im = Image.new("RGB", (8, 8), (rng.randrange(256), 0, 0))
    fmt = rng.choice(["PNG", "JPEG", "BMP", "GIF", "TIFF", "PPM", "WEBP"])
    out = tmp / "scratch"
    try:
        im.save(out, format=fmt)
    except (OSError, ValueError, KeyError):
        im.convert("RGB").save(out, format="PNG")
    return out.read_bytes()


def test_mutated_images(fuzz):
    rng = random.Random(SEED + 5)
    for i in range(45):
        root = fuzz.root / f"images{i}"
        files = make_images(root)
        for _ in range(rng.randint(1, 2)):
            target = rng.choice(files)
            target.write_bytes(mutated_image(rng, target.read_bytes(), fuzz.root))
        extra: list[str] = ["--set", "dataset.cache=false"] if rng.random() < 0.7 else []
        extra += rng.choice([[], ["--set", "dataset.image_size=8"], ["--set", "dataset.stream=true"]])
        fuzz(
            "images",
            "train",
            "--dataset",
            f"imagefolder:{root}",
            "--backbone",
            "small_cnn",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--eval-n",
            "4",
            "--eval-steps",
            "1",
            "--device",
            "cpu",
            *extra,
            "--out",
            f"out{i}",
            "--quiet",
        )
    fuzz.check()
