"""The DVC pipelines agree with the stages' declarations (ferdata/stages.py): every stage depends on the
ferdata code it imports and the tables it reads, and declares as outputs the tables it writes, so no
change to code or data can leave `dvc repro` serving stale outputs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path, PurePosixPath

import pytest
import yaml

from ferdata.core.tables import TABLES
from ferdata.stages import STAGES, code_files

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ("dvc.yaml", "pipelines/templates/dataset.yaml", "pipelines/templates/noise-sweep.yaml")
FOLDER_FLAGS = {"data": "--data", "models": "--models", "reports": "--reports"}


def _paths(entries: list) -> list[str]:
    """Paths of a dvc.yaml deps/outs list (entries are strings or one-key mappings)."""
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]


def _stages(path: str) -> dict[str, dict]:
    """A pipeline's stages, a foreach/matrix stage as its one templated body."""
    stages = yaml.safe_load((ROOT / path).read_text())["stages"]
    return {name: body.get("do", body) for name, body in stages.items()}


def _commands(cmd: str) -> list[list[str]]:
    return [shlex.split(part) for part in cmd.split("&&")]


def _option(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def _norm(path: str) -> str:
    """A path with every foreach/matrix item (``${item}``, ``${item.ratio}``) written ``${item}``."""
    return re.sub(r"\$\{item(\.\w+)?\}", "${item}", str(PurePosixPath(path)))


def _pipeline_facts(stages: dict[str, dict]) -> tuple[dict[str, str], set[str]]:
    """Every fork the pipeline makes (folder -> the folder it reads from) and every output it declares."""
    forks, outs = {}, set()
    for body in stages.values():
        for argv in _commands(body["cmd"]):
            if argv[1] == "fork":
                forks[_norm(_option(argv, "--to"))] = _norm(_option(argv, "--data"))
        outs |= {_norm(p) for key in ("outs", "metrics", "plots") for p in _paths(body.get(key))}
    return forks, outs


def _source(folder: str, file: str, forks: dict[str, str], made: set[str]) -> str:
    """Where a read of ``file`` in ``folder`` lands: the first folder up its fork chain where this
    pipeline makes the file, else the chain's base (built by another pipeline)."""
    while f"{folder}/{file}" not in made and folder in forks:
        folder = forks[folder]
    return f"{folder}/{file}"


def expected(body: dict, forks: dict[str, str] | None = None, made: set[str] | None = None) -> dict[str, set[str]]:
    """What a DVC stage must declare, from the declarations of the ferdata commands in its cmd: the code
    files they import, the tables they read (always, or with some settings) and the tables they write."""
    forks, made = forks or {}, made or set()
    code, reads, may, writes = set(), set(), set(), set()
    for argv in _commands(body["cmd"]):
        assert argv[0] == "ferdata", argv
        if argv[1] == "fork":
            code |= code_files("ferdata.core.io")
            writes.add(_norm(f"{_option(argv, '--to')}/base.json"))
            continue
        stage = STAGES[argv[1]]
        code |= code_files(stage.module)
        folders = {k: _option(argv, flag) for k, flag in FOLDER_FLAGS.items()}
        if stage.name == "sweep":
            folders["reports"] = _option(argv, "--out")

        def place(kind: str, folders: dict[str, str | None] = folders) -> tuple[str, str]:
            table = TABLES[kind]
            return ("", table.file) if table.folder == "repo" else (_norm(folders[table.folder]), table.file)

        for kind in (*stage.reads, *stage.may_read):
            folder, file = place(kind)
            if f"{folder}/{file}" in writes:
                continue  # made by an earlier command of the same stage
            path = _source(folder, file, forks, made) if folder else file
            (may if kind in stage.may_read else reads).add(path)
        for kind in stage.writes:
            folder, file = place(kind)
            path = f"{folder}/{file}" if folder else file
            if not TABLES[kind].optional or path in made:  # optional: raw/ exists for synth alone
                writes.add(path)
    return {"code": code, "reads": reads, "may": may, "writes": writes}


def _check_stage(name: str, body: dict, forks: dict[str, str] | None = None, made: set[str] | None = None) -> list[str]:
    want = expected(body, forks, made)
    deps = [_norm(d) for d in _paths(body.get("deps"))]
    outs = {_norm(p) for key in ("outs", "metrics", "plots") for p in _paths(body.get(key))}
    problems = []
    code_deps = [d for d in deps if d.startswith("ferdata/")]
    for f in sorted(want["code"]):
        if not any(f == d or f.startswith(d + "/") for d in code_deps):
            problems.append(f"{name}: imports {f} but does not depend on it")
    for d in code_deps:
        if not any(f == d or f.startswith(d + "/") for f in want["code"]):
            problems.append(f"{name}: depends on {d}, which it never imports")
    data_deps = [d for d in deps if d not in code_deps]
    for path in sorted(want["reads"] - set(data_deps)):
        problems.append(f"{name}: reads {path} but does not depend on it")
    for d in data_deps:
        if d not in want["reads"] | want["may"] and name != "collect":  # collect reads the sweep's report folder
            problems.append(f"{name}: depends on {d}, which none of its commands reads")
    for path in sorted(want["writes"] - outs):
        problems.append(f"{name}: writes {path} but does not declare it as an output")
    for path in sorted(outs - want["writes"]):
        problems.append(f"{name}: declares {path} as an output, which no command of it writes")
    for key in ("outs", "metrics", "plots"):
        for entry in body.get(key) or []:
            flags = next(iter(entry.values())) if isinstance(entry, dict) else {}
            if not (flags or {}).get("persist"):
                path = next(iter(entry)) if isinstance(entry, dict) else entry
                problems.append(f"{name}: {path} is not persist: true (DVC would delete it before the run)")
    return problems


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_every_stage_declares_its_code_inputs_and_outputs(pipeline):
    stages = _stages(pipeline)
    forks, made = _pipeline_facts(stages)
    problems = [p for name, body in stages.items() for p in _check_stage(name, body, forks, made)]
    assert not problems, "\n".join(problems)


def test_the_check_fails_when_a_module_is_left_out():
    body = dict(_stages("dvc.yaml")["noise"])
    body["deps"] = [d for d in body["deps"] if d != "ferdata/noise.py"]
    assert _check_stage("noise", body) == ["noise: imports ferdata/noise.py but does not depend on it"]
    body = dict(_stages("dvc.yaml")["train"])
    body["deps"] = [d for d in body["deps"] if d != "ferdata/loader.py"]
    assert _check_stage("train", body) == ["train: imports ferdata/loader.py but does not depend on it"]


def test_the_check_fails_when_a_table_is_left_out():
    body = dict(_stages("dvc.yaml")["sample"])
    body["deps"] = [d for d in body["deps"] if not d.endswith("manifest.parquet")]
    assert _check_stage("sample", body) == ["sample: reads data/${dataset}/manifest.parquet but does not depend on it"]
    body = dict(_stages("dvc.yaml")["va"])
    body["outs"] = [o for o in body["outs"] if "knn.parquet" not in str(o)]
    assert _check_stage("va", body) == ["va: writes data/${dataset}/knn.parquet but does not declare it as an output"]


def test_the_check_fails_when_an_output_would_be_deleted_before_its_run():
    body = dict(_stages("dvc.yaml")["noise"])
    body["outs"] = ["data/${dataset}/labels.parquet"]
    assert _check_stage("noise", body) == [
        "noise: data/${dataset}/labels.parquet is not persist: true (DVC would delete it before the run)"
    ]


def test_stage_params_cover_the_sections_their_settings_read():
    for pipeline, params_key in (
        ("dvc.yaml", None),
        ("pipelines/templates/dataset.yaml", "pipelines/${dataset}/params.yaml"),
    ):
        for name, body in _stages(pipeline).items():
            listed = set()
            for entry in body.get("params") or []:
                listed |= set(entry[params_key]) if isinstance(entry, dict) else {entry}
            for argv in _commands(body["cmd"]):
                stage = STAGES[argv[1]]
                if stage.settings is None:
                    continue
                needed = {stage.settings.section} | {
                    f.metadata["param"] for f in stage.settings.__dataclass_fields__.values() if f.metadata.get("param")
                }
                if stage.name == "download":
                    needed |= {"dataset", "${dataset}"}
                if stage.name == "report":
                    needed.discard("report")  # not in the params files: the defaults apply
                for section in needed:
                    assert any(section == p or section.startswith(p + ".") for p in listed), (pipeline, name, section)


def test_cross_section_defaults_agree():
    """A setting read from another section (sample.epochs from train.epochs) has that section's default."""
    from ferdata.stages import sections

    every = sections()
    for cls in every.values():
        for f in cls.__dataclass_fields__.values():
            path = f.metadata.get("param")
            if not path or "." not in path:
                continue
            section, key = path.split(".", 1)
            other = every[section].__dataclass_fields__[key]
            assert f.default == other.default, (cls.__name__, f.name, path)
