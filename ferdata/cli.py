"""The ``ferdata`` command: a thin typer layer over the stages.

Every option left out falls back to params.yaml (``--params``; the one in the current folder by
default), then to the stage's own default. Errors print one line and exit non-zero.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import typer
import yaml

from ferdata.errors import FerdataError, UsageError

if TYPE_CHECKING:
    from ferdata.train.loop import TrainConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help="ferdata: FER datasets made ambiguity-aware. Each command is one pipeline stage.")
ParamsOpt = typer.Option(None, "--params", help="params.yaml to read defaults from (default: ./params.yaml if present)")
DataOpt = typer.Option(None, "--data", help="dataset folder (default: data/<dataset>)")


def load_params(path: Optional[Path]) -> dict[str, Any]:
    """params.yaml as a dict (safe_load); an explicitly named missing file is an error."""
    if path is None:
        path = Path("params.yaml")
        if not path.is_file():
            return {}
    if not path.is_file():
        raise UsageError(f"params file {path} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise UsageError(f"{path} must hold a mapping of sections")
    return data


def pick(value: Any, params: dict[str, Any], section: str, key: str, default: Any) -> Any:
    """The option if given, else params[section][key], else the params' top-level key, else ``default``."""
    if value is not None:
        return value
    sect = params.get(section) or {}
    if key in sect:
        return sect[key]
    return params.get(key, default)


def data_dir(data: Optional[Path], params: dict[str, Any]) -> Path:
    return data if data is not None else Path("data") / params.get("dataset", "synth")


def stage(fn: Callable[..., None]) -> Callable[..., None]:
    """Turn ferdata errors into one line on stderr and the error's exit code."""
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except FerdataError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
    return run


@app.command()
@stage
def download(name: Optional[str] = typer.Argument(None, help="dataset name (default: params dataset)"),
             source: Optional[str] = typer.Option(None, "--from", help="archive, folder or http(s) URL of a real dataset"),
             sha256: Optional[str] = typer.Option(None, help="expected sha256 of the archive"),
             data: Optional[Path] = DataOpt, seed: Optional[int] = typer.Option(None, help="generator / split seed"),
             params_file: Optional[Path] = ParamsOpt) -> None:
    """Generate synth, or ingest a real dataset through its adapter; write its manifest and rejected rows."""
    from ferdata.download import download as run, summarize

    params = load_params(params_file)
    name = name or params.get("dataset", "synth")
    options = dict(params.get(name) or {})
    options["seed"] = pick(seed, params, name, "seed", 0)
    source = source if source is not None else (params.get("source") or {}).get("path") or None
    sha256 = sha256 if sha256 is not None else (params.get("source") or {}).get("sha256") or None
    out = data if data is not None else Path("data") / name
    typer.echo(f"download {name}: " + summarize(run(name, out, source=source, sha256=sha256, options=options)))


@app.command()
@stage
def align(data: Optional[Path] = DataOpt, detector: Optional[str] = typer.Option(None, help="landmarks (the dataset's own 5 points), mtcnn or insightface (detect them), none (already aligned: resize only)"),
          size: Optional[int] = typer.Option(None, help="output size in pixels (112, 224)"),
          workers: Optional[int] = typer.Option(None, help="worker processes"),
          part: str = typer.Option("1/1", help="do part i of n (i/n) of the chunks, for several machines"),
          params_file: Optional[Path] = ParamsOpt) -> None:
    """Align every face to the canonical 5-point template (resumable; --part i/n splits the work)."""
    from ferdata.align import align as run, summarize

    p = load_params(params_file)
    try:
        index, parts = (int(v) for v in part.split("/"))
    except ValueError:
        raise UsageError(f"--part {part!r}: expected i/n, e.g. 3/8") from None
    det = pick(detector, p, "align", "detector", "landmarks")
    table = run(data_dir(data, p), detector=det,
                size=pick(size, p, "align", "size", 112), jpeg_quality=pick(None, p, "align", "jpeg_quality", 95),
                workers=pick(workers, p, "align", "workers", 1), weights=pick(None, p, "align", f"{'mtcnn_weights' if det == 'mtcnn' else 'insightface_models'}", None),
                no_face=pick(None, p, "align", "no_face", "flag"), min_face=pick(None, p, "align", "min_face", 20),
                part=(index, parts))
    typer.echo(summarize(table))


@app.command()
@stage
def shard(data: Optional[Path] = DataOpt, max_count: Optional[int] = typer.Option(None, help="faces per shard"),
          params_file: Optional[Path] = ParamsOpt) -> None:
    """Pack aligned faces into WebDataset shards."""
    from ferdata.shard import shard as run

    p = load_params(params_file)
    index = run(data_dir(data, p), max_count=pick(max_count, p, "shard", "max_count", 1000))
    typer.echo(f"sharded {len(index)} faces into {index['shard'].nunique()} shards")


