"""Write the environment table of the book's status page.

``make book`` runs this before the build; ``book/status.md`` includes the file it
writes and adds myst-nb's ``{nb-exec-table}``, which lists how long each notebook
took to execute in that same build. Standalone use::

    .venv/bin/python tools/status.py                 # print the table
    .venv/bin/python tools/status.py --out FILE.md   # write it to FILE.md

The table records the versions of the packages the results depend on, the
machine (platform, CPU count, torch's intra-op threads, memory), the scale the
notebooks ran at (``LSUTILS_SCALE``), the date and the git commit.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# Distribution names as pip knows them, in the order they are shown.
PACKAGES: tuple[str, ...] = (
    "lsutils",
    "torch",
    "torchvision",
    "numpy",
    "scipy",
    "backpack-for-pytorch",
    "curvlinops-for-pytorch",
    "matplotlib",
    "tqdm",
    "jupyter-book",
    "myst-nb",
    "sphinx",
    "nbval",
)


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str]:
    """Return the installed version of each distribution.

    Parameters
    ----------
    names
        Distribution names (as given to ``pip install``).

    Returns
    -------
    dict of str to str
        ``{"python": ..., name: version}``; a distribution that is not installed
        maps to ``"not installed"``.
    """
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def machine_info() -> dict[str, str]:
    """Describe the machine the book was executed on.

    Returns
    -------
    dict of str to str
        Platform string, processor, logical CPU count, torch's intra-op thread
        count and total memory (when ``psutil`` is available).
    """
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "logical CPUs": str(os.cpu_count()),
    }
    try:
        torch = importlib.import_module("torch")
        info["torch threads"] = str(torch.get_num_threads())
    except ImportError:
        info["torch threads"] = "torch not installed"
    try:
        psutil = importlib.import_module("psutil")
        info["memory"] = f"{psutil.virtual_memory().total / 2**30:.1f} GiB"
    except ImportError:
        info["memory"] = "unknown (psutil not installed)"
    return info


def git_commit(repo: Path = REPO_ROOT) -> str:
    """Return the commit checked out in ``repo``, or ``"unknown"``.

    Only reads the repository (``git rev-parse``); outside a git checkout, or
    without git on the PATH, the commit is reported as unknown.

    Parameters
    ----------
    repo
        Directory inside the work tree.

    Returns
    -------
    str
        The full hash of ``HEAD``, or ``"unknown"``.
    """
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _table(rows: dict[str, str], header: tuple[str, str]) -> list[str]:
    """Format ``rows`` as a two-column Markdown table."""
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    lines += [f"| {key} | `{value}` |" for key, value in rows.items()]
    return lines


def render(now: dt.datetime | None = None) -> str:
    """Return the Markdown of the environment section of the status page.

    Parameters
    ----------
    now
        Time stamp to print; defaults to the current UTC time.

    Returns
    -------
    str
        Two tables (run and machine, package versions), ending with a newline.
        The text has no top-level heading so that it can be included.
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    run = {
        "date (UTC)": now.strftime("%Y-%m-%d %H:%M"),
        "git commit": git_commit(),
        "LSUTILS_SCALE": os.environ.get("LSUTILS_SCALE", "quick (default)"),
        "LSUTILS_DATA_ROOT": os.environ.get("LSUTILS_DATA_ROOT", "(embedded data)"),
        "interpreter": sys.executable,
    }
    run.update(machine_info())
    lines = _table(run, ("run", "value"))
    lines += ["", *_table(package_versions(), ("package", "version"))]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: print the section or write it to ``--out``.

    Parameters
    ----------
    argv
        Arguments without the program name; ``None`` reads ``sys.argv``.

    Returns
    -------
    int
        Exit status, 0 on success.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="file to write (parent folders are created); default: print",
    )
    args = parser.parse_args(argv)
    text = render()
    if args.out is None:
        sys.stdout.write(text)
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    sys.stdout.write(f"status: wrote {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
