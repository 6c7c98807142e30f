import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import ferdata
from ferdata.core.classes import normalised_entropy
from ferdata.core.errors import FerdataError
from ferdata.core.io import read_table, write_table
from ferdata.export import suspect_noisy


def test_soft_labels_contract(trained_dir):
    path = trained_dir / "softlabels.parquet"
    df = ferdata.load_soft_labels(path)
    labels, _ = read_table(trained_dir / "labels.parquet", "labels")
    assert df["sample_id"].tolist() == labels["sample_id"].tolist()
    dist = np.stack(df["distribution"].to_numpy())
    assert dist.shape == (len(df), 7) and np.abs(dist.sum(1) - 1).max() < 1e-5
    assert df["confidence"].between(0, 1).all()
    assert df["method_uncertainty"].isna().all()  # CE learns no uncertainty of its own: none is made up
    manifest, meta = read_table(trained_dir / "manifest.parquet", "manifest")
    where = manifest.set_index("sample_id").loc[df["sample_id"]]
    assert [trained_dir / p for p in df["image"]] == [trained_dir / meta["root"] / p for p in where["path"]]
    assert all((trained_dir / p).is_file() for p in df["image"])
    assert "label" not in df and "predicted" not in df  # never confused with the manifest's canonical label
    classes = df.attrs["classes"]
    assert [classes[i] for i in df["label_index"]] == df["label_name"].tolist()
    assert df.attrs["classes"][1] == "happy" and df.attrs["version"] == ferdata.__version__
    assert df.attrs["method"] == "ce" and len(df.attrs["model_hash"]) == 64
    # what train.precision: auto became, next to the settings that asked for it
    assert df.attrs["engine"] == {
        "device": "cpu",
        "precision": "fp32",
        "channels_last": False,
        "compile": False,
        "augment_device": "cpu",
        "world_size": 1,
    }
    assert df.attrs["train"]["precision"] == "auto"
    assert df["valence"].notna().all()
    # the file is plain parquet: pandas and pyarrow read it with no ferdata code
    plain = pd.read_parquet(path)
    assert len(plain) == len(df) and set(plain["split"]) == {"train", "val", "test"}
    meta = pq.read_schema(path).metadata
    assert b"ferdata.classes" in meta and b"ferdata.schema_version" in meta


def test_load_soft_labels_rejects_broken_files(trained_dir, tmp_path):
    df, meta = read_table(trained_dir / "softlabels.parquet", "softlabels")
    df.loc[0, "distribution"] = np.full(7, 0.5, np.float32)
    with pytest.raises(
        FerdataError,
        match="bad.parquet not written: softlabels table fails validation: "
        "expect_column_values_to_be_between\\(_dist_sum\\): 1 rows, e.g. ",
    ):
        write_table(df, tmp_path / "bad.parquet", "softlabels", {"classes": meta["classes"]})
    assert not (tmp_path / "bad.parquet").exists()
    write_table(df, tmp_path / "bad.parquet", "softlabels", {"classes": meta["classes"]}, validate=False)
    with pytest.raises(FerdataError, match="do not sum to 1"):
        ferdata.load_soft_labels(tmp_path / "bad.parquet")
    write_table(df, tmp_path / "nocls.parquet", "softlabels", validate=False)
    with pytest.raises(FerdataError, match="lacks the class names"):
        ferdata.load_soft_labels(tmp_path / "nocls.parquet")


def test_entropy_and_suspects():
    p = np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.1, 0.8, 0.1]])
    assert np.allclose(normalised_entropy(p)[:2], [0.0, 1.0])
    assert suspect_noisy(p, np.array([0, 0, 0]), 0.2).tolist() == [False, False, True]
    assert suspect_noisy(p, np.array([0, 0, 1]), 0.2).tolist() == [False, False, False]


def test_export_is_deterministic(trained_dir, tmp_path):
    import shutil

    from ferdata.export import export

    copy = tmp_path / "copy"
    shutil.copytree(trained_dir, copy)
    export(copy, copy / "models")
    assert (copy / "softlabels.parquet").read_bytes() == (trained_dir / "softlabels.parquet").read_bytes()


def test_settings_hash_follows_every_setting_upstream(trained_dir, tmp_path, monkeypatch):
    """The soft labels' settings hash changes with any setting of any stage that led to them, an override
    on the command line included; the same settings give the same hash."""
    import shutil

    from typer.testing import CliRunner

    from ferdata.cli import app

    copy = tmp_path / "copy"
    shutil.copytree(trained_dir, copy)
    monkeypatch.chdir(tmp_path)  # no params.yaml here: defaults and options only
    hashes = []
    for args in (
        ["noise", "--ratio", "0.25", "--seed", "1"],
        ["noise", "--ratio", "0.2", "--seed", "1"],
        ["noise", "--ratio", "0.25", "--seed", "1"],
    ):
        for command in (
            args,
            ["export", "--models", str(copy / "models")],
            ["export", "--models", str(copy / "models"), "--margin", "0.3"],
        ):
            result = CliRunner().invoke(app, [*command, "--data", str(copy)])
            assert result.exit_code == 0, result.output
            if command[0] == "export":
                hashes.append(read_table(copy / "softlabels.parquet", "softlabels")[1]["settings_hash"])
    assert len(set(hashes[:4])) == 4  # ratio 0.25/0.2 x margin 0.2/0.3: four different runs
    assert hashes[4:] == hashes[:2]  # back to ratio 0.25: the first two hashes again
    _, meta = read_table(copy / "softlabels.parquet", "softlabels")
    assert meta["settings"] == {"margin": 0.3, "train_distribution": "model"} and meta["stage"] == "export"


