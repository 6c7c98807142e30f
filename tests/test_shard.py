import tarfile

import numpy as np
import pytest

from ferdata.core.errors import FerdataError
from ferdata.core.io import read_table
from ferdata.loader import load_images
from ferdata.shard import shard


def test_shards_hold_images_only_with_dot_free_keys(shards_dir):
    index, _ = read_table(shards_dir / "shard_index.parquet", "shard_index")
    tars = sorted((shards_dir / "shards").glob("*.tar"))
    assert [t.name for t in tars] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    for t in tars:
        with tarfile.open(t) as tf:
            names = tf.getnames()
            assert all(n.count(".") == 1 and n.endswith(".jpg") for n in names)
            rows = index[index["shard"] == t.name].sort_values("position")
            assert [n[:-4] for n in names] == rows["sample_id"].tolist()
            assert all(m.mtime == 0 for m in tf.getmembers())
    assert len(index) == 48 and index["sample_id"].is_unique


def test_shards_are_reproducible(data_dir, shards_dir):
    shard(data_dir, max_count=20)
    for t in (shards_dir / "shards").glob("*.tar"):
        assert t.read_bytes() == (data_dir / "shards" / t.name).read_bytes()


def test_load_images_by_key(shards_dir):
    index, _ = read_table(shards_dir / "shard_index.parquet", "shard_index")
    ids = index["sample_id"].tolist()[::-7]
    imgs = load_images(shards_dir / "shards", ids, size=32)
    assert imgs.shape == (len(ids), 32, 32, 3) and imgs.dtype == np.uint8
    full = load_images(shards_dir / "shards", ids[:1])
    assert full.shape == (1, 112, 112, 3)
    with pytest.raises(FerdataError, match="in no shard"):
        load_images(shards_dir / "shards", ["synth_nope"])


def test_nothing_to_shard(data_dir):
    import pandas as pd

    from ferdata.core.io import write_table

    aligned, meta = read_table(data_dir / "aligned.parquet", "aligned")
    aligned["status"] = "unreadable"
    write_table(aligned, data_dir / "aligned.parquet", "aligned", {"classes": meta["classes"]})
    with pytest.raises(FerdataError, match="no aligned face to shard"):
        shard(data_dir)
    assert len(pd.read_parquet(data_dir / "shard_index.parquet")) == 48  # the old output survives


@pytest.mark.parametrize("damage", ["garbage header", "garbage size"])
def test_a_damaged_shard_header_is_one_line(shards_dir, tmp_path, damage):
    from ferdata.core.shards import member_table

    first = sorted((shards_dir / "shards").glob("*.tar"))[0]
    raw = bytearray(first.read_bytes())
    if damage == "garbage header":
        raw[:512] = b"\x07" * 512
    else:
        raw[124:136] = b"zzzzzzzzzzz\0"
    (tmp_path / first.name).write_bytes(bytes(raw))
    with pytest.raises(FerdataError, match=r"is damaged .*re-run `ferdata shard`"):
        member_table([tmp_path / first.name])
