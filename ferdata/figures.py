"""The report's pictures: class balance, confusion, VA scatter, uncertainty by flipped/clean, the most
ambiguous faces with their distributions, the noise sweep's curves; one self-contained HTML page
holding them; and the page template that lets `dvc plots show` draw its Vega-Lite plots offline."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ferdata.core.classes import class_index
from ferdata.core.io import atomic_file
from ferdata.core.stage import Stage

COLOURS = ("#7f7f7f", "#2ca02c", "#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#d62728", "#e377c2")


def class_colour(name: str) -> str:
    """One colour per canonical class (neutral grey, happy green, ...), the same on every report page
    whatever subset of classes a dataset has."""
    from ferdata.core.classes import CANONICAL

    return COLOURS[CANONICAL.index(name) % len(COLOURS)] if name in CANONICAL else "#17becf"


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path) -> Path:
    """Write ``fig`` atomically as a PNG without a Software stamp (same figure, same bytes) and close it."""
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    pyplot().close(fig)
    return path


def plot_curves(epochs: list[dict[str, float]], path: Path) -> Path:
    """Training loss and validation accuracy per epoch (the trainer's log)."""
    plt = pyplot()
    fig, (loss, acc) = plt.subplots(1, 2, figsize=(10, 3.2))
    x = [e["epoch"] for e in epochs]
    loss.plot(x, [e["loss"] for e in epochs], marker="o", color="#1f77b4")
    acc.plot(x, [e["val_acc"] for e in epochs], marker="o", color="#2ca02c")
    loss.set(xlabel="epoch", ylabel="training loss", title="Training loss")
    acc.set(xlabel="epoch", ylabel="accuracy (given labels)", title="Validation accuracy", ylim=(0, 1))
    for ax in (loss, acc):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_png(fig, path)


def plot_class_balance(labels: pd.DataFrame, classes: list[str], path: Path) -> Path:
    """Grouped bars: given-label counts per split, and the clean training labels beside them."""
    plt = pyplot()

    groups = [
        (f"{s} (given)", class_index(labels.loc[labels["split"] == s, "label"].to_numpy(), classes))
        for s in ("train", "val", "test")
    ]
    groups.insert(
        1, ("train (clean)", class_index(labels.loc[labels["split"] == "train", "clean_label"].to_numpy(), classes))
    )
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(groups)
    for g, (name, values) in enumerate(groups):
        counts = np.bincount(values, minlength=len(classes))
        ax.bar(np.arange(len(classes)) + g * width - 0.4 + width / 2, counts, width, label=name)
    ax.set_xticks(np.arange(len(classes)), classes, rotation=30)
    ax.set_ylabel("faces")
    ax.set_title("Class balance per split")
    ax.legend()
    fig.tight_layout()
    return save_png(fig, path)


def plot_confusion(counts: np.ndarray, classes: list[str], title: str, path: Path) -> Path:
    """Row-normalised confusion matrix with counts in the cells."""
    plt = pyplot()

    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(
                j,
                i,
                str(counts[i, j]),
                ha="center",
                va="center",
                color="white" if rates[i, j] > 0.5 else "black",
                fontsize=8,
            )
    ax.set_xticks(np.arange(len(classes)), classes, rotation=30)
    ax.set_yticks(np.arange(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return save_png(fig, path)


def plot_sweep(table: pd.DataFrame, path: Path) -> Path:
    """Clean-test accuracy and noisy-label detection AUROC against the noise ratio, a line per method."""
    plt = pyplot()

    acc = "test_accuracy_true" if table["test_accuracy_true"].notna().any() else "test_accuracy"
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for method, rows in table.groupby("method", sort=True):
        axes[0].plot(rows["ratio"], rows[acc], marker="o", label=method)
        axes[1].plot(rows["ratio"], rows["noise_auroc"], marker="o", label=method)
    axes[0].set(xlabel="symmetric noise ratio", ylabel=acc.replace("_", " "), title="Clean-test accuracy")
    axes[1].set(xlabel="symmetric noise ratio", ylabel="AUROC (1 - p[given label])", title="Noisy-label detection")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    return save_png(fig, path)


def plot_va(va: pd.DataFrame, labels: pd.DataFrame, classes: list[str], path: Path) -> Path:
    """Valence/arousal of every face, coloured by its clean label."""
    plt = pyplot()
    df = va.merge(labels[["sample_id", "clean_label"]], on="sample_id")
    idx = class_index(df["clean_label"].to_numpy(), classes)
    fig, ax = plt.subplots(figsize=(6.5, 6))
    for i, name in enumerate(classes):
        m = idx == i
        ax.scatter(df.loc[m, "valence"], df.loc[m, "arousal"], s=6, alpha=0.5, color=class_colour(name), label=name)
    ax.set(
        xlim=(-1.05, 1.05),
        ylim=(-1.05, 1.05),
        xlabel="valence",
        ylabel="arousal",
        title=f"Valence/arousal by clean label (source: {', '.join(sorted(set(va['source'])))})",
    )
    ax.axhline(0, color="0.8", lw=0.8)
    ax.axvline(0, color="0.8", lw=0.8)
    ax.legend(markerscale=3, fontsize=8, loc="lower left")
    fig.tight_layout()
    return save_png(fig, path)


def plot_uncertainty(soft: pd.DataFrame, labels: pd.DataFrame, path: Path) -> Path:
    """Histogram of the training faces' ``uncertainty`` column, flipped labels against clean ones."""
    plt = pyplot()
    df = soft[soft["split"] == "train"].merge(labels[["sample_id", "flipped"]], on="sample_id")
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.linspace(0, 1, 31)
    noisy = bool(df["flipped"].any())
    ax.hist(
        df.loc[~df["flipped"], "uncertainty"],
        bins=bins,
        alpha=0.6,
        label=f"clean ({(~df['flipped']).sum()})" if noisy else f"training faces ({len(df)}, no injected noise)",
        density=True,
    )
    if df["flipped"].any():
        ax.hist(
            df.loc[df["flipped"], "uncertainty"],
            bins=bins,
            alpha=0.6,
            label=f"flipped ({df['flipped'].sum()})",
            density=True,
        )
    title = "Uncertainty: flipped vs clean labels" if noisy else "Uncertainty of the training soft labels"
    ax.set(xlabel="uncertainty of the exported soft label", ylabel="density", title=title)
    ax.legend()
    fig.tight_layout()
    return save_png(fig, path)


def plot_gallery(soft: pd.DataFrame, images: np.ndarray, classes: list[str], path: Path, *, noisy: bool = True) -> Path:
    """The most ambiguous training faces beside their soft labels, two faces a row: the given label in
    red; with injected noise, the clean one outlined and flipped labels said so in the title."""
    plt = pyplot()
    n, per_row = len(soft), 2
    rows = -(-n // per_row)
    fig, axes = plt.subplots(
        rows, 2 * per_row, figsize=(13, 2.3 * rows), squeeze=False, gridspec_kw={"width_ratios": [1, 1.9] * per_row}
    )
    for k in range(rows * per_row):
        ax_img, ax_bar = axes[k // per_row, 2 * (k % per_row)], axes[k // per_row, 2 * (k % per_row) + 1]
        ax_img.set_axis_off()
        if k >= n:
            ax_bar.set_axis_off()
            continue
        rec = soft.iloc[k]
        ax_img.imshow(images[k])
        dist = np.asarray(rec["distribution"], np.float64)
        given = int(rec["label_index"])
        clean = int(rec["clean"]) if "clean" in rec and pd.notna(rec["clean"]) else given
        bars = ax_bar.barh(
            np.arange(len(classes)), dist, color=["#d62728" if i == given else "#1f77b4" for i in range(len(classes))]
        )
        bars[clean].set_edgecolor("black")
        bars[clean].set_linewidth(2)
        ax_bar.set_yticks(np.arange(len(classes)), classes, fontsize=10)
        ax_bar.invert_yaxis()
        ax_bar.set_xlim(0, 1)
        ax_bar.tick_params(axis="x", labelsize=9)
        flipped = f" (flipped from {classes[clean]})" if clean != given else " (not flipped)" if noisy else ""
        ax_bar.set_title(f"given {classes[given]}{flipped}", fontsize=10, loc="left")
    fig.suptitle("Red: the given label; outlined: the clean label" if noisy else "Red: the given label", fontsize=11)
    fig.tight_layout()
    return save_png(fig, path)


def most_ambiguous(soft: pd.DataFrame, k: int) -> pd.DataFrame:
    """The k training faces whose exported distribution is least confident (ties by id)."""
    train = soft[soft["split"] == "train"]
    return train.sort_values(["confidence", "sample_id"], kind="stable").head(k)


def _img(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def write_html(
    path: Path,
    *,
    title: str,
    headline: str,
    context: list[tuple[str, str]],
    metrics: dict[str, float],
    names: dict[str, tuple[str, str]],
    figures: list[tuple[str, Path]],
    tables: list[tuple[str, pd.DataFrame]] = (),
) -> Path:
    """One self-contained page (figures inlined as data URIs, no script, nothing fetched): a headline,
    what was run, every metric by name with its meaning, the tables (e.g. the suspected labels), then
    the figures."""
    about = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in context)
    rows = "".join(
        f"<tr><th>{html.escape(names[k][0])}</th><td class=v>{html.escape(_fmt(v))}</td>"
        f"<td class=m>{html.escape(names[k][1])} <code>{html.escape(k)}</code></td></tr>"
        for k, v in metrics.items()
    )
    listed = "".join(
        f"<h2>{html.escape(caption)}</h2><table><tr>"
        + "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
        + "</tr>"
        + "".join(
            "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
            for row in df.itertuples(index=False)
        )
        + "</table>"
        for caption, df in tables
    )
    body = "".join(
        f"<figure><figcaption>{html.escape(caption)}</figcaption>"
        f'<img src="{_img(fig)}" alt="{html.escape(caption)}"></figure>'
        for caption, fig in figures
        if fig.is_file()
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }}
p.headline {{ font-size: 1.25rem; line-height: 1.5; }}
table {{ border-collapse: collapse; margin-bottom: 1.5rem; }}
th, td {{ padding: .3rem .8rem; border-bottom: 1px solid #ddd; text-align: left; vertical-align: top; }}
td.v {{ font-variant-numeric: tabular-nums; font-weight: 600; }} td.m {{ color: #555; }}
code {{ color: #888; font-size: .85em; }}
figure {{ margin: 1.5rem 0; }} figcaption {{ font-weight: 600; margin-bottom: .4rem; }}
img {{ max-width: 100%; border: 1px solid #eee; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p class=headline>{html.escape(headline)}</p>
<table>{about}</table>
<h2>Metrics</h2>
<table>{rows}</table>
{listed}
{body}
</body></html>
"""
    with atomic_file(path) as tmp:
        tmp.write_text(page)
    return path


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float | np.floating) else str(value)


VEGA_LITE = "5.21"  # DVC's plot templates are Vega-Lite 5 specs
VEGA = Stage(
    "vega-template",
    "Write the offline page template for `dvc plots show` (Vega inlined, no CDN).",
    __name__,
    writes=("vega_template",),
)


def write_vega_template(path: Path) -> Path:
    """An HTML template for `dvc plots show` (config ``plots.html_template``) with Vega, Vega-Lite and
    vega-embed inlined, so the page DVC writes draws its data plots with nothing fetched from a CDN.

    The scripts come from the vl-convert-python wheel (its bundled copy of the three libraries), not
    from the network; DVC fills ``{plot_divs}`` and leaves out its CDN ``{scripts}``."""
    import vl_convert

    bundle = vl_convert.javascript_bundle(vl_version=VEGA_LITE)
    if "</script" in bundle.lower():
        raise RuntimeError("the Vega bundle holds a closing script tag and cannot be inlined")
    page = f"""<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- Vega {vl_convert.get_vega_version()}, Vega-Lite {VEGA_LITE}, vega-embed {vl_convert.get_vega_embed_version()}
         from vl-convert-python {vl_convert.__version__}: no CDN -->
    <script type="text/javascript">
(function () {{
{bundle}
}})();
    </script>
    <style>
        body {{ font-family: system-ui, sans-serif; }}
        table {{ border-spacing: 15px; }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""
    with atomic_file(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
