import numpy as np
import pytest
from typer.testing import CliRunner

from ferdata.cli import app
from ferdata.core.classes import BASIC7, CANONICAL, CONFUSABLE
from ferdata.core.errors import UsageError
from ferdata.noise import flip_labels, noise


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.3, 0.45, 0.999])
@pytest.mark.parametrize("mode", ["symmetric", "pairs"])
def test_flips_exactly_round_ratio_n(ratio, mode):
    labels = np.random.default_rng(1).integers(0, 7, 1001)
    noisy, flipped = flip_labels(labels, list(BASIC7), ratio=ratio, mode=mode, seed=4)
    assert flipped.sum() == round(ratio * 1001)
    assert (noisy[flipped] != labels[flipped]).all()
    assert (noisy[~flipped] == labels[~flipped]).all()
    assert set(noisy) <= set(range(7))


def test_symmetric_spreads_over_other_classes():
    labels = np.zeros(7000, np.int64)
    noisy, flipped = flip_labels(labels, list(BASIC7), ratio=0.6, seed=0)
    counts = np.bincount(noisy[flipped], minlength=7)
    assert counts[0] == 0 and counts[1:].min() > 0.8 * counts[1:].max()


def test_pairs_follow_the_confusion_map():
    labels = np.arange(7).repeat(50)
    noisy, flipped = flip_labels(labels, list(BASIC7), ratio=0.5, mode="pairs", seed=0)
    for src, dst in zip(labels[flipped], noisy[flipped]):
        assert CANONICAL[dst] == CONFUSABLE[CANONICAL[src]][0]


def test_seeded():
    labels = np.random.default_rng(1).integers(0, 7, 300)
    a = flip_labels(labels, list(BASIC7), ratio=0.3, seed=9)
    b = flip_labels(labels, list(BASIC7), ratio=0.3, seed=9)
    c = flip_labels(labels, list(BASIC7), ratio=0.3, seed=10)
    assert np.array_equal(a[0], b[0]) and not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("ratio,mode", [(1.5, "symmetric"), (1.0, "symmetric"), (-0.1, "symmetric"), (0.2, "bogus")])
def test_bad_options(ratio, mode):
    with pytest.raises(UsageError):
        flip_labels(np.zeros(10, np.int64), list(BASIC7), ratio=ratio, mode=mode)


def test_noise_stage_touches_train_only(data_dir):
    df = noise(data_dir, ratio=0.3, seed=2)
    train = df[df["split"] == "train"]
    assert train["flipped"].sum() == round(0.3 * len(train))
    other = df[df["split"] != "train"]
    assert not other["flipped"].any() and (other["label"] == other["clean_label"]).all()
    assert (train.loc[train["flipped"], "label"] != train.loc[train["flipped"], "clean_label"]).all()
    assert set(df["noise_ratio"].round(6)) == {0.3}


def test_cli_rejects_ratio_with_exit_2(data_dir):
    result = CliRunner().invoke(app, ["noise", "--data", str(data_dir), "--ratio", "1.5"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: noise.ratio must be in [0.0, 1.0), got 1.5"
    result = CliRunner().invoke(app, ["noise", "--data", str(data_dir), "--ratio", "0.2", "--mode", "bogus"])
    assert result.exit_code == 2 and "noise.mode 'bogus': use one of symmetric, pairs" in result.output
    assert not (data_dir / "labels.parquet").exists()
