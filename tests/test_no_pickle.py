"""No module of the package deserialises with pickle: parsed with :mod:`ast`, so the check can fail."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "xr_unmix"
_PICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}


def unsafe_calls(source: str) -> list[str]:
    """``pickle``-family imports and ``torch.load`` calls without ``weights_only=True`` in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in _PICKLERS]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in _PICKLERS:
            found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            if name == "load" and owner == "torch":
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant)
                           and k.value.value is True for k in node.keywords)
                if not safe:
                    found.append(f"torch.load(...) without weights_only=True, line {node.lineno}")
            elif owner in _PICKLERS and name in ("load", "loads", "Unpickler"):
                found.append(f"{owner}.{name}(...), line {node.lineno}")
    return found


def test_the_checker_can_fail() -> None:
    bad = ("import pickle\nfrom cloudpickle import loads\nimport torch\n"
           "torch.load(f, weights_only=False)\ntorch.load(f)\npickle.loads(b)\n")
    assert len(unsafe_calls(bad)) == 5
    assert unsafe_calls("import torch\ntorch.load(f, weights_only=True)\n") == []


def test_no_module_unpickles() -> None:
    hits = {str(p.relative_to(PKG.parent)): unsafe_calls(p.read_text())
            for p in sorted(PKG.rglob("*.py"))}
    hits = {k: v for k, v in hits.items() if v}
    assert not hits, f"pickle-based loading in the package: {hits}"


def test_no_pickle_word_in_the_package() -> None:
    # the check: `grep -rn "pickle\|weights_only=False" xr_unmix/` finds nothing
    words = [(str(p.relative_to(PKG.parent)), i) for p in sorted(PKG.rglob("*.py"))
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if "pickle" in line or "weights_only=False" in line]
    assert not words, f"'pickle' or 'weights_only=False' in: {words}"
