"""The ``ferdata`` console script. It imports nothing beyond the light install (numpy, pandas, pyarrow)
until it knows the pipeline extra is there: without it, ``ferdata describe FILE`` still works and every
other command is one line naming the extra."""

from __future__ import annotations

import importlib.util
import sys

PIPELINE = ("typer", "yaml", "torch")  # what the full CLI imports before any command runs


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    missing = [m for m in PIPELINE if not _installed(m)]
    if not missing:
        from ferdata.cli import main as full

        sys.argv = [sys.argv[0], *argv]
        full()
        return
    if argv[:1] == ["describe"] and len(argv) >= 2 and not argv[1].startswith("-"):
        sys.exit(_describe(argv[1:]))
    sys.stderr.write(
        f"error: the ferdata command needs the pipeline extra ({', '.join(missing)} missing): "
        "pip install 'ferdata[pipeline]' (the light install reads soft labels: ferdata.load_soft_labels, "
        "`ferdata describe FILE`)\n"
    )
    sys.exit(1)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def _describe(args: list[str]) -> int:
    """``ferdata describe FILE [--metrics metrics.json]`` with the light install."""
    import json
    from pathlib import Path

    from ferdata.core.errors import FerdataError
    from ferdata.softlabels import describe_soft_labels, load_soft_labels

    path, metrics = args[0], None
    if len(args) == 3 and args[1] == "--metrics":
        metrics = json.loads(Path(args[2]).read_text())
    elif len(args) != 1:
        sys.stderr.write("error: the light install's describe takes FILE [--metrics metrics.json] only\n")
        return 2
    try:
        print(describe_soft_labels(load_soft_labels(path), metrics))
    except FerdataError as exc:
        sys.stderr.write(f"error: {' '.join(str(exc).split())}\n")
        return 1
    return 0
