"""Every code block of docs/user_guide.md and README.md runs as written, and every CLI line parses.

How a block is run (the convention the user guide states at its top):

- Each block runs on its own, in a fresh folder holding the sample scene as ``scene.tif`` (and
  ``scenes/scene.tif``) and its spectra as ``endmembers.csv``, in a fresh namespace that has
  ``np``, ``xr``, ``rioxarray``, ``xr_unmix``, ``cube = xr_unmix.open_cube("scene.tif", chunks=64)``,
  ``E = xr_unmix.read_endmembers("endmembers.csv")`` and ``ab = cube.unmix.fcls(E)``.
- Python blocks (```` ```python ```` fences, or unlabelled/indented blocks that parse as Python) are
  executed. Shell blocks run each ``xr-unmix ...`` line through the CLI (in-process), in order; a line
  that is a synopsis (``[--flag]``, ``A|B``, ``{a,b}``, ``...`` or UPPERCASE placeholders) is only
  checked: the command exists and so does every ``--flag`` it names. ``make X`` lines: the Makefile
  has target ``X``. Inline code spans that start with ``xr-unmix`` are checked the same way (a bare
  ``xr-unmix CMD`` names the command and is not run). Inline calls ``xr_unmix.f(...)`` and
  ``cube.unmix.f(...)`` (the accessor table) must match ``f``'s signature: every keyword exists, no
  more positional arguments than it takes.
- A block whose first line is a comment starting ``# not run:`` (visible in the rendered page, with
  the reason) is only compiled (Python) or flag-checked (shell).
"""

from __future__ import annotations

import ast
import re
import shlex
import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from xr_unmix.cli import main
from xr_unmix.demo import sample_scene_dir

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "docs" / "user_guide.md", ROOT / "README.md"]
NOT_RUN = "# not run:"
SHELL_STARTS = ("xr-unmix", "make ", "pip ", "python ", "$ ", "export ", "cd ", "gdal", "rio ")


@dataclass
class Block:
    doc: str
    line: int
    lang: str  # "python" or "shell"
    code: str

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def skipped(self) -> bool:
        first = self.code.lstrip().splitlines()[0] if self.code.strip() else ""
        return first.lower().startswith(NOT_RUN)


def _kind(code: str, lang: str) -> str | None:
    lang = lang.lower()
    if lang in ("python", "py", "pycon"):
        return "python"
    if lang in ("bash", "sh", "shell", "console"):
        return "shell"
    if lang not in ("",):
        return None  # text, toml, json ...: not code to run
    first = next((ln.strip() for ln in code.splitlines()
                  if ln.strip() and not ln.strip().startswith("#")), "")
    if first.startswith(SHELL_STARTS):
        return "shell"
    try:
        ast.parse(code)
    except SyntaxError:
        return None
    return "python"


def blocks(path: Path) -> list[Block]:
    """Fenced blocks and 4-space indented blocks (outside lists) of a Markdown file."""
    out: list[Block] = []
    lines = path.read_text().splitlines()
    i, prev_blank = 0, True
    while i < len(lines):
        ln = lines[i]
        m = re.match(r"^(\s*)```(\w*)\s*$", ln)
        if m:
            indent, lang, start = len(m.group(1)), m.group(2), i
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            code = "\n".join(x[indent:] for x in lines[i + 1:j])
            kind = _kind(code, lang)
            if kind:
                out.append(Block(path.name, start + 1, kind, code))
            i, prev_blank = j + 1, False
            continue
        if prev_blank and ln.startswith("    ") and ln.strip():
            start, j = i, i
            while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                j += 1
            code = textwrap.dedent("\n".join(lines[start:j])).strip("\n")
            kind = _kind(code, "")
            if kind:
                out.append(Block(path.name, start + 1, kind, code))
            i, prev_blank = j, False
            continue
        prev_blank = not ln.strip()
        i += 1
    return out


def inline_spans(path: Path, pattern: str) -> list[tuple[str, str]]:
    """Inline code spans of ``path`` matching ``pattern`` (one group): ``(doc:line, text)``."""
    return [(f"{path.name}:{n}", span)
            for n, ln in enumerate(path.read_text().splitlines(), 1)
            for span in re.findall(pattern, ln)]


def inline_cli(path: Path) -> list[tuple[str, str]]:
    """Inline code spans that are CLI lines."""
    return inline_spans(path, r"`(xr-unmix [^`]+)`")


ALL_BLOCKS = [b for p in DOCS for b in blocks(p)]
INLINE = [x for p in DOCS for x in inline_cli(p)]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    src = sample_scene_dir()
    shutil.copy(src / "scene_a.tif", tmp_path / "scene.tif")
    shutil.copy(src / "endmembers.csv", tmp_path / "endmembers.csv")
    (tmp_path / "scenes").mkdir()
    shutil.copy(src / "scene_a.tif", tmp_path / "scenes" / "scene.tif")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def setup_namespace() -> dict:
    import numpy as np
    import rioxarray
    import xarray as xr

    import xr_unmix

    cube = xr_unmix.open_cube("scene.tif", chunks=64)
    E = xr_unmix.read_endmembers("endmembers.csv")
    return {"np": np, "xr": xr, "rioxarray": rioxarray, "xr_unmix": xr_unmix, "cube": cube,
            "E": E, "ab": cube.unmix.fcls(E), "__name__": "__guide__"}


# -- shell lines -----------------------------------------------------------------------------------

def commands(code: str) -> list[str]:
    """The commands of a shell block: continuation lines (indented, or after ``\\``) joined,
    comments dropped."""
    cmds: list[str] = []
    for raw in code.splitlines():
        text = re.sub(r"\s+#.*$", "", raw).rstrip()
        if not text.strip() or text.strip().startswith("#"):
            continue
        if cmds and (raw[:1].isspace() or cmds[-1].endswith("\\")):
            cmds[-1] = cmds[-1].rstrip("\\") + " " + text.strip()
        else:
            cmds.append(text.strip().removeprefix("$ "))
    return cmds


