"""ferdata/train/backbones.py: torchvision-format checkpoints load into resnet18_tv / resnet50_tv."""

import json
import struct

import numpy as np
import pytest
import torch

from ferdata.core.errors import FerdataError
from ferdata.train.backbones import build_backbone, load_weights


def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{k}": (c,) for k in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": ()
    }


def torchvision_shapes(depths: tuple[int, ...], bottleneck: bool, classes: int = 1000) -> dict[str, tuple]:
    """The names and shapes of torchvision's resnet state dict, written out from its published layout."""
    shapes = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64)}
    cin, exp = 64, 4 if bottleneck else 1
    for stage, (width, depth) in enumerate(zip((64, 128, 256, 512), depths), start=1):
        for block in range(depth):
            p = f"layer{stage}.{block}"
            stride = 2 if stage > 1 and block == 0 else 1
            if bottleneck:
                shapes |= {f"{p}.conv1.weight": (width, cin, 1, 1), **_bn(f"{p}.bn1", width)}
                shapes |= {f"{p}.conv2.weight": (width, width, 3, 3), **_bn(f"{p}.bn2", width)}
                shapes |= {f"{p}.conv3.weight": (width * 4, width, 1, 1), **_bn(f"{p}.bn3", width * 4)}
            else:
                shapes |= {f"{p}.conv1.weight": (width, cin, 3, 3), **_bn(f"{p}.bn1", width)}
                shapes |= {f"{p}.conv2.weight": (width, width, 3, 3), **_bn(f"{p}.bn2", width)}
            if block == 0 and (stride != 1 or cin != width * exp):
                shapes |= {
                    f"{p}.downsample.0.weight": (width * exp, cin, 1, 1),
                    **_bn(f"{p}.downsample.1", width * exp),
                }
            cin = width * exp
    return shapes | {"fc.weight": (classes, cin), "fc.bias": (classes,)}


def _state(shapes: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.tensor(7) if k.endswith("num_batches_tracked") else torch.randn(s, generator=g)
        for k, s in shapes.items()
    }


ARCH = {"resnet18_tv": ((2, 2, 2, 2), False, 122), "resnet50_tv": ((3, 4, 6, 3), True, 320)}


@pytest.mark.parametrize("name", list(ARCH))
def test_torchvision_checkpoint_loads_every_tensor_and_replaces_the_head(name, tmp_path):
    depths, bottleneck, count = ARCH[name]
    state = _state(torchvision_shapes(depths, bottleneck))
    assert len(state) == count  # torchvision's resnet18 / resnet50 state dicts have 122 / 320 entries
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pth")
    model = build_backbone(name, 7)
    report = load_weights(model, name, tmp_path / "w.pth")
    assert report.line().startswith(f"initial weights {tmp_path / 'w.pth'}: {count - 2} tensors matched, head replaced")
    assert len(report.matched) == count - 2 and report.head == ["fc.weight", "fc.bias"]
    assert not report.missing and not report.unexpected
    own = model.state_dict()
    assert all(torch.equal(own[k], state[k]) for k in report.matched)
    assert model.head is model.fc and model.fc.weight.shape == (7, model.embed_dim)
    x = torch.randn(2, 3, 64, 64)
    assert model(x).shape == (2, 7)
    model(x).sum().backward()


def _write_safetensors(path, state):
    """The format: u64 header length, a JSON header of dtype/shape/offsets, the raw little-endian bytes."""
    header, blobs, at = {}, [], 0
    for k, v in state.items():
        raw = v.numpy().astype("<f4" if v.is_floating_point() else "<i8").tobytes()
        header[k] = {
            "dtype": "F32" if v.is_floating_point() else "I64",
            "shape": list(v.shape),
            "data_offsets": [at, at + len(raw)],
        }
        blobs.append(raw)
        at += len(raw)
    head = json.dumps({"__metadata__": {"format": "pt"}, **header}).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def test_safetensors_checkpoint_loads(tmp_path):
    state = _state(torchvision_shapes((2, 2, 2, 2), False), seed=1)
    _write_safetensors(tmp_path / "w.safetensors", state)
    model = build_backbone("resnet18_tv", 5, weights=tmp_path / "w.safetensors")
    assert torch.equal(model.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    assert int(model.bn1.num_batches_tracked) == 7


def _one_line_error(name, path):
    with pytest.raises(FerdataError) as err:
        build_backbone(name, 7, weights=path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    return str(err.value)


def test_a_checkpoint_of_another_network_is_a_one_line_error(tmp_path):
    torch.save(_state(torchvision_shapes((3, 4, 6, 3), True)), tmp_path / "r50.pth")
    assert "layer1.0.conv1.weight is (64, 64, 1, 1) in the file" in _one_line_error("resnet18_tv", tmp_path / "r50.pth")
    torch.save(build_backbone("small_cnn", 7).state_dict(), tmp_path / "small.pt")
    assert "none of its" in _one_line_error("resnet18_tv", tmp_path / "small.pt")
    partial = {k: v for k, v in _state(torchvision_shapes((2, 2, 2, 2), False)).items() if "layer4" not in k}
    torch.save(partial, tmp_path / "partial.pt")
    assert "unset" in _one_line_error("resnet18_tv", tmp_path / "partial.pt")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert "not a weights-only" in _one_line_error("resnet18_tv", tmp_path / "junk.pth")
    assert "not found" in _one_line_error("resnet50_tv", tmp_path / "missing.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"\x01")
    assert "not a readable .safetensors" in _one_line_error("resnet18_tv", tmp_path / "bad.safetensors")


@pytest.mark.parametrize(
    "header, why",
    [
        (b"[1, 2]", "not an object"),
        (b"null", "not an object"),
        (b"{not json", "not JSON"),
        (b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}', "do not match"),
        (b'{"w": {"dtype": "F32", "shape": [400], "data_offsets": [0, 1600]}}', "do not match"),
        (b'{"w": {"dtype": "Q8", "shape": [2], "data_offsets": [0, 8]}}', "dtype 'Q8'"),
        (b'{"w": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}', "malformed"),
        (b'{"w": [1]}', "no dtype"),
    ],
)
def test_damaged_safetensors_headers_are_one_line(tmp_path, header, why):
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    assert why in _one_line_error("resnet18_tv", path)


def test_a_huge_safetensors_file_is_judged_by_its_header_without_reading_it(tmp_path):
    """A 12 GiB sparse file whose header claims more than the file holds: refused at once, not read."""
    import resource
    import time

    path = tmp_path / "big.safetensors"
    header = b'{"w": {"dtype": "F32", "shape": [4000000000], "data_offsets": [0, 16000000000]}}'
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(header)) + header)
        fh.truncate(12 * 2**30)
    before, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.time()
    assert "do not match" in _one_line_error("resnet18_tv", path)
    assert time.time() - start < 5 and resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # KiB


def test_our_own_checkpoints_still_load_body_only(tmp_path):
    src = build_backbone("resnet18", 5)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    model = build_backbone("resnet18", 7)
    assert load_weights(model, "resnet18", tmp_path / "w.pt").head == ["head.weight", "head.bias"]
    assert np.allclose(model.body[0][0].weight.detach(), src.body[0][0].weight.detach())
