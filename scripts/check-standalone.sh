#!/usr/bin/env bash
# Check that one first-party plugin installs and works alone with core:
#
#   bash scripts/check-standalone.sh DISTRIBUTION PRESET      e.g.  energyat-weat weat
#
# In a fresh virtual environment in a temporary directory it installs torch and
# torchvision (pinned, as scripts/setup-env.sh does, from the pip cache where it has them),
# then follows the README's "Installing only what you need" to the letter:
#
#   make wheels                                  (every distribution into dist/)
#   pip install --find-links dist DISTRIBUTION   (the plugin, its first-party dependencies, core)
#
# It then checks that `energyat plugins` lists exactly the plugins of DISTRIBUTION's
# first-party dependency closure (found by reading plugins/*/pyproject.toml), without errors,
# and trains `--method PRESET` for one tiny epoch on the synthetic dataset on CPU. Takes a
# few minutes (mostly the torch install).
set -euo pipefail
if [ $# -ne 2 ]; then
  echo "usage: bash scripts/check-standalone.sh DISTRIBUTION PRESET   (e.g. energyat-weat weat)" >&2
  exit 2
fi
DIST=$1
PRESET=$2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
START=$SECONDS
export PIP_DISABLE_PIP_VERSION_CHECK=1

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
VENV=$TMP/venv
"$PY" -m venv "$VENV"
VPY=$VENV/bin/python

# 1. torch (pinned; these versions come from the local pip cache where there is one) and
#    setuptools, which `make wheels` uses (--no-build-isolation)
"$VPY" -m pip install -q "torch==2.14.1" "torchvision==0.29.1" "setuptools>=64" wheel

# 2. the plugin names to expect (DIST's first-party dependency closure, from the plugins'
#    pyproject.toml files), then the first-party plugin names that must be absent
RESOLVED=$("$VPY" - "$ROOT" "$DIST" <<'EOF'
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    sys.exit("check-standalone.sh needs Python >= 3.11 (tomllib) to read pyproject.toml files")


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def requirement_name(req: str) -> str:
    for i, ch in enumerate(req):
        if not (ch.isalnum() or ch in "-_."):
            return canonical(req[:i])
    return canonical(req)


root, wanted = Path(sys.argv[1]), canonical(sys.argv[2])
projects = {}  # distribution -> (directory, dependencies, entry-point names)
for path in [root / "pyproject.toml", *sorted(root.glob("plugins/*/pyproject.toml"))]:
    try:
        project = tomllib.loads(path.read_text())["project"]
    except (tomllib.TOMLDecodeError, KeyError) as err:
        print(f"warning: skipping {path}: {err}", file=sys.stderr)
        continue
    entry_points = project.get("entry-points", {}).get("energyat", {})
    deps = [requirement_name(d) for d in project.get("dependencies", [])]
    projects[canonical(project["name"])] = (path.parent, deps, sorted(entry_points))
if wanted not in projects or wanted == "energyat-core":
    plugins = ", ".join(sorted(d for d in projects if d != "energyat-core"))
    sys.exit(f"unknown plugin distribution '{sys.argv[2]}'; the plugins are: {plugins}")
closure, todo = {"energyat-core"}, [wanted]
while todo:
    dist = todo.pop()
    if dist in closure:
        continue
    closure.add(dist)
    todo += [d for d in projects[dist][1] if d in projects]
print(" ".join(sorted(ep for d in closure for ep in projects[d][2])))
print(" ".join(sorted(ep for d, p in projects.items() if d not in closure for ep in p[2])))
EOF
)
mapfile -t LINES <<<"$RESOLVED"
PRESENT=${LINES[0]}
ABSENT=${LINES[1]}

# 3. the documented install: wheels of every distribution, then the one plugin from dist/
#    (pip finds its first-party dependencies there; the rest comes from the index or cache)
echo "installing $DIST into a fresh environment: make wheels && pip install --find-links dist $DIST"
(cd "$ROOT" && make -s wheels PYTHON="$VPY")
(cd "$ROOT" && "$VPY" -m pip install -q --find-links dist "$DIST")

# 4. `energyat plugins` lists the closure's plugins, all ok, and none of the others
LISTING=$(COLUMNS=200 "$VENV/bin/energyat" plugins)
echo "$LISTING"
FAILED=0
for name in $PRESENT; do
  if ! grep -Eq "[│|] $name +[│|].*[│|] ok +[│|]" <<<"$LISTING"; then
    echo "FAIL: plugin '$name' is not listed as ok" >&2
    FAILED=1
  fi
done
for name in $ABSENT; do
  if grep -Eq "[│|] $name +[│|]" <<<"$LISTING"; then
    echo "FAIL: plugin '$name' is listed but $DIST does not depend on it" >&2
    FAILED=1
  fi
done
[ "$FAILED" -eq 0 ] || exit 1

# 5. one tiny epoch of the preset on the synthetic dataset, on CPU
"$VENV/bin/energyat" train --method "$PRESET" --backbone small_cnn --dataset synthetic \
  --set dataset.n_train=256 --set dataset.n_test=100 --eval-n 100 --epochs 1 --device cpu \
  --out "$TMP/run" --quiet
test -s "$TMP/run/model.safetensors" || { echo "FAIL: no model.safetensors written" >&2; exit 1; }
echo "standalone check of $DIST (--method $PRESET) passed in $((SECONDS - START)) s"
