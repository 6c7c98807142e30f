"""Backbones: a small CNN that trains on a few CPU cores, a ResNet-18 for faces trained from scratch on a
GPU, and torchvision's ResNet-18/50 (same architecture and parameter names, written here without
importing torchvision) for the MS-Celeb-1M or ImageNet checkpoints FER papers start from.

Each maps an image batch to an embedding (``forward_features``) and logits (``forward``). The
convolutional body runs at the precision the trainer chose (``amp_dtype``, autocast); everything after
it (pooled features, heads, losses, soft labels) is float32.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ferdata.core.errors import FerdataError, UsageError


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Backbone(nn.Module):
    """A convolutional body (``run_body``), global average pooling to an ``embed_dim`` embedding,
    dropout, a linear ``head``."""

    body: nn.Module
    drop: nn.Module
    head: nn.Linear
    embed_dim: int
    head_prefix = "head."  # the head's names in a state dict (replaced when initial weights are loaded)
    amp_dtype: torch.dtype | None = None  # autocast dtype of the body; None: float32

    def run_body(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The body's output, float32 whatever precision the body ran at."""
        if self.amp_dtype is None:
            return self.run_body(x)
        with torch.autocast(x.device.type, dtype=self.amp_dtype):
            out = self.run_body(x)
        return out.float()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.forward_features(x)))

    def compile_body(self, backend: str = "inductor") -> None:
        """torch.compile the body (names in the state dict are unchanged)."""
        self.run_body = torch.compile(self.run_body, backend=backend)  # type: ignore[method-assign]


class SmallCNN(Backbone):
    """Four stride-2 stages of two 3x3 convolutions; ~1.2 M parameters."""

    def __init__(self, num_classes: int, width: int = 32, dropout: float = 0.2):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            _conv_bn(3, w, 2),
            _conv_bn(w, w),
            _conv_bn(w, 2 * w, 2),
            _conv_bn(2 * w, 2 * w),
            _conv_bn(2 * w, 4 * w, 2),
            _conv_bn(4 * w, 4 * w),
            _conv_bn(4 * w, 8 * w, 2),
            _conv_bn(8 * w, 8 * w),
        )
        self.embed_dim = 8 * w
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(self.embed_dim, num_classes)


