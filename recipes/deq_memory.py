"""Constant-memory training: peak memory of one DEQ-Unmix training step vs. solver iterations.

For each number of iterations k in (5, 10, 25, 50, 100), a fresh process builds the same model on a 64x64
crop of Jasper Ridge (198 bands, 4 VCA endmembers) and runs one unsupervised training step (forward
solve of exactly k iterations, backward, AdamW step), once with implicit differentiation (``DEQ``,
backward solve of 10 iterations) and once with backprop through every unrolled iteration (``unrolled``,
the same model). Peak RSS (``getrusage``) is measured in the child; a fresh process per point keeps the
peaks independent. On a CUDA machine the same is done with ``torch.cuda.max_memory_allocated``.

Run: ``python recipes/deq_memory.py [--device cuda]``. Writes docs/figures/deq_memory.png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ITERS = (5, 10, 25, 50, 100)
HERE = Path(__file__).resolve().parent


def child(backward: str, k: int, device: str) -> dict:
    import resource

    import torch

    sys.path.insert(0, str(HERE))
    from _deq_common import jasper, setup

    from xr_unmix.models.deq import DEQUnmix

    setup()
    Y, _, _, _, E = jasper(0)
    Yc = torch.as_tensor(Y[:, :64, :64])[None].to(device)
    model = DEQUnmix.from_endmembers(E, seed=0, backward=backward, max_iter=k, tol=0.0,
                                     b_max_iter=10, b_tol=0.0).to(device)
    A0 = model.init_abundances(Yc)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    A = model(Yc, A0=A0, solver="anderson" if backward != "unrolled" else "plain", warn=False)
    rec = torch.einsum("br,nrhw->nbhw", model.endmember_matrix(), A)
    loss = torch.nn.functional.mse_loss(rec, Yc)
    opt.zero_grad()
    loss.backward()
    opt.step()
    out = {"backward": backward, "iters": k, "n_iter_run": model.last_info.n_iter,
           "rss_before_mib": before, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device == "cuda":
        torch.cuda.synchronize()
        out["cuda_peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", nargs=2)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], int(a.child[1]), a.device)))
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sys.path.insert(0, str(HERE))
    from _deq_common import FIG_DIR, setup

    setup()
    rows = []
    for k in ITERS:
        for backward in ("implicit", "unrolled"):
            r = subprocess.run([sys.executable, __file__, "--device", a.device, "--child", backward, str(k)],
                               capture_output=True, text=True, check=True)
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    key = "cuda_peak_mib" if a.device == "cuda" else "peak_rss_mib"
    print(f"device={a.device}; one training step on a 64x64x198 crop; memory = "
          + ("CUDA max_memory_allocated above the pre-step baseline" if a.device == "cuda"
             else "peak RSS of the process"))
    print(f"| iterations | DEQ (implicit) MiB | unrolled twin MiB | pre-step RSS MiB |")
    print("|---|---|---|---|")
    table = {}
    for k in ITERS:
        d = next(r for r in rows if r["iters"] == k and r["backward"] == "implicit")
        u = next(r for r in rows if r["iters"] == k and r["backward"] == "unrolled")
        table[k] = (d[key], u[key])
        assert d["n_iter_run"] == k and u["n_iter_run"] == k, (d, u)
        print(f"| {k} | {d[key]:.0f} | {u[key]:.0f} | {d['rss_before_mib']:.0f} |")
    growth = table[ITERS[-1]][0] / table[ITERS[0]][0] - 1
    print(f"DEQ peak at {ITERS[-1]} vs {ITERS[0]} iterations: {100 * growth:+.1f} % "
          f"(criterion: within 15 %); unrolled: {100 * (table[ITERS[-1]][1] / table[ITERS[0]][1] - 1):+.1f} %")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(ITERS, [table[k][0] for k in ITERS], "o-", label="DEQ-Unmix (implicit gradient)")
    ax.plot(ITERS, [table[k][1] for k in ITERS], "s--", label="unrolled twin (backprop through all)")
    ax.set_xlabel("forward solver iterations")
    ax.set_ylabel(("CUDA peak" if a.device == "cuda" else "peak RSS") + " of one training step (MiB)")
    ax.set_title(f"Training memory vs iterations ({a.device})")
    ax.legend()
    fig.tight_layout()
    out = FIG_DIR / f"deq_memory{'_cuda' if a.device == 'cuda' else ''}.png"
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
