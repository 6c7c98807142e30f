"""The ``ferdata`` command: a thin typer layer over the stages.

Each stage command is built from the stage's declaration (``ferdata.stages``): ``--data``, ``--models``
and ``--reports`` for the folders its tables live in, one option per setting (its help from the
settings dataclass), and ``--params``. A setting comes from the option when given, else from the
params file (``./params.yaml`` by default), else from the dataclass's default. The whole params file is
checked first: an unknown section or key is an error naming the nearest valid one. Errors print one
line; bad options and settings exit 2, other failures 1.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from ferdata.core.errors import FerdataError, UsageError
from ferdata.core.settings import Params, cli_fields, field_type, load_params, resolve
from ferdata.core.stage import Stage

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="ferdata: FER datasets made ambiguity-aware. Each command is one pipeline stage.",
)
PARAMS_HELP = "params.yaml to read settings from (default: ./params.yaml if present)"
FOLDER_HELP = {
    "data": "dataset folder (default: data/<dataset>)",
    "models": "model folder (default: models/<dataset>)",
    "reports": "report folder (default: reports/<dataset>)",
}
KW = inspect.Parameter.KEYWORD_ONLY


def _version(value: bool) -> None:
    if value:
        from ferdata import __version__

        typer.echo(f"ferdata {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print the version and exit"
    ),
) -> None:
    """ferdata: FER datasets made ambiguity-aware. Each command is one pipeline stage."""


def fail_cleanly(fn: Callable[..., None]) -> Callable[..., None]:
    """Turn ferdata errors into one line on stderr and the error's exit code."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except FerdataError as exc:
            typer.echo(f"error: {one_line(exc)}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:
            text = environment_error(exc)
            if text is None:
                raise
            typer.echo(f"error: {text}", err=True)
            raise typer.Exit(1) from None

    return run


ENVIRONMENT_ERRORS = {  # errno -> (what happened, the fix); the stage's old outputs are kept whole
    errno.ENOSPC: ("no space left on the device", "free some space (or point --data elsewhere) and run it again"),
    errno.EDQUOT: ("disk quota exceeded", "free some space within your quota and run it again"),
    errno.EROFS: ("the file system is read-only", "copy the folder somewhere writable or remount it read-write"),
    errno.EACCES: ("permission denied", "make the folder writable for you (chmod/chown) or use another one"),
    errno.EPERM: ("operation not permitted", "make the folder writable for you (chmod/chown) or use another one"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n) or lower the workers"),
    errno.ENAMETOOLONG: ("a file name is too long", "shorten the folder or file names"),
    errno.ENOTDIR: ("a file stands where a folder should be", "give a path whose parents are folders"),
    errno.EEXIST: ("a file stands where a folder should be", "move the file or give another path"),
}


def environment_error(exc: OSError) -> str | None:
    """One line for an error of the machine rather than of ferdata (full disk, read-only folder, ...),
    naming the file; None for other errors, which are bugs and keep their traceback."""
    if exc.errno not in ENVIRONMENT_ERRORS:
        return None
    what, fix = ENVIRONMENT_ERRORS[exc.errno]
    where = f" at {exc.filename}" if exc.filename else ""
    return f"{what}{where}: {fix} (a stage publishes all of its outputs or none)"


def one_line(exc: FerdataError) -> str:
    """The error's own message: one raised in a DataLoader worker arrives wrapped in the worker's
    traceback ("Caught FerdataError in DataLoader worker process 0. Original Traceback ..."), whose last
    line is the message."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return " ".join(text.split())  # a library's message quoted inside may hold newlines


def read_params(path: Path | None, *, dataset: str | None = None, quiet: bool = False) -> Params:
    """The params file, checked whole against every stage's settings. The default ./params.yaml is one
    dataset's pipeline: for another dataset it does not apply (its settings would leak, e.g. synth's
    landmarks detector and 30% noise onto faces of yours), and its defaults do."""
    from ferdata.stages import check

    params = load_params(path)
    check(params)
    if path is None and dataset and params.get("dataset") and dataset != params["dataset"]:
        if quiet:
            return Params()
        typer.echo(
            f"note: ./params.yaml is the {params['dataset']} pipeline's; {dataset} takes the stages' "
            "defaults (give --params to use a params file)",
            err=True,
        )
        return Params()
    return params


def dataset_in(folder: Path) -> str | None:
    """The dataset a folder holds, from its manifest's metadata (None before `ferdata download`)."""
    from ferdata.core.io import locate, read_meta
    from ferdata.core.tables import TABLES

    manifest = locate(folder, TABLES["manifest"].file)
    try:
        return read_meta(manifest).get("dataset") if manifest.is_file() else None
    except Exception:  # an unreadable manifest is the stage's to report
        return None


