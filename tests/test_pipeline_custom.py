"""The custom pipeline (pipelines/custom, your own faces) end to end through DVC."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_pipeline import ROOT, _dvc, _ferdata

import ferdata


def _own_faces(
    root: Path, classes: tuple[str, ...] = ("neutral", "happy", "sad", "anger"), per_class: int = 12
) -> None:
    """A folder of face photos of four classes (no fear, surprise, disgust or contempt): <root>/<class>/*.png,
    named as CK+ names its frames (S<subject>_<sequence>_<frame>.png)."""
    import cv2

    from ferdata.synth import SynthSettings, generate

    faces = generate(SynthSettings(n_subjects=8, videos_per_subject=6, frames_per_video=1, image_size=96), 5)
    for i, face in enumerate(faces):
        cls = classes[i % len(classes)]
        if i < per_class * len(classes):
            (root / cls).mkdir(parents=True, exist_ok=True)
            subject = int("".join(ch for ch in face.subject_id if ch.isdigit()))
            cv2.imwrite(str(root / cls / f"S{subject:03d}_{i:03d}_{face.frame:08d}.png"), face.image)


@pytest.mark.slow
def test_your_own_faces_through_the_custom_pipeline(tmp_path_factory):
    """`ferdata pipeline custom` on a folder of four classes: soft labels whose label indexes the file's own
    class list, with nothing of the synth root params.yaml (landmarks, 30% noise) applied."""
    import numpy as np

    from ferdata.core.classes import CANONICAL

    repo = tmp_path_factory.mktemp("custom-pipeline")
    shutil.copytree(Path(ferdata.__file__).parent, repo / "ferdata", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "pipelines", repo / "pipelines")
    shutil.copy(ROOT / "params.yaml", repo / "params.yaml")  # the synth pipeline's, which must not leak
    _own_faces(repo / "my-faces")
    for cls in ("happy", "sad"):  # a PNG cut after its header: download takes it, align cannot decode it
        whole = next((repo / "my-faces" / cls).glob("*.png")).read_bytes()
        (repo / "my-faces" / cls / "S000_900_00000001.png").write_bytes(whole[:64])
    params = yaml.safe_load((repo / "pipelines/custom/params.yaml").read_text())
    params["download"]["source"] = str(repo / "my-faces")
    params["align"].update(detector="none", workers=1)  # the faces are already framed
    params["prior"].update(folds=2, epochs=1)
    params["train"].update(epochs=2, batch_size=8, image_size=32)
    (repo / "pipelines/custom/params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(repo, "init", "-q")
    _ferdata(repo, "pipeline", "custom")
    dvc_yaml = repo / "pipelines/custom/dvc.yaml"
    assert not dvc_yaml.is_symlink() and (ROOT / "pipelines/templates/dataset.yaml").read_text() in dvc_yaml.read_text()
    out = _dvc(repo, "repro", "pipelines/custom/dvc.yaml")
    assert out.count("Running stage") == 10
    soft = ferdata.load_soft_labels(repo / "data/custom/softlabels.parquet")
    artifacts = yaml.safe_load(dvc_yaml.read_text())["artifacts"]
    for name in ("custom-softlabels", "custom-model"):  # the paths are the pipeline's outputs
        assert (dvc_yaml.parent / artifacts[name]["path"]).resolve().is_file()
    classes = soft.attrs["classes"]
    assert classes == ["neutral", "happy", "sad", "anger"] and len(soft) == 48
    assert soft.attrs["method"] == params["train"]["method"] == "arbex"  # the pipeline's method, not the root's
    labels = pd.read_parquet(repo / "data/custom/labels.parquet").set_index("sample_id").loc[soft["sample_id"]]
    given = [CANONICAL[i] for i in labels["label"]]
    assert [classes[i] for i in soft["label_index"]] == given == soft["label_name"].tolist()  # indexes classes
    dist = np.stack(soft["distribution"].to_numpy())
    p_given = dist[np.arange(len(soft)), soft["label_index"].to_numpy()]
    assert np.allclose(p_given, [d[classes.index(g)] for d, g in zip(dist, given)])
    assert (soft["predicted_index"].to_numpy() == dist.argmax(1)).all()
    assert all((repo / "data/custom" / p).is_file() for p in soft["image"])  # the image, without a join
    assert not labels["flipped"].any()  # noise 0: not synth's 0.3
    aligned = pd.read_parquet(repo / "data/custom/aligned.parquet")
    assert set(aligned["detector"]) == {"none"} and soft["sample_id"].str.startswith("custom-").all()
    assert "didn't change" in _dvc(repo, "repro", "pipelines/custom/dvc.yaml")
    manifest = pd.read_parquet(repo / "data/custom/manifest.parquet")
    assert manifest.groupby("subject_id")["split"].nunique().max() == 1  # a person on one side only
    assert manifest["subject_id"].nunique() == 8 and set(manifest["split"]) == {"train", "val", "test"}
    page = (repo / "reports/custom/index.html").read_text()
    assert "by subject (read with the ckplus pattern): 8 subjects, none in more than one split" in page
    lost = set(aligned.loc[aligned["status"] != "ok", "sample_id"])  # the two cut PNGs: counted, not lost
    assert len(lost) == 2 and all("s000_900" in s.lower() for s in lost) and not lost & set(soft["sample_id"])
    assert "the 2 faces not aligned are left out of every later stage" in out
    assert json.loads((repo / "reports/custom/metrics.json").read_text())["not_aligned"] == 2
    assert "2 of 50 (unreadable 2): in no soft label; aligned.parquet lists them with their reason" in page
