"""The soft-label export as a contract for other projects: load and check it (no torch needed)."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from ferdata.core.errors import FerdataError
from ferdata.core.io import read_table
from ferdata.core.tables import SCHEMA_VERSION


def load_soft_labels(path: str | Path, *, repo: str | None = None, rev: str | None = None) -> pd.DataFrame:
    """Load a soft-label parquet, check its schema version and distributions; metadata in ``df.attrs``.

    ``df.attrs["classes"]`` names the classes in the order of each ``distribution``. With ``repo`` (a git
    URL or folder of a git+DVC repository) and/or ``rev`` (a commit, tag or branch), ``path`` is the file's
    path inside that repository and it is read at that revision through ``dvc.api`` (needs ``pip install
    dvc``; the light install reads local files only).
    """
    if repo is not None or rev is not None:
        return _load_versioned(str(path), repo=repo, rev=rev)
    df, meta = read_table(path, "softlabels", hint="run `ferdata export` to write it")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise FerdataError(
            f"{path} has soft-label schema {meta.get('schema_version')}, this ferdata reads {SCHEMA_VERSION}; "
            "re-run `ferdata export` with this version"
        )
    classes = meta.get("classes")
    if not classes:
        raise FerdataError(f"{path} lacks the class names in its metadata (ferdata.classes)")
    dists = np.stack(df["distribution"].to_numpy()) if len(df) else np.zeros((0, len(classes)))
    if dists.shape[1] != len(classes):
        raise FerdataError(f"{path}: distributions have {dists.shape[1]} values, metadata names {len(classes)} classes")
    if len(df) and np.abs(dists.sum(1) - 1.0).max() > 1e-5:
        raise FerdataError(f"{path}: some distributions do not sum to 1")
    df.attrs.update(meta)
    return df


def _load_versioned(path: str, *, repo: str | None, rev: str | None) -> pd.DataFrame:
    """The soft labels at ``path`` of ``repo`` at ``rev``, fetched through DVC into a temporary file."""
    import tempfile

    try:
        import dvc.api
    except ImportError as exc:
        raise FerdataError("loading soft labels by repo/rev needs DVC: pip install dvc") from exc
    where = f"{path} at {rev or 'HEAD'} of {repo or 'this repository'}"
    with tempfile.TemporaryDirectory(prefix="ferdata-softlabels-") as tmp:
        local = Path(tmp) / Path(path).name
        for i, each in enumerate(candidates := _revisions(path, rev)):
            try:
                with dvc.api.open(path, repo=repo, rev=each, mode="rb") as src:
                    local.write_bytes(src.read())
                break
            except Exception as exc:  # dvc raises many kinds (missing rev, path, cache): one line for all
                if i == len(candidates) - 1:
                    tried = f" (tried {', '.join(map(str, candidates))})" if len(candidates) > 1 else ""
                    line = f"cannot read {where}{tried}: {type(exc).__name__}: {exc}"
                    raise FerdataError(" ".join(line.split())) from exc
        df = load_soft_labels(local)
    df.attrs["source"] = where
    return df


def _revisions(path: str, rev: str | None) -> list[str | None]:
    """``rev`` as given, then, for a bare version (``v1.0.0`` or ``1.0.0``), the artifact's version tag
    (``synth-softlabels@v1.0.0``, as ``dvc artifacts get --rev v1.0.0`` reads it)."""
    out: list[str | None] = [rev]
    parts = PurePosixPath(path).parts
    if rev and re.fullmatch(r"v?\d+(\.\d+)*", rev) and len(parts) >= 3 and parts[-1] == "softlabels.parquet":
        version = rev if rev.startswith("v") else "v" + rev
        out.append(f"{parts[-2]}-softlabels@{version}")  # the root pipeline's artifact
        out.append(f"pipelines/{parts[-2]}={parts[-2]}-softlabels@{version}")  # a dataset pipeline's
    return out


def trained_on(engine: dict) -> str:
    """``cuda, bf16, channels_last, augmentation on cuda, 4 processes`` from the ``engine`` metadata."""
    if not engine:
        return "? (written before ferdata recorded it)"
    parts = [engine.get("device", "?"), engine.get("precision", "?")]
    parts += [k for k in ("channels_last", "compile") if engine.get(k)]
    parts.append(f"augmentation on {engine.get('augment_device', '?')}")
    world = engine.get("world_size", 1)
    return ", ".join(parts + ([f"{world} processes"] if world > 1 else []))


def describe_soft_labels(df: pd.DataFrame, metrics: dict | None = None) -> str:
    """A card a person reads: what produced these soft labels (from the file's metadata) and, when given,
    the run's metrics (reports/<dataset>/metrics.json)."""
    a = df.attrs
    noise = a.get("noise") or {}
    train = a.get("train") or {}
    lines = [
        f"# Soft labels: {a.get('dataset') or '?'} ({a.get('method')})",
        "",
        f"- source: {a.get('source', 'local file')}",
        f"- faces: {len(df)} ({', '.join(f'{k} {v}' for k, v in df['split'].value_counts().sort_index().items())})",
        f"- classes: {', '.join(a.get('classes', []))}",
        f"- method: {a.get('method')}; backbone {train.get('backbone', '?')}, {train.get('epochs', '?')} epochs, "
        f"seed {train.get('seed', '?')}",
        f"- trained on: {trained_on(a.get('engine') or {})}",
        f"- injected noise: {noise.get('ratio', 0) or 0:.0%} {noise.get('mode', '')} (seed {noise.get('seed')})",
        f"- valence/arousal source: {a.get('va_source') or '?'}",
        f"- suspected noisy labels: {int(df['suspected_noisy'].sum())}; mean confidence {df['confidence'].mean():.3f}",
        f"- model sha256: {a.get('model_hash')}",
        f"- ferdata {a.get('version')}, soft-label schema {a.get('schema_version')}, "
        f"settings hash {a.get('settings_hash')}",
    ]
    if train.get(str(a.get("method"))):
        options = ", ".join(f"{k} {v}" for k, v in train[str(a.get("method"))].items())
        lines.append(f"- {a.get('method')} options: {options}")
    if metrics:
        lines += ["", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    return "\n".join(lines)


def soft_label_card(df: pd.DataFrame) -> str:
    """The card export writes beside a soft-label file (``softlabels.card.md``): what produced it and
    how to load it without ferdata, for whoever fetches the file alone (``dvc artifacts get``)."""
    classes = list(df.attrs.get("classes", []))
    name = "softlabels.parquet"
    about = "\n".join(line for line in describe_soft_labels(df).splitlines() if not line.startswith("- source:"))
    return (
        about  # (where this copy was read from says nothing to whoever fetches the file)
        + f"""

## Columns

One row per labelled face: `sample_id`, `split`, `image` (its path relative to the dataset folder),
`label_index`/`label_name` (the given label; the index is a position in the classes below, not a
canonical id), `distribution` ({len(classes)} floats summing to 1, in the order of the classes),
`predicted_index`/`predicted_name`, `confidence` (1 - normalised entropy), `method_uncertainty` (the
method's own, on training faces; else empty), `suspected_noisy`, `valence`, `arousal`, `method`.
Classes, in order: {", ".join(f"{i} {c}" for i, c in enumerate(classes))}.

## Load it

    import pandas as pd;  df = pd.read_parquet("{name}")
    import polars as pl;  df = pl.read_parquet("{name}")
    import numpy as np, torch;  dist = torch.from_numpy(np.stack(pd.read_parquet("{name}")["distribution"]))
    import ferdata;  df = ferdata.load_soft_labels("{name}")  # checks the schema and the sums; metadata in df.attrs
"""
    )
