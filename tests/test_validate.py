"""ferdata/validate.py: the expectation suites pass on real stage output and catch each kind of damage."""

import numpy as np
import pytest
from typer.testing import CliRunner

from ferdata.cli import app
from ferdata.core.errors import FerdataError
from ferdata.core.io import read_table, write_table
from ferdata.core.validate import validate_file, validate_table


@pytest.mark.parametrize("name", ["manifest", "va", "labels", "knn", "softlabels"])
def test_stage_outputs_pass(trained_dir, name):
    kind, rows, failed = validate_file(trained_dir / f"{name}.parquet")
    assert kind == name and rows > 0 and failed == []


def test_manifest_damage(trained_dir):
    df, meta = read_table(trained_dir / "manifest.parquet", "manifest")
    df.loc[1, "sample_id"] = df.loc[0, "sample_id"]
    df.loc[2, "sample_id"] = "has.dot"
    df.loc[3, "label"] = 7  # contempt: not in this dataset's classes
    df.loc[4, "path"] = "raw/missing.png"
    failed = validate_table(df, "manifest", meta, base=trained_dir)
    found = {(f["expectation"], f["column"]): f for f in failed}
    assert found[("expect_column_values_to_be_unique", "sample_id")]["count"] == 2
    assert found[("expect_column_values_to_not_match_regex", "sample_id")]["ids"] == ["has.dot"]
    assert found[("expect_column_values_to_be_in_set", "label")]["ids"] == [df.loc[3, "sample_id"]]
    assert found[("expect_column_values_to_be_in_set", "_path_exists")]["ids"] == [df.loc[4, "sample_id"]]


def test_va_labels_knn_damage(trained_dir):
    va, meta = read_table(trained_dir / "va.parquet", "va")
    va.loc[0, "valence"] = 1.5
    va.loc[1, "arousal"] = np.nan
    cols = {f["column"] for f in validate_table(va, "va", meta)}
    assert cols == {"valence", "arousal"}
    labels, meta = read_table(trained_dir / "labels.parquet", "labels")
    clean = labels.index[(labels["split"] == "train") & ~labels["flipped"]][0]
    labels.loc[clean, "label"] = (labels.loc[clean, "clean_label"] + 1) % 7  # changed but not marked flipped
    cols = {f["column"] for f in validate_table(labels, "labels", meta)}
    assert "_consistent" in cols
    labels, _ = read_table(trained_dir / "labels.parquet", "labels")
    assert {f["column"] for f in validate_table(labels, "labels", {**meta, "ratio": 0.5})} == {"_flip_rate"}
    knn, meta = read_table(trained_dir / "knn.parquet", "knn")
    knn.at[0, "neighbours"] = [knn.loc[0, "sample_id"], *knn.loc[0, "neighbours"][1:]]
    knn.at[1, "neighbours"] = ["nobody", *knn.loc[1, "neighbours"][1:]]
    found = {f["column"]: f["ids"] for f in validate_table(knn, "knn", meta)}
    assert found == {"_self_neighbour": [knn.loc[0, "sample_id"]], "_unknown_neighbours": [knn.loc[1, "sample_id"]]}


def test_a_failing_table_is_never_written(trained_dir, tmp_path):
    df, meta = read_table(trained_dir / "softlabels.parquet", "softlabels")
    good = write_table(df, tmp_path / "softlabels.parquet", "softlabels", meta)
    before = good.read_bytes()
    df.loc[0, "confidence"] = 1.5
    with pytest.raises(FerdataError, match="not written: softlabels table fails validation"):
        write_table(df, good, "softlabels", meta)
    assert good.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["softlabels.parquet"]


def test_validate_command(trained_dir, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["validate", str(trained_dir / "labels.parquet")])
    assert ok.exit_code == 0 and "passes its expectation suite" in ok.output
    df, meta = read_table(trained_dir / "va.parquet", "va")
    df.loc[0, "valence"] = -3.0
    write_table(df, tmp_path / "va.parquet", "va", meta, validate=False)
    bad = runner.invoke(app, ["validate", str(tmp_path / "va.parquet")])
    assert bad.exit_code == 1
    assert f"expect_column_values_to_be_between(valence): 1 rows, e.g. {df.loc[0, 'sample_id']}" in bad.output
