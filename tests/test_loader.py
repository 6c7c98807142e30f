"""ferdata/loader.py: batches of the epoch plan, split exactly across ranks, the same whatever the workers."""

import numpy as np
import pandas as pd
import pytest
import torch

from ferdata.core.io import read_table


def webdataset_members(shards):
    """(key, jpeg bytes) of every sample, read by webdataset itself."""
    import webdataset as wds

    every = lambda src: src  # noqa: E731
    for sample in wds.WebDataset(
        [str(p) for p in shards], shardshuffle=False, nodesplitter=every, workersplitter=every
    ):
        yield sample["__key__"], sample["jpg"]


def test_member_walk_matches_webdataset_and_tarfile(shards_dir, tmp_path):
    import tarfile

    from ferdata.core.shards import ShardReader, member_table

    shards = sorted((shards_dir / "shards").glob("shard-*.tar"))
    expect = list(webdataset_members(shards))
    members = member_table(shards)
    assert list(members["sample_id"]) == [k for k, _ in expect]
    reader = ShardReader(shards, members["sample_id"], members=members)
    assert [reader.read(i) for i in range(len(reader))] == [v for _, v in expect]
    # a shard with pax headers (long names) takes the tarfile path and gives the same faces
    pax = tmp_path / "pax.tar"
    with tarfile.open(pax, "w", format=tarfile.PAX_FORMAT) as out, tarfile.open(shards[0]) as src:
        for member in src:
            member.pax_headers = {"comment": "x" * 200}
            out.addfile(member, src.extractfile(member))
    first = dict(webdataset_members([shards[0]]))
    members = member_table([pax])
    reader = ShardReader([pax], members["sample_id"], members=members)
    assert {k: reader.read(i) for i, k in enumerate(members["sample_id"])} == first


def _faces(shards_dir, **kw):
    from ferdata.loader import ShardFaces

    index, _ = read_table(shards_dir / "shard_index.parquet", "shard_index")
    return ShardFaces(sorted((shards_dir / "shards").glob("shard-*.tar")), index["sample_id"], **kw), index


def _plan(n, epochs=2, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.choice(n, size=n + 5, replace=True) for _ in range(epochs)]  # repeats, as a balanced plan has


def test_shard_faces_read_the_right_face(shards_dir):
    from ferdata.core.shards import decode

    faces, index = _faces(shards_dir, size=32)
    raw = dict(webdataset_members(sorted((shards_dir / "shards").glob("shard-*.tar"))))
    for i in (0, 19, 20, 47):  # first, last of a shard, first of the next, the short shard
        assert faces.read(i) == raw[index["sample_id"][i]]
        assert np.array_equal(faces[i], decode(raw[index["sample_id"][i]], 32))
    assert faces.images(np.array([3, 3, 0])).shape == (3, 32, 32, 3)


def test_two_ranks_see_every_planned_entry_once(shards_dir):
    from ferdata.loader import PlanBatches, batches

    faces, _ = _faces(shards_dir, size=16)
    epochs = _plan(len(faces))
    for epoch in range(2):
        got = []
        for rank in range(2):
            sampler = PlanBatches(epochs, batch_size=4, augment="none", rank=rank, world=2)
            sampler.set_epoch(epoch)
            got.append(np.concatenate([b["position"].numpy() for b in batches(faces, sampler, workers=2)]))
        assert len(got[0]) == len(got[1]) == len(epochs[epoch]) // 8 * 4  # equal steps per rank: no DDP hang
        plan = epochs[epoch]
        used = len(got[0]) * 2
        # the ranks together are the plan's first `used` entries, interleaved, each exactly once
        assert np.array_equal(np.sort(np.concatenate(got)), np.sort(plan[:used]))
        assert np.array_equal(got[0], plan[0:used:2]) and np.array_equal(got[1], plan[1:used:2])


def test_same_seed_same_batches_whatever_the_workers(shards_dir):
    from ferdata.loader import PlanBatches, batches

    faces, _ = _faces(shards_dir, size=32)
    epochs = _plan(len(faces))

    def run(workers, seed=0, augment="two_view"):
        sampler = PlanBatches(epochs, batch_size=8, augment=augment, seed=seed)
        sampler.set_epoch(1)
        return list(batches(faces, sampler, workers=workers))

    a, b, c = run(0), run(2), run(0, seed=1)
    assert len(a) == len(b) == len(epochs[1]) // 8
    for x, y in zip(a, b):
        assert set(x) == {"position", "image", "strong", "seed"}
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert not torch.equal(a[0]["image"], c[0]["image"])  # another seed, other augmentations
    assert torch.equal(a[0]["position"], c[0]["position"])  # ...of the same planned faces
    w = run(0, augment="weak")[0]
    assert set(w) == {"position", "image", "seed"}
    assert w["image"].dtype == torch.uint8 and w["image"].shape == (8, 32, 32, 3)


def test_plain_batches_feed_the_device_augmentation_whatever_the_workers(shards_dir):
    """The README's GPU recipe: plain faces and each batch's seed from the loader, views on the device;
    the views are the same with 0 or 2 workers, and are not the plain faces."""
    from ferdata.augment import BatchAugment
    from ferdata.loader import PlanBatches, batches

    faces, _ = _faces(shards_dir, size=32)
    epochs, augment = _plan(len(faces)), BatchAugment()

    def views(workers):
        sampler = PlanBatches(epochs, batch_size=8, augment="none", seed=3)
        out = []
        for batch in batches(faces, sampler, workers=workers):
            x = batch["image"].permute(0, 3, 1, 2).float().div(255)
            out.append({"plain": x, **augment(x, "two_view", int(batch["seed"]))})
        return out

    a, b = views(0), views(2)
    assert len(a) == len(b) > 1
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in ("plain", "image", "strong"))
    assert a[0]["image"].shape == (8, 3, 32, 32) and not torch.equal(a[0]["image"], a[0]["plain"])


def test_shard_faces_errors_name_the_fix(shards_dir, tmp_path):
    import shutil

    from ferdata.core.errors import FerdataError
    from ferdata.loader import ShardFaces

    shards = sorted((shards_dir / "shards").glob("shard-*.tar"))
    with pytest.raises(FerdataError, match="in no shard.*ferdata shard"):
        ShardFaces(shards, ["nope"])
    first = ShardFaces([shards[0]], _faces(shards_dir)[1]["sample_id"][:20])
    members = pd.DataFrame({"sample_id": first.ids, "shard": 0, "offset": first.offset, "size": first.nbytes})
    cut = tmp_path / "shard-000000.tar"
    shutil.copy(shards[0], cut)
    with open(cut, "r+b") as fh:
        fh.truncate(first.offset[-1] + 10)  # the last face loses its bytes after the index was taken
    with pytest.raises(FerdataError, match="truncated.*ferdata shard"):
        ShardFaces([cut], first.ids, members=members).read(19)
