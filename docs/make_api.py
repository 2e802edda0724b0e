"""Write docs/api.md, the API reference, from the package's own signatures and docstrings.

    python docs/make_api.py            # rewrites docs/api.md beside this file

tests/test_docs.py checks that every name of ``xr_unmix.__all__``, every accessor method and every
command of the CLI appears in docs/api.md, and that every name the file documents still exists.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import xr_unmix  # noqa: E402
from xr_unmix.accessor import METHODS, UnmixAccessor  # noqa: E402

#: submodules whose public functions are listed (``module.__all__`` or public functions)
SUBMODULES = ("metrics", "io", "endmembers", "library", "cluster", "datasets", "testing")


def signature(obj: Any, drop_first: bool = False) -> str:
    """``(a, b=1, *, c=None)``: the signature without annotations (they are in the docstrings)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    if drop_first:
        params = params[1:]
    return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))


def doc(obj: Any) -> str:
    text = inspect.getdoc(obj) or "(no docstring)"
    return "```text\n" + text.strip() + "\n```\n"


def summary(obj: Any) -> str:
    text = (inspect.getdoc(obj) or "").strip()
    return " ".join(text.split("\n\n")[0].split())


def public_members(cls: type) -> list[tuple[str, Any]]:
    out = []
    for name, value in vars(cls).items():
        if name.startswith("_") or not (callable(value) or isinstance(value, classmethod | property)):
            continue
        out.append((name, getattr(cls, name)))
    return out


def public(name: str) -> Any:
    """``xr_unmix.<name>``; for a callable module that shares its function's name
    (``xr_unmix.simulate``), the function."""
    obj = getattr(xr_unmix, name)
    return getattr(obj, name) if inspect.ismodule(obj) and callable(obj) else obj


def section_functions(names: list[str]) -> list[str]:
    lines = ["## Functions", ""]
    for n in names:
        obj = public(n)
        lines += [f"### `xr_unmix.{n}{signature(obj)}`", "", doc(obj)]
    return lines


def section_accessor() -> list[str]:
    lines = ["## The accessor `cube.unmix`", "",
             "`cube.unmix.f(...)` is the function `f` with the cube as its first argument "
             "(`help(cube.unmix.f)` shows the same text).", "", doc(UnmixAccessor),
             "| method | same as | summary |", "|---|---|---|"]
    for m in METHODS:
        fn = getattr(UnmixAccessor, m).function
        same = f"xr_unmix.{fn.__name__}" if getattr(xr_unmix, fn.__name__, None) is fn \
            else f"{fn.__module__.split('._')[0]}.{fn.__name__}"
        lines.append(f"| `cube.unmix.{m}{signature(fn, drop_first=True)}` | `{same}` | "
                     f"{summary(fn)} |")
    return lines + [""]


def section_classes(names: list[str]) -> list[str]:
    lines = ["## Models", ""]
    for n in names:
        cls = getattr(xr_unmix, n)
        lines += [f"### `xr_unmix.{n}`", "", doc(cls), "Methods:", ""]
        for mname, member in public_members(cls):
            lines.append(f"- `{n}.{mname}{signature(member)}`: {summary(member)}")
        lines.append("")
    return lines


def section_errors(names: list[str]) -> list[str]:
    lines = ["## Errors and warnings", "", "| name | bases | meaning |", "|---|---|---|"]
    from xr_unmix import errors

    extra = [n for n, v in vars(errors).items() if isinstance(v, type) and
             issubclass(v, Exception | Warning) and v.__module__ == errors.__name__
             and n not in names and not n.startswith("_")]
    for n in [*names, *sorted(extra)]:
        cls = getattr(errors, n)
        where = f"xr_unmix.{n}" if n in names else f"xr_unmix.errors.{n}"
        bases = ", ".join(b.__name__ for b in cls.__bases__)
        lines.append(f"| `{where}` | {bases} | {summary(cls)} |")
    return lines + [""]


def section_modules() -> list[str]:
    import importlib

    lines = ["## Submodules", ""]
    for m in SUBMODULES:
        mod = importlib.import_module(f"xr_unmix.{m}")
        names = getattr(mod, "__all__", None) or [
            n for n, v in vars(mod).items() if not n.startswith("_") and inspect.isfunction(v)
            and v.__module__.startswith(mod.__name__)]
        lines += [f"### `xr_unmix.{m}`", "", summary(mod), ""]
        for n in names:
            obj = getattr(mod, n)
            if callable(obj):
                lines.append(f"- `xr_unmix.{m}.{n}{signature(obj)}`: {summary(obj)}")
        lines.append("")
    return lines


def section_cli() -> list[str]:
    from click.testing import CliRunner

    from xr_unmix.cli import main

    lines = ["## Command line", "", "`xr-unmix --help` and `xr-unmix COMMAND --help`:", ""]
    for cmd in ["", *main.commands]:
        args = [cmd, "--help"] if cmd else ["--help"]
        text = CliRunner().invoke(main, args, terminal_width=100).output
        title = f"xr-unmix {cmd}".strip()
        lines += [f"### `{title}`", "", "```text", text.rstrip(), "```", ""]
    return lines


def render() -> str:
    names = [n for n in xr_unmix.__all__ if not n.startswith("__")]
    kinds: dict[str, list[str]] = {"err": [], "cls": [], "fn": [], "mod": []}
    for n in names:
        obj = public(n)
        if isinstance(obj, type) and issubclass(obj, Exception | Warning):
            kinds["err"].append(n)
        elif isinstance(obj, type):
            kinds["cls"].append(n)
        elif inspect.ismodule(obj):
            kinds["mod"].append(n)
        else:
            kinds["fn"].append(n)
    head = ["# xr_unmix API reference", "",
            f"Version {xr_unmix.__version__}. Generated from the signatures and docstrings by "
            "`python docs/make_api.py`; `help(...)` shows the same text. The user guide "
            "([user_guide.md](user_guide.md)) tells how the pieces fit together.", "",
            "Every name of `xr_unmix.__all__`: "
            + ", ".join(f"`{n}`" for n in sorted(names)) + ".", ""]
    body = (section_functions(sorted(kinds["fn"])) + section_accessor()
            + section_classes(sorted(kinds["cls"])) + section_errors(kinds["err"])
            + section_modules() + section_cli())
    return "\n".join(head + body).rstrip() + "\n"


if __name__ == "__main__":
    out = HERE / "api.md"
    out.write_text(render())
    print(f"wrote {out}")
