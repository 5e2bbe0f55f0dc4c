"""The export formats that hold the whole model, normalisation included: ``torchscript`` and ``onnx``.

Both take the :class:`~energyat_core.models.Classifier` as it is evaluated (eval mode, fp32,
CPU): images in [0, 1] go in, logits come out. The batch size is free; the image size is the
dataset's.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from energyat_core.errors import ConfigError, EnergyATError, first_line
from energyat_core.run_dir import temporary_path

#: the names of the ONNX graph's input and output
ONNX_INPUT, ONNX_OUTPUT = "images", "logits"
#: what the ``onnx`` format needs besides torch, and what checks its file
ONNX_PACKAGES = ("onnx", "onnxscript")
ONNX_RUNTIME = "onnxruntime"

Logits = Callable[[torch.Tensor], torch.Tensor]


def _replace(write: Callable[[Path], None], path: Path) -> None:
    """Write ``path`` through a temporary file next to it and an atomic rename."""
    tmp = temporary_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _failed(fmt: str, err: BaseException) -> EnergyATError:
    return EnergyATError(
        f"the model could not be exported to {fmt} ({type(err).__name__}: {first_line(err)[:200]})",
        "try the other formats (`energyat export RUN --format ...`); a backbone with Python control flow "
        "that depends on the input cannot be traced",
    )


# -- torchscript --------------------------------------------------------------------------
def write_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> list[str]:
    """Trace the model on ``example`` and save it with ``torch.jit.save``; return the loading code's lines."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings of shape-dependent Python code; torch.jit's deprecation
            traced = torch.jit.trace(model, example, check_trace=False)
            _replace(lambda tmp: torch.jit.save(traced, str(tmp)), path)
    except EnergyATError:
        raise
    except Exception as err:  # tracing fails in many ways (TypeError, RuntimeError, torch.jit errors)
        raise _failed("torchscript", err) from None
    return ["import torch", "", f"model = torch.jit.load({path.name!r})", "logits = model(x)"]


def read_torchscript(path: Path) -> Logits:
    """The saved file loaded with ``torch.jit.load``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
        module = torch.jit.load(str(path), map_location="cpu")
    return module


# -- onnx ---------------------------------------------------------------------------------
def missing_onnx_packages() -> list[str]:
    """The packages the ``onnx`` format needs that are not installed."""
    return [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]


def write_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> list[str]:
    """Export with ``torch.onnx.export`` (the torch.export-based exporter), the batch size left dynamic."""
    missing = missing_onnx_packages()
    if missing:
        raise ConfigError(
            f"the onnx format needs the {' and '.join(missing)} package{'s' if len(missing) > 1 else ''}",
            f"pip install {' '.join(missing)} (and {ONNX_RUNTIME} to check and run the file)",
        )

    def export(tmp: Path) -> None:
        batch = torch.export.Dim("batch")
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            input_names=[ONNX_INPUT],
            output_names=[ONNX_OUTPUT],
            dynamic_shapes=({0: batch},),
            external_data=False,
            dynamo=True,
            verbose=False,
        )

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _replace(export, path)
    except EnergyATError:
        raise
    except Exception as err:  # torch.export and the ONNX translation raise many kinds
        raise _failed("onnx", err) from None
    return [
        "import onnxruntime",
        "",
        f"session = onnxruntime.InferenceSession({path.name!r}, providers=['CPUExecutionProvider'])",
        f"logits = session.run(None, {{{ONNX_INPUT!r}: x.numpy()}})[0]",
    ]


def read_onnx(path: Path) -> Logits | None:
    """The file run by onnxruntime (``None`` without onnxruntime: the file is then only checked by ``onnx``)."""
    import onnx

    onnx.checker.check_model(str(path), full_check=True)
    if importlib.util.find_spec(ONNX_RUNTIME) is None:
        return None
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def logits(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {ONNX_INPUT: x.numpy()})[0])

    return logits
