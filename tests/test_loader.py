"""ferdata/loader.py: the streaming loader splits an epoch exactly across ranks and workers."""

import numpy as np
import pandas as pd
import pytest
import torch

from ferdata.io import read_table
from ferdata.loader import FaceStream


def _collect(stream, workers=0):
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers)
    return [row["sample_id"] for _, row in loader]


@pytest.fixture()
def table(shards_dir):
    index, _ = read_table(shards_dir / "shard_index.parquet", "shard_index")
    labels = pd.DataFrame({"sample_id": index["sample_id"], "label": np.arange(len(index)) % 7})
    return labels.iloc[:-1]  # 47 of 48 faces: the table decides which samples the stream yields


@pytest.mark.parametrize("world,workers", [(1, 0), (1, 2), (2, 2), (3, 2), (5, 1)])
def test_ranks_and_workers_partition_an_epoch(shards_dir, table, monkeypatch, world, workers):
    shards = sorted((shards_dir / "shards").glob("shard-*.tar"))  # 48 faces in 3 uneven shards (20, 20, 8)
    seen, counts = [], []
    for rank in range(world):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", str(world))
        stream = FaceStream(shards, table, size=32, even=False)
        got = _collect(stream, workers)
        assert len(got) == len(stream)
        seen += got
        counts.append(len(got))
    assert sorted(seen) == sorted(table["sample_id"])  # every sample once: nothing dropped or repeated
    assert max(counts) - min(counts) <= 1


def test_even_ranks_pad_with_their_own_first_sample(shards_dir, table, monkeypatch):
    shards = sorted((shards_dir / "shards").glob("shard-*.tar"))
    per_rank = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        per_rank.append(_collect(FaceStream(shards, table, size=32), workers=2))
    assert [len(r) for r in per_rank] == [24, 24]  # 47 faces: rank 1 repeats one of its own
    assert len(set(per_rank[0]) | set(per_rank[1])) == 47 and len(set(per_rank[1])) == 23


def test_same_seed_same_stream_and_two_views(shards_dir, table):
    shards = sorted((shards_dir / "shards").glob("shard-*.tar"))
    a = FaceStream(shards, table, size=32, augment="strong", shuffle=8, seed=3)
    b = FaceStream(shards, table, size=32, augment="strong", shuffle=8, seed=3)
    first_a, first_b = list(a)[:5], list(b)[:5]
    assert [r["sample_id"] for _, r in first_a] == [r["sample_id"] for _, r in first_b]
    assert all(np.array_equal(x, y) for (x, _), (y, _) in zip(first_a, first_b))
    a.set_epoch(1)
    assert [r["sample_id"] for _, r in list(a)[:5]] != [r["sample_id"] for _, r in first_a]
    (weak, strong), row = next(iter(FaceStream(shards, table, size=32, augment="two_view")))
    assert weak.shape == strong.shape == (32, 32, 3) and not np.array_equal(weak, strong) and "label" in row


def test_member_walk_matches_webdataset_and_tarfile(shards_dir, tmp_path):
    import tarfile

    from ferdata.loader import iter_members, iter_shards

    shards = sorted((shards_dir / "shards").glob("shard-*.tar"))
    expect = list(iter_shards(shards))
    assert [(k, read()) for k, read in iter_members(shards)] == expect
    # a shard with pax headers (long names) takes the tarfile path and gives the same faces
    pax = tmp_path / "pax.tar"
    with tarfile.open(pax, "w", format=tarfile.PAX_FORMAT) as out, tarfile.open(shards[0]) as src:
        for member in src:
            member.pax_headers = {"comment": "x" * 200}
            out.addfile(member, src.extractfile(member))
    assert [(k, read()) for k, read in iter_members([pax])] == [e for e in expect if e[0] in dict(iter_shards([shards[0]]))]


def _faces(shards_dir, **kw):
    from ferdata.loader import ShardFaces

    index, _ = read_table(shards_dir / "shard_index.parquet", "shard_index")
    return ShardFaces(sorted((shards_dir / "shards").glob("shard-*.tar")), index["sample_id"], **kw), index


def _plan(n, epochs=2, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.choice(n, size=n + 5, replace=True) for _ in range(epochs)]  # repeats, as a balanced plan has


def test_shard_faces_read_the_right_face(shards_dir):
    from ferdata.loader import iter_shards, decode

    faces, index = _faces(shards_dir, size=32)
    raw = dict(iter_shards(sorted((shards_dir / "shards").glob("shard-*.tar"))))
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
        assert set(x) == {"position", "image", "strong"}
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert not torch.equal(a[0]["image"], c[0]["image"])  # another seed, other augmentations
    assert torch.equal(a[0]["position"], c[0]["position"])  # ...of the same planned faces
    w = run(0, augment="weak")[0]
    assert set(w) == {"position", "image"} and w["image"].dtype == torch.uint8 and w["image"].shape == (8, 32, 32, 3)


def test_shard_faces_errors_name_the_fix(shards_dir, tmp_path):
    import shutil

    from ferdata.errors import FerdataError
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
