"""Regenerate the "Public API" section of docs/architecture.md from the code.

Every module listed there gets its docstring's first line and one line per name
of its ``__all__``: ``inspect.signature`` for functions and classes, the value
(or type) for constants. Run ``python tools/architecture.py`` to rewrite the
section in place, or ``--check`` to fail when it is out of date (``make lint``).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
HEAD = "## Public API\n"
INTRO = (
    "The signatures below are the public names (`__all__`) of each module, "
    "listed\nfrom the code (`inspect.signature`) by `tools/architecture.py`; "
    "the docstrings\nhold the math, parameters and examples. Rerun that script "
    "when a signature\nchanges (`make lint` checks that this section is "
    "current).\n"
)
MODULES = (
    "data", "models", "training", "hessian", "ggn", "projection", "sampling",
    "engine", "landscape", "taylor", "delta", "bounds", "kstar", "study",
    "sweep_config", "sweep", "results", "tables", "trends", "sweep_plots",
    "plotting", "params",
)  # fmt: skip


def _line(name: str, obj: object) -> str:
    """One line for a public name: its signature, or its value for a constant."""
    if inspect.isclass(obj) or inspect.isfunction(obj):
        kind = "class" if inspect.isclass(obj) else "def"
        try:
            sig = str(inspect.signature(obj)).replace("'", "")
        except (TypeError, ValueError):
            sig = "(...)"
        return f"{kind} {name}{sig}"
    if isinstance(obj, str | int | float):
        return f"{name} = {obj!r}"
    if isinstance(obj, tuple) and len(repr(obj)) <= 80:
        return f"{name} = {obj!r}"
    return f"{name}: {type(obj).__name__}"


def section() -> str:
    """The whole "Public API" section, from its heading to the end of the file."""
    parts = [HEAD, "\n", INTRO]
    for short in MODULES:
        mod = importlib.import_module(f"lsutils.{short}")
        summary = (mod.__doc__ or "").strip().splitlines()[0]
        lines = [_line(n, getattr(mod, n)) for n in mod.__all__]
        parts.append(f"\n### lsutils.{short}\n\n{summary}\n\n```python\n")
        parts.append("\n".join(lines) + "\n```\n")
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or with ``--check`` compare) the section; return the status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare")
    args = parser.parse_args(argv)
    text = DOC.read_text()
    start = text.index(HEAD)
    new = text[:start] + section()
    if args.check:
        if new != text:
            print(f"{DOC} is out of date: run python tools/architecture.py")
            return 1
        return 0
    DOC.write_text(new)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
