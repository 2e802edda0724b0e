"""How the model files in this folder were made: run once with the release before the model rework
(main at 2465e00), so that tests/models/test_old_files.py checks that files saved by that release still
load and give the same outputs. Random endmembers and spectra (no data set). Do not rerun it with the
current code: the files would then no longer be the old release's."""

from pathlib import Path

import numpy as np
import torch

from xr_unmix.models.deq import DEQUnmix
from xr_unmix.models.uadmm import MNNAE, UADMMNet

rng = np.random.default_rng(0)
E = rng.uniform(0.05, 0.9, (20, 3))
out = str(Path(__file__).parent) + "/"
Y = rng.uniform(0.05,0.9,(1,20,6,7))
Y = torch.as_tensor(Y, dtype=torch.float32)
variants = {
 "deq_default": {},
 "deq_precond": {"precondition": 1e-3},
 "deq_scaled": {"projection": "scaled"},
 "deq_ylinear_sub": {"y_linear": True, "y_subspace": 4, "y_features": 2},
 "deq_metric": {"metric": True},
 "deq_k1": {"kernel_size": 1},
 "deq_nocnn": {"use_cnn": False},
}
ref = {}
for name, kw in variants.items():
    m = DEQUnmix.from_endmembers(E, seed=1, **kw)
    with torch.no_grad():  # perturb every parameter so a load that drops something shows
        for n, p in m.named_parameters():
            if n != "E":
                p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    m.eval()
    with torch.no_grad():
        A = m(Y, warn=False)
    np.save(out + name + "_out.npy", A.numpy())
    m.save(out + name + ".safetensors")
u = UADMMNet.from_endmembers(E, layers=2)
u.save(out + "uadmm.safetensors")
with torch.no_grad():
    np.save(out + "uadmm_out.npy", u(Y[0].reshape(20,-1).T).numpy())
mn = MNNAE.from_endmembers(E, layers=2)
mn.save(out + "mnnae.safetensors")
np.save(out + "Y.npy", Y.numpy())
print("ok")
