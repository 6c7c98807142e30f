import subprocess
import sys

import pytest
from typer.testing import CliRunner

from ferdata.cli import app

STAGES = ("download", "align", "shard", "va", "noise", "sample", "train", "export", "report")


def test_help_lists_every_stage():
    """Each stage is a command of its own (a name inside another, `va` in `validate`, does not count)."""
    import os
    import re

    env = {**os.environ, "COLUMNS": "120"}
    out = subprocess.run(
        [sys.executable, "-m", "ferdata.cli", "--help"], capture_output=True, text=True, check=True, env=env
    )
    listed = set(re.findall(r"^\W*([a-z][\w-]*)\s{2,}\S", out.stdout, flags=re.M))  # a command row's first word
    assert set(STAGES) <= listed, sorted(listed)


def test_unknown_dataset_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["download", "imagenet", "--data", str(tmp_path)])
    assert result.exit_code == 2
    known = "affectnet, affwild2, ckplus, csv, fer2013, ferg, ferplus, folder, jaffe, rafdb, sfew, synth"
    assert result.output.strip().splitlines() == [
        f"error: unknown dataset 'imagenet': known datasets are {known}; for faces of yours under another name, set "
        "download.adapter (folder or csv)"
    ]


def test_missing_input_table_is_one_line(tmp_path):
    for stage, missing in (
        ("align", "manifest.parquet"),
        ("shard", "aligned.parquet"),
        ("noise", "manifest.parquet"),
        ("sample", "labels.parquet"),
        ("train", "labels.parquet"),
        ("export", "labels.parquet"),
        ("report", "softlabels.parquet"),
    ):
        result = CliRunner().invoke(app, [stage, "--data", str(tmp_path)])
        assert result.exit_code == 1, stage
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and missing in lines[0] and "ferdata" in lines[0], (
            lines
        )


def test_options_override_params(tmp_path, data_dir):
    params = tmp_path / "p.yaml"
    params.write_text("noise: {ratio: 0.5, seed: 3}\n")
    result = CliRunner().invoke(app, ["noise", "--data", str(data_dir), "--params", str(params)])
    assert result.exit_code == 0 and "ratio 0.5" in result.output
    result = CliRunner().invoke(app, ["noise", "--data", str(data_dir), "--params", str(params), "--ratio", "0.25"])
    assert result.exit_code == 0 and "ratio 0.25" in result.output
    result = CliRunner().invoke(app, ["noise", "--data", str(data_dir), "--params", str(tmp_path / "none.yaml")])
    assert result.exit_code == 2 and "params file" in result.output


def test_unknown_params_keys_are_one_line_errors_naming_the_key(tmp_path, data_dir):
    cases = {
        "noize:\n  ratio: 0.3\n": "unknown setting 'noize'; did you mean noise?",
        "noise: {ratoi: 0.3}\n": "unknown setting 'noise.ratoi'; did you mean noise.ratio?",
        "train: {epoch: 3}\n": "unknown setting 'train.epoch'; did you mean train.epochs?",
        "train: {ldlva: {lamda_lr: 3}}\n": "unknown setting 'train.ldlva.lamda_lr'; "
        "did you mean train.ldlva.lambda_lr?",
        "noise: {ratio: high}\n": "noise.ratio must be float, got 'high'",
        "align: {size: 100}\n": "align.size 100 must be a multiple of 112 or 128 (e.g. 112, 224)",
    }
    for text, message in cases.items():
        (tmp_path / "p.yaml").write_text(text)
        result = CliRunner().invoke(
            app, ["noise", "--ratio", "0.3", "--data", str(data_dir), "--params", str(tmp_path / "p.yaml")]
        )
        assert result.exit_code == 2, text
        assert result.output.strip().splitlines() == [
            f"error: {tmp_path / 'p.yaml'}: {message}" if "unknown" in message else f"error: {message}"
        ], text
    assert not (data_dir / "labels.parquet").exists()


def test_every_setting_is_an_option_with_its_help():
    from ferdata.stages import STAGES

    for name in ("noise", "train", "va", "align", "prior"):
        out = CliRunner().invoke(app, [name, "--help"], terminal_width=200).output
        for field in STAGES[name].settings.__dataclass_fields__.values():
            if isinstance(field.default, (int, float, str)):
                assert "--" + field.name.replace("_", "-") in out or field.metadata.get("flag") in out, (
                    name,
                    field.name,
                )
    assert "(default: 0.05)" in CliRunner().invoke(app, ["train", "--help"], terminal_width=200).output


def test_the_command_line_does_not_import_torch():
    code = "import sys, ferdata.cli; from ferdata.stages import sections; sections(); print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )


def test_the_root_params_do_not_leak_onto_another_dataset(tmp_path, monkeypatch):
    """From a folder whose params.yaml is synth's (landmarks, 30% noise), stages on faces of yours take their
    own defaults: MTCNN (the faces have no landmarks) and no noise."""
    import shutil
    from pathlib import Path

    import cv2

    from ferdata.detect import find_weights
    from ferdata.synth import SynthSettings, generate

    try:
        find_weights()
    except Exception:
        pytest.skip("pip install --no-deps facenet-pytorch==2.6.0")
    shutil.copy(Path(__file__).resolve().parents[1] / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    faces = generate(SynthSettings(n_subjects=6, videos_per_subject=4, frames_per_video=1, image_size=128), 2)
    for i, face in enumerate(faces):
        (tmp_path / "mine" / ("happy", "sad")[i % 2]).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "mine" / ("happy", "sad")[i % 2] / f"{i}.png"), face.image)
    for argv in (
        ["download", "folder", "--from", "mine", "--data", "data/mine"],
        ["align", "--data", "data/mine"],
        ["shard", "--data", "data/mine"],
        ["noise", "--data", "data/mine"],
    ):
        result = CliRunner().invoke(app, argv)
        assert result.exit_code == 0, (argv, result.output)
        if argv[0] == "align":
            assert "detector auto -> mtcnn (0/24 faces have landmarks)" in result.output
            assert "note: ./params.yaml is the synth pipeline's; folder takes the stages' defaults" in result.output
    assert "flipped 0/" in result.output


def test_init_writes_a_pipeline_for_your_faces_under_their_name(tmp_path, monkeypatch):
    import shutil
    from pathlib import Path

    import yaml

    from ferdata.stages import check

    root = Path(__file__).resolve().parents[1]
    shutil.copytree(root / "pipelines", tmp_path / "pipelines")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["init", "myfaces", "--from", "/data/my faces"])
    assert result.exit_code == 0, result.output
    params = yaml.safe_load((tmp_path / "pipelines/myfaces/params.yaml").read_text())
    assert params["dataset"] == "myfaces" and "custom" not in params and "myfaces" in params
    assert params["download"]["source"] == "/data/my faces" and params["download"]["adapter"] == "folder"
    check(params)  # every section is one the stages read
    assert (tmp_path / "pipelines/myfaces/dvc.yaml").is_file()
    again = CliRunner().invoke(app, ["init", "myfaces"])
    assert again.exit_code == 2 and "exists already" in again.output
    assert CliRunner().invoke(app, ["init", "ferplus"]).exit_code == 2  # a known dataset's name is taken
