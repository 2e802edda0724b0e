"""Command line and markdown table of ``recipes/eval_deq.py``."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from typing import Any

import _eval_scenes as S
import numpy as np

UNSUP = ("fcls", "sunsal", "deq0", "nocnn", "deq")
SUP = ("sup_fcls", "sup_uadmm", "sup_deq")
ALL = UNSUP + SUP
#: trials outside the groups, by name only: "deq_sp" (issue 16's superpixel-guided prox; scikit-image)
TRIALS = ("deq_sp",)
LABELS = {"fcls": "VCA+FCLS", "sunsal": "VCA+SUnSAL", "deq0": "DEQ untrained operator",
          "nocnn": "DEQ no CNN (ablation)", "deq": "DEQ-Unmix", "sup_fcls": "sup. FCLS (true E)",
          "sup_uadmm": "sup. U-ADMM-AENet", "sup_deq": "sup. DEQ-Unmix",
          "deq_sp": "DEQ superpixel prox (trial)"}
QUICK_SCENES = ("sample_a", "syn_usgs4_shade")
#: "beats": a lower aRMSE by more than this fraction (a tie within solver tolerance is no win)
BEAT = 1e-3


def _fail(msg: str) -> None:
    print(f"eval_deq: {msg}", file=sys.stderr)
    raise SystemExit(2)


def _json(text: str, flag: str) -> dict[str, Any]:
    try:
        v = json.loads(text)
    except json.JSONDecodeError as exc:
        _fail(f"{flag} must be a JSON object, e.g. '{{\"epochs\": 50}}': {exc.msg}")
    if not isinstance(v, dict):
        _fail(f"{flag} must be a JSON object, got {text!r}")
    return v


def _names(text: str | None, default: tuple[str, ...], groups: dict[str, tuple[str, ...]],
           known: tuple[str, ...], what: str) -> list[str]:
    if not text:
        return list(default)
    out: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if part in groups:
            out += [p for p in groups[part] if p not in out]
        elif part in known:
            out += [part] if part not in out else []
        else:
            _fail(f"unknown {what} {part!r}; choose from {', '.join(list(groups) + list(known))}")
    return out


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str], list[int], list[str], dict]:
    """Parse the command line; a user error is one line on stderr and exit status 2."""
    ap = argparse.ArgumentParser(description="DEQ-Unmix evaluation protocol (issue 16)")
    ap.add_argument("--scenes", help="tune, report, all (default) or a comma list of scene names")
    ap.add_argument("--seeds", default=None, help="N (seeds 0..N-1, default 3) or a comma list")
    ap.add_argument("--methods", help="unsup, sup, all (default) or a comma list of " + ", ".join(ALL + TRIALS))
    ap.add_argument("--quick", action="store_true",
                    help="1 seed, 32 x 32 px scenes, 20 unsupervised / 5 supervised epochs, scenes "
                         + ", ".join(QUICK_SCENES) + " unless --scenes")
    ap.add_argument("--epochs", type=int, default=None, help="fit_scene epochs (default: the package's)")
    ap.add_argument("--size", type=int, default=None, help="side of the synthetic / sample scenes, px (64)")
    ap.add_argument("--deq", default="{}", help="JSON: DEQUnmix.from_endmembers options (unsupervised)")
    ap.add_argument("--fit", default="{}", help="JSON: fit_scene options")
    ap.add_argument("--sp", default="{}", help="JSON: DEQSuperpixel options of the deq_sp trial "
                    "(on top of --deq)")
    ap.add_argument("--deq-sup", default="{}", help="JSON: DEQUnmix.from_endmembers options (supervised)")
    ap.add_argument("--fit-sup", default="{}", help="JSON: DEQUnmix.fit options")
    ap.add_argument("--workers", type=int, default=2, help="processes (1 torch thread each)")
    ap.add_argument("--save", default=None, help="append every finished job's scores to this JSON-lines file")
    ap.add_argument("--load", default=None, nargs="+",
                    help="print the table from JSON-lines files written by --save (runs nothing)")
    a = ap.parse_args(argv)
    groups = {"tune": S.TUNE, "report": S.REPORT, "all": S.TUNE + S.REPORT}
    scenes = _names(a.scenes, QUICK_SCENES if a.quick else S.TUNE + S.REPORT, groups,
                    S.TUNE + S.REPORT, "scene")
    methods = _names(a.methods, ALL, {"unsup": UNSUP, "sup": SUP, "all": ALL}, ALL + TRIALS, "method")
    if "deq_sp" in methods and not a.load and importlib.util.find_spec("skimage") is None:
        _fail("method deq_sp (the superpixel-prox trial) needs scikit-image: pip install scikit-image")
    seeds_txt = a.seeds or ("1" if a.quick else "3")
    try:
        seeds = (list(range(int(seeds_txt))) if "," not in seeds_txt
                 else [int(v) for v in seeds_txt.split(",")])
    except ValueError:
        _fail(f"--seeds must be a count or a comma list of integers, got {seeds_txt!r}")
    if not seeds:
        _fail("--seeds must give at least one seed")
    opts = dict(deq=_json(a.deq, "--deq"), fit=_json(a.fit, "--fit"), deq_sup=_json(a.deq_sup, "--deq-sup"),
                fit_sup=_json(a.fit_sup, "--fit-sup"), sp=_json(a.sp, "--sp"), size=a.size or (32 if a.quick else 64))
    if a.epochs is not None:
        opts["fit"]["epochs"] = a.epochs
    if a.quick:
        opts["fit"].setdefault("epochs", 20)
        opts["fit_sup"].setdefault("epochs", 5)
    return a, scenes, seeds, methods, opts


def _cell(vals: list[float], fmt: str) -> str:
    if len(vals) == 1:
        return format(vals[0], fmt)
    return f"{format(np.median(vals), fmt)} [{format(min(vals), fmt)}, {format(max(vals), fmt)}]"


def _rows(rs: list[dict], split: str, scene: str, methods: list[str]) -> list[str]:
    lines = []
    for m in methods:
        got = [r[m] for r in rs if m in r]
        if not got:
            continue
        base = "fcls" if m in UNSUP + TRIALS else "sup_fcls"
        gain = "" if m in ("fcls", "sup_fcls") or not all(base in r for r in rs) else (
            f"{100 * np.median([1 - r[m]['armse'] / r[base]['armse'] for r in rs]):+.1f} %")
        sad = "-" if m in SUP else _cell([g["msad"] for g in got], ".4f")
        best = ", ".join(str(g["best_epoch"]) for g in got if g.get("best_epoch") is not None) or "-"
        lines.append(f"| {split} | {scene} | {LABELS[m]} | {_cell([g['armse'] for g in got], '.4f')} | "
                     f"{sad} | {gain} | {np.median([g['time'] for g in got]):.1f} | "
                     f"{sum(g['warn'] for g in got)} | {sum(g['unconv'] for g in got)} | {best} |")
    return lines


def criteria(rs: list[dict]) -> str:
    """Issue 16 point 2 for one scene: unsupervised DEQ vs VCA+FCLS, supervised DEQ vs U-ADMM-AENet."""
    parts = []
    if all("deq" in r and "fcls" in r for r in rs):
        gains = [1 - r["deq"]["armse"] / r["fcls"]["armse"] for r in rs]
        every = all(g > BEAT for g in gains)
        med = float(np.median(gains))
        sad_ok = all(r["deq"]["msad"] <= r["fcls"]["msad"] + 0.01 for r in rs)
        nowarn = all(r["deq"]["warn"] == 0 for r in rs)
        ok = every and med >= 0.25 and sad_ok and nowarn
        n_beat = sum(g > BEAT for g in gains)
        parts.append(f"unsup: {'MET' if ok else 'not met'} (beats VCA+FCLS by > 0.1 % in {n_beat}/"
                     f"{len(gains)} seeds, median gain {100 * med:+.1f} % (>= 25 %: {med >= 0.25}), "
                     f"mSAD <= VCA's + 0.01: {sad_ok}, no ConvergenceWarning: {nowarn})")
    if all("sup_deq" in r and "sup_uadmm" in r for r in rs):
        d = float(np.mean([r["sup_deq"]["armse"] for r in rs]))
        u = float(np.mean([r["sup_uadmm"]["armse"] for r in rs]))
        nowarn = all(r["sup_deq"]["warn"] == 0 for r in rs)
        parts.append(f"sup: {'MET' if d < u and nowarn else 'not met'} (mean aRMSE DEQ {d:.4f} vs "
                     f"U-ADMM-AENet {u:.4f}, no ConvergenceWarning: {nowarn})")
    return "; ".join(parts) if parts else "no criterion (methods missing)"


def print_report(res: list[dict], scenes: list[str], seeds: list[int], methods: list[str], opts: dict,
                 a: argparse.Namespace, wall: float) -> None:
    """Print the header, the one markdown table and the per-scene criteria."""
    import os

    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"DEQ-Unmix protocol: seeds {seeds}; TUNE = {', '.join(S.TUNE)}; REPORT = {', '.join(S.REPORT)}")
    print(f"options: deq={json.dumps(opts['deq'])} fit={json.dumps(opts['fit'])} "
          f"sp={json.dumps(opts.get('sp', {}))} deq_sup={json.dumps(opts['deq_sup'])} fit_sup={json.dumps(opts['fit_sup'])} "
          f"(empty = package defaults); size {opts['size']} px; torch {torch.__version__}, "
          f"{a.workers} worker(s) x 1 thread; wall {wall:.0f} s; load average {load:.1f}")
    for r in res:
        if "skip" in r and r["seed"] == seeds[0]:
            print(f"skipped {r['scene']}: {r['skip']}")
    print("| split | scene | method | aRMSE median [min, max] | mSAD (rad) | aRMSE gain vs VCA+FCLS "
          "(sup.: vs FCLS true E), median | time (s) | ConvergenceWarnings | unconverged inference "
          "solves | best epoch per seed |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    by_scene: dict[str, list[dict]] = {}
    for r in res:
        if "skip" not in r:
            by_scene.setdefault(r["scene"], []).append(r)
    for sc in scenes:
        if sc in by_scene:
            print("\n".join(_rows(by_scene[sc], S.split_of(sc), sc, methods)))
    for sc in scenes:
        if sc in by_scene:
            print(f"- {S.split_of(sc)} {sc} ({by_scene[sc][0]['what']}): {criteria(by_scene[sc])}")
