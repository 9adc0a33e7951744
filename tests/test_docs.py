"""docs/architecture.md lists the public API as the code defines it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "architecture.py"


def _tool():
    spec = importlib.util.spec_from_file_location("architecture", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_public_api_section_is_current(capsys):
    tool = _tool()
    assert tool.main(["--check"]) == 0, capsys.readouterr().out


def test_every_module_with_a_public_api_is_listed():
    tool = _tool()
    package = TOOL.parents[1] / "lsutils"
    public = {
        p.stem
        for p in package.glob("*.py")
        if not p.stem.startswith("_") and "__all__" in p.read_text()
    }
    assert public - {"cli"} == set(tool.MODULES)