def test_reading_soft_labels_needs_numpy_pandas_pyarrow_only(trained_dir):
    """`pip install ferdata` (no pipeline extra) is enough to load the soft labels: nothing heavier imports."""
    import subprocess
    import sys

    heavy = [
        "torch",
        "dvc",
        "typer",
        "great_expectations",
        "albumentations",
        "cv2",
        "yaml",
        "tqdm",
        "scipy",
        "matplotlib",
        "insightface",
        "webdataset",
    ]
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {heavy!r}:
            raise ImportError("not installed: " + name)
sys.meta_path.insert(0, Block())
import ferdata
df = ferdata.load_soft_labels({str(trained_dir / "softlabels.parquet")!r})
print(len(df), df.attrs["classes"][df["label_index"].iloc[0]] == df["label_name"].iloc[0])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["48", "True"]
    block = code.split("import ferdata")[0]  # the same machine, for the `ferdata` command
    soft = str(trained_dir / "softlabels.parquet")
    for argv, rc, says in (
        (["describe", soft], 0, "ce"),  # describe works without the pipeline extra
        (["align", "--data", "x"], 1, "pip install 'ferdata[pipeline]'"),  # the rest names it, in one line
    ):
        run = block + f"from ferdata.entry import main\nmain({argv!r})\n"
        out = subprocess.run([sys.executable, "-c", run], capture_output=True, text=True)
        assert out.returncode == rc and says in out.stdout + out.stderr and "Traceback" not in out.stderr, out.stderr
        assert rc == 0 or len(out.stderr.strip().splitlines()) == 1


def _git(repo, *args):
    import subprocess

    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def test_load_soft_labels_by_revision_of_another_repository(trained_dir, tmp_path):
    """Two committed versions of the soft labels in a git+DVC repository, each loaded by its rev."""
    import shutil
    import subprocess
    import sys

    repo, rel = tmp_path / "other", "data/ds/softlabels.parquet"
    (repo / "data/ds").mkdir(parents=True)
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "t@example.org")
    _git(repo, "config", "user.name", "t")
    env_dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*env_dvc, "init", "-q"], cwd=repo, check=True, capture_output=True)
    shutil.copy(trained_dir / "softlabels.parquet", repo / rel)
    revs = []
    for version in (1, 2):
        if version == 2:  # a second version: every distribution uniform
            df, meta = read_table(repo / rel, "softlabels")
            df["distribution"] = [np.full(len(meta["classes"]), 1 / len(meta["classes"]), np.float32)] * len(df)
            (repo / rel).unlink()
            write_table(df, repo / rel, "softlabels", meta)
        subprocess.run([*env_dvc, "add", "-q", rel], cwd=repo, check=True, capture_output=True)
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", f"v{version}")
        revs.append(
            subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
        )
    first = ferdata.load_soft_labels(rel, repo=str(repo), rev=revs[0])
    second = ferdata.load_soft_labels(rel, repo=str(repo), rev=revs[1])
    assert len(first) == len(second) and first.attrs["classes"] == second.attrs["classes"]
    assert np.allclose(np.stack(second["distribution"].to_numpy()), 1 / len(second.attrs["classes"]))
    assert not np.allclose(np.stack(first["distribution"].to_numpy()), np.stack(second["distribution"].to_numpy()))
    assert revs[0] in first.attrs["source"]
    with pytest.raises(FerdataError, match="cannot read data/ds/softlabels.parquet at nope of "):
        ferdata.load_soft_labels(rel, repo=str(repo), rev="nope")
    _git(repo, "tag", "-a", "ds-softlabels@v1.0.0", revs[0], "-m", "the first soft labels")  # an artifact version
    for short in ("v1.0.0", "1.0.0"):  # as `dvc artifacts get --rev v1.0.0` takes it
        again = ferdata.load_soft_labels(rel, repo=str(repo), rev=short)
        assert np.allclose(np.stack(again["distribution"].to_numpy()), np.stack(first["distribution"].to_numpy()))
    with pytest.raises(
        FerdataError, match=r"at v9 of .* \(tried v9, ds-softlabels@v9, pipelines/ds=ds-softlabels@v9\)"
    ):
        ferdata.load_soft_labels(rel, repo=str(repo), rev="v9")


