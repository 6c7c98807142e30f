"""Face detection with 5 landmarks for photos that are not aligned yet.

``mtcnn``: the three-stage cascade of Zhang et al. (2016), P-Net proposals over an image pyramid,
R-Net refinement, O-Net boxes + 5 landmarks, written here in torch. Its trained weights are the MIT
licensed ``pnet.pt``/``rnet.pt``/``onet.pt`` files that ship inside the ``facenet-pytorch`` wheel; that
package is never imported (it pins an old torch and imports torchvision), only its files are read,
with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from ferdata.core.errors import FerdataError

WEIGHT_FILES = ("pnet.pt", "rnet.pt", "onet.pt")
INSTALL_HINT = (
    "pip install --no-deps facenet-pytorch==2.6.0 (only its weight files are used), or set "
    "align.mtcnn_weights to a folder holding pnet.pt, rnet.pt and onet.pt"
)


@dataclass
class Face:
    """One detection: box (x1, y1, x2, y2), score, and 5 landmarks (eyes, nose, mouth corners) as (5, 2)."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray


class PNet(nn.Module):
    """Proposal net: fully convolutional, 12x12 receptive field, stride 2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return torch.softmax(self.conv4_1(x), 1)[:, 1], self.conv4_2(x)


def _flatten_caffe(x: torch.Tensor) -> torch.Tensor:
    """Flatten in the (W, H, C) order the converted Caffe weights of the dense layers expect."""
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class RNet(nn.Module):
    """Refinement net on 24x24 crops."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool(self.prelu1(self.conv1(x)))
        x = self.pool(self.prelu2(self.conv2(x)))
        x = self.prelu4(self.dense4(_flatten_caffe(self.prelu3(self.conv3(x)))))
        return torch.softmax(self.dense5_1(x), 1)[:, 1], self.dense5_2(x)


class ONet(nn.Module):
    """Output net on 48x48 crops: score, box regression, 5 landmarks (x1..x5, y1..y5 in the crop)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.pool3, self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True), nn.MaxPool2d(2, 2, ceil_mode=True)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool3(self.prelu1(self.conv1(x)))
        x = self.pool3(self.prelu2(self.conv2(x)))
        x = self.pool2(self.prelu3(self.conv3(x)))
        x = self.prelu5(self.dense5(_flatten_caffe(self.prelu4(self.conv4(x)))))
        return torch.softmax(self.dense6_1(x), 1)[:, 1], self.dense6_2(x), self.dense6_3(x)


def find_weights(folder: str | Path | None = None) -> Path:
    """The folder holding the MTCNN weight files: ``folder``, else the installed facenet-pytorch's data/."""
    if folder:
        path = Path(folder).expanduser()
    else:
        spec = importlib.util.find_spec("facenet_pytorch")  # locates the package without importing it
        if spec is None or not spec.submodule_search_locations:
            raise FerdataError(f"align.detector mtcnn needs its weight files: {INSTALL_HINT}")
        path = Path(next(iter(spec.submodule_search_locations))) / "data"
    missing = [name for name in WEIGHT_FILES if not (path / name).is_file()]
    if missing:
        raise FerdataError(f"{path} lacks {', '.join(missing)}: {INSTALL_HINT}")
    return path


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, *, mode: str = "union") -> np.ndarray:
    """Indices kept by greedy non-maximum suppression (overlap over union, or over the smaller box)."""
    x1, y1, x2, y2 = boxes.T
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        denom = np.minimum(area[i], area[rest]) if mode == "min" else area[i] + area[rest] - inter
        order = rest[inter / denom <= threshold]
    return np.array(keep, dtype=np.int64)


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    return boxes + reg * np.stack([w, h, w, h], 1)


def _square(boxes: np.ndarray) -> np.ndarray:
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    x1, y1 = boxes[:, 0] + (w - side) / 2, boxes[:, 1] + (h - side) / 2
    return np.stack([x1, y1, x1 + side, y1 + side], 1)