def is_synopsis(cmd: str) -> bool:
    words = cmd.split()[2:]
    return bool(re.search(r"[\[\]{}|]|\.\.\.", cmd)) or any(
        re.fullmatch(r"[A-Z][A-Z_.]*", w) for w in words)


def check_flags(cmd: str) -> None:
    words = cmd.split()
    assert len(words) >= 2 and words[0] == "xr-unmix", cmd
    if words[1].startswith("-"):
        return
    assert words[1] in main.commands, f"no command {words[1]!r}: {cmd}"
    known = {f for p in main.commands[words[1]].params for f in getattr(p, "opts", [])}
    known |= {"--help"}
    for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", cmd):
        assert flag in known, f"xr-unmix {words[1]} has no {flag}: {cmd}"


def run_cli(cmd: str) -> None:
    args = shlex.split(cmd)[1:]
    r = CliRunner().invoke(main, args, prog_name="xr-unmix", catch_exceptions=False)
    assert r.exit_code == 0, f"{cmd}\n{r.output}"


def run_shell(block: Block, run: bool) -> None:
    makefile = (ROOT / "Makefile").read_text()
    for cmd in commands(block.code):
        if cmd.startswith("make "):
            for target in cmd.split()[1:]:
                assert re.search(rf"^{re.escape(target)}:", makefile, re.M), cmd
        elif cmd.startswith("xr-unmix"):
            check_flags(cmd)
            if run and not is_synopsis(cmd):
                run_cli(cmd)
        # pip / python / other tools: shown for reference, not run here


# -- the tests -------------------------------------------------------------------------------------

def test_the_guide_has_blocks():
    kinds = {b.lang for b in ALL_BLOCKS if b.doc == "user_guide.md"}
    assert kinds == {"python", "shell"}, kinds


def repo_root_files(folder: Path) -> None:
    """What a block that runs "from the repository root" reads: the product fixtures (written by
    tests/io/make_product_fixtures.py into fixtures/, as the guide says), that script under
    tests/io/ and the sample scenes under sample_scenes/."""
    import sys

    (folder / "tests" / "io").mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "io" / "make_product_fixtures.py", folder / "tests" / "io")
    (folder / "sample_scenes").mkdir()
    for name in ("scene_a.tif", "endmembers.csv"):
        shutil.copy(sample_scene_dir() / name, folder / "sample_scenes" / name)
    sys.path.insert(0, str(ROOT / "tests" / "io"))
    try:
        import make_product_fixtures as fx
    finally:
        sys.path.remove(str(ROOT / "tests" / "io"))
    (folder / "fixtures").mkdir()
    for fn in fx.WRITERS:
        fn(folder / "fixtures")


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=lambda b: b.id)
def test_block_runs(block, workdir):
    if any(p in block.code for p in ("fixtures/", "tests/io", "sample_scenes/")):
        repo_root_files(workdir)
    if block.lang == "python":
        code = compile(block.code, block.id, "exec")
        if not block.skipped:
            exec(code, setup_namespace())  # noqa: S102  (the documentation's own code)
    else:
        run_shell(block, run=not block.skipped)


@pytest.mark.parametrize("where,cmd", INLINE, ids=[w for w, _ in INLINE])
def test_inline_cli_line(where, cmd, workdir):
    check_flags(cmd)
    if not is_synopsis(cmd) and "--help" not in cmd and len(cmd.split()) > 2:  # not a bare name
        run_cli(cmd)


def test_skipped_blocks_are_few():
    skipped = [b.id for b in ALL_BLOCKS if b.skipped]
    assert len(skipped) <= max(3, len(ALL_BLOCKS) // 5), skipped


# -- inline calls ----------------------------------------------------------------------------------

def inline_calls(path: Path) -> list[tuple[str, str]]:
    """Inline code spans that are calls of the package's functions or accessor methods."""
    return inline_spans(path, r"`((?:cube\.unmix|xr_unmix)\.[\w.]+\(.*?\))`")


CALLS = [x for p in DOCS for x in inline_calls(p)]


def _resolve(dotted: str):
    import importlib

    import xr_unmix
    from xr_unmix.accessor import UnmixAccessor

    parts = dotted.split(".")
    if parts[:2] == ["cube", "unmix"]:
        return getattr(UnmixAccessor, parts[2]).function, 1
    obj = xr_unmix
    for i, p in enumerate(parts[1:], 1):
        try:
            obj = getattr(obj, p)
        except AttributeError:
            obj = importlib.import_module(".".join(parts[: i + 1]))
    return obj, 0


@pytest.mark.parametrize("where,call", CALLS, ids=[f"{w}:{c.split('(')[0]}" for w, c in CALLS])
def test_inline_call_matches_signature(where, call):
    import inspect

    node = ast.parse(call, mode="eval").body
    assert isinstance(node, ast.Call), call
    fn, offset = _resolve(ast.unparse(node.func))
    if inspect.ismodule(fn) and callable(fn):  # xr_unmix.simulate: module and function
        fn = getattr(fn, node.func.attr)
    params = list(inspect.signature(fn).parameters.values())[offset:]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    names = {p.name for p in params if p.kind is not p.POSITIONAL_ONLY}
    for kw in node.keywords:
        assert kw.arg is None or kw.arg in names, f"{where}: {call}: no parameter {kw.arg!r}"
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not any(p.kind is p.VAR_POSITIONAL for p in params):
        assert len(node.args) <= len(positional), f"{where}: {call}: too many positional arguments"
