"""energyat: adversarial training seen through energy-based models.

From Python (:mod:`energyat_core.library`, docs/python.md)::

    import energyat_core as ea
    run = ea.train(method="pgd-at", epochs=2, out="runs/demo")
    model = ea.load("runs/demo")
    x_adv = ea.attack("pgd", model, eps=8 / 255, steps=10)(x, y)
    report = ea.evaluate(model, (x, y), attacks=["fgsm"])
    ea.export_run("runs/demo", "onnx")    # also timm, torchvision, torchscript (docs/export.md)

The plugin contract is in :mod:`energyat_core.hookspecs`; components derive from the
bases in :mod:`energyat_core.components`; plugins import from :mod:`energyat_core.api`.
"""

from typing import Any

from energyat_core.hookspecs import hookimpl

__version__ = "0.1.0"

#: the library functions, imported on first use so that a plugin importing ``hookimpl`` stays light
_LIBRARY = ("train", "load", "attack", "evaluate", "Run", "AttackFn")
#: ``export_run(run_dir, format, out=None)``: :func:`energyat_core.export.export_run` (``energyat_core.export``
#: is the module)
_EXPORT = ("export_run",)

__all__ = ["__version__", "hookimpl", *_LIBRARY, *_EXPORT]


def __getattr__(name: str) -> Any:
    if name in _LIBRARY:
        from energyat_core import library

        return getattr(library, name)
    if name in _EXPORT:
        from energyat_core.export import export_run

        return export_run
    raise AttributeError(f"module 'energyat_core' has no attribute {name!r}")
