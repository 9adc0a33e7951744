"""Strip outputs and volatile metadata from notebooks before committing them.

The repository keeps notebooks without outputs: the book and nbval execute them
from scratch, and diffs stay readable. For each notebook given, this removes
outputs and execution counts, keeps of the cell metadata only the keys the book
reads (``tags``, ``mystnb``), and keeps of the notebook metadata only
``kernelspec`` (forced to the ``python3`` kernel), ``language_info.name`` and
``mystnb``::

    .venv/bin/python tools/strip_outputs.py notebooks/*.ipynb
    .venv/bin/python tools/strip_outputs.py --check notebooks/*.ipynb  # CI-style

``--check`` changes nothing and exits with status 1 if a notebook would change.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nbformat

#: Cell metadata keys that change how the book renders a cell; others are dropped.
KEEP_CELL_METADATA: tuple[str, ...] = ("tags", "mystnb")

KERNELSPEC: dict[str, str] = {
    "display_name": "Python 3 (ipykernel)",
    "language": "python",
    "name": "python3",
}


def strip_notebook(nb: Any) -> Any:
    """Return ``nb`` (modified in place) without outputs or volatile metadata.

    Parameters
    ----------
    nb
        A notebook as read by :func:`nbformat.read` (version 4).

    Returns
    -------
    nbformat.NotebookNode
        The same object, for chaining.
    """
    for cell in nb.cells:
        cell.metadata = {
            key: cell.metadata[key]
            for key in KEEP_CELL_METADATA
            if key in cell.metadata
        }
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    metadata = {"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}}
    if "mystnb" in nb.metadata:  # page-level myst-nb settings are content
        metadata["mystnb"] = nb.metadata["mystnb"]
    nb.metadata = metadata
    return nb


def _canonical(nb: Any) -> str:
    """Serialise ``nb`` the way it is written to disk."""
    return nbformat.writes(nb, version=4) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Strip (or with ``--check`` inspect) the notebooks named on the command line.

    Parameters
    ----------
    argv
        Arguments without the program name; ``None`` reads ``sys.argv``.

    Returns
    -------
    int
        0 when every notebook is (now) clean; 1 with ``--check`` if any is not;
        2 if a path is not a readable ``.ipynb`` file.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path, help=".ipynb files")
    parser.add_argument(
        "--check", action="store_true", help="report, do not change anything"
    )
    args = parser.parse_args(argv)
    dirty = []
    for path in args.notebooks:
        if path.suffix != ".ipynb" or not path.is_file():
            sys.stderr.write(f"strip_outputs: {path} is not an .ipynb file\n")
            return 2
        text = path.read_text(encoding="utf-8")
        nb = nbformat.reads(text, as_version=4)
        clean = _canonical(strip_notebook(nb))
        nbformat.validate(nbformat.reads(clean, as_version=4))
        if clean == text:
            continue
        dirty.append(path)
        if not args.check:
            path.write_text(clean, encoding="utf-8")
    verb = "would change" if args.check else "stripped"
    for path in dirty:
        sys.stdout.write(f"strip_outputs: {verb} {path}\n")
    return 1 if (args.check and dirty) else 0


if __name__ == "__main__":
    sys.exit(main())
