import subprocess
import sys

from typer.testing import CliRunner

from ferdata.cli import app

STAGES = ("download", "align", "shard", "va", "noise", "sample", "train", "export", "report")


def test_help_lists_every_stage():
    out = subprocess.run([sys.executable, "-m", "ferdata.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for name in STAGES:
        assert name in out


def test_unknown_dataset_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["download", "imagenet", "--data", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == ["error: unknown dataset 'imagenet': known datasets are affectnet, affwild2, ckplus, csv, fer2013, ferg, ferplus, folder, jaffe, rafdb, sfew, synth"]


def test_missing_input_table_is_one_line(tmp_path):
    for stage, missing in (("align", "manifest.parquet"), ("shard", "aligned.parquet"), ("noise", "manifest.parquet"),
                           ("sample", "labels.parquet"), ("train", "labels.parquet"), ("export", "labels.parquet"),
                           ("report", "softlabels.parquet")):
        result = CliRunner().invoke(app, [stage, "--data", str(tmp_path)])
        assert result.exit_code == 1, stage
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and missing in lines[0] and "ferdata" in lines[0], lines


def test_options_override_params(tmp_path, data_dir):
    params = tmp_path / "p.yaml"
    params.write_text("noise: {ratio: 0.5, seed: 3}\n")
    result = CliRunner().invoke(app, ["noise", "--data", str(data_dir), "--params", str(params)])
    assert result.exit_code == 0 and "ratio 0.5" in result.output
    result = CliRunner().invoke(app, ["noise", "--data", str(data_dir), "--params", str(params), "--ratio", "0.25"])
    assert result.exit_code == 0 and "ratio 0.25" in result.output
    result = CliRunner().invoke(app, ["noise", "--data", str(data_dir), "--params", str(tmp_path / "none.yaml")])
    assert result.exit_code == 2 and "params file" in result.output
