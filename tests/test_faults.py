"""The fault suite: kills at chosen publish points, damaged tables, hostile inputs and fuzzed settings.
Each probe ends in a one-line error or a flagged row: never a traceback, a silent drop or a half-published
stage."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from ferdata.cli import app
from ferdata.core.errors import FerdataError
from ferdata.core.io import INTEGRITY_KEYS, read_table, write_table

RUN = CliRunner()


def kill_when(script: str, marker: Path, timeout: float = 90.0) -> None:
    """Run ``script`` in a child python; SIGKILL it the moment it creates ``marker``."""
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)])
    start = time.time()
    while not marker.exists():
        assert child.poll() is None, "the child ended before the kill"
        assert time.time() - start < timeout
        time.sleep(0.02)
    child.kill()
    child.wait()


def pause_publishing(marker: Path, after: int) -> str:
    """Child-script lines: the publication stops for good after ``after`` of its moves."""
    return f"""
        import time
        import ferdata.core.publish as pub
        real, moves = pub._move, []
        def move(src, dst, old):
            if len(moves) == {after}:
                open({str(marker)!r}, "w").close()
                time.sleep(120)
            moves.append(dst)
            real(src, dst, old)
        pub._move = move
    """


def one_line(result, code: int) -> str:
    """The CLI ended with ``code`` and printed exactly one line, an error: return it."""
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
    return lines[0]


# -- data loss or corruption -------------------------------------------------------------------------


def test_align_killed_mid_publication_is_completed_by_the_next_stage(data_dir):
    marker = data_dir / "killed"
    shutil.rmtree(data_dir / "aligned")
    (data_dir / "aligned.parquet").unlink()
    kill_when(
        pause_publishing(marker, after=1)
        + f"""
        import ferdata.align as mod
        mod.align({str(data_dir)!r}, workers=1)
    """,
        marker,
    )  # killed after aligned/ moved in, before aligned.parquet
    assert list(data_dir.glob(".ferdata-align-*.journal.json"))
    result = RUN.invoke(app, ["shard", "--data", str(data_dir)])
    assert result.exit_code == 0, result.output  # the journal completes align's publication first
    table, _ = read_table(data_dir / "aligned.parquet", "aligned")
    assert len(table) == 48 and len(list((data_dir / "aligned").glob("*.jpg"))) == 48
    assert not (data_dir / ".align-work").exists() and not list(data_dir.glob(".ferdata-*.journal.json"))


def _faces_zip(path: Path, seeds: list[int], labels: list[str]) -> Path:
    """A zip of a faces.csv and one image per seed."""
    with zipfile.ZipFile(path, "w") as zf:
        rows = ["path,label"]
        for seed, label in zip(seeds, labels):
            data = cv2.imencode(".png", np.random.default_rng(seed).integers(0, 255, (40, 40, 3), np.uint8))[1]
            zf.writestr(f"img{seed}.png", data.tobytes())
            rows.append(f"img{seed}.png,{label}")
        zf.writestr("faces.csv", "\n".join(rows) + "\n")
    return path


def _dataset_state(folder: Path) -> dict[str, bytes]:
    """Every published file's bytes (hidden top-level entries, the lock and staged work, left out)."""
    files = (p for p in sorted(folder.rglob("*")) if p.is_file())
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in files if not p.relative_to(folder).parts[0].startswith(".")
    }


def test_a_rejected_or_killed_re_download_keeps_the_old_dataset_whole(tmp_path):
    """Archive A is the dataset; archive B is then rejected (no usable sample), and archive C is killed
    between its extraction and publication: each time the manifest and A's extracted files stay as they
    were, and the next run clears the staged leftovers."""
    from ferdata.download import download

    a = _faces_zip(tmp_path / "a.zip", [1, 2, 3], ["happy", "sad", "happy"])
    b = _faces_zip(tmp_path / "b.zip", [4, 5], ["banana", "apple"])
    c = _faces_zip(tmp_path / "c.zip", [6, 7, 8], ["sad", "sad", "happy"])
    out = tmp_path / "out"
    download("csv", out, source=str(a))
    before = _dataset_state(out)
    assert any(k.startswith("extracted/img1") for k in before)
    with pytest.raises(FerdataError, match="no usable samples"):
        download("csv", out, source=str(b))
    assert _dataset_state(out) == before
    kill_when(
        f"""
        import time
        import ferdata.download as d
        real = d.download_real
        def slow(*args, **kwargs):  # the staged extraction is written; stop before publication
            df = real(*args, **kwargs)
            open({str(tmp_path / "extracted.flag")!r}, "w").close()
            time.sleep(120)
            return df
        d.download_real = slow
        d.download("csv", {str(out)!r}, source={str(c)!r})
        """,
        tmp_path / "extracted.flag",
    )
    assert any(p.name.startswith(".extracted.") for p in out.iterdir())  # the staged C, never published
    assert _dataset_state(out) == before
    download("csv", out, source=str(c))
    after = _dataset_state(out)
    assert any(k.startswith("extracted/img6") for k in after) and not any(k.startswith("extracted/img1") for k in after)
    assert not [p for p in out.iterdir() if p.name.startswith(".extracted.")]