class BasicBlock(nn.Module):
    """ResNet basic block."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = _conv_bn(cin, cout, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(self.conv1(x)) + self.short(x))


class ResNet18(Backbone):
    """ResNet-18 for 112x112 faces (3x3 stem, no max-pool), for GPU training from scratch."""

    def __init__(self, num_classes: int, dropout: float = 0.2):
        super().__init__()
        layers, cin = [_conv_bn(3, 64, 1)], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.body = nn.Sequential(*layers)
        self.embed_dim = 512
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(512, num_classes)


# --- torchvision's ResNets, parameter for parameter -------------------------------------------------


def _downsample(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class TVBasic(nn.Module):
    """torchvision's BasicBlock (names conv1, bn1, conv2, bn2, downsample)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(cin, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class TVBottleneck(nn.Module):
    """torchvision's Bottleneck (ResNet v1.5: the stride sits on the 3x3 convolution)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(cin, out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchvisionResNet(Backbone):
    """torchvision's ResNet: 7x7 stride-2 stem, 3x3 max-pool, four stages, ``fc`` head; state-dict
    names identical to ``torchvision.models.resnet18/50`` so their checkpoints load as they are."""

    head_prefix = "fc."

    def __init__(self, num_classes: int, block: type[nn.Module], depths: tuple[int, ...], dropout: float = 0.2):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (planes, depth) in enumerate(zip((64, 128, 256, 512), depths)):
            blocks = []
            for j in range(depth):
                blocks.append(block(cin, planes, 2 if i > 0 and j == 0 else 1))
                cin = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.embed_dim = cin
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():  # torchvision's initialisation, for training from scratch
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def head(self) -> nn.Linear:  # type: ignore[override]
        return self.fc

    def run_body(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def resnet18_tv(num_classes: int) -> TorchvisionResNet:
    return TorchvisionResNet(num_classes, TVBasic, (2, 2, 2, 2))


def resnet50_tv(num_classes: int) -> TorchvisionResNet:
    return TorchvisionResNet(num_classes, TVBottleneck, (3, 4, 6, 3))


NETWORKS: dict[str, Callable[[int], Backbone]] = {
    "small_cnn": SmallCNN,
    "resnet18": ResNet18,
    "resnet18_tv": resnet18_tv,
    "resnet50_tv": resnet50_tv,
}


# --- initial weights ---------------------------------------------------------------------------------

SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32}


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A .safetensors file's tensors (8-byte header length, JSON header, raw little-endian data). The
    header is checked before any tensor is read, and tensors are copied out of a memory map, so a huge or
    damaged file is refused without being read whole."""
    import mmap

    def bad(why: str) -> FerdataError:
        return FerdataError(f"{path} is not a readable .safetensors file ({why}); download it again")

    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise bad("shorter than its 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100 * 2**20):
            raise bad(f"header length {n} does not fit the file")
        try:
            header = json.loads(fh.read(n))
        except (ValueError, UnicodeDecodeError) as exc:
            raise bad(f"header is not JSON: {exc}") from None
        if not isinstance(header, dict):
            raise bad(f"header is a JSON {type(header).__name__}, not an object")
        specs = {name: spec for name, spec in header.items() if name != "__metadata__"}
        for name, spec in specs.items():
            check_tensor_spec(name, spec, size - 8 - n, bad)
        if not specs:
            return {}
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            data = memoryview(mapped)[8 + n :]
            try:
                return {name: tensor_from(data, spec) for name, spec in specs.items()}
            finally:
                data.release()


def check_tensor_spec(name: str, spec: Any, room: int, bad: Callable[[str], Exception]) -> None:
    """Raise ``bad(...)`` unless ``spec`` is a known dtype whose shape fills its byte range in the file."""
    if not isinstance(spec, dict) or not {"dtype", "shape", "data_offsets"} <= set(spec):
        raise bad(f"tensor {name!r} has no dtype, shape and data_offsets")
    dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if dtype != "BF16" and dtype not in SAFETENSORS_DTYPES:
        raise bad(f"tensor {name!r} has dtype {dtype!r}; ferdata reads {', '.join([*SAFETENSORS_DTYPES, 'BF16'])}")
    ints = (isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in [*shape, *offsets])
    if not (isinstance(shape, list) and isinstance(offsets, list) and len(offsets) == 2 and all(ints)):
        raise bad(f"tensor {name!r} has a malformed shape or data_offsets")
    width = 2 if dtype == "BF16" else np.dtype(SAFETENSORS_DTYPES[dtype]).itemsize
    begin, end = offsets
    if not begin <= end <= room or end - begin != width * math.prod(shape):
        raise bad(f"tensor {name!r}'s bytes {begin}-{end} do not match its shape {shape} or the file")


def tensor_from(data: memoryview, spec: dict) -> torch.Tensor:
    """One checked tensor, copied out of the file's bytes."""
    chunk = data[slice(*spec["data_offsets"])]
    if spec["dtype"] == "BF16":
        words = np.frombuffer(chunk, np.uint16).astype(np.int32) << 16
        return torch.from_numpy(words).view(torch.float32).reshape(spec["shape"]).clone()
    array = np.frombuffer(chunk, SAFETENSORS_DTYPES[spec["dtype"]]).reshape(spec["shape"])
    return torch.from_numpy(array.copy())


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file: a state dict, or one under ``state_dict``/``model``, with a
    ``module.`` (DataParallel) prefix removed; .safetensors read directly; pickles with weights_only."""
    if not path.is_file():
        raise FerdataError(
            f"initial weights {path} not found; give a local .pt/.pth/.safetensors file (ferdata downloads "
            "none: see the README's 'Pretrained backbones') or leave train.weights empty"
        )
    if path.suffix == ".safetensors":
        state = read_safetensors(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several kinds for a file that is not a safe checkpoint
            raise FerdataError(
                f"{path} is not a weights-only torch checkpoint ({type(exc).__name__}); "
                "save its state_dict() and point train.weights at that"
            ) from None
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
    if not isinstance(state, dict):
        raise FerdataError(f"{path} holds a {type(state).__name__}, not a state dict")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


@dataclass
class LoadReport:
    """How a checkpoint's tensors met a backbone's: matched, replaced (the head), missing, unexpected."""

    path: str
    matched: list[str] = field(default_factory=list)
    head: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def line(self) -> str:
        parts = [f"{len(self.matched)} tensors matched", f"head replaced ({len(self.head)} in the file)"]
        if self.missing:
            parts.append(f"{len(self.missing)} missing (e.g. {self.missing[0]})")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected, ignored (e.g. {self.unexpected[0]})")
        return f"initial weights {self.path}: " + ", ".join(parts)


def load_weights(model: Backbone, name: str, path: str | Path) -> LoadReport:
    """Load a checkpoint's body into ``model`` (the head is replaced: the classes differ); a checkpoint
    that leaves any body tensor unset or has a tensor of another shape is a one-line error."""
    path = Path(path)
    state = read_state_dict(path)
    own = model.state_dict()
    report = LoadReport(str(path))
    body = {}
    for key, value in state.items():
        if key.startswith(model.head_prefix):
            report.head.append(key)
        elif key not in own:
            report.unexpected.append(key)
        elif own[key].shape != value.shape:
            raise FerdataError(
                f"{path} does not fit train.backbone {name}: {key} is {tuple(value.shape)} in the file, "
                f"{tuple(own[key].shape)} in {name}; pick the backbone the checkpoint was trained as"
            )
        else:
            body[key] = value
    report.matched = sorted(body)
    report.missing = sorted(k for k in own if k not in body and not k.startswith(model.head_prefix))
    if not body:
        raise FerdataError(
            f"{path} does not fit train.backbone {name}: none of its {len(state)} tensors has a name of {name} "
            f"(e.g. {next(iter(state), 'none')!r} vs {next(iter(own))!r}); pick the matching backbone"
        )
    if report.missing:
        raise FerdataError(
            f"{path} leaves {len(report.missing)} tensors of {name} unset, e.g. "
            f"{report.missing[0]!r}; pick the backbone the checkpoint was trained as"
        )
    model.load_state_dict(body, strict=False)
    return report


def build_backbone(name: str, num_classes: int, *, weights: str | Path | None = None) -> Backbone:
    """Build backbone ``name``; optional initial weights from a local file (never from the network)."""
    if name not in NETWORKS:
        raise UsageError(f"unknown train.backbone {name!r}: use one of {', '.join(NETWORKS)}")
    model = NETWORKS[name](num_classes)
    if weights:
        load_weights(model, name, weights)
    return model