def _crops(img: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Crops of integer boxes, zero-padded outside the image, resized to ``size`` (N, size, size, 3)."""
    h, w = img.shape[:2]
    out = np.zeros((len(boxes), size, size, 3), np.float32)
    for k, (x1, y1, x2, y2) in enumerate(np.floor(boxes).astype(np.int64)):
        bw, bh = x2 - x1 + 1, y2 - y1 + 1
        if bw < 2 or bh < 2:
            continue
        patch = np.zeros((bh, bw, 3), np.uint8)
        sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, w - 1), min(y2, h - 1)
        if sx2 < sx1 or sy2 < sy1:
            continue
        patch[sy1 - y1 : sy2 - y1 + 1, sx1 - x1 : sx2 - x1 + 1] = img[sy1 : sy2 + 1, sx1 : sx2 + 1]
        out[k] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
    return out


class MTCNN:
    """Detect faces and 5 landmarks in RGB uint8 images."""

    def __init__(
        self,
        weights: str | Path | None = None,
        *,
        min_face: int = 20,
        factor: float = 0.709,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        device: str | torch.device | None = None,
    ):
        folder = find_weights(weights)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.nets = []
        for cls, name in zip((PNet, RNet, ONet), WEIGHT_FILES):
            net = cls()
            net.load_state_dict(torch.load(folder / name, map_location="cpu", weights_only=True))
            self.nets.append(net.to(self.device).eval())
        self.min_face, self.factor, self.thresholds = min_face, factor, thresholds

    def _tensor(self, batch: np.ndarray) -> torch.Tensor:
        """NHWC uint8/float pixels to the normalised NCHW input the nets were trained on."""
        return (
            torch.from_numpy(np.ascontiguousarray(batch, np.float32)).permute(0, 3, 1, 2).to(self.device) - 127.5
        ) / 128.0

    def _proposals(self, img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        scale = 12.0 / self.min_face
        side = min(h, w) * scale
        found = []
        while side >= 12:
            sh, sw = int(np.ceil(h * scale)), int(np.ceil(w * scale))
            resized = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_AREA)
            prob, reg = self.nets[0](self._tensor(resized[None]))
            prob, reg = prob[0].cpu().numpy(), reg[0].cpu().numpy()
            ys, xs = np.nonzero(prob >= self.thresholds[0])
            if len(ys):
                boxes = np.stack(
                    [(2 * xs + 1) / scale, (2 * ys + 1) / scale, (2 * xs + 12) / scale, (2 * ys + 12) / scale], 1
                ).astype(np.float64)
                boxes, scores, regs = np.floor(boxes), prob[ys, xs], reg[:, ys, xs].T
                keep = nms(boxes, scores, 0.5)
                found.append(np.concatenate([boxes[keep], scores[keep, None], regs[keep]], 1))
            scale *= self.factor
            side *= self.factor
        if not found:
            return np.zeros((0, 4))
        cand = np.concatenate(found)
        cand = cand[nms(cand[:, :4], cand[:, 4], 0.7)]
        return _square(_regress(cand[:, :4], cand[:, 5:9]))

    @torch.no_grad()
    def detect(self, img: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 image, best score first."""
        boxes = self._proposals(img)
        if not len(boxes):
            return []
        prob, reg = self.nets[1](self._tensor(_crops(img, boxes, 24)))
        prob, reg = prob.cpu().numpy(), reg.cpu().numpy()
        keep = prob >= self.thresholds[1]
        boxes, prob, reg = boxes[keep], prob[keep], reg[keep]
        if not len(boxes):
            return []
        keep = nms(boxes, prob, 0.7)
        boxes = _square(_regress(boxes[keep], reg[keep]))
        prob, reg, pts = (t.cpu().numpy() for t in self.nets[2](self._tensor(_crops(img, boxes, 48))))
        keep = prob >= self.thresholds[2]
        boxes, prob, reg, pts = boxes[keep], prob[keep], reg[keep], pts[keep]
        if not len(boxes):
            return []
        w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        lx, ly = w * pts[:, :5] + boxes[:, :1] - 1, h * pts[:, 5:] + boxes[:, 1:2] - 1
        boxes = _regress(boxes, reg)
        keep = nms(boxes, prob, 0.7, mode="min")
        return [Face(boxes[i], float(prob[i]), np.stack([lx[i], ly[i]], 1)) for i in keep]


INSIGHTFACE_DEFAULT = "~/.insightface/models/buffalo_l"


def find_insightface_model(folder: str | Path | None = None) -> Path:
    """A SCRFD/RetinaFace ONNX detector file in ``folder`` (never downloaded)."""
    path = Path(folder or INSIGHTFACE_DEFAULT).expanduser()
    found = [p for pattern in ("det_*.onnx", "scrfd*.onnx", "*retinaface*.onnx") for p in sorted(path.glob(pattern))]
    if not found:
        raise FerdataError(
            f"align.detector insightface needs a SCRFD or RetinaFace ONNX file (e.g. det_10g.onnx from "
            f"insightface's buffalo_l pack) in {path}; set align.insightface_models to its folder. "
            "ferdata never downloads it"
        )
    return found[0]


class InsightFace:
    """SCRFD/RetinaFace through insightface's model_zoo, from a local ONNX file."""

    def __init__(self, models: str | Path | None = None, *, det_size: int = 640):
        import onnxruntime
        from insightface.model_zoo import get_model

        providers = [
            p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in onnxruntime.get_available_providers()
        ]
        self.model = get_model(str(find_insightface_model(models)), providers=providers)
        self.model.prepare(ctx_id=0 if providers[0].startswith("CUDA") else -1, input_size=(det_size, det_size))
        self.det_size = det_size

    def detect(self, img: np.ndarray) -> list[Face]:
        """Faces in an RGB uint8 image, best score first."""
        boxes, points = self.model.detect(
            cv2.cvtColor(img, cv2.COLOR_RGB2BGR), input_size=(self.det_size, self.det_size)
        )
        if points is None:
            return []
        order = np.argsort(-boxes[:, 4], kind="stable")
        return [Face(boxes[i, :4].astype(np.float64), float(boxes[i, 4]), points[i].astype(np.float64)) for i in order]
