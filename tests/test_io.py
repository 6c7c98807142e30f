import os

import pandas as pd
import pyarrow.parquet as pq
import pytest

from ferdata.core.errors import FerdataError
from ferdata.core.io import atomic_dir, atomic_file, read_meta, read_table, stable_hash, write_table


def _plan(n=3):
    return pd.DataFrame({"epoch": [0] * n, "position": range(n), "sample_id": [f"s{i}" for i in range(n)]})


def test_roundtrip_keeps_schema_and_metadata(tmp_path):
    path = write_table(_plan(), tmp_path / "plan.parquet", "plan", {"classes": ["a", "b"]})
    df, meta = read_table(path, "plan")
    assert df["sample_id"].tolist() == ["s0", "s1", "s2"]
    assert meta["classes"] == ["a", "b"] and meta["table"] == "plan"
    assert str(pq.read_schema(path).field("epoch").type) == "int32"
    assert b"pandas" not in (pq.read_schema(path).metadata or {})


def test_same_input_same_bytes(tmp_path):
    a = write_table(_plan(), tmp_path / "a.parquet", "plan")
    b = write_table(_plan(), tmp_path / "b.parquet", "plan")
    assert a.read_bytes() == b.read_bytes()


def test_missing_table_names_file_and_fix(tmp_path):
    with pytest.raises(FerdataError, match="x.parquet not found: run it"):
        read_table(tmp_path / "x.parquet", "plan", hint="run it")


def test_wrong_kind_and_bad_columns(tmp_path):
    path = write_table(_plan(), tmp_path / "p.parquet", "plan")
    with pytest.raises(FerdataError, match="is a plan table, expected a labels table"):
        read_table(path, "labels")
    with pytest.raises(FerdataError, match="lacks columns"):
        write_table(_plan().drop(columns="epoch"), tmp_path / "q.parquet", "plan")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(FerdataError, match="not a readable parquet"):
        read_table(tmp_path / "junk.parquet", "plan")


def test_failed_write_keeps_old_file(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_failed_dir_keeps_old_dir(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError("killed")
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["a"]
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "b").write_text("2")
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_stable_hash_ignores_key_order():
    assert stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1}) != stable_hash({"a": 2})


def test_read_meta_decodes_json(tmp_path):
    path = write_table(_plan(), tmp_path / "p.parquet", "plan", {"epochs": 4})
    assert read_meta(path)["epochs"] == 4


def test_fork_reads_what_it_lacks_from_its_base(tmp_path):
    from ferdata.core.io import fork, locate

    base = tmp_path / "data/synth"
    base.mkdir(parents=True)
    (base / "manifest.parquet").write_bytes(b"m")
    (base / "shards").mkdir()
    fork(base, tmp_path / "sweep/r0.3")
    fork(tmp_path / "sweep/r0.3", tmp_path / "sweep/r0.3/ce")
    (tmp_path / "sweep/r0.3/labels.parquet").write_bytes(b"l")
    leaf = tmp_path / "sweep/r0.3/ce"
    assert locate(leaf, "manifest.parquet") == tmp_path / "sweep/r0.3/ce/../../../data/synth/manifest.parquet"
    assert locate(leaf, "shards").resolve() == (base / "shards").resolve()
    assert locate(leaf, "labels.parquet").resolve() == (tmp_path / "sweep/r0.3/labels.parquet").resolve()
    assert locate(leaf, "softlabels.parquet") == leaf / "softlabels.parquet"  # missing: named where written
    with pytest.raises(FerdataError, match="not a dataset folder"):
        fork(tmp_path / "nothing", tmp_path / "x")


def _kill_mid_write(script: str, marker, timeout: float = 60.0) -> None:
    """Run ``script`` in a child python, wait until it creates ``marker``, then SIGKILL it."""
    import subprocess
    import sys
    import time

    child = subprocess.Popen([sys.executable, "-c", script])
    start = time.time()
    while not marker.exists():
        assert child.poll() is None, "the child ended before the kill"
        assert time.time() - start < timeout
        time.sleep(0.05)
    child.kill()
    child.wait()


def test_a_table_killed_mid_write_leaves_the_old_file(tmp_path):
    import textwrap

    target = tmp_path / "plan.parquet"
    write_table(_plan(), target, "plan")
    before = target.read_bytes()
    marker = tmp_path / "writing"
    _kill_mid_write(
        textwrap.dedent(f"""
        import time, pyarrow.parquet as pq
        import ferdata.core.io as io
        real = pq.write_table
        def slow(table, where, **kw):
            real(table, where, **kw)
            open({str(marker)!r}, "w").close()  # the temp file is written, the rename not yet done
            time.sleep(60)
        pq.write_table = slow
        import pandas as pd
        df = pd.DataFrame({{"epoch": [9], "position": [0], "sample_id": ["x"]}})
        io.write_table(df, {str(target)!r}, "plan")
    """),
        marker,
    )
    assert target.read_bytes() == before  # the old version, whole
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("plan.parquet", "writing")]
    assert all(name.startswith(".plan.parquet.") and name.endswith(".tmp") for name in leftovers)


