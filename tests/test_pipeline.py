"""The DVC pipelines end to end on tiny data: the root pipeline runs, caches and re-runs only what a change
touches; the experiment recipe of the README (exp run, exp show, metrics/params/plots diff); the noise
sweep and a dataset pipeline written by `ferdata pipeline`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import ferdata

ROOT = Path(__file__).resolve().parents[1]
TINY_PARAMS = {
    "synth": {
        "n_subjects": 6,
        "videos_per_subject": 2,
        "frames_per_video": 4,
        "image_size": 96,
        "val_fraction": 0.2,
        "test_fraction": 0.2,
    },
    "align": {"workers": 1},
    "train": {"epochs": 2, "batch_size": 8, "image_size": 32},
}


def _dvc(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "NO_ALBUMENTATIONS_UPDATE": "1",
        # these tests check DVC's wiring; the suites (9 s of great-expectations imports in every stage) are
        # tested on every table kind in test_validate.py and test_faults.py
        "FERDATA_SUITES": "off",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def _ferdata(repo: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "ferdata.cli", *args], cwd=repo, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True, capture_output=True
    )


def _ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '(\w+)'", output))


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A git + DVC repository holding this checkout's pipeline files, with tiny params."""
    repo = tmp_path_factory.mktemp("pipeline")
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copytree(Path(ferdata.__file__).parent, repo / "ferdata", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY_PARAMS.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")  # metrics and plot data in git, data in DVC
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(repo, "init", "-q")
    shutil.copy(ROOT / ".dvc/config", repo / ".dvc/config")  # plots.html_template: the offline page
    return repo


@pytest.mark.slow
def test_repro_runs_caches_and_reruns_only_downstream_of_noise(repo):
    first = _ran(_dvc(repo, "repro"))
    assert first == {"vega", "download", "align", "shard", "va", "noise", "sample", "train", "export", "report"}
    soft = ferdata.load_soft_labels(repo / "data/synth/softlabels.parquet")
    assert len(soft) == 48
    for name in (
        "metrics.json",
        "class_balance.png",
        "confusion.png",
        "va.png",
        "uncertainty.png",
        "ambiguous.png",
        "index.html",
    ):
        assert (repo / "reports/synth" / name).is_file()
    _dvc(repo, "plots", "show", "-o", "plots-page")
    page = (repo / "plots-page/index.html").read_text()
    assert page.count('<img src="static/') == 5 and page.count("vegaEmbed('#") == 3  # 5 images, 3 Vega plots
    assert not re.search(r"<script[^>]*\bsrc\s*=", page) and "cdn." not in page  # nothing fetched: renders offline
    assert "window.vegaEmbed=" in page  # the libraries are inlined
    assert (repo / "models/synth/model.pt").is_file()

    assert _ran(_dvc(repo, "repro")) == set()  # nothing changed: no work (what a change re-runs: the recipe test)


@pytest.mark.slow
def test_noise_sweep_collects_one_table(repo):
    _dvc(repo, "repro")  # the base dataset (cached by the test above when it ran first)
    shutil.copytree(ROOT / "pipelines", repo / "pipelines")
    _ferdata(repo, "pipeline", "noise-sweep")
    sweep = yaml.safe_load((repo / "pipelines/noise-sweep/params.yaml").read_text())
    sweep["sweep"].update(ratios=[0.2], methods=["ls"])
    sweep["train"].update(TINY_PARAMS["train"])
    (repo / "pipelines/noise-sweep/params.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
    out = _dvc(repo, "repro", "pipelines/noise-sweep/dvc.yaml")
    assert out.count("Running stage 'pipelines/noise-sweep/dvc.yaml:train@") == 1
    table = (repo / "reports/sweep/synth-summary/sweep.csv").read_text().splitlines()
    assert table[0].startswith("method,ratio,test_accuracy_true") and table[1].startswith("ls,0.2") and len(table) == 2
    assert (repo / "reports/sweep/synth-summary/noise_recovery.png").stat().st_size > 10_000
    assert (repo / "data/sweep/synth/r0.2/ls/base.json").is_file()
    assert not (repo / "data/sweep/synth/r0.2/shards").exists()  # images are shared, not copied
    labels = ferdata.load_soft_labels(repo / "data/sweep/synth/r0.2/ls/softlabels.parquet")
    assert labels.attrs["noise"]["ratio"] == 0.2


def _experiments(shown: list) -> dict[str, dict]:
    """``dvc exp show --json``: every experiment's name -> its metrics of reports/synth/metrics.json."""
    found = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs") or []:
                metrics = ((rev.get("data") or {}).get("metrics") or {}).get("reports/synth/metrics.json") or {}
                found[rev.get("name") or rev["rev"]] = metrics.get("data") or {}
    return found


@pytest.mark.slow
def test_the_readme_experiment_recipe(repo):
    """dvc exp run for two methods, then exp show, metrics/params diff (no warning), plots diff offline."""
    import json

    _dvc(repo, "repro")  # the baseline (built by the first test when it ran)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "baseline")
    out = _dvc(repo, "exp", "run", "-n", "ce", "-S", "train.method=ce", "-S", "train.epochs=1", "-S", "noise.ratio=0.1")
    assert _ran(out) == {"noise", "sample", "train", "export", "report"}, out  # never download, align, shard, va
    assert ferdata.load_soft_labels(repo / "data/synth/softlabels.parquet").attrs["noise"]["ratio"] == 0.1
    out = _dvc(repo, "exp", "run", "-n", "ldlva", "-S", "train.method=ldlva")  # the rest stays as the workspace has it
    assert _ran(out) == {"train", "export", "report"}, out
    experiments = _experiments(json.loads(_dvc(repo, "exp", "show", "--json")))
    assert {"ce", "ldlva"} <= set(experiments), experiments
    for name in ("ce", "ldlva"):
        assert {"test_accuracy_true", "noise_auroc", "soft_label_kl"} <= set(experiments[name]), experiments[name]
    for command in (("metrics", "diff", "ce", "ldlva"), ("params", "diff", "ce", "ldlva")):
        out = _dvc(repo, *command)
        assert "WARNING" not in out and "failed" not in out.lower(), out
    assert "train.method" in out and "ldlva" in out
    _dvc(repo, "plots", "diff", "ce", "ldlva", "-o", "compare")
    page = (repo / "compare/index.html").read_text()
    assert page.count("vegaEmbed('#") == 3 and not re.search(r"<script[^>]*\bsrc\s*=", page)


@pytest.mark.slow
def test_soft_labels_are_fetched_by_artifact_name_and_version(repo, tmp_path):
    """The README's recipe for another project: push, tag a version, `dvc artifacts get` it by name."""
    _dvc(repo, "repro")  # cached by the tests above when they ran first
    _dvc(repo, "remote", "add", "-d", "-f", "store", str(tmp_path / "remote"))
    _dvc(repo, "push", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "--allow-empty", "-m", "soft labels v1")
    _git(repo, "tag", "-a", "synth-softlabels@v1.0.0", "-m", "synth soft labels v1.0.0")
    out = tmp_path / "fetched.parquet"
    _dvc(repo, "artifacts", "get", str(repo), "synth-softlabels", "--rev", "v1.0.0", "-o", str(out))
    soft = ferdata.load_soft_labels(out)
    assert len(soft) == 48 and out.read_bytes() == (repo / "data/synth/softlabels.parquet").read_bytes()
    model = tmp_path / "model.pt"
    _dvc(repo, "get", str(repo), "models/synth/model.pt", "--rev", "synth-softlabels@v1.0.0", "-o", str(model))
    assert model.stat().st_size > 0


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "FERDATA_SUITES": "off",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


@pytest.mark.slow
def test_a_killed_or_locked_dvc_repro_keeps_the_last_outputs(repo):
    """DVC deletes a stage's outputs before its command unless they persist: a `dvc repro` killed in train
    kept no model.pt, and one run beside a hand-run stage holding the folder deleted its table. With
    `persist: true` both keep the last good outputs, and the next `dvc repro` finishes the job."""
    import signal
    import time

    _dvc(repo, "repro")
    kept = ("models/synth/model.pt", "models/synth/train_log.json", "data/synth/labels.parquet")
    before = {p: (repo / p).read_bytes() for p in kept}
    params = (repo / "params.yaml").read_text()
    changed = yaml.safe_load(params)
    changed["train"]["epochs"] = 40
    (repo / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro"],
        cwd=repo,
        env=_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    lock = repo / "models/synth/.ferdata.lock"
    start = time.time()
    while not (lock.is_file() and "ferdata train" in lock.read_text()):  # train holds its folder: kill now
        assert proc.poll() is None and time.time() - start < 120
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert {p: (repo / p).read_bytes() for p in kept} == before

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from ferdata.core.publish import locked\n"
         "with locked(Path('data/synth'), 'noise'):\n    print('held', flush=True); time.sleep(120)"],
        cwd=repo, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        changed["noise"]["ratio"] = 0.35
        (repo / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
        out = subprocess.run(
            [sys.executable, "-m", "dvc", "repro", "-s", "noise"], cwd=repo, env=_env(), capture_output=True, text=True
        )
        assert out.returncode != 0 and "is being written by ferdata noise" in out.stdout + out.stderr
        assert {p: (repo / p).read_bytes() for p in kept} == before
    finally:
        holder.kill()
        holder.wait()
    (repo / "params.yaml").write_text(params)
    _dvc(repo, "repro")  # the interrupted work is done again; the outputs match the params once more
    assert "Data and pipelines are up to date" in _dvc(repo, "status")


@pytest.mark.slow
def test_a_bad_experiment_value_fails_before_any_output_is_touched(repo):
    """`dvc exp run -S train.method=ldl` (a typo) beside a valid change upstream: the first stage DVC runs
    checks the whole params file and stops, so no stage publishes anything and DVC deletes nothing
    (before, train's outputs were gone: models/synth/ was empty)."""
    _dvc(repo, "repro")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "--allow-empty", "-m", "before the bad experiment")  # exp run needs a commit
    params = (repo / "params.yaml").read_text()
    outputs = [p for p in (repo / "models/synth").iterdir() if p.is_file() and not p.name.startswith(".")]
    outputs += [repo / "data/synth/labels.parquet", repo / "data/synth/plan.parquet"]
    before = {p: p.read_bytes() for p in outputs}
    out = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "run", "-S", "noise.ratio=0.2", "-S", "train.method=ldl"],
        cwd=repo,
        env=_env(),
        capture_output=True,
        text=True,
    )
    text = out.stdout + out.stderr
    assert out.returncode != 0 and "train.method 'ldl': use one of" in text, text
    assert {p: p.read_bytes() for p in outputs} == before
    (repo / "params.yaml").write_text(params)  # what `git checkout params.yaml` does (or use `dvc exp run --temp`)
    assert "Data and pipelines are up to date" in _dvc(repo, "status")
