"""What every bench script does at the end: save its numbers as JSON and print them, one per line."""

from __future__ import annotations

import json
from pathlib import Path


def save_and_print(results: dict, out: Path, *, width: int, digits: int) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    for key, value in results.items():
        print(f"{key:>{width}}: {value:.{digits}f}" if isinstance(value, float) else f"{key:>{width}}: {value}")
