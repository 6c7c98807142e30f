"""Training under torchrun: two CPU processes on the gloo backend."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ferdata.core.io import read_table


@pytest.mark.parametrize("method", ["ldlva"])  # the method with per-sample state; ce is the same loop
def test_torchrun_two_cpu_processes(trained_dir, tmp_path, method):
    data = tmp_path / "synth"
    shutil.copytree(trained_dir, data)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "ferdata.cli",
        "train",
        "--data",
        str(data),
        "--models",
        str(tmp_path / "models"),
        "--method",
        method,
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--image-size",
        "32",
        "--lr",
        "0.01",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("trained ") == 2  # both ranks finished
    assert "cpu, fp32, augmentation on cpu, 2 processes)" in proc.stdout
    learned, meta = read_table(tmp_path / "models" / "learned.parquet", "learned")
    assert meta["method"] == method and meta["engine"]["world_size"] == 2
    assert np.abs(np.stack(learned["distribution"].to_numpy()).sum(1) - 1).max() < 1e-5


def _ldlva_step(rank: int, world: int, out: str) -> None:
    """One LDLVA step on 4 faces: under DDP with ``world`` ranks (each its half; the caller has joined
    the process group), or in one process on the faces a rank holds (``world`` 1, ``rank`` picks the half)."""
    import torch

    from ferdata.train.backbones import build_backbone
    from ferdata.train.loop import Objective
    from ferdata.train.methods.ldlva import LDLVA

    torch.manual_seed(0)
    n, classes = 8, 3
    x = torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    knn = torch.tensor([[(i + 1) % n, (i + 2) % n] for i in range(n)])
    va = torch.rand(n, 2, generator=torch.Generator().manual_seed(2))
    model = build_backbone("small_cnn", classes)
    method = LDLVA(classes, model.embed_dim, labels=y, knn=knn, va=va, lambda_lr=100.0)
    method.start_epoch(torch.rand(n, model.embed_dim), torch.softmax(torch.rand(n, classes), 1))
    objective = Objective(model, method)
    net = objective
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(objective)
    mine = torch.arange(4) + 4 * rank  # rank 0 holds faces 0-3, rank 1 faces 4-7
    if world == 1 and rank == -1:
        mine = torch.arange(8)  # both halves as one batch
    net.train()
    loss = net(mine, x[mine], y[mine])
    loss.backward()
    method.own_optimizers()[0].step()
    torch.save({"logit": method.logit.detach().clone(), "centers": method.centers.clone()}, out)


def _centre_inputs(rank: int):
    import torch

    g = torch.Generator().manual_seed(10 + rank)
    return torch.rand(6, 4, generator=g), torch.tensor([0, 1, 1, 2, 2, 2]), torch.rand(6, generator=g)


def _ddp_worker(rank: int, world: int, init: str, folder: str) -> None:
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from ferdata.train.methods.ldlva import update_centers

    # one process group for both checks, with a timeout: a second rendezvous after a destroy could hang
    # for good on a loaded machine (seen once in CI); a stuck collective now fails the test instead
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world, timeout=timedelta(seconds=120))
    _ldlva_step(rank, world, f"{folder}/rank{rank}.pt")
    centers = torch.zeros(3, 4)
    update_centers(centers, *_centre_inputs(rank))
    torch.save(centers, f"{folder}/centres{rank}.pt")
    dist.destroy_process_group()


def test_ldlva_per_sample_trust_and_centres_are_right_under_ddp(tmp_path):
    """Under DDP each l_i steps as in one process with the same per-rank batch (DDP's mean over ranks
    would divide its rate by the world size), and the centres take one step for all ranks' faces,
    the same on every rank (DDP broadcasts rank 0's buffers)."""
    import torch
    import torch.multiprocessing as mp

    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_ddp_worker, args=(2, init, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for r in (0, 1):
        _ldlva_step(r, 1, str(tmp_path / f"alone{r}.pt"))
    alone = [torch.load(tmp_path / f"alone{r}.pt", weights_only=True) for r in (0, 1)]
    for r in (0, 1):
        half = slice(4 * r, 4 * r + 4)
        assert torch.allclose(ranks[r]["logit"][half], alone[r]["logit"][half], atol=1e-5), r
        assert not torch.allclose(ranks[r]["logit"][half], torch.full((4,), 0.5))  # it did move
    assert torch.equal(ranks[0]["centers"], ranks[1]["centers"])
    assert not torch.allclose(ranks[0]["centers"], alone[0]["centers"], atol=1e-4)  # not rank 0's alone
    from ferdata.train.methods.ldlva import update_centers

    both = [torch.cat(parts) for parts in zip(*(_centre_inputs(r) for r in (0, 1)))]
    one = torch.zeros(3, 4)
    update_centers(one, *both)  # both ranks' faces as one batch, in one process
    for r in (0, 1):
        assert torch.allclose(torch.load(tmp_path / f"centres{r}.pt", weights_only=True), one, atol=1e-6)