def test_shard_killed_before_publishing_leaves_the_old_set(data_dir):
    before = {p.name: p.read_bytes() for p in (data_dir / "shards").iterdir()}
    index_before = (data_dir / "shard_index.parquet").read_bytes()
    marker = data_dir / "killed"
    kill_when(
        f"""
        import time
        import ferdata.core.stage as stage
        real = stage.write_table
        def slow(*a, **kw):
            open({str(marker)!r}, "w").close()  # new tars staged, the index about to be written
            time.sleep(120)
        stage.write_table = slow
        import ferdata.shard as mod
        mod.shard({str(data_dir)!r}, max_count=7)
    """,
        marker,
    )
    assert {p.name: p.read_bytes() for p in (data_dir / "shards").iterdir()} == before
    assert (data_dir / "shard_index.parquet").read_bytes() == index_before
    assert list(data_dir.glob(".shards.*.tmp"))  # the killed run's staging...
    result = RUN.invoke(app, ["shard", "--data", str(data_dir), "--max-count", "7"])
    assert result.exit_code == 0 and not list(data_dir.glob(".*.tmp"))  # ...removed by the next run
    assert len(list((data_dir / "shards").glob("*.tar"))) == 7


def test_shard_killed_mid_publication_never_leaves_a_mix(data_dir):
    marker = data_dir / "killed"
    kill_when(
        pause_publishing(marker, after=1)
        + f"""
        import ferdata.shard as mod
        mod.shard({str(data_dir)!r}, max_count=7)
    """,
        marker,
    )  # the new tars are in, the old index still there
    result = RUN.invoke(app, ["noise", "--data", str(data_dir)])  # any stage on the folder completes it
    assert result.exit_code == 0, result.output
    index, _ = read_table(data_dir / "shard_index.parquet", "shard_index")
    assert index["shard"].nunique() == 7 == len(list((data_dir / "shards").glob("*.tar")))


