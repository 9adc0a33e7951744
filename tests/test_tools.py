"""Tests of the helper scripts in tools/ (status page, output stripping)."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import nbformat
import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"tools_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


status = _load("status")
strip = _load("strip_outputs")


# ---------------------------------------------------------------------- status.py


def test_package_versions_reports_missing_distribution():
    versions = status.package_versions(("numpy", "no-such-distribution-xyz"))
    assert versions["python"].count(".") == 2
    assert versions["numpy"][0].isdigit()
    assert versions["no-such-distribution-xyz"] == "not installed"


def test_git_commit_outside_a_repository(tmp_path):
    assert status.git_commit(tmp_path) == "unknown"


def test_render_tables(monkeypatch):
    monkeypatch.setenv("LSUTILS_SCALE", "full")
    monkeypatch.delenv("LSUTILS_DATA_ROOT", raising=False)
    text = status.render(dt.datetime(2024, 5, 6, 7, 8, tzinfo=dt.timezone.utc))
    assert "| date (UTC) | `2024-05-06 07:08` |" in text
    assert "| LSUTILS_SCALE | `full` |" in text
    assert "| LSUTILS_DATA_ROOT | `(embedded data)` |" in text
    assert "| torch |" in text and "| logical CPUs |" in text
    assert not text.lstrip().startswith("#")  # includable: no page title


def test_status_main_writes_file(tmp_path, capsys):
    out = tmp_path / "deep" / "env.md"
    assert status.main(["--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8").startswith("| run | value |")
    assert f"wrote {out}" in capsys.readouterr().out


# --------------------------------------------------------------- strip_outputs.py


def _notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell(
        "print(1)",
        metadata={
            "tags": ["hide-input"],
            "mystnb": {"figure": {"name": "fig-a"}},
            "collapsed": True,
            "scrolled": False,
        },
    )
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    code.execution_count = 3
    nb.cells = [nbformat.v4.new_markdown_cell("# Title"), code]
    nb.metadata = {
        "kernelspec": {"name": "other", "display_name": "x", "language": "python"},
        "widgets": {"state": {}},
        "mystnb": {"execution_timeout": 60},
    }
    nbformat.write(nb, path)
    return path


def test_strip_removes_outputs_keeps_book_metadata(tmp_path):
    path = _notebook(tmp_path / "a.ipynb")
    assert strip.main([str(path)]) == 0
    data = json.loads(path.read_text(encoding="utf-8"))
    code = data["cells"][1]
    assert code["outputs"] == [] and code["execution_count"] is None
    assert code["metadata"] == {
        "tags": ["hide-input"],
        "mystnb": {"figure": {"name": "fig-a"}},
    }
    assert data["metadata"]["kernelspec"]["name"] == "python3"
    assert data["metadata"]["mystnb"] == {"execution_timeout": 60}
    assert "widgets" not in data["metadata"]
    nbformat.validate(nbformat.reads(path.read_text(encoding="utf-8"), 4))


def test_strip_check_reports_without_changing(tmp_path, capsys):
    path = _notebook(tmp_path / "a.ipynb")
    before = path.read_text(encoding="utf-8")
    assert strip.main(["--check", str(path)]) == 1
    assert path.read_text(encoding="utf-8") == before
    assert "would change" in capsys.readouterr().out
    strip.main([str(path)])
    assert strip.main(["--check", str(path)]) == 0


@pytest.mark.parametrize("name", ["notes.md", "missing.ipynb"])
def test_strip_rejects_non_notebooks(tmp_path, capsys, name):
    path = tmp_path / name
    if name.endswith(".md"):
        path.write_text("# not a notebook\n", encoding="utf-8")
    assert strip.main([str(path)]) == 2
    assert "is not an .ipynb file" in capsys.readouterr().err
