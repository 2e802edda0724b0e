"""recipes/eval_deq.py: a tiny run prints one well-formed table with finite scores; user errors exit 2."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.fixture
def eval_deq():
    sys.path.insert(0, str(RECIPES))
    try:
        import eval_deq

        yield eval_deq
    finally:
        sys.path.remove(str(RECIPES))


def test_quick_table_structure_and_finite_scores(eval_deq, capsys: pytest.CaptureFixture[str]) -> None:
    rc = eval_deq.main(["--quick", "--scenes", "sample_a", "--size", "24", "--workers", "1",
                        "--methods", "fcls,nocnn,deq,sup_fcls,sup_deq", "--epochs", "2",
                        "--fit-sup", '{"epochs": 1}'])
    out = capsys.readouterr().out
    assert rc == 0
    assert "TUNE = sample_a" in out and "REPORT = jasper" in out  # the split is in the header
    lines = out.splitlines()
    header = next(i for i, ln in enumerate(lines) if ln.startswith("| split |"))
    n_cols = lines[header].count("|") - 1
    assert n_cols == 10 and set(lines[header + 1]) <= set("|-")
    rows = [ln for ln in lines[header + 2:] if ln.startswith("| ")]
    methods = [r.split("|")[3].strip() for r in rows]
    assert methods == ["VCA+FCLS", "DEQ no CNN (ablation)", "DEQ-Unmix", "sup. FCLS (true E)",
                       "sup. DEQ-Unmix"]
    for r in rows:
        cells = [c.strip() for c in r.split("|")[1:-1]]
        assert len(cells) == n_cols and cells[0] == "TUNE" and cells[1] == "sample_a"
        armse = float(cells[3])
        assert math.isfinite(armse) and 0 <= armse < 1
        if cells[4] != "-":
            assert math.isfinite(float(cells[4]))
        int(cells[7]), int(cells[8])  # warning and unconverged counts are integers
    crit = [ln for ln in lines if ln.startswith("- TUNE sample_a")]
    assert len(crit) == 1 and "unsup: " in crit[0] and "; sup: " not in crit[0]  # no U-ADMM run here


@pytest.mark.parametrize(("argv", "message"), [
    (["--scenes", "mars"], "unknown scene 'mars'"),
    (["--methods", "fcls,magic"], "unknown method 'magic'"),
    (["--deq", "{precondition"], "--deq must be a JSON object"),
    (["--seeds", "a,b"], "--seeds must be a count"),
])
def test_user_errors_are_one_line_and_exit_2(eval_deq, capsys: pytest.CaptureFixture[str], argv: list[str],
                                             message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        eval_deq.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
