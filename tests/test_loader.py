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
