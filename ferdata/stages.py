"""Every stage's declaration in one place: the CLI builds its commands from them, the params check
knows every section through them, and tests/test_stages.py checks the DVC pipelines against them.
Nothing here imports torch."""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ferdata.align import STAGE as ALIGN
from ferdata.core.settings import Settings, check_params
from ferdata.core.stage import Stage
from ferdata.download import STAGE as DOWNLOAD
from ferdata.download import dataset_options, known_datasets
from ferdata.export import STAGE as EXPORT
from ferdata.figures import VEGA
from ferdata.noise import STAGE as NOISE
from ferdata.report import STAGE as REPORT
from ferdata.report import SWEEP
from ferdata.sample import STAGE as SAMPLE
from ferdata.shard import STAGE as SHARD
from ferdata.train.settings import PRIOR, REGRESS, TRAIN
from ferdata.va import STAGE as VA

STAGES: dict[str, Stage] = {
    s.name: s for s in (DOWNLOAD, ALIGN, SHARD, REGRESS, PRIOR, VA, NOISE, SAMPLE, TRAIN, EXPORT, REPORT, SWEEP, VEGA)
}


def sections() -> dict[str, type[Settings]]:
    """Every section a params file may hold: each stage's own and each dataset's options (``synth``,
    ``ferplus``, ...)."""
    out = {s.settings.section: s.settings for s in STAGES.values() if s.settings is not None}
    out.update({name: dataset_options(name) for name in known_datasets()})
    return out


def check(params: Mapping[str, Any]) -> None:
    """Reject a params file with an unknown section or key, or a bad value, naming it. A dataset of the
    user's (``dataset: myfaces`` with ``download.adapter: folder``) has its adapter's options section."""
    known = sections()
    name, adapter = (
        params.get("dataset"),
        (params.get("download") or {}).get("adapter") if isinstance(params.get("download"), Mapping) else None,
    )
    if isinstance(name, str) and isinstance(adapter, str) and adapter:
        known[name] = dataset_options(name, adapter)
    check_params(params, known)


def code_files(module: str, root: Path | None = None) -> set[str]:
    """The ferdata source files ``module`` imports, directly or not (its import closure inside the
    package, lazy imports in functions included), as paths relative to the repository: what its DVC
    stage must depend on. Imports under ``if TYPE_CHECKING:`` and in a module's PEP 562 ``__getattr__``
    do not run on import and are left out."""
    root = root or Path(__file__).resolve().parents[1]
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run their __init__
        todo += [m for m in _imports(_source(root, name)) if _source(root, m) is not None]
    return {str(_source(root, m).relative_to(root)) for m in seen if _source(root, m) is not None}


def _source(root: Path, module: str) -> Path | None:
    if module.split(".")[0] != "ferdata":
        return None
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(path: Path | None) -> list[str]:
    """The ferdata modules a source file imports (``from a import b`` counts a.b when b is a module)."""
    if path is None:
        return []
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__" and path.name == "__init__.py":
            return
        if isinstance(node, ast.Import):
            found.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append(node.module)
            found.extend(f"{node.module}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return [m for m in found if m.split(".")[0] == "ferdata"]


def write_pipeline(name: str, root: Path = Path(".")) -> Path:
    """Write ``pipelines/<name>/dvc.yaml`` from its template (``pipelines/templates/``): ``noise-sweep``, or
    any dataset with a ``pipelines/<name>/params.yaml``. Only the pipelines a user builds exist, so `dvc
    metrics show`, `dvc exp show` and `dvc plots show` list nothing that was never run."""
    from ferdata.core.errors import UsageError
    from ferdata.core.io import atomic_file

    pipelines = root / "pipelines"
    known = sorted(p.parent.name for p in pipelines.glob("*/params.yaml"))
    if name not in known:
        raise UsageError(f"no pipelines/{name}/params.yaml: pipelines are {', '.join(known) or 'none here'}")
    template = pipelines / "templates" / ("noise-sweep.yaml" if name == "noise-sweep" else "dataset.yaml")
    header = (
        f"# Written by `ferdata pipeline {name}` from {template.relative_to(root).as_posix()}: "
        "edit the template, then run that again.\n"
    )
    out = pipelines / name / "dvc.yaml"
    text = header + template.read_text()
    if name != "noise-sweep":
        text += artifacts_block(name)
    with atomic_file(out) as tmp:
        tmp.write_text(text)
    return out


def init_pipeline(name: str, source: str = "", root: Path = Path(".")) -> Path:
    """Write ``pipelines/<name>/params.yaml`` for faces of the user's under their own name: the custom
    pipeline's settings with the dataset and its options section renamed (a copied file whose section
    still says ``custom`` would leave the options unread), and ``download.source`` filled in."""
    import json
    import re

    from ferdata.core.errors import UsageError
    from ferdata.core.io import atomic_file
    from ferdata.download import check_name, known_datasets

    check_name(name, "the dataset's name")
    if name in known_datasets() or name in ("custom", "noise-sweep", "templates"):
        raise UsageError(f"{name!r} is taken (a known dataset or pipeline); choose another name for your faces")
    out = root / "pipelines" / name / "params.yaml"
    if out.exists():
        raise UsageError(f"{out} exists already; edit it, or choose another name")
    text = (root / "pipelines" / "custom" / "params.yaml").read_text()
    text = re.sub(r"(?m)^dataset: custom\b", f"dataset: {name}", text)
    text = re.sub(r"(?m)^custom:", f"{name}:", text)
    if source:
        text = re.sub(r'(?m)^(  source: )""', lambda m: m.group(1) + json.dumps(source), text)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as tmp:
        tmp.write_text(f"# Written by `ferdata init {name}` from pipelines/custom/params.yaml.\n" + text)
    return out


def artifacts_block(name: str) -> str:
    """The ``artifacts:`` of a dataset pipeline: its soft labels and model, fetched elsewhere as
    ``dvc artifacts get <repo> pipelines/<name>:<name>-softlabels`` (versions: annotated git tags
    ``pipelines/<name>=<name>-softlabels@v1.0.0``)."""
    return (
        "artifacts:\n"
        f"  {name}-softlabels:\n"
        f"    path: ../../data/{name}/softlabels.parquet\n"
        "    type: dataset\n"
        f"    desc: soft labels of {name} (ferdata.load_soft_labels reads them)\n"
        f"    labels: [soft-labels, {name}, ferdata]\n"
        f"  {name}-model:\n"
        f"    path: ../../models/{name}/model.pt\n"
        "    type: model\n"
        f"    desc: the backbone (and method state) that produced {name}-softlabels\n"
        f"    labels: [model, {name}, ferdata]\n"
    )
