#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv with core, every
# first-party plugin under plugins/ and the dev tools. The example third-party plugin in
# tests/example_plugin is not installed: the tests make it visible themselves (tests/conftest.py).
# Idempotent: a second run only re-checks the installs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip setuptools wheel
# torch first, pinned: these versions come from the local pip cache where there is one
$VENV/bin/python -c "import torch, torchvision" 2>/dev/null || \
  $PIP install -q "torch==2.14.1" "torchvision==0.29.1"
$PIP install -q pluggy typer rich safetensors timm numpy matplotlib "torch-fidelity==0.4.0" tensorboard pytest pytest-xdist ruff mypy onnx onnxscript onnxruntime
# robustbench without its dependencies: they pin timm==1.0.9 and pull its download and evaluation helpers;
# the architecture definitions energyat-robustbench uses need only torch (plugins/energyat-robustbench/README.md)
$PIP install -q --no-deps "robustbench==1.1.1"
editable=(-e .)
for d in plugins/*/; do
  [ -f "$d/pyproject.toml" ] && editable+=(-e "$d")
done
$PIP install -q --no-build-isolation "${editable[@]}"
# environments set up before that still have it: remove it (tests/conftest.py provides it)
if $VENV/bin/python -c "import importlib.metadata as m; m.distribution('energyat-example-plugin')" 2>/dev/null; then
  $PIP uninstall -q -y energyat-example-plugin
fi
echo "environment ready: $VENV"
