"""Write docs/hooks.md from the kinds table and the hook docstrings.

Run ``python scripts/gen_hook_docs.py``; ``tests/test_docs.py`` fails when the file is stale.
The list of kinds comes from :data:`energyat_core.kinds.KINDS`, each hook's text from
``energyat_core/hookspecs.py``.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

from energyat_core import hookspecs
from energyat_core.kinds import KINDS

OUT = Path(__file__).resolve().parent.parent / "docs" / "hooks.md"


def _hook(name: str) -> list[str]:
    fn = getattr(hookspecs, name)
    return [f"### `{name}{inspect.signature(fn)}`", "", inspect.cleandoc(fn.__doc__ or ""), ""]


def render() -> str:
    lines = [
        "# Hook reference",
        "",
        "Generated from `energyat_core/kinds.py` and `energyat_core/hookspecs.py` by `scripts/gen_hook_docs.py`.",
        "",
        inspect.cleandoc(hookspecs.__doc__ or ""),
        "",
        "## Kinds of component",
        "",
        "| kind | base class (`energyat_core.api`) | hook | part of a training run | what it answers |",
        "|---|---|---|---|---|",
    ]
    for k in KINDS:
        run = f"`{k.flag}`, default `{k.default}`" if k.in_run else "no"
        lines.append(f"| {k.name} | `{k.base.__name__}` | `{k.hook}` | {run} | {k.help} |")
    lines += ["", "## Component hooks", ""]
    for k in KINDS:
        lines += _hook(k.hook)
    lines += ["## Other hooks", ""]
    for name in ("register_methods", "register_commands"):
        lines += _hook(name)
    return "\n".join(lines)


if __name__ == "__main__":
    OUT.write_text(render())
    sys.stdout.write(f"wrote {OUT}\n")
