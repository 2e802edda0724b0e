"""The documentation matches the code: docs/api.md names every public name, accessor method and CLI
command (and nothing that no longer exists); the README points inside the repository."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

import xr_unmix
from xr_unmix.accessor import METHODS
from xr_unmix.cli import main

ROOT = Path(__file__).resolve().parents[1]
API = (ROOT / "docs" / "api.md").read_text()
REGEN = "regenerate it: python docs/make_api.py"


@pytest.mark.parametrize("name", [n for n in xr_unmix.__all__ if not n.startswith("__")])
def test_public_name_in_api_md(name):
    assert f"`xr_unmix.{name}" in API, f"docs/api.md lacks xr_unmix.{name}; {REGEN}"


@pytest.mark.parametrize("method", METHODS)
def test_accessor_method_in_api_md(method):
    assert f"`cube.unmix.{method}(" in API, f"docs/api.md lacks cube.unmix.{method}; {REGEN}"


@pytest.mark.parametrize("command", sorted(main.commands))
def test_cli_command_in_api_md(command):
    assert f"### `xr-unmix {command}`" in API, f"docs/api.md lacks xr-unmix {command}; {REGEN}"
    for opt in main.commands[command].params:
        for flag in getattr(opt, "opts", []):
            if flag.startswith("--"):
                assert flag in API, f"docs/api.md lacks {command} {flag}; {REGEN}"


def test_documented_names_exist():
    """Every ``xr_unmix.a.b`` heading or list entry of api.md resolves (no stale entries)."""
    names = set(re.findall(r"^(?:###|-) `(xr_unmix(?:\.\w+)+)", API, flags=re.M))
    assert len(names) > 40
    for dotted in sorted(names):
        parts = dotted.split(".")
        obj = importlib.import_module("xr_unmix")
        for i, p in enumerate(parts[1:], 1):
            try:
                obj = getattr(obj, p)
            except AttributeError:
                obj = importlib.import_module(".".join(parts[: i + 1]))
        assert obj is not None, dotted


def test_readme_points_inside_the_repository():
    readme = (ROOT / "README.md").read_text()
    assert "docs/api.md" in readme and "shared/" not in readme
    for link in re.findall(r"\]\(([^)#]+)\)", readme):
        if "://" not in link:
            assert (ROOT / link).exists(), link