@app.command()
@stage
def va(data: Optional[Path] = DataOpt, source: Optional[str] = typer.Option(None, help="provided, regressor, onnx, circumplex, csv, or several in priority order (provided,circumplex)"),
       posteriors: Optional[str] = typer.Option(None, help="circumplex: parquet with a distribution per face"),
       k: Optional[int] = typer.Option(None, help="neighbours per training face"),
       params_file: Optional[Path] = ParamsOpt) -> None:
    """Valence/arousal per face and the KNN graph in VA space."""
    from ferdata.va import va as run

    p = load_params(params_file)
    table, graph = run(data_dir(data, p), source=pick(source, p, "va", "source", "provided"), k=pick(k, p, "va", "k", 8),
                       posteriors=pick(posteriors, p, "va", "posteriors", None), csv=pick(None, p, "va", "csv", None),
                       csv_knn=bool(pick(None, p, "va", "csv_knn", False)), regressor=pick(None, p, "va", "regressor", None),
                       onnx=pick(None, p, "va", "onnx", None))
    typer.echo(f"va for {len(table)} faces; knn graph over {len(graph)} training faces")


@app.command()
@stage
def noise(data: Optional[Path] = DataOpt, ratio: Optional[float] = typer.Option(None, help="share of training labels to flip, in [0, 1)"),
          mode: Optional[str] = typer.Option(None, help="symmetric or pairs"), seed: Optional[int] = typer.Option(None),
          params_file: Optional[Path] = ParamsOpt) -> None:
    """Inject synthetic label noise into the training split."""
    from ferdata.noise import noise as run, summarize

    p = load_params(params_file)
    typer.echo(summarize(run(data_dir(data, p), ratio=pick(ratio, p, "noise", "ratio", 0.0),
                             mode=pick(mode, p, "noise", "mode", "symmetric"), seed=pick(seed, p, "noise", "seed", 0))))


@app.command()
@stage
def sample(data: Optional[Path] = DataOpt, epochs: Optional[int] = typer.Option(None, help="epochs to plan (default train.epochs)"),
           per_video: Optional[int] = typer.Option(None, help="frames per video per epoch"),
           per_class: Optional[int] = typer.Option(None, help="samples per class per epoch; 0 = largest class"),
           seed: Optional[int] = typer.Option(None), params_file: Optional[Path] = ParamsOpt) -> None:
    """Write the balanced epoch plan."""
    from ferdata.sample import sample as run

    p = load_params(params_file)
    plan = run(data_dir(data, p), epochs=pick(epochs, p, "train", "epochs", 12),
               per_video=pick(per_video, p, "sample", "per_video", 6), per_class=pick(per_class, p, "sample", "per_class", 0),
               seed=pick(seed, p, "sample", "seed", 0))
    typer.echo(f"planned {plan['epoch'].nunique()} epochs of {len(plan) // plan['epoch'].nunique()} samples")


@app.command()
@stage
def train(data: Optional[Path] = DataOpt, models: Optional[Path] = typer.Option(None, help="model folder (default: models/<dataset>)"),
          method: Optional[str] = typer.Option(None, help="ce, ls, ldlva, arbex or akt"), backbone: Optional[str] = typer.Option(None, help="small_cnn or resnet18"),
          epochs: Optional[int] = typer.Option(None), batch_size: Optional[int] = typer.Option(None), lr: Optional[float] = typer.Option(None),
          image_size: Optional[int] = typer.Option(None), weights: Optional[str] = typer.Option(None, help="local initial weights (.pt)"),
          seed: Optional[int] = typer.Option(None), workers: Optional[int] = typer.Option(None, help="DataLoader workers per rank"),
          params_file: Optional[Path] = ParamsOpt) -> None:
    """Train a model on the epoch plan (CUDA when present; DDP under torchrun)."""
    from ferdata.train.loop import train as run

    p = load_params(params_file)
    given = {"method": method, "backbone": backbone, "epochs": epochs, "batch_size": batch_size, "lr": lr,
             "image_size": image_size, "weights": weights, "seed": seed, "workers": workers}
    cfg = train_config(p, given)
    out = models if models is not None else Path("models") / p.get("dataset", "synth")
    log = run(data_dir(data, p), out, cfg)["epochs"]
    typer.echo(f"trained {cfg.method}/{cfg.backbone} for {len(log)} epochs: final val acc {log[-1]['val_acc']:.3f}")