def test_a_soft_label_file_says_what_produced_it(trained_dir, tmp_path):
    import json

    from typer.testing import CliRunner

    from ferdata.cli import app

    df = ferdata.load_soft_labels(trained_dir / "softlabels.parquet")
    assert df.attrs["dataset"] == "synth" and df.attrs["va_source"] == "provided"
    assert df.attrs["train"]["epochs"] == 2 and df.attrs["train"]["method"] == "ce"
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"noise_auroc": 0.8123}))
    result = CliRunner().invoke(app, ["describe", str(trained_dir / "softlabels.parquet"), "--metrics", str(metrics)])
    assert result.exit_code == 0, result.output
    card = result.output
    assert card.startswith("# Soft labels: synth (ce)")
    for text in (
        "injected noise: 25% symmetric",
        "valence/arousal source: provided",
        "2 epochs",
        "trained on: cpu, fp32, augmentation on cpu\n",
        "| noise_auroc | 0.8123 |",
    ):
        assert text in card, card
    assert df.attrs["model_hash"] in card


def test_export_refuses_a_model_that_did_not_write_the_learned_table(trained_dir, tmp_path):
    """Random bytes, or a valid model of another run, in place of model.pt: an error, not soft labels
    stamped with that file's hash."""
    import shutil

    from ferdata.export import export

    copy = tmp_path / "copy"
    shutil.copytree(trained_dir, copy)
    model = copy / "models" / "model.pt"
    good = model.read_bytes()
    for replacement in (np.random.default_rng(0).bytes(len(good)), good + b"\0"):
        model.write_bytes(replacement)
        (copy / "softlabels.parquet").unlink(missing_ok=True)
        with pytest.raises(FerdataError, match="is not the model that wrote"):
            export(copy, copy / "models")
        assert not (copy / "softlabels.parquet").exists()
    model.write_bytes(good)
    assert len(export(copy, copy / "models")) > 0


def test_method_uncertainty_is_the_method_s_own_on_training_faces_only(trained_dir, tmp_path):
    """One column, one meaning: LDLVA's 1 - lambda on training faces, null on val/test faces (where the
    only uncertainty there is would be 1 - confidence, already a column)."""
    import shutil

    from ferdata.export import export
    from ferdata.train.loop import train
    from ferdata.train.settings import TrainSettings

    data = tmp_path / "d"
    shutil.copytree(trained_dir, data, ignore=shutil.ignore_patterns("models", "softlabels.parquet"))
    train(data, tmp_path / "m", TrainSettings(method="ldlva", epochs=1, batch_size=8, image_size=32))
    df = export(data, tmp_path / "m")
    own = df["method_uncertainty"]
    train_rows = (df["split"] == "train").to_numpy()
    assert own[train_rows].notna().all() and own[train_rows].between(0, 1).all()
    assert own[~train_rows].isna().all()
    learned, _ = read_table(tmp_path / "m" / "learned.parquet", "learned")
    assert np.allclose(own[train_rows], learned.set_index("sample_id").loc[df["sample_id"][train_rows], "uncertainty"])


def test_training_faces_can_take_held_out_distributions(trained_dir, tmp_path):
    """export.train_distribution out_of_fold: each training face gets the prior's prediction from a model
    that never saw it (a memorised soft label is near one-hot); val/test faces keep the model's."""
    import shutil

    from ferdata.export import export
    from ferdata.train.prior import prior

    data = tmp_path / "d"
    shutil.copytree(trained_dir, data, ignore=shutil.ignore_patterns("softlabels.parquet"))
    with pytest.raises(FerdataError, match="needs .*prior.parquet: run `ferdata prior`"):
        export(data, data / "models", train_distribution="out_of_fold")
    oof = prior(data, folds=2, epochs=1, train={"batch_size": 4, "image_size": 32, "lr": 0.01})
    model = export(data, data / "models")
    held = export(data, data / "models", train_distribution="out_of_fold")
    train = (held["split"] == "train").to_numpy()
    want = np.stack(oof.set_index("sample_id").loc[held["sample_id"][train], "distribution"].to_numpy())
    got = np.stack(held["distribution"][train].to_numpy())
    assert np.allclose(got, want / want.sum(1, keepdims=True), atol=1e-6)
    same = np.stack(held["distribution"][~train].to_numpy()), np.stack(model["distribution"][~train].to_numpy())
    assert np.allclose(*same) and held["method_uncertainty"].isna().all()
    with pytest.raises(Exception, match="train_distribution"):
        export(data, data / "models", train_distribution="cross")


def test_a_card_beside_the_soft_labels_says_what_they_are_and_how_to_load_them(trained_dir, tmp_path):
    import shutil

    from ferdata.export import export

    data = tmp_path / "d"
    shutil.copytree(trained_dir, data)
    soft = export(data, data / "models")
    card = (data / "softlabels.card.md").read_text()
    assert card.startswith("# Soft labels: synth (ce)") and f"- faces: {len(soft)} (" in card
    assert "Classes, in order: 0 neutral, 1 happy" in card and 'pl.read_parquet("softlabels.parquet")' in card
    meta = read_table(data / "softlabels.parquet", "softlabels")[1]
    assert meta["model_hash"] in card and meta["settings_hash"] in card  # the card belongs to this file
    assert "- source:" not in card and str(tmp_path) not in card  # nothing of the machine that wrote it
    first = card
    export(data, data / "models")
    assert (data / "softlabels.card.md").read_text() == first  # same inputs, same card
