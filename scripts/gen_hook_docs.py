"""Write docs/hooks.md from the docstrings in energyat_core/hookspecs.py.

Run ``python scripts/gen_hook_docs.py``; ``tests/test_docs.py`` fails when the file is stale.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

from energyat_core import hookspecs

OUT = Path(__file__).resolve().parent.parent / "docs" / "hooks.md"


def render() -> str:
    lines = ["# Hook reference", "", "Generated from `energyat_core/hookspecs.py` by `scripts/gen_hook_docs.py`.", ""]
    lines += [inspect.cleandoc(hookspecs.__doc__ or ""), ""]
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction):
        if not name.startswith("register_"):
            continue
        lines += [f"## `{name}{inspect.signature(fn)}`", "", inspect.cleandoc(fn.__doc__ or ""), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    OUT.write_text(render())
    sys.stdout.write(f"wrote {OUT}\n")