def train_config(p: dict[str, Any], given: dict[str, Any]) -> TrainConfig:
    """TrainConfig from CLI options, then params.yaml's train section, then defaults."""
    from dataclasses import fields

    from ferdata.train.loop import TrainConfig
    from ferdata.train.methods import METHODS

    return TrainConfig(**{f.name: pick(given.get(f.name), p, "train", f.name, f.default) for f in fields(TrainConfig)
                          if f.name != "options"},
                       options={m: (p.get("train") or {}).get(m) or {} for m in METHODS})


@app.command()
@stage
def prior(data: Optional[Path] = DataOpt, folds: Optional[int] = typer.Option(None, help="subject-grouped folds"),
          method: Optional[str] = typer.Option(None, help="method of the fold models (default ce)"),
          epochs: Optional[int] = typer.Option(None), params_file: Optional[Path] = ParamsOpt) -> None:
    """Out-of-fold class posteriors for every labelled face (input of the circumplex VA source)."""
    from ferdata.train.oof import prior as run

    p = load_params(params_file)
    section = p.get("prior") or {}
    cfg = train_config(p, {"method": method or section.get("method", "ce"), "epochs": epochs or section.get("epochs")})
    table = run(data_dir(data, p), cfg, folds=pick(folds, p, "prior", "folds", 4),
                per_video=pick(None, p, "sample", "per_video", 6), per_class=pick(None, p, "sample", "per_class", 0),
                seed=pick(None, p, "prior", "seed", 0))
    if table.empty:
        typer.echo("prior skipped (prior.folds 0)")
        return
    train = table[table["split"] == "train"]
    typer.echo(f"out-of-fold {cfg.method} posteriors for {len(table)} faces ({len(train)} training faces held out once)")


@app.command(name="fork")
@stage
def fork_cmd(data: Optional[Path] = DataOpt, to: Path = typer.Option(..., "--to", help="new dataset folder"),
             params_file: Optional[Path] = ParamsOpt) -> None:
    """Start a variant of a dataset (e.g. one noise ratio) that reuses its images, manifest and VA."""
    from ferdata.io import fork

    p = load_params(params_file)
    fork(data_dir(data, p), to)
    typer.echo(f"{to} reads what it lacks from {data_dir(data, p)}")


@app.command()
@stage
def export(data: Optional[Path] = DataOpt, models: Optional[Path] = typer.Option(None, help="model folder (default: models/<dataset>)"),
           margin: Optional[float] = typer.Option(None, help="suspected-noisy margin"), params_file: Optional[Path] = ParamsOpt) -> None:
    """Write the soft labels as versioned parquet."""
    from ferdata.export import export as run, summarize

    p = load_params(params_file)
    out = models if models is not None else Path("models") / p.get("dataset", "synth")
    typer.echo(summarize(run(data_dir(data, p), out, margin=pick(margin, p, "export", "margin", 0.2), params=p)))


@app.command()
@stage
def report(data: Optional[Path] = DataOpt, reports: Optional[Path] = typer.Option(None, help="report folder (default: reports/<dataset>)"),
           params_file: Optional[Path] = ParamsOpt) -> None:
    """Write metrics.json and figures."""
    from ferdata.report import report as run, summarize

    p = load_params(params_file)
    out = reports if reports is not None else Path("reports") / p.get("dataset", "synth")
    typer.echo(summarize(run(data_dir(data, p), out)))


@app.command()
@stage
def validate(path: Path = typer.Argument(..., help="a ferdata parquet table (manifest, va, labels, knn, softlabels, ...)")) -> None:
    """Run a table's expectation suite; print the failures with a few offending ids."""
    from ferdata.errors import FerdataError
    from ferdata.validate import SUITES, describe, validate_file

    kind, rows, failed = validate_file(path)
    if failed:
        raise FerdataError(f"{path}: {kind} table fails validation: {describe(failed)}")
    checked = "its expectation suite" if kind in SUITES else "its schema (no suite for this kind)"
    typer.echo(f"{path}: {kind} table, {rows} rows, passes {checked}")


@app.command()
@stage
def sweep(reports: Path = typer.Option(..., help="a noise sweep's report folder (reports/sweep/<dataset>)"),
          out: Optional[Path] = typer.Option(None, help="where sweep.csv and noise_recovery.png go (default: --reports)")) -> None:
    """Collect a noise sweep's metrics into sweep.csv and the noise-recovery curve."""
    from ferdata.report import collect_sweep

    table = collect_sweep(reports, out)
    typer.echo(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


@app.command(name="vega-template")
@stage
def vega_template(out: Path = typer.Argument(Path("reports/vega.html"), help="where the template goes")) -> None:
    """Write the offline page template for `dvc plots show` (Vega inlined, no CDN)."""
    from ferdata.figures import write_vega_template

    write_vega_template(out)
    typer.echo(f"wrote {out} ({out.stat().st_size // 1024} KiB); .dvc/config points plots.html_template at it")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
