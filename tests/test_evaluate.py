import numpy as np
import pandas as pd
import pytest

from ferdata.evaluate import (
    auroc,
    distances,
    kl_divergence,
    label_issue_scores,
    mean_interval,
    paired_interval,
    score,
)


def test_auroc_against_pair_counting():
    rng = np.random.default_rng(0)
    s, y = rng.normal(size=300), rng.random(300) < 0.3
    s[y] += 0.8
    pairs = (s[y][:, None] > s[~y][None]).mean() + 0.5 * (s[y][:, None] == s[~y][None]).mean()
    assert abs(auroc(s, y) - pairs) < 1e-12
    assert auroc(np.array([0.0, 1.0]), np.array([False, True])) == 1.0
    assert auroc(np.array([0.3, 0.3]), np.array([False, True])) == 0.5  # a tie counts half
    assert np.isnan(auroc(np.ones(3), np.zeros(3, bool)))


def test_distribution_measures_match_hand_computed_values():
    p = np.array([[0.5, 0.5, 0.0]])
    q = np.array([[0.25, 0.25, 0.5]])
    d = {k: float(v[0]) for k, v in distances(p, q).items()}
    assert d["kl"] == pytest.approx(np.log(2))  # 2 * 0.5 * ln(0.5 / 0.25)
    assert d["chebyshev"] == pytest.approx(0.5)
    # Clark: (0.25/0.75)^2 twice and (0.5/0.5)^2 once
    assert d["clark"] == pytest.approx(np.sqrt(2 / 9 + 1))
    assert d["canberra"] == pytest.approx(1 / 3 + 1 / 3 + 1)
    assert d["cosine"] == pytest.approx(0.25 / (np.sqrt(0.5) * np.sqrt(0.375)))
    assert d["intersection"] == pytest.approx(0.5)
    same = {k: float(v[0]) for k, v in distances(p, p).items()}
    assert same["kl"] < 1e-5 and same["chebyshev"] == 0 and same["clark"] == 0 and same["canberra"] == 0
    assert same["cosine"] == pytest.approx(1) and same["intersection"] == pytest.approx(1)


def test_kl_floors_a_prediction_that_gives_the_truth_no_mass():
    p = np.array([[0.5, 0.5, 0.0]])
    assert np.isfinite(kl_divergence(p, np.array([[1.0, 0.0, 0.0]]))[0])
    assert kl_divergence(p, np.array([[1.0, 0.0, 0.0]]))[0] > 5


def _tables():
    """Four training faces (one flipped), one val and two test faces, 3 classes with canonical ids 0, 1, 2."""
    classes = ["neutral", "happy", "sad"]
    ids = [f"s{i}" for i in range(7)]
    split = ["train"] * 4 + ["val"] + ["test"] * 2
    clean = [0, 1, 2, 0, 1, 2, 0]
    given = [0, 1, 2, 1, 1, 2, 0]  # s3 flipped 0 -> 1
    labels = pd.DataFrame(
        {
            "sample_id": ids,
            "split": split,
            "label": given,
            "clean_label": clean,
            "flipped": [False] * 3 + [True] + [False] * 3,
        }
    )
    true = [np.eye(3)[c] * 0.8 + 0.2 / 3 for c in clean]
    manifest = pd.DataFrame({"sample_id": ids, "true_dist": true})
    dist = [
        [0.8, 0.1, 0.1],
        [0.2, 0.7, 0.1],
        [0.1, 0.1, 0.8],
        [0.6, 0.3, 0.1],  # the flipped face: its soft label sides with the clean label
        [0.3, 0.6, 0.1],
        [0.5, 0.2, 0.3],  # a wrong test prediction
        [0.7, 0.2, 0.1],
    ]
    table = pd.DataFrame(
        {
            "sample_id": ids,
            "split": split,
            "distribution": [np.array(d) for d in dist],
            "uncertainty": [0.1, 0.2, 0.3, 0.9, 0.0, 0.0, 0.0],
            "suspected_noisy": [False, False, False, True, False, False, False],
        }
    )
    return table, labels, manifest, classes


def test_score_against_hand_computed_values():
    table, labels, manifest, classes = _tables()
    m = score(table, labels, manifest, classes)
    assert m["test_accuracy"] == 0.5 and m["test_accuracy_true"] == 0.5
    assert m["val_accuracy"] == 1.0 and m["train_accuracy"] == 1.0
    assert m["flipped_labels"] == 1
    # 1 - p(given): 0.2, 0.3, 0.2 for the clean faces, 0.7 for the flipped one: ranked first
    assert m["noise_auroc"] == 1.0 and m["noise_auroc_uncertainty"] == 1.0
    assert m["suspected_precision"] == 1.0 and m["flips_recovered"] == 1.0
    true = np.stack(manifest["true_dist"][5:7])
    pred = np.array([[0.5, 0.2, 0.3], [0.7, 0.2, 0.1]])
    assert m["test_kl"] == pytest.approx(float((true * np.log(true / pred)).sum(1).mean()))
    assert m["test_chebyshev"] == pytest.approx(np.mean([0.8 + 0.2 / 3 - 0.3, 0.8 + 0.2 / 3 - 0.7]))
    assert m["test_intersection"] == pytest.approx(np.minimum(true, pred).sum(1).mean())
    assert {"soft_label_kl", "val_kl", "soft_label_cosine"} <= set(m)
    assert m["majority_baseline_accuracy"] == 0.0  # training labels' majority: happy; the test faces are sad, neutral
    labels = labels.assign(label=[0, 0, 2, 1, 1, 2, 0])  # now neutral is the majority: right for one of two
    assert score(table, labels, manifest, classes)["majority_baseline_accuracy"] == 0.5


def test_score_takes_given_labels_from_the_labels_table_not_the_scored_one():
    """Soft labels hold positions, labels.parquet canonical ids: the table's own label column is ignored."""
    table, labels, manifest, classes = _tables()
    table = table.assign(label=[2] * 7)
    assert score(table, labels, manifest, classes) == score(table.drop(columns="label"), labels, manifest, classes)


def test_score_without_truth_or_noise_gives_accuracy_only():
    table, labels, manifest, classes = _tables()
    labels = labels.assign(label=labels["clean_label"], flipped=False)
    m = score(table, labels, manifest.assign(true_dist=None), classes)
    assert "test_kl" not in m and "noise_auroc" not in m and m["flipped_labels"] == 0
    assert m["test_accuracy"] == 0.5


def test_label_issue_scores_find_the_flips_cleanlab_sees():
    pytest.importorskip("cleanlab")
    rng = np.random.default_rng(0)
    n = 400
    clean = rng.integers(0, 3, n)
    flipped = rng.random(n) < 0.2
    given = np.where(flipped, (clean + 1) % 3, clean)
    probs = np.full((n, 3), 0.1)
    probs[np.arange(n), clean] = 0.8
    out = label_issue_scores(given, probs, flipped)
    assert out["cleanlab_auroc"] == pytest.approx(1.0)
    assert out["cleanlab_precision"] == 1.0 and out["cleanlab_recall"] == 1.0


def test_intervals_are_student_t():
    mean, lo, hi = mean_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / np.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert mean == 2.0 and lo == pytest.approx(2.0 - half) and hi == pytest.approx(2.0 + half)
    assert np.isnan(mean_interval([5.0])[1])
    assert paired_interval([2.0, 3.0, 4.0], [1.0, 1.0, 1.0])[0] == pytest.approx(2.0)
    with pytest.raises(ValueError):
        paired_interval([1.0], [1.0, 2.0])
