"""Fault injection: ``energyat train`` killed at every write it makes, then started again.

A wrapper script (below, test-side only) runs the real CLI with its write points patched:
each checkpoint write (``save_file`` of the temporary file), each ``os.replace`` /
``os.rename`` and each ``write`` of a text file in the run (config.json, the metrics
append). It first runs the command uninterrupted, recording the write points, then, for
every point k, runs it again in a forked child that dies at point k with ``os._exit(137)``
(as SIGKILL would: no cleanup, no ``finally``), once just before the write and, for file
writes, once after writing half of it (a torn write). Then it starts again as a user
would (``--resume``, or the same command when nothing was committed yet).

What must hold after every kill and restart: the weights are bit for bit those of the
uninterrupted run, the metrics are its metrics, and nothing is left beside the run
(no ``*.tmp``, no lock, no staging or old directory). For ``--overwrite`` of an older run
(with an ``eval.json`` and plots): the old run is byte-identical until the new run's first
checkpoint, and the new run complete and identical after it.

Forking one warm process per kill keeps this fast (no interpreter start per kill), and the
two scenarios run side by side; the runs use one thread each, so that they are bit-identical.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ARGS = [
    *("--method", "noise-at"),  # the example plugin's random attack: a resume must restore the RNGs
    *("--backbone", "small_cnn", "--set", "dataset.n_train=64", "--set", "dataset.n_test=32"),
    *("--eval-n", "32", "--eval-steps", "1", "--epochs", "2", "--batch-size", "32", "--device", "cpu"),
    "--quiet",
]
#: metrics that measure time, not training
TIMING = {"img_per_s", "epoch_seconds", "elapsed_seconds"}

WRAPPER = r'''
import builtins, io, json, os, shutil, sys, traceback
from pathlib import Path

import torch

torch.set_num_threads(1)

import energyat_core.checkpoint as ckpt
from energyat_core.cli import main

spec = json.loads(Path(sys.argv[1]).read_text())
root = Path(os.path.realpath(spec["root"]))
ARGS = spec["args"]
plan = {"active": False, "count": 0, "kill_at": -1, "torn": False}
events = []  # the kind of each write point of the uninterrupted run


def point(kind, torn=None):
    """A write point: die here (after writing half, if torn) when it is the chosen one."""
    if not plan["active"]:
        return
    k = plan["count"]
    plan["count"] += 1
    events.append(kind)
    if k == plan["kill_at"]:
        if plan["torn"] and torn is not None:
            torn()
        os._exit(137)


_save_file = ckpt.save_file


def save_file(tensors, filename, metadata=None):
    def torn():
        _save_file(tensors, filename, metadata=metadata)
        os.truncate(filename, os.path.getsize(filename) // 2)

    point("save", torn)
    _save_file(tensors, filename, metadata=metadata)


ckpt.save_file = save_file


def renaming(name):
    real = getattr(os, name)

    def patched(src, dst, *args, **kwargs):
        if str(src).startswith(str(root)):
            point(name)
        return real(src, dst, *args, **kwargs)

    return patched


os.replace, os.rename = renaming("replace"), renaming("rename")
_open = builtins.open


class Tracked:
    """A file opened for writing under root: each write is a write point."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        def torn():
            self._f.write(data[: len(data) // 2])
            self._f.flush()

        point("write", torn)
        return self._f.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self._f, name)


def tracked_open(file, mode="r", *args, **kwargs):
    f = _open(file, mode, *args, **kwargs)
    if isinstance(file, (str, os.PathLike)) and str(file).startswith(str(root)) and set(mode) & set("wax+"):
        return Tracked(f)
    return f


builtins.open = io.open = tracked_open


def cli(argv):
    try:
        main([str(a) for a in argv])
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def forked(fn):
    """Run fn() in a forked child; its exit code (137: killed at the chosen point)."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = fn()
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def train(run, *extra):
    return ["train", *ARGS, *extra, "--out", run]


overwrite = spec["scenario"] == "overwrite"
old = root / "old" / "run"
if overwrite:  # an older, finished run, with what other commands add to it
    assert cli(["train", *ARGS, "--seed", "1", "--out", old]) == 0
    (old / "eval.json").write_text('{"clean": 0.5}\n')
    (old / "plots").mkdir()
    (old / "plots" / "curves.png").write_bytes(b"old plot")


def prepare(run):
    if overwrite:
        shutil.copytree(old, run)


extra = ["--overwrite"] if overwrite else []
reference = root / "reference" / "run"
prepare(reference)
plan.update(active=True)
assert cli(train(reference, *extra)) == 0, "the uninterrupted run failed"
plan.update(active=False)

results = []
for k, kind in enumerate(list(events)):
    for torn in (False, True) if kind in ("save", "write") else (False,):
        run = root / "points" / f"{k:02d}-{kind}{'-torn' if torn else ''}" / "run"
        run.parent.mkdir(parents=True)
        prepare(run)

        def killed():
            plan.update(active=True, count=0, kill_at=k, torn=torn)
            return cli(train(run, *extra))

        killed_code = forked(killed)
        committed = (run / "config.json").is_file() or (run.parent / f".{run.name}.old").is_dir()
        again = ["train", "--resume", run, "--quiet"] if committed else train(run, *extra)
        restart_code = forked(lambda: cli(again))
        results.append(
            {"point": k, "kind": kind, "torn": torn, "run": str(run), "killed": killed_code,
             "restart": " ".join(map(str, again[:2])), "restart_code": restart_code}
        )
Path(spec["results"]).write_text(json.dumps({"events": events, "results": results}, indent=1))
'''


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _metrics(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def _same_weights(run: Path, reference: Path) -> bool:
    for name in ("model.safetensors", "model_best.safetensors"):
        a, b = load_file(run / name), load_file(reference / name)
        if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
            return False
    return True


class KillEverywhere:
    """The wrapper run for one scenario, in a subprocess (both scenarios run side by side)."""

    def __init__(self, tmp: Path, scenario: str) -> None:
        self.root = tmp / scenario
        self.report = tmp / f"{scenario}.json"
        spec = {"root": str(self.root), "args": ARGS, "scenario": scenario, "results": str(self.report)}
        (tmp / f"{scenario}-spec.json").write_text(json.dumps(spec))
        (tmp / "kill_at.py").write_text(WRAPPER)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, str(tmp / "kill_at.py"), str(tmp / f"{scenario}-spec.json")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp,
        )

    def results(self) -> list[dict]:
        try:
            out, err = self.proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        assert self.proc.returncode == 0, out[-3000:] + err[-5000:]
        return json.loads(self.report.read_text())["results"]


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory):
    if not hasattr(os, "fork"):
        pytest.skip("needs fork")
    tmp = tmp_path_factory.mktemp("kills")
    runs = {name: KillEverywhere(tmp, name) for name in ("fresh", "overwrite")}
    yield runs
    for run in runs.values():
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


def _litter(run: Path) -> list[str]:
    """Anything beside the run, or a temporary file in it."""
    beside = [p.name for p in run.parent.iterdir() if p.name != run.name]
    return beside + [str(p) for p in run.rglob("*") if p.name.endswith(".tmp")]


def test_train_killed_at_any_write_resumes_to_the_uninterrupted_weights(scenarios):
    results = scenarios["fresh"].results()
    reference = scenarios["fresh"].root / "reference" / "run"
    kinds = {r["kind"] for r in results}
    assert len(results) >= 20 and {"save", "write", "replace"} <= kinds, results
    assert sum(r["torn"] for r in results) >= 6  # torn checkpoint files and a torn metrics line among them
    for r in results:
        run = Path(r["run"])
        assert r["killed"] == 137, r
        assert r["restart_code"] == 0, r
        assert _same_weights(run, reference), r
        assert _metrics(run) == _metrics(reference), r
        assert not _litter(run), (r, _litter(run))


def test_overwrite_killed_at_any_write_keeps_the_old_run_or_completes_the_new(scenarios):
    results = scenarios["overwrite"].results()
    root = scenarios["overwrite"].root
    reference, old = root / "reference" / "run", root / "old" / "run"
    old_files = _files(old)
    outcomes = []
    assert len(results) >= 20 and "rename" in {r["kind"] for r in results}, results
    for r in results:
        run = Path(r["run"])
        assert r["killed"] == 137 and r["restart_code"] == 0, r
        assert not _litter(run), (r, _litter(run))
        if _files(run) == old_files:  # killed before the new run's first checkpoint: the old run, untouched
            outcomes.append("old")
            continue
        assert not (run / "eval.json").exists() and not (run / "plots").exists(), r
        assert _same_weights(run, reference) and _metrics(run) == _metrics(reference), r
        outcomes.append("new")
    # the swap is the line between the two: every kill before it keeps the old run, every one after the new
    assert outcomes == sorted(outcomes, key=lambda o: o == "new") and {"old", "new"} <= set(outcomes), outcomes