def test_download_publishes_manifest_rejected_and_raw_together(tmp_path):
    from conftest import SEED, TINY

    from ferdata.download import download

    out = tmp_path / "synth"
    download("synth", out, dataset=TINY, seed=SEED)
    before = (out / "manifest.parquet").read_bytes()
    marker = tmp_path / "killed"
    kill_when(
        pause_publishing(marker, after=1)
        + f"""
        from ferdata.download import download
        download("synth", {str(out)!r}, dataset={dict(TINY, n_subjects=5)!r}, seed={SEED})
    """,
        marker,
    )
    assert (out / "manifest.parquet").read_bytes() == before  # not yet: the journal holds the rest
    result = RUN.invoke(app, ["align", "--data", str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    manifest, _ = read_table(out / "manifest.parquet", "manifest")
    assert len(manifest) == 40 and len(list((out / "raw").glob("*.png"))) == 40


def test_a_nan_loss_publishes_nothing(trained_dir, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(trained_dir / "models", models)
    before = {p.name: p.read_bytes() for p in models.iterdir() if p.name != ".ferdata.lock"}
    line = one_line(
        RUN.invoke(
            app,
            [
                "train",
                "--data",
                str(trained_dir),
                "--models",
                str(models),
                "--epochs",
                "2",
                "--batch-size",
                "8",
                "--image-size",
                "32",
                "--lr",
                "1e12",
            ],
        ),
        1,
    )
    assert "the loss became" in line and "nothing was written" in line
    assert {p.name: p.read_bytes() for p in models.iterdir() if p.name != ".ferdata.lock"} == before
    assert "finite" in one_line(RUN.invoke(app, ["train", "--data", str(trained_dir), "--lr", "nan"]), 2)


def test_a_row_deleted_from_a_table_is_noticed_downstream(data_dir):
    index = pd.read_parquet(data_dir / "shard_index.parquet")
    import pyarrow.parquet as pq

    table = pq.read_table(data_dir / "shard_index.parquet")
    pq.write_table(table.slice(1), data_dir / "shard_index.parquet")  # metadata kept, one row gone
    for stage in ("va", "noise"):
        line = one_line(RUN.invoke(app, [stage, "--data", str(data_dir)]), 1)
        assert "shard_index.parquet was changed after ferdata wrote it (47 rows, 48" in line and "ferdata shard" in line
    assert len(index) == 48


@pytest.mark.parametrize("table, column", [("labels.parquet", "label"), ("va.parquet", "valence")])
def test_an_in_range_edit_of_one_value_is_noticed_where_the_table_is_read(trained_dir, tmp_path, table, column):
    """One value changed to another legal value (a label to another class, a valence within [-1, 1]),
    the metadata kept: every reader stops with one line naming the stage that remakes the table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "d"
    shutil.copytree(trained_dir, data, ignore=shutil.ignore_patterns("models"))
    stored = pq.read_table(data / table)
    values = stored.column(column).to_pylist()
    values[0] = (values[0] + 1) % 7 if column == "label" else -values[0] / 2
    edited = stored.set_column(
        stored.schema.get_field_index(column), column, pa.array(values, stored.schema.field(column).type)
    )
    pq.write_table(edited.replace_schema_metadata(stored.schema.metadata), data / table)
    writer = {"labels.parquet": "ferdata noise", "va.parquet": "ferdata va"}[table]
    line = one_line(
        RUN.invoke(
            app, ["sample", "--data", str(data)] if table == "labels.parquet" else ["validate", str(data / table)]
        ),
        1,
    )
    assert f"{table} was changed after ferdata wrote it (its values no longer match" in line and writer in line, line
    pq.write_table(stored, data / table)  # the file as written reads again
    assert RUN.invoke(app, ["validate", str(data / table)]).exit_code == 0


def test_a_face_replaced_inside_a_shard_is_noticed_by_every_reader(trained_dir, tmp_path):
    """A face's bytes overwritten in place by a grey square of the same byte size (the tar stays valid
    and every size and offset still fits): training and the report stop with one line naming the shard."""
    from ferdata.core.shards import member_table, shard_paths

    data = tmp_path / "d"
    shutil.copytree(trained_dir, data)
    shards = sorted((data / "shards").glob("shard-*.tar"))
    first = member_table(shards).iloc[0]
    grey = cv2.imencode(".jpg", np.full((112, 112, 3), 128, np.uint8))[1].tobytes()
    patch = (grey + b"\0" * int(first["size"]))[: int(first["size"])]
    with open(shards[int(first["shard"])], "r+b") as fh:
        fh.seek(int(first["offset"]))
        fh.write(patch)
    argv = ["train", "--data", str(data), "--models", str(tmp_path / "m"), "--epochs", "1", "--batch-size", "8"]
    for command in (
        argv,
        ["report", "--data", str(data), "--models", str(data / "models"), "--reports", str(tmp_path / "r")],
    ):
        line = one_line(RUN.invoke(app, command), 1)
        assert shards[int(first["shard"])].name in line and "changed after `ferdata shard` wrote it" in line, line
    assert RUN.invoke(app, ["shard", "--data", str(data), "--max-count", "20"]).exit_code == 0  # the fix it names
    assert shard_paths(data / "shards") == shards  # and the shards check again


def test_validate_knows_every_table_kind(trained_dir):
    from ferdata.core.tables import TABLES
    from ferdata.core.validate import SUITES

    assert {k for k, t in TABLES.items() if t.schema is not None} == set(SUITES)
    for path in sorted(trained_dir.glob("*.parquet")) + sorted((trained_dir / "models").glob("*.parquet")):
        result = RUN.invoke(app, ["validate", str(path)])
        assert result.exit_code == 0 and "passes its expectation suite" in result.output, result.output


@pytest.mark.parametrize("bad", [9, 7, -1])
def test_labels_outside_the_classes_fail_validate_and_sample(data_dir, bad):
    RUN.invoke(app, ["noise", "--data", str(data_dir)])
    labels, meta = read_table(data_dir / "labels.parquet", "labels")
    row = labels.index[(labels["split"] == "train") & ~labels["flipped"]][0]
    labels.loc[row, ["label", "clean_label"]] = bad
    write_table(labels, data_dir / "labels.parquet", "labels", meta, validate=False)
    assert "expect_column_values_to_be_in_set(label)" in one_line(
        RUN.invoke(app, ["validate", str(data_dir / "labels.parquet")]), 1
    )
    line = one_line(RUN.invoke(app, ["sample", "--data", str(data_dir), "--epochs", "2"]), 1)
    assert f"labels [{bad}] are outside the dataset's classes" in line
    assert not (data_dir / "plan.parquet").exists()


def _image(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    return path


def test_generic_ids_are_unique_per_path_and_copies_are_rejected(tmp_path):
    from ferdata.download import download

    root = tmp_path / "faces"
    for i, name in enumerate(["ö.jpg", "表情.jpg", "same.jpg", "same.png", "a b.jpg", "a_b.jpg"]):
        _image(root / "train" / "happy" / name, i)
    shutil.copy(root / "train/happy/same.jpg", root / "train/happy/copy.jpg")  # the same bytes twice
    _image(root / "test" / "sad" / "t.jpg", 99)
    download("folder", tmp_path / "out", source=str(root), dataset={"val_fraction": 0.0})
    manifest, _ = read_table(tmp_path / "out/manifest.parquet", "manifest")
    rejected, _ = read_table(tmp_path / "out/rejected.parquet", "rejected")
    assert len(manifest) == 7 and manifest["sample_id"].is_unique  # six distinct names + t.jpg
    assert rejected["reason"].tolist() == ["duplicate_image"]
    again = download("folder", tmp_path / "again", source=str(root), dataset={"val_fraction": 0.0})
    assert sorted(again["sample_id"]) == sorted(manifest["sample_id"])  # stable across runs


def test_one_file_listed_under_two_paths_is_one_row(tmp_path):
    from ferdata.download import download

    for i in range(4):
        _image(tmp_path / "images" / f"g{i}.jpg", i)
    rows = [
        "path,label",
        "images/g0.jpg,happy",
        "images/../images/g0.jpg,sad",
        f"{tmp_path}/images/g0.jpg,happy",
        "images/g1.jpg,sad",
        "images/g2.jpg,fear",
        "images/g3.jpg,anger",
    ]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    download("csv", tmp_path / "out", source=str(tmp_path / "t.csv"), dataset={"images": str(tmp_path)})
    manifest, _ = read_table(tmp_path / "out/manifest.parquet", "manifest")
    rejected, _ = read_table(tmp_path / "out/rejected.parquet", "rejected")
    assert len(manifest) == 4 and rejected["reason"].tolist() == ["duplicate_path", "duplicate_path"]


def test_corrupt_jpeg_data_is_flagged_and_trailers_are_kept(tmp_path):
    from ferdata.align import read_image

    good = _image(tmp_path / "good.jpg", 1)
    data = bytearray(good.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 40):
        data[i] ^= 0xFF
    (tmp_path / "flipped.jpg").write_bytes(bytes(data))
    (tmp_path / "trailer.jpg").write_bytes(good.read_bytes() + b"\0" * 300 + b"camera maker notes")
    (tmp_path / "cut.jpg").write_bytes(good.read_bytes()[: len(data) // 2])
    assert read_image(tmp_path / "trailer.jpg").shape == (40, 40, 3)
    for name in ("flipped.jpg", "cut.jpg"):
        with pytest.raises(ValueError, match="corrupt JPEG"):
            read_image(tmp_path / name)
    with pytest.raises(ValueError, match="too large: 40x40 pixels"):
        read_image(good, max_pixels=1000)


# -- crashes that must be one-line errors -------------------------------------------------------------


def test_hostile_csvs_end_in_rows_or_one_line(tmp_path):
    _image(tmp_path / "a.jpg", 1)
    _image(tmp_path / "b.jpg", 2)
    cases = {
        "empty_cell.csv": ("path,label\n,happy\na.jpg,happy\nb.jpg,sad\n", "utf-8"),
        "latin1.csv": ("path,label,note\na.jpg,happy,caf\xe9\nb.jpg,sad,na\xefve\n", "latin-1"),
        "nul.csv": ("path,label\na\0x.jpg,happy\na.jpg,happy\nb.jpg,sad\n", "utf-8"),
        "bom.csv": ("\ufeffpath,label\na.jpg,happy\nb.jpg,sad\n", "utf-8"),
    }
    for name, (text, encoding) in cases.items():
        (tmp_path / name).write_bytes(text.encode(encoding))
        result = RUN.invoke(
            app, ["download", "csv", "--from", str(tmp_path / name), "--data", str(tmp_path / name[:-4])]
        )
        assert result.exit_code == 0, (name, result.output)
        manifest, _ = read_table(tmp_path / name[:-4] / "manifest.parquet", "manifest")
        assert len(manifest) == 2, name


def test_a_csv_inside_an_archive_cannot_pull_in_files_from_outside_it(tmp_path):
    from ferdata.download import download

    secret = _image(tmp_path / "elsewhere" / "secret.jpg", 3)
    inside = _image(tmp_path / "pack" / "img.jpg", 1)
    lines = ["path,label", "img.jpg,happy", "../../elsewhere/secret.jpg,sad", f"{secret},anger"]
    with zipfile.ZipFile(tmp_path / "faces.zip", "w") as zf:
        zf.writestr("faces.csv", "\n".join(lines) + "\n")
        zf.write(inside, "img.jpg")
    download("csv", tmp_path / "out", source=str(tmp_path / "faces.zip"))
    manifest, _ = read_table(tmp_path / "out/manifest.parquet", "manifest")
    rejected, _ = read_table(tmp_path / "out/rejected.parquet", "rejected")
    assert manifest["path"].tolist() == ["img.jpg"]
    assert rejected["reason"].tolist() == ["outside_archive"] * 2 and "secret.jpg" in " ".join(rejected["path"])
    (tmp_path / "faces.csv").write_text("\n".join([lines[0], f"{inside},happy", f"{secret},sad"]) + "\n")
    download("csv", tmp_path / "mine", source=str(tmp_path / "faces.csv"))  # a CSV of yours: any file
    assert len(read_table(tmp_path / "mine/manifest.parquet", "manifest")[0]) == 2


@pytest.mark.parametrize("argv", [["my/faces", "--adapter", "csv"], ["../up", "--adapter", "csv"], ["csv", "--params"]])
def test_a_dataset_name_that_would_make_paths_is_refused(tmp_path, argv):
    _image(tmp_path / "a.jpg", 1)
    (tmp_path / "f.csv").write_text("path,label\na.jpg,happy\n")
    if argv[-1] == "--params":
        (tmp_path / "p.yaml").write_text("csv: {name: a/b}\n")
        argv = [*argv, str(tmp_path / "p.yaml")]
    line = one_line(
        RUN.invoke(app, ["download", *argv, "--from", str(tmp_path / "f.csv"), "--data", str(tmp_path / "d")]), 2
    )
    assert "may hold only letters, digits" in line and not (tmp_path / "d").exists()


def test_a_file_name_that_is_not_utf8_is_rejected_with_its_reason(tmp_path):
    from ferdata.download import download

    folder = tmp_path / "faces" / "train" / "happy"
    _image(folder / "ok.jpg", 1)
    _image(folder / "ok2.jpg", 2)
    bad = os.fsencode(folder) + b"/caf\xe9.jpg"
    with open(bad, "wb") as fh:
        fh.write((folder / "ok.jpg").read_bytes()[:-10] + b"\0" * 10)
    download("folder", tmp_path / "out", source=str(tmp_path / "faces"), dataset={"val_fraction": 0.0})
    rejected, _ = read_table(tmp_path / "out/rejected.parquet", "rejected")
    assert "bad_path" in set(rejected["reason"]) and "not UTF-8" in " ".join(rejected["detail"])


def test_named_pipes_and_dangling_links_are_rejected_rows_not_hangs_or_gaps(tmp_path):
    """A folder with a named pipe and a dangling link among its images, and a CSV that names a pipe: the
    download ends, and each one is a rejected row with its reason (an alarm fails the test if a read hangs)."""
    from ferdata.download import download

    folder = tmp_path / "faces" / "train" / "happy"
    for i in range(3):
        _image(folder / f"ok{i}.jpg", i)
    os.mkfifo(folder / "pipe.jpg")
    os.symlink(tmp_path / "gone.jpg", folder / "link.jpg")
    (tmp_path / "faces.csv").write_text("path,label\nfaces/train/happy/ok0.jpg,happy\nfaces/train/happy/pipe.jpg,sad\n")

    def hang(*_):
        raise TimeoutError("a read blocked")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(60)
    try:
        download("folder", tmp_path / "out", source=str(tmp_path / "faces"), dataset={"val_fraction": 0.0})
        download("csv", tmp_path / "csv", source=str(tmp_path / "faces.csv"))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    rejected, _ = read_table(tmp_path / "out/rejected.parquet", "rejected")
    why = dict(zip(rejected["path"].str.rsplit("/", n=1).str[-1], zip(rejected["reason"], rejected["detail"])))
    assert why["pipe.jpg"][0] == "not_a_file" and "named pipe" in why["pipe.jpg"][1]
    assert why["link.jpg"][0] == "missing_image" and "symbolic link" in why["link.jpg"][1]
    manifest, _ = read_table(tmp_path / "out/manifest.parquet", "manifest")
    assert len(manifest) == 3
    rejected, _ = read_table(tmp_path / "csv/rejected.parquet", "rejected")
    assert rejected["reason"].tolist() == ["not_a_file"]


@pytest.mark.parametrize(
    "name, data, expected",
    [
        ("utf16", "train: {epochs: 2}\n".encode("utf-16"), "not UTF-8"),
        (
            "laughs",
            b"a: &a [x, x, x, x, x, x, x, x, x, x]\n"
            + b"".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n".encode() for p, c in zip("abcdefgh", "bcdefghi")),
            "YAML aliases",
        ),
        ("deep", b"train: " + b"[" * 20000 + b"]" * 20000 + b"\n", "nested too deeply"),
    ],
)
def test_params_files_that_are_not_params_are_one_line(tmp_path, name, data, expected):
    (tmp_path / "p.yaml").write_bytes(data)
    line = one_line(RUN.invoke(app, ["noise", "--data", str(tmp_path), "--params", str(tmp_path / "p.yaml")]), 2)
    assert expected in line and "p.yaml" in line, line


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs (root and a mount namespace that allows it), unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root): the full-disk case is untested on this machine")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> Path:
    """Write a filler file until the disk is full; return it."""
    filler = disk / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_is_one_line_and_keeps_the_old_outputs(data_dir, small_disk):
    data = small_disk / "synth"
    shutil.copytree(data_dir, data)
    assert RUN.invoke(app, ["noise", "--data", str(data), "--ratio", "0.1"]).exit_code == 0
    before = {p.name: p.read_bytes() if p.is_file() else None for p in data.iterdir()}
    filler = _fill(small_disk)
    for argv in (["noise", "--ratio", "0.3"], ["va", "--k", "3"]):
        line = one_line(RUN.invoke(app, [*argv, "--data", str(data)]), 1)
        assert "no space left on the device" in line and "free some space" in line, line
    after = {p.name: p.read_bytes() if p.is_file() else None for p in data.iterdir()}
    assert after == before  # nothing changed, nothing half-written left beside it
    filler.unlink()
    assert RUN.invoke(app, ["noise", "--data", str(data), "--ratio", "0.3"]).exit_code == 0


def test_machine_errors_name_the_fix_and_bugs_keep_their_traceback():
    import errno

    from ferdata.cli import environment_error

    line = environment_error(OSError(errno.EROFS, "Read-only file system", "/data/synth/.stage"))
    assert "read-only" in line and "/data/synth/.stage" in line and "remount" in line
    assert environment_error(OSError(errno.ENOENT, "No such file", "x")) is None  # a bug: the traceback stays


PARAMS = [
    "train: {epochs: 'two'}",
    "train: {epochs: 1.5}",
    "train: {batch_size: '64'}",
    "train: {lr: fast}",
    "noise: {ratio: '0.3'}",
    "sample: {per_video: 2.5}",
    "va: {k: '8'}",
    "align: {size: '112'}",
    "noise: [0.3]",
    "train: [1, 2]",
    "train: {ldlva: 3}",
    "noise: {seed: true}",
    "export: {margin: nan}",
    "align: {jpeg_quality: 500}",
    "align: {workers: -2}",
    "va: {source: emonet}",
    "train: {method: magic}",
    "download: {seed: -1}",
    "noise: {seed: 99999999999999999999999}",
    "shard: {max_count: 0}",
    "noize: {ratio: 0.3}",
    "noise: {ratoi: 0.3}",
    "- a list, not sections",
]


@pytest.mark.parametrize("text", PARAMS)
def test_fuzzed_params_are_one_line_usage_errors(tmp_path, text):
    (tmp_path / "p.yaml").write_text(text + "\n")
    line = one_line(RUN.invoke(app, ["noise", "--data", str(tmp_path), "--params", str(tmp_path / "p.yaml")]), 2)
    named = text.split(":")[0].strip("- ")
    assert "p.yaml" in line or named in line, line  # names the file or the setting


BAD_OPTIONS = [
    ["train", "--epochs", "0"],
    ["train", "--epochs", "-1"],
    ["train", "--batch-size", "0"],
    ["train", "--image-size", "0"],
    ["train", "--image-size", "100000"],
    ["align", "--size", "1120000"],
    ["train", "--lr", "-1"],
    ["train", "--workers", "-1"],
    ["train", "--precision", "fp8"],
    ["train", "--augment-device", "tpu"],
    ["train", "--backbone", "resnet34_tv"],
    ["download", "synth", "--seed", "-1"],
    ["export", "--margin", "-5"],
    ["export", "--margin", "nan"],
    ["align", "--workers", "-2"],
    ["sample", "--per-class", "-3"],
    ["noise", "--ratio", "1.5"],
    ["va", "--k", "0"],
    ["align", "--part", "3/2"],
    ["align", "--part", "x"],
]


@pytest.mark.parametrize("argv", BAD_OPTIONS, ids=" ".join)
def test_bad_option_values_exit_2_with_one_line(tmp_path, argv):
    one_line(RUN.invoke(app, [*argv, "--data", str(tmp_path / "d")]), 2)


def test_bad_initial_weights_and_a_missing_gpu_are_one_line(trained_dir, tmp_path):
    import torch

    junk = tmp_path / "w.pth"
    junk.write_bytes(b"not a checkpoint")
    argv = ["train", "--data", str(trained_dir), "--models", str(tmp_path / "m"), "--epochs", "2"]
    line = one_line(RUN.invoke(app, [*argv, "--backbone", "resnet18_tv", "--weights", str(junk)]), 1)
    assert str(junk) in line and "not a weights-only torch checkpoint" in line
    line = one_line(RUN.invoke(app, [*argv, "--weights", str(tmp_path / "none.safetensors")]), 1)
    assert "not found" in line and "Pretrained backbones" in line
    if not torch.cuda.is_available():
        assert "needs a GPU" in one_line(RUN.invoke(app, [*argv, "--augment-device", "cuda"]), 2)
    assert not (tmp_path / "m" / "model.pt").exists()


def test_validate_on_a_file_that_is_not_parquet(tmp_path):
    (tmp_path / "x.parquet").write_text("hello")
    assert "not a parquet file" in one_line(RUN.invoke(app, ["validate", str(tmp_path / "x.parquet")]), 1)


def test_a_plan_too_large_to_hold_is_refused_before_it_is_drawn(data_dir):
    RUN.invoke(app, ["noise", "--data", str(data_dir)])
    start = time.time()
    line = one_line(RUN.invoke(app, ["sample", "--data", str(data_dir), "--per-class", "100000000"]), 2)
    assert "lower sample.per_class or train.epochs" in line and time.time() - start < 30


def test_an_error_in_a_dataloader_worker_is_one_line(trained_dir, tmp_path):
    data = tmp_path / "synth"
    shutil.copytree(trained_dir, data)
    from ferdata.core.shards import member_table

    shards = sorted((data / "shards").glob("*.tar"))
    members = member_table(shards)
    blob = bytearray(shards[0].read_bytes())
    for _, m in members[members["shard"] == 0].iterrows():  # flip bits inside every JPEG, not the tar headers
        for i in range(m["offset"] + m["size"] // 2, m["offset"] + m["size"] // 2 + 30):
            blob[i] ^= 0x55
    shards[0].write_bytes(bytes(blob))
    index, meta = read_table(data / "shard_index.parquet", "shard_index")
    meta = {k: v for k, v in meta.items() if k not in INTEGRITY_KEYS and k != "shard_sha256"}
    write_table(index, data / "shard_index.parquet", "shard_index", meta)  # no recorded sha256: the worker decodes
    result = RUN.invoke(
        app,
        [
            "train",
            "--data",
            str(data),
            "--models",
            str(tmp_path / "m"),
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--image-size",
            "32",
            "--workers",
            "1",
        ],
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("error: ") and ("undecodable" in lines[-1] or "truncated" in lines[-1]), lines


# -- resource limits ----------------------------------------------------------------------------------


def test_an_archive_bomb_stops_early_and_leaves_nothing(tmp_path):
    from ferdata.core.errors import FerdataError
    from ferdata.fetch import extract

    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", b"\0" * (256 << 20))
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(FerdataError, match="expands beyond .* download.max_ratio"):
        extract(bomb, tmp_path / "out")
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["bomb.zip"]
    with pytest.raises(FerdataError, match="expands beyond 0.01 GB"):
        extract(bomb, tmp_path / "out", max_gb=0.01, max_ratio=1e6)


def test_huge_images_are_flagged_and_the_stage_goes_on(data_dir):
    line = one_line(RUN.invoke(app, ["align", "--data", str(data_dir), "--max-pixels", "1000", "--workers", "1"]), 1)
    assert "no face of" in line and "too_large 48" in line  # every face flagged: nothing can go on
    table, _ = read_table(data_dir / "aligned.parquet", "aligned")
    assert set(table["status"]) == {"too_large"} and table["reason"].str.contains("more than align.max_pixels").all()
    assert "no aligned face to shard" in one_line(RUN.invoke(app, ["shard", "--data", str(data_dir)]), 1)
    result = RUN.invoke(app, ["align", "--data", str(data_dir), "--max-pixels", "20000", "--workers", "1"])
    assert result.exit_code == 0 and "ok 48" in result.output


def test_published_folders_have_the_usual_mode(tmp_path):
    from conftest import SEED, TINY

    from ferdata.download import download
    from ferdata.shard import shard

    old = os.umask(0o022)
    try:
        download("synth", tmp_path / "s", dataset=dict(TINY, n_subjects=3), seed=SEED)
        RUN.invoke(app, ["align", "--data", str(tmp_path / "s"), "--workers", "1"])
        shard(tmp_path / "s")
    finally:
        os.umask(old)
    for name in ("raw", "aligned", "shards"):
        assert (tmp_path / "s" / name).stat().st_mode & 0o777 == 0o755, name


def test_one_writer_per_dataset_folder(data_dir):
    marker = data_dir / "holding"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import time
        from pathlib import Path
        from ferdata.core.publish import locked
        with locked(Path({str(data_dir)!r}), "noise"):
            open({str(marker)!r}, "w").close()
            time.sleep(120)
    """),
        ]
    )
    try:
        while not marker.exists():
            assert holder.poll() is None
            time.sleep(0.02)
        line = one_line(RUN.invoke(app, ["noise", "--data", str(data_dir)]), 1)
        assert f"is being written by ferdata noise (pid {holder.pid})" in line and "wait for it to finish" in line
    finally:
        holder.kill()
        holder.wait()
    assert RUN.invoke(app, ["noise", "--data", str(data_dir)]).exit_code == 0


