"""The shard stage: pack aligned faces into WebDataset tars, images only, plus a sample -> shard index.

Tars are reproducible (fixed mtime, owner and order), so the same faces give byte-identical shards.
Labels never go into the tars: they live in parquet tables joined by ``sample_id`` at load time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from ferdata.core.errors import FerdataError
from ferdata.core.settings import Settings, option
from ferdata.core.shards import SHARD_PATTERN, shard_digests
from ferdata.core.stage import Stage


@dataclass(frozen=True)
class ShardSettings(Settings):
    """The ``shard`` section of params.yaml."""

    section = "shard"
    max_count: int = option(1000, "faces per shard", min=1)


STAGE = Stage(
    "shard",
    "Pack aligned faces into WebDataset shards.",
    __name__,
    ShardSettings,
    reads=("aligned", "aligned_faces"),
    writes=("shards", "shard_index"),
)


def shard(data_dir: str | Path, settings: ShardSettings | None = None, **options: Any) -> pd.DataFrame:
    """Write the shards of ``data_dir`` from its aligned faces, and the shard index."""
    import webdataset as wds  # imports torch: not at module level, the CLI reads this module's declaration

    with STAGE.start(settings, options, data=data_dir) as run:
        max_count = run.settings.max_count
        aligned, meta = run.read("aligned")
        ok = aligned[aligned["status"] == "ok"].sort_values("sample_id", kind="stable")
        if ok.empty:
            raise FerdataError(f"{run.input('aligned')} has no aligned face to shard; see its status/reason columns")
        faces_root = run.input("aligned_faces").parent
        rows = []
        tmp = run.output("shards")
        writer, name = None, ""
        for i, r in enumerate(tqdm(ok.itertuples(index=False), total=len(ok), desc="shard", leave=False, disable=None)):
            if i % max_count == 0:
                if writer is not None:
                    writer.close()
                name = SHARD_PATTERN % (i // max_count)
                writer = wds.TarWriter(str(tmp / name), encoder=False, mtime=0, user="ferdata", group="ferdata")
            src = faces_root / r.path
            if not src.is_file():
                raise FerdataError(f"{src} is missing although aligned.parquet lists it; re-run `ferdata align`")
            writer.write({"__key__": r.sample_id, "jpg": src.read_bytes()})
            rows.append({"sample_id": r.sample_id, "shard": name, "position": i % max_count})
        writer.close()
        index = pd.DataFrame(rows)
        digests = shard_digests(sorted(tmp.glob("shard-*.tar")))  # readers check the shards against these
        run.write(index, "shard_index", {"classes": meta["classes"], "size": meta.get("size"), "shard_sha256": digests})
        return index


def summarize(index: pd.DataFrame) -> str:
    return f"sharded {len(index)} faces into {index['shard'].nunique()} shards"