def test_align_killed_mid_run_resumes_and_publishes_nothing_half_done(data_dir):
    import shutil
    import textwrap

    import pandas as pd

    from ferdata.align import align

    shutil.rmtree(data_dir / "aligned")
    (data_dir / "aligned.parquet").unlink()
    marker = data_dir / "killed-here"
    _kill_mid_write(
        textwrap.dedent(f"""
        import time
        import ferdata.align as mod
        import ferdata.core.stage as stage
        mod.CHUNK = 10
        real = stage.write_table
        def slow(df, path, kind, *a, **kw):
            out = real(df, path, kind, *a, **kw)
            if "chunk-000002" in str(path):
                open({str(marker)!r}, "w").close()
                time.sleep(60)
            return out
        stage.write_table = slow
        mod.align({str(data_dir)!r})
    """),
        marker,
    )
    assert not (data_dir / "aligned").exists() and not (data_dir / "aligned.parquet").exists()
    assert len(list((data_dir / ".align-work").glob("chunk-*.parquet"))) == 3
    import ferdata.align as mod

    mod_chunk = mod.CHUNK
    try:
        mod.CHUNK = 10
        table = align(data_dir)
    finally:
        mod.CHUNK = mod_chunk
    assert len(table) == 48 and pd.read_parquet(data_dir / "aligned.parquet").shape[0] == 48


def test_every_table_reads_the_same_in_polars_duckdb_and_hf_datasets(trained_dir, tmp_path, monkeypatch):
    """Each table kind the pipeline writes opens, with the same values, in pyarrow, polars, DuckDB and
    Hugging Face datasets (issue 17: bbox/landmarks are plain lists, so no reader trips over a null
    fixed-size list)."""
    import duckdb
    import polars as pl
    import pyarrow.parquet as pq

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    from datasets import load_dataset

    paths = sorted(trained_dir.glob("*.parquet")) + sorted((trained_dir / "models").glob("*.parquet"))
    kinds = {p.stem for p in paths}
    assert {"manifest", "aligned", "shard_index", "va", "knn", "labels", "plan", "learned", "softlabels"} <= kinds
    for path in paths:
        arrow = pq.read_table(path)
        polars = pl.read_parquet(path)
        assert polars.columns == arrow.column_names and polars.height == arrow.num_rows, path.name
        assert polars.to_arrow().to_pylist() == arrow.to_pylist(), path.name
        rows = duckdb.sql(f"select * from read_parquet('{path}')").fetchall()
        assert [tuple(r.values()) for r in arrow.to_pylist()] == [tuple(r) for r in rows], path.name
        if arrow.num_rows:  # datasets 5.2 fails on any 0-row parquet ("BatchSize must be greater than 0")
            hf = load_dataset("parquet", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf-cache"))
            assert hf.data.table.to_pylist() == arrow.to_pylist(), path.name


FLOOR_READER = """
import json, sys
import pyarrow, pyarrow.parquet as pq
out = {p: pq.read_table(p).to_pylist() for p in sys.argv[1:]}
print(json.dumps({"version": pyarrow.__version__, "tables": out}, default=str))
"""


@pytest.mark.skipif(not os.environ.get("FERDATA_FLOOR_PYTHON"), reason="FERDATA_FLOOR_PYTHON not set (.ci/run sets it)")
def test_every_table_reads_the_same_with_the_floor_pyarrow(trained_dir, tmp_path):
    """A Python holding pyproject's lowest pyarrow (.ci/run builds it) reads every table we write, same values,
    a manifest with faces lacking a box and landmarks (FER+) included."""
    import json
    import subprocess

    import pyarrow.parquet as pq

    manifest, meta = read_table(trained_dir / "manifest.parquet", "manifest")
    manifest["bbox"] = [None, *manifest["bbox"].iloc[1:]]
    manifest["landmarks"] = [None] * len(manifest)
    write_table(manifest, tmp_path / "manifest.parquet", "manifest", meta, validate=False)  # paths point elsewhere
    paths = [str(tmp_path / "manifest.parquet")] + [
        str(p) for p in sorted(trained_dir.glob("*.parquet")) + sorted((trained_dir / "models").glob("*.parquet"))
    ]
    proc = subprocess.run(
        [os.environ["FERDATA_FLOOR_PYTHON"], "-c", FLOOR_READER, *paths], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    floor = json.loads(proc.stdout)
    assert floor["version"].startswith("16.")
    for p in paths:
        assert floor["tables"][p] == json.loads(json.dumps(pq.read_table(p).to_pylist(), default=str)), p


def test_damaged_metadata_and_retyped_columns_are_one_line(tmp_path):
    import pyarrow as pa

    path = write_table(_plan(), tmp_path / "plan.parquet", "plan")
    table = pq.read_table(path)
    meta = dict(table.schema.metadata)
    meta[b"ferdata.rows"] = b"{not json"
    pq.write_table(table.replace_schema_metadata(meta), tmp_path / "bad_meta.parquet")
    with pytest.raises(FerdataError, match="metadata 'ferdata.rows' is damaged"):
        read_table(tmp_path / "bad_meta.parquet", "plan")
    epoch = table.schema.get_field_index("epoch")
    as_text = table.set_column(epoch, "epoch", pa.array(["0", "0", "0"]))
    pq.write_table(as_text.replace_schema_metadata(table.schema.metadata), tmp_path / "text.parquet")
    assert read_table(tmp_path / "text.parquet", "plan")[0]["epoch"].tolist() == [0, 0, 0]  # a lossless cast
    as_words = table.set_column(epoch, "epoch", pa.array(["zero", "0", "0"]))
    pq.write_table(as_words.replace_schema_metadata(table.schema.metadata), tmp_path / "words.parquet")
    with pytest.raises(
        FerdataError, match="column 'epoch' is stored as string, expected int32; re-run `ferdata sample`"
    ):
        read_table(tmp_path / "words.parquet", "plan")