def dataset_of(params: Params) -> str:
    return str(params.get("dataset", "synth"))


def _setting_parameter(f: dataclasses.Field, cls: type) -> inspect.Parameter | None:
    """A command-line option for a scalar setting (lists are set in the params file only)."""
    tp = field_type(cls, f.name)
    args = typing.get_args(tp)
    base = next((a for a in args if a is not type(None)), tp) if args and type(None) in args else tp
    if base not in (int, float, str, bool):
        return None
    flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
    decl = f"{flag}/--no-{f.name.replace('_', '-')}" if base is bool else flag
    help_ = f.metadata.get("help") or ""
    default = f.default if f.default is not dataclasses.MISSING else None
    help_ += f" (default: {default!r})" if default not in (None, "") else ""
    return inspect.Parameter(
        f"setting_{f.name}",
        KW,
        default=typer.Option(None, decl, help=help_, show_default=False),
        annotation=base | None,
    )


def stage_command(stage: Stage, *, name: str | None = None) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register ``fn(settings=, folders=, params=, <its own options>)`` as the command of ``stage``."""

    def register(fn: Callable[..., None]) -> Callable[..., None]:
        own = [p for p in inspect.signature(fn).parameters.values() if p.name not in ("settings", "folders", "params")]
        taken = {p.name for p in own}
        folders = [f for f in stage.folders if f not in taken]
        fields = [f for f in cli_fields(stage.settings) if _setting_parameter(f, stage.settings) is not None]
        signature = [
            *own,
            *(
                inspect.Parameter(
                    f, KW, default=typer.Option(None, f"--{f}", help=FOLDER_HELP[f]), annotation=Path | None
                )
                for f in folders
            ),
            *(_setting_parameter(f, stage.settings) for f in fields),
            inspect.Parameter(
                "params_file", KW, default=typer.Option(None, "--params", help=PARAMS_HELP), annotation=Path | None
            ),
        ]

        @fail_cleanly
        def command(**kwargs: Any) -> None:
            path = kwargs.pop("params_file")
            params = read_params(path)
            places = {f: kwargs.pop(f) or Path(f) / dataset_of(params) for f in folders}
            here = kwargs.get("name") or (dataset_in(places["data"]) if "data" in places else None)
            if here:  # the dataset this command works on: the default params file may not be its
                params = read_params(path, dataset=here, quiet="name" in kwargs)  # download names its dataset
            given = {f.name: kwargs.pop(f"setting_{f.name}") for f in fields}
            settings = resolve(stage.settings, params, given) if stage.settings is not None else None
            fn(settings=settings, folders=places, params=params, **kwargs)

        command.__signature__ = inspect.Signature(signature)
        command.__annotations__ = {p.name: p.annotation for p in signature}
        command.__name__ = fn.__name__
        app.command(name=name or stage.name, help=stage.help)(command)
        return fn

    return register


def _stages() -> dict[str, Stage]:
    from ferdata.stages import STAGES

    return STAGES


STAGES = _stages()


@stage_command(STAGES["download"])
def download(
    settings,
    folders,
    params,
    name: str | None = typer.Argument(None, help="dataset name (default: params dataset)"),
    data: Path | None = typer.Option(None, "--data", help="dataset folder (default: data/<name>)"),
) -> None:
    from ferdata.download import dataset_options, summarize
    from ferdata.download import download as run

    name = name or dataset_of(params)
    options = resolve(dataset_options(name, settings.adapter), params, section=name)
    out = data if data is not None else Path("data") / name
    typer.echo(f"download {name}: " + summarize(run(name, out, settings, options)))


@stage_command(STAGES["align"])
def align(
    settings,
    folders,
    params,
    part: str = typer.Option("1/1", help="do part i of n (i/n) of the chunks, for several machines"),
) -> None:
    from ferdata.align import align as run
    from ferdata.align import summarize

    try:
        index, parts = (int(v) for v in part.split("/"))
    except ValueError:
        raise UsageError(f"--part {part!r}: expected i/n, e.g. 3/8") from None
    typer.echo(summarize(run(folders["data"], settings, part=(index, parts))))


@stage_command(STAGES["shard"])
def shard(settings, folders, params) -> None:
    from ferdata.shard import shard as run
    from ferdata.shard import summarize

    typer.echo(summarize(run(folders["data"], settings)))


@stage_command(STAGES["regress"])
def regress(settings, folders, params) -> None:
    from ferdata.train.regress import regress as run
    from ferdata.train.regress import summarize

    typer.echo(summarize(run(folders["data"], settings)))


@stage_command(STAGES["prior"])
def prior(settings, folders, params) -> None:
    from ferdata.train.prior import prior as run
    from ferdata.train.prior import summarize

    typer.echo(summarize(run(folders["data"], settings)))


@stage_command(STAGES["va"])
def va(settings, folders, params) -> None:
    from ferdata.va import summarize
    from ferdata.va import va as run

    typer.echo(summarize(*run(folders["data"], settings)))


@stage_command(STAGES["noise"])
def noise(settings, folders, params) -> None:
    from ferdata.noise import noise as run
    from ferdata.noise import summarize

    typer.echo(summarize(run(folders["data"], settings)))


@stage_command(STAGES["sample"])
def sample(settings, folders, params) -> None:
    from ferdata.sample import sample as run
    from ferdata.sample import summarize

    typer.echo(summarize(run(folders["data"], settings)))


@stage_command(STAGES["train"])
def train(settings, folders, params) -> None:
    from ferdata.softlabels import trained_on
    from ferdata.train.loop import train as run

    out = run(folders["data"], folders["models"], settings)
    log, rate = out["epochs"], out["train_samples"] / max(out["train_seconds"], 1e-9)
    cal = out["calibration"]
    calibrated = f", calibrated: T {cal['temperature']:.2f}, prior weight {cal['prior_weight']:.2f}"
    calibrated = "" if cal["mode"] == "none" else calibrated
    typer.echo(
        f"trained {settings.method}/{settings.backbone} for {len(log)} epochs: final val acc {log[-1]['val_acc']:.3f}"
        f"{calibrated} ({rate:.0f} faces/s while training; {trained_on(out['engine'])})"
    )


@stage_command(STAGES["export"])
def export(settings, folders, params) -> None:
    from ferdata.export import export as run
    from ferdata.export import summarize

    typer.echo(summarize(run(folders["data"], folders["models"], settings)))


@stage_command(STAGES["report"])
def report(settings, folders, params) -> None:
    from ferdata.report import report as run
    from ferdata.report import summarize

    typer.echo(summarize(run(folders["data"], folders["reports"], settings, models_dir=folders["models"])))


@stage_command(STAGES["sweep"])
def sweep(
    settings,
    folders,
    params,
    reports: Path = typer.Option(..., help="a noise sweep's report folder (reports/sweep/<dataset>)"),
    out: Path | None = typer.Option(None, help="where sweep.csv and noise_recovery.png go (default: --reports)"),
) -> None:
    from ferdata.report import collect_sweep

    table = collect_sweep(reports, out, settings)
    typer.echo(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


@stage_command(STAGES["vega-template"])
def vega_template(
    settings, folders, params, out: Path = typer.Argument(Path("reports/vega.html"), help="where the template goes")
) -> None:
    from ferdata.figures import write_vega_template

    write_vega_template(out)
    typer.echo(f"wrote {out} ({out.stat().st_size // 1024} KiB); .dvc/config points plots.html_template at it")


@app.command(name="fork")
@fail_cleanly
def fork_cmd(
    data: Path | None = typer.Option(None, "--data", help=FOLDER_HELP["data"]),
    to: Path = typer.Option(..., "--to", help="new dataset folder"),
    params_file: Path | None = typer.Option(None, "--params", help=PARAMS_HELP),
) -> None:
    """Start a variant of a dataset (e.g. one noise ratio) that reuses its images, manifest and VA."""
    from ferdata.core.io import fork

    source = data if data is not None else Path("data") / dataset_of(read_params(params_file))
    fork(source, to)
    typer.echo(f"{to} reads what it lacks from {source}")


@app.command()
@fail_cleanly
def pipeline(
    name: str = typer.Argument(..., help="a dataset with pipelines/<name>/params.yaml, or noise-sweep"),
) -> None:
    """Write pipelines/<name>/dvc.yaml from its template, for `dvc repro pipelines/<name>/dvc.yaml`."""
    from ferdata.stages import write_pipeline

    out = write_pipeline(name)
    typer.echo(f"wrote {out}; fill in its params.yaml (download.source), then: dvc repro {out}")


@app.command()
@fail_cleanly
def init(
    name: str = typer.Argument(..., help="a name for your faces (letters, digits, - and _)"),
    source: str = typer.Option("", "--from", help="your folder, archive or CSV (download.source)"),
) -> None:
    """Write pipelines/<name>/params.yaml for your own faces (the custom pipeline's settings, renamed)."""
    from ferdata.stages import init_pipeline, write_pipeline

    params = init_pipeline(name, source)
    out = write_pipeline(name)
    typer.echo(f"wrote {params} and {out}; check download.source and align.detector there, then: dvc repro {out}")


@app.command()
@fail_cleanly
def validate(
    path: Path = typer.Argument(..., help="a ferdata parquet table (manifest, va, labels, knn, softlabels, ...)"),
) -> None:
    """Run a table's expectation suite; print the failures with a few offending ids."""
    from ferdata.core.validate import SUITES, describe, validate_file

    kind, rows, failed = validate_file(path)
    if failed:
        raise FerdataError(f"{path}: {kind} table fails validation: {describe(failed)}")
    checked = "its expectation suite" if kind in SUITES else "its schema (no suite for this kind)"
    typer.echo(f"{path}: {kind} table, {rows} rows, passes {checked}")


@app.command()
@fail_cleanly
def describe(
    path: str = typer.Argument(..., help="a softlabels.parquet (a path inside --repo when --repo/--rev are given)"),
    repo: str | None = typer.Option(None, "--repo", help="git URL or folder of a git+DVC repository"),
    rev: str | None = typer.Option(None, "--rev", help="git revision (commit, tag, branch) to read it at"),
    metrics: Path | None = typer.Option(
        None, "--metrics", help="metrics.json to show beside it (default: reports/<dataset>/metrics.json if present)"
    ),
) -> None:
    """Print what produced a soft-label file: dataset, method, noise, VA source, settings, model, metrics."""
    import json

    from ferdata.softlabels import describe_soft_labels, load_soft_labels

    df = load_soft_labels(path, repo=repo, rev=rev)
    if metrics is None and repo is None and rev is None:
        metrics = Path("reports") / str(df.attrs.get("dataset")) / "metrics.json"
        metrics = metrics if metrics.is_file() else None
    typer.echo(describe_soft_labels(df, json.loads(metrics.read_text()) if metrics else None))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
