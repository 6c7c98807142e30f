"""How training runs on its device: precision (autocast, a grad scaler for fp16), channels_last on CUDA,
optional torch.compile, and augmentation of whole batches on the device.

The training loop, the out-of-fold prior (through the loop) and the VA regressor share it. On a CPU the
defaults change nothing: fp32, contiguous tensors, augmentation in the DataLoader workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ferdata.core.errors import UsageError
from ferdata.train.backbones import Backbone
from ferdata.train.settings import AUGMENT_DEVICES, PRECISIONS

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
MEAN, STD = 0.5, 0.25


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto: bf16 on a GPU that has it, fp16 (with a grad scaler) on one that does not, fp32 on a CPU."""
    if precision not in PRECISIONS:
        raise UsageError(f"train.precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def resolve_augment_device(augment_device: str, device: torch.device) -> bool:
    """True when weak/strong views are made on the training device (kornia), False for CPU workers."""
    if augment_device not in AUGMENT_DEVICES:
        raise UsageError(f"train.augment_device {augment_device!r}: use one of {', '.join(AUGMENT_DEVICES)}")
    if augment_device == "cuda" and device.type != "cuda":
        raise UsageError("train.augment_device cuda needs a GPU and this run has none; use auto or cpu")
    return device.type == "cuda" and augment_device != "cpu"


def unit_images(images: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 N x H x W x 3 -> float N x 3 x H x W in [0, 1] on ``device`` (channels_last on CUDA)."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


def normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - MEAN) / STD


def to_input(images: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 N x H x W x 3 -> the network's normalised float input on ``device``."""
    return normalise(unit_images(images, device))


@dataclass
class Engine:
    """The resolved way one run trains: device, precision, compile, where augmentation happens."""

    device: torch.device
    precision: str = "fp32"  # bf16, fp16 or fp32 (resolved)
    compile: bool = False
    augment_on_device: bool = False
    _augment: torch.nn.Module | None = field(default=None, repr=False)

    @classmethod
    def create(
        cls, device: torch.device, *, precision: str = "auto", compile: bool = False, augment_device: str = "cpu"
    ) -> Engine:
        return cls(
            device, resolve_precision(precision, device), compile, resolve_augment_device(augment_device, device)
        )

    def prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        """Move ``module`` to the device (channels_last on CUDA); every backbone inside it runs its body at
        this precision, compiled when asked."""
        fmt = torch.channels_last if self.device.type == "cuda" else torch.contiguous_format
        module = module.to(self.device, memory_format=fmt)
        for m in module.modules():
            if isinstance(m, Backbone):
                m.amp_dtype = AMP_DTYPES.get(self.precision)
                if self.compile:
                    m.compile_body()
        return module

    def describe(self) -> dict[str, str | bool]:
        """What ``auto`` became on this machine, for the checkpoint and the tables' metadata."""
        return {
            "device": self.device.type,
            "precision": self.precision,
            "channels_last": self.device.type == "cuda",
            "compile": self.compile,
            "augment_device": "cuda" if self.augment_on_device else "cpu",
        }

    def scaler(self) -> torch.amp.GradScaler | None:
        """A grad scaler for fp16 (bf16 and fp32 need none)."""
        return torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None

    def views(self, batch: dict[str, torch.Tensor], augment: str) -> dict[str, torch.Tensor]:
        """The batch's network inputs, ``image`` (and ``strong`` for two views): augmented here on the
        device when ``augment_on_device`` (the loader then served plain faces and the request's seed),
        as the workers made them otherwise."""
        if not self.augment_on_device or augment == "none":
            return {k: to_input(batch[k], self.device) for k in ("image", "strong") if k in batch}
        if self._augment is None:
            from ferdata.augment import BatchAugment

            self._augment = BatchAugment()
        views = self._augment(unit_images(batch["image"], self.device), augment, int(batch["seed"]))
        return {k: normalise(v) for k, v in views.items()}
