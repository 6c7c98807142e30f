"""Stage settings: one frozen dataclass per params section, whose defaults are the only defaults.

params.yaml overrides a default and a CLI option overrides params.yaml. A field declares, through
:func:`option`: a one-line help, its allowed ``choices``, a range (``min``/``max`` inclusive,
``above``/``below`` exclusive), the params path it is read from when that is not its own section
(``param="train.epochs"``) and its CLI flag when that is not ``--<name>``. Values are checked when
the dataclass is built, so the Python API and the CLI reject a bad value the same way: a UsageError
(exit code 2) naming ``section.key``. An unknown key is a UsageError naming the nearest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import yaml

from ferdata.core.errors import UsageError


class Settings:
    """Base of every settings dataclass: ``section`` is the params section it is read from."""

    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        check_values(self)


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    factory: Any = dataclasses.MISSING,
    choices: tuple[Any, ...] | None = None,
    min: float | None = None,
    max: float | None = None,
    above: float | None = None,
    below: float | None = None,
    param: str | None = None,
    flag: str | None = None,
) -> Any:
    """A settings field with its help and constraints (see the module docstring)."""
    meta = {
        "help": help,
        "choices": choices,
        "min": min,
        "max": max,
        "above": above,
        "below": below,
        "param": param,
        "flag": flag,
    }
    return dataclasses.field(default=default, default_factory=factory, metadata=meta)


class Params(dict):
    """A params file's contents, remembering where they came from for error messages."""

    origin = "params"


def load_params(path: Path | None, *, default: Path = Path("params.yaml")) -> Params:
    """A params file as a mapping (an explicitly named missing file is an error, a missing default one is
    empty)."""
    if path is None:
        path = default
        if not path.is_file():
            return Params()
    if not path.is_file():
        raise UsageError(f"params file {path} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text: save it as UTF-8") from None
    except OSError as exc:
        raise UsageError(f"cannot read params file {path}: {exc.strerror}") from None
    try:
        check_expansion(yaml.compose(text, Loader=yaml.SafeLoader), path)
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    except RecursionError:
        raise UsageError(f"{path} is nested too deeply to be a params file") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} must hold a mapping of sections")
    params = Params(data)
    params.origin = str(path)
    return params


MAX_PARAMS_VALUES = 100_000  # a real params file holds a few hundred


