"""The ``proxy`` data source: synthetic images mixed 1:1 (by default) into every real batch.

Sehwag et al. (ICLR 2022), "Robust learning meets generative models: can proxy
distributions improve adversarial robustness?": every step trains on a real batch and a
batch of synthetic images together, shuffled; an epoch stays one pass over the real data.
The synthetic images are labelled by the generator's class (stored in the file) or by a
pseudo-labelling classifier, and are not augmented.

Sampling is without replacement across epochs: a seeded permutation of the synthetic set
is consumed in order, and a new one is drawn when it runs out. Under ``torchrun`` all
ranks walk the same sequence and each takes every ``world_size``-th image of a step's
share, so that the ranks share the images out instead of repeating them. The position in that
sequence is the source's state, so ``--resume`` continues with the images an
uninterrupted run would have seen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from energyat_core.api import (
    MODEL_FILE,
    DataError,
    DataSource,
    RunContext,
    load_arrays,
    load_run,
    option,
    save_arrays,
    seeded_generator,
)
from energyat_proxy.npz import ProxySet, load_proxy

PSEUDO_LABELS_FILE = "proxy_pseudo_labels.npz"
#: images per forward pass of the pseudo-labelling classifier
LABEL_BATCH = 512


def extra_count(ratio: float, n_real: int) -> int:
    """Synthetic images to add to a real batch of ``n_real``: ``ratio * n_real``, rounded half up."""
    return int(math.floor(ratio * n_real + 0.5))


def to_float_nchw(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 [N, H, W, C] on the host -> float [N, C, H, W] in [0, 1] on ``device`` (converted there)."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    if device.type == "cuda":
        x = x.pin_memory()
    x = x.to(device, non_blocking=True)
    return x.permute(0, 3, 1, 2).float().div_(255).contiguous()


def absolute(path: str) -> str:
    """``path`` as an absolute path (``~`` expanded), independent of the working directory."""
    return str(Path(path).expanduser().resolve())


def file_identity(path: Path) -> str:
    """Resolved path, size and modification time: changes whenever the file does."""
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"


class ProxySource(DataSource):
    """Synthetic (proxy-distribution) images mixed into every batch, unaugmented (Sehwag et al. 2022).

    Each step gets ``round(ratio * n_real)`` images of the ``.npz`` at ``path`` (uint8
    ``images`` [N, H, W, C] and integer ``labels`` [N]), drawn without replacement across
    epochs from a permutation seeded by the run seed. With ``labels=pseudo`` the labels are
    the argmax of the classifier in ``pseudo_labeler``, computed once and cached in the run
    directory. Images larger than ``memory_budget_mb`` are memory-mapped.
    """

    @dataclass
    class Config:
        """Options of the ``proxy`` source; ``path`` first, so that ``--source proxy:PATH`` sets it."""

        path: str = option(
            "",
            "the .npz of proxy images: uint8 'images' [N, H, W, C] and integer 'labels' [N] ('x'/'y' also "
            "accepted), e.g. the samples.npz of `energyat generate`; --source proxy:PATH sets it. Stored as an "
            "absolute path, so that --resume works from any directory",
        )
        ratio: float = option(
            1.0, "synthetic images per real image in each batch: round(ratio * n_real) extra (1: 128 + 128)", gt=0
        )
        labels: Literal["stored", "pseudo"] = option(
            "stored", "stored: the file's labels (the generator's classes); pseudo: the argmax of pseudo_labeler"
        )
        pseudo_labeler: str | None = option(
            None,
            "run directory of a trained classifier that labels the images (labels=pseudo); cached in the run dir. "
            "Stored as an absolute path",
        )
        memory_budget_mb: int = option(
            2048, "images larger than this (MiB) are memory-mapped from the file instead of read into memory", ge=0
        )

        def __post_init__(self) -> None:
            # paths relative to where the run was started would break `--resume` from elsewhere
            if self.path:
                self.path = absolute(self.path)
            if self.pseudo_labeler:
                self.pseudo_labeler = absolute(self.pseudo_labeler)

        def check(self) -> None:
            """Cross-option rules: a file is given, a finite ratio, and a pseudo-labeller exactly with labels=pseudo."""
            if not self.path:
                raise ValueError("no file of synthetic images given; use --source proxy:PATH (an .npz)")
            if not math.isfinite(self.ratio):
                raise ValueError(f"ratio must be a finite number of synthetic images per real one, got {self.ratio}")
            if self.labels == "pseudo" and not self.pseudo_labeler:
                raise ValueError(
                    "labels=pseudo needs pseudo_labeler=RUN_DIR, the run directory of a trained classifier"
                )
            if self.labels == "stored" and self.pseudo_labeler:
                raise ValueError("pseudo_labeler is used only with labels=pseudo; add --set source.labels=pseudo")

    proxy: ProxySet
    labels: np.ndarray

    def setup(self, ctx: RunContext) -> None:
        """Open and validate the proxy file against the real data; pseudo-label it if asked."""
        cfg = self.config
        if ctx.data is None:
            raise DataError("the proxy source needs the run's real data to check the file against", "use it in a run")
        self.device = ctx.device
        self.seed = ctx.seed
        # under torchrun every rank walks the same sequence and takes every world_size-th image of each step's share
        self.rank, self.world_size = (ctx.dist.rank, ctx.dist.world_size) if ctx.dist is not None else (0, 1)
        self.proxy = load_proxy(
            cfg.path,
            image_shape=ctx.data.image_shape,
            num_classes=ctx.num_classes,
            need_labels=cfg.labels == "stored",
            memory_budget_mb=cfg.memory_budget_mb,
        )
        if cfg.labels == "pseudo":
            self.labels = self._pseudo_labels(ctx)
        else:
            assert self.proxy.labels is not None
            self.labels = self.proxy.labels
        self.pass_index = 0  # which permutation of the synthetic set is being consumed
        self.cursor = 0  # position in it
        self._perm: tuple[int, np.ndarray] | None = None

    # -- sampling -----------------------------------------------------------------------
    def permutation(self, pass_index: int) -> np.ndarray:
        """The order of the synthetic set in its ``pass_index``-th pass (a function of the run seed only)."""
        if self._perm is None or self._perm[0] != pass_index:
            gen = seeded_generator("energyat-proxy", self.seed, pass_index)
            self._perm = (pass_index, torch.randperm(len(self.proxy), generator=gen).numpy())
        return self._perm[1]

    def take(self, n: int) -> np.ndarray:
        """The next ``n`` indices of the sequence of permutations (starting a new one when one runs out)."""
        out = []
        size = len(self.proxy)
        while n > 0:
            step = min(n, size - self.cursor)
            out.append(self.permutation(self.pass_index)[self.cursor : self.cursor + step])
            self.cursor += step
            n -= step
            if self.cursor == size:
                self.pass_index, self.cursor = self.pass_index + 1, 0
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def next_batch(self, n_real: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``round(ratio * n_real)`` synthetic images (float NCHW in [0, 1], no augmentation) and labels."""
        n = extra_count(self.config.ratio, n_real)
        idx = self.take(n * self.world_size)[self.rank :: self.world_size]
        idx = np.sort(idx)  # sequential reads of a memory-mapped file
        x = to_float_nchw(np.asarray(self.proxy.images[idx]), self.device)
        y = torch.from_numpy(self.labels[idx]).to(self.device, non_blocking=True)
        return x, y

    def state_dict(self) -> dict[str, Any]:
        """Where the sampling stands: the pass (permutation) index, the position in it, and the set's size."""
        return {"pass_index": self.pass_index, "cursor": self.cursor, "num_images": len(self.proxy)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue sampling where :meth:`state_dict` left off (the same file is required)."""
        if not state:  # a checkpoint written without this source: start from the beginning
            return
        if int(state["num_images"]) != len(self.proxy):
            raise DataError(
                f"the run was trained with {int(state['num_images'])} proxy images but '{self.proxy.path}' "
                f"now holds {len(self.proxy)}",
                "resume with the proxy file the run started with, or start a new run",
            )
        self.pass_index, self.cursor = int(state["pass_index"]), int(state["cursor"])

    # -- pseudo-labels ------------------------------------------------------------------
    def _pseudo_labels(self, ctx: RunContext) -> np.ndarray:
        """The labeller's argmax on every proxy image, computed once and cached in the run directory."""
        labeler_dir = Path(self.config.pseudo_labeler).expanduser()
        cache = Path(ctx.run_dir) / PSEUDO_LABELS_FILE if ctx.run_dir is not None else None
        key = None
        if (labeler_dir / MODEL_FILE).is_file():
            key = f"{file_identity(self.proxy.path)}|{file_identity(labeler_dir / MODEL_FILE)}"
        if cache is not None and key is not None:
            arrays = load_arrays(cache)
            if arrays is not None and str(arrays.get("key")) == key and len(arrays["labels"]) == len(self.proxy):
                return arrays["labels"].astype(np.int64)
        run = load_run(labeler_dir, device=ctx.device)
        if run.data.num_classes != ctx.num_classes:
            raise DataError(
                f"the pseudo-labeller '{labeler_dir}' has {run.data.num_classes} classes but the real dataset has "
                f"{ctx.num_classes}",
                "pseudo-label with a classifier trained on the dataset you train on",
            )
        if ctx.data is not None and run.data.image_shape != ctx.data.image_shape:
            raise DataError(
                f"the pseudo-labeller '{labeler_dir}' takes {run.data.image_shape} images but the real ones are "
                f"{ctx.data.image_shape}",
                "pseudo-label with a classifier trained on the dataset you train on",
            )
        model = run.model.eval()
        labels = np.empty(len(self.proxy), dtype=np.int64)
        with torch.no_grad(), ctx.autocast():
            for start in range(0, len(self.proxy), LABEL_BATCH):
                x = to_float_nchw(np.asarray(self.proxy.images[start : start + LABEL_BATCH]), ctx.device)
                labels[start : start + len(x)] = model(x).argmax(1).cpu().numpy()
        if cache is not None and key is not None:
            save_arrays(cache, {"labels": labels, "key": np.array(key)})
        return labels