def test_killed_align_leaves_no_workers(data_dir):
    import psutil

    shutil.rmtree(data_dir / "aligned")
    marker = data_dir / "working"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import ferdata.align as mod
        mod.CHUNK = 4
        real = mod._chunk_rows
        def rows(*a, **kw):
            open({str(marker)!r}, "w").close()
            return real(*a, **kw)
        mod._chunk_rows = rows
        mod.align({str(data_dir)!r}, workers=2)
    """),
        ]
    )
    start = time.time()
    while not marker.exists():
        assert child.poll() is None and time.time() - start < 60
        time.sleep(0.02)
    time.sleep(1.0)  # the pool is up and working
    workers = psutil.Process(child.pid).children(recursive=True)
    assert workers
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive


@pytest.mark.parametrize("stage", ["download synth", "align", "noise", "train", "report"])
def test_a_folder_option_naming_a_file_is_one_line(tmp_path, stage):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for where in (afile, afile / "below"):
        line = one_line(RUN.invoke(app, [*stage.split(), "--data", str(where)]), 1)
        said = ("is a file, not a folder", "a file stands where", "not found: run `ferdata")  # readers: the input
        assert str(where) in line and any(words in line for words in said), line


def test_a_library_message_with_newlines_still_prints_as_one_line(tmp_path):
    (tmp_path / "manifest.parquet").write_bytes(b"PAR1" + b"\0" * 8 + b"PAR1")
    line = one_line(RUN.invoke(app, ["align", "--data", str(tmp_path)]), 1)
    assert "is not a readable parquet file" in line and "re-run the stage that writes it" in line