def check_expansion(root: yaml.Node | None, path: Path, limit: int = MAX_PARAMS_VALUES) -> None:
    """Refuse a YAML document whose aliases expand to more than ``limit`` values (a "billion laughs"
    file is a few lines that would fill the memory once its values are walked)."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key not in sizes:
            sizes[key] = limit + 1  # an alias back into a node being counted: a cycle, refused
            children: list[yaml.Node] = []
            if isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            elif isinstance(node, yaml.SequenceNode):
                children = list(node.value)
            total = 1
            for child in children:
                total += size(child)
                if total > limit:
                    break
            sizes[key] = total
        return sizes[key]

    if root is not None and size(root) > limit:
        raise UsageError(f"{path} expands to more than {limit:,} values through YAML aliases: write the values out")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def is_settings(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, Settings)


def _join(section: str, key: str) -> str:
    return f"{section}.{key}" if section else key


def _find(params: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    """(found, value) of a dotted path in nested mappings."""
    node: Any = params
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def unknown_key(where: str, key: str, valid: list[str], origin: str) -> UsageError:
    """A one-line error naming an unknown key and the nearest valid one."""
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"did you mean {_join(where, near[0])}?" if near else f"valid keys: {', '.join(sorted(valid)) or 'none'}"
    return UsageError(f"{origin}: unknown setting {_join(where, key)!r}; {hint}")


def coerce(value: Any, tp: Any, path: str) -> Any:
    """``value`` as type ``tp`` (int -> float, list -> tuple), or a UsageError naming ``path``."""
    args = typing.get_args(tp)
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
        args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, list | tuple):
            raise UsageError(f"{path} must be a list, got {value!r}")
        return tuple(coerce(v, args[0], path) for v in value)
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is str and isinstance(value, os.PathLike):
        value, ok = os.fspath(value), True
    else:
        ok = isinstance(value, tp)
    if not ok:
        raise UsageError(f"{path} must be {getattr(tp, '__name__', tp)}, got {value!r}")
    return value


def resolve(
    cls: type[Settings],
    params: Mapping[str, Any] | None = None,
    given: Mapping[str, Any] | None = None,
    *,
    section: str | None = None,
) -> Any:
    """``cls`` from CLI values ``given`` (None = not given), then ``params``, then its defaults."""
    params = params if params is not None else {}
    origin = getattr(params, "origin", "params")
    section = cls.section if section is None else section
    found, own = _find(params, section) if section else (True, params)
    if found and own is not None and not isinstance(own, Mapping):
        raise UsageError(f"{origin}: {section} must be a mapping of settings, got {own!r}")
    names = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("param")]
    for key in own or {}:
        if key not in names:
            raise unknown_key(section, str(key), names, origin)
    values = {}
    for f in dataclasses.fields(cls):
        path, tp = f.metadata.get("param") or _join(section, f.name), _hints(cls)[f.name]
        if given is not None and given.get(f.name) is not None:
            values[f.name] = coerce(given[f.name], tp, path)
        elif is_settings(tp):
            values[f.name] = resolve(tp, params, section=path)
        else:
            hit, value = _find(params, path)
            if hit:
                values[f.name] = coerce(value, tp, path)
    return cls(**values)


def configure(
    cls: type[Settings] | None, settings: Settings | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings | None:
    """``settings`` (``cls``'s defaults when None) with the fields in ``overrides`` replaced and checked:
    the Python API's ``noise(data_dir, ratio=0.3)``."""
    if cls is None:
        return None
    settings = settings if settings is not None else cls()
    if not overrides:
        return settings
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in overrides.items():
        if key not in names:
            raise unknown_key(cls.section, key, names, "options")
        tp, path = _hints(cls)[key], _join(cls.section, key)
        if is_settings(tp) and isinstance(value, Mapping):  # a nested section given as a mapping
            values[key] = configure(tp, getattr(settings, key), value)
        else:
            values[key] = coerce(value, tp, path)
    return dataclasses.replace(settings, **values)


def check_values(obj: Settings) -> None:
    """Raise a UsageError for the first field outside its declared choices or range."""
    for f in dataclasses.fields(obj):
        value, meta, path = getattr(obj, f.name), f.metadata, f.metadata.get("param") or _join(obj.section, f.name)
        if value is None or is_settings(type(value)):
            continue
        if meta.get("choices") is not None and value not in meta["choices"]:
            raise UsageError(f"{path} {value!r}: use one of {', '.join(map(str, meta['choices']))}")
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise UsageError(f"{path} must be a finite number, got {value}")
            if isinstance(value, int) and not -(2**63) <= value < 2**63:  # tables store them as int64
                raise UsageError(f"{path} must fit in 64 bits (below 9.2e18), got {value}")
            low, high, above, below = (meta.get(k) for k in ("min", "max", "above", "below"))
            if (
                (low is not None and value < low)
                or (high is not None and value > high)
                or (above is not None and value <= above)
                or (below is not None and value >= below)
            ):
                bottom = f"({above}" if above is not None else f"[{low if low is not None else '-inf'}"
                top = f"{below})" if below is not None else f"{high if high is not None else 'inf'}]"
                raise UsageError(f"{path} must be in {bottom}, {top}, got {value}")


def check_params(
    params: Mapping[str, Any], sections: Mapping[str, type[Settings]], *, scalars: tuple[str, ...] = ("dataset",)
) -> None:
    """Check a whole params file: every top-level key a known section (or one of ``scalars``), every
    section's keys and values valid."""
    origin = getattr(params, "origin", "params")
    for key in params:
        if key in scalars:
            continue
        if key not in sections:
            raise unknown_key("", str(key), [*sections, *scalars], origin)
        resolve(sections[key], params, section=key)


def cli_fields(cls: type[Settings] | None) -> list[dataclasses.Field]:
    """The fields a command line can set: the scalar ones (nested sections come from params only)."""
    if cls is None:
        return []
    return [f for f in dataclasses.fields(cls) if not is_settings(_hints(cls)[f.name])]


def field_type(cls: type[Settings], name: str) -> Any:
    return _hints(cls)[name]


def as_dict(obj: Settings | None) -> dict[str, Any]:
    """The resolved settings as plain JSON-able values (tuples become lists)."""
    return {} if obj is None else dataclasses.asdict(obj)
