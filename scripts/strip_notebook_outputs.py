"""Strip outputs and execution counts from notebooks (run before committing one).

Usage: python scripts/strip_notebook_outputs.py [notebooks/*.ipynb]; `--check` only reports.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat


def strip(path: Path, check: bool = False) -> bool:
    """Remove outputs/execution counts of `path`; True when it had any (it was dirty)."""
    nb = nbformat.read(path, as_version=4)
    dirty = False
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if cell.get("outputs") or cell.get("execution_count") is not None:
            dirty = True
        cell["outputs"], cell["execution_count"] = [], None
        cell.metadata.pop("execution", None)
    if dirty and not check:
        nbformat.write(nb, path)
    return dirty


def main(argv: list[str]) -> int:
    """Strip (or with --check, list) every notebook given, default notebooks/*.ipynb."""
    check = "--check" in argv
    paths = [Path(a) for a in argv if a != "--check"] or sorted(Path("notebooks").glob("*.ipynb"))
    dirty = [p for p in paths if strip(p, check)]
    for p in dirty:
        print(f"{'has outputs' if check else 'stripped'}: {p}")
    return 1 if check and dirty else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
