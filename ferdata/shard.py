"""The shard stage: pack aligned faces into WebDataset tars, images only, plus a sample -> shard index.

Tars are reproducible (fixed mtime, owner and order), so the same faces give byte-identical shards.
Labels never go into the tars: they live in parquet tables joined by ``sample_id`` at load time.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import webdataset as wds
from tqdm import tqdm

from ferdata.errors import FerdataError
from ferdata.io import atomic_dir, read_table, write_table

SHARDS_DIR = "shards"
SHARD_INDEX = "shard_index.parquet"
SHARD_PATTERN = "shard-%06d.tar"


def shard(data_dir: str | Path, *, max_count: int = 1000) -> pd.DataFrame:
    """Write ``data_dir/shards/shard-*.tar`` from the aligned faces and ``data_dir/shard_index.parquet``."""
    if max_count < 1:
        raise FerdataError(f"shard.max_count must be >= 1, got {max_count}")
    data_dir = Path(data_dir)
    aligned, meta = read_table(data_dir / "aligned.parquet", "aligned", hint="run `ferdata align` first")
    ok = aligned[aligned["status"] == "ok"].sort_values("sample_id", kind="stable")
    if ok.empty:
        raise FerdataError(f"{data_dir / 'aligned.parquet'} has no aligned face to shard; see its status/reason columns")
    rows = []
    with atomic_dir(data_dir / SHARDS_DIR) as tmp:
        writer, name = None, ""
        for i, r in enumerate(tqdm(ok.itertuples(index=False), total=len(ok), desc="shard", leave=False, disable=None)):
            if i % max_count == 0:
                if writer is not None:
                    writer.close()
                name = SHARD_PATTERN % (i // max_count)
                writer = wds.TarWriter(str(tmp / name), encoder=False, mtime=0, user="ferdata", group="ferdata")
            src = data_dir / r.path
            if not src.is_file():
                raise FerdataError(f"{src} is missing although aligned.parquet lists it; re-run `ferdata align`")
            writer.write({"__key__": r.sample_id, "jpg": src.read_bytes()})
            rows.append({"sample_id": r.sample_id, "shard": name, "position": i % max_count})
        writer.close()
    index = pd.DataFrame(rows)
    write_table(index, data_dir / SHARD_INDEX, "shard_index", {"classes": meta["classes"], "size": meta.get("size")})
    return index
