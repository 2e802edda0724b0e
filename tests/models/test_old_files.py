"""Model files saved by release 0.1.0 (tests/models/data/release_0_1, written by its make_files.py with
the code of main at 2465e00) load and unmix as they did, or are refused with a ModelFileError that says
why."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from xr_unmix.models import load_model

DATA = Path(__file__).parent / "data" / "release_0_1"
DEQ = ["deq_default", "deq_precond", "deq_scaled", "deq_ylinear_sub", "deq_metric", "deq_k1",
       "deq_nocnn"]
#: files whose options were removed since, with the words of the refusal (which option, why)
REFUSED: dict[str, str] = {
    "deq_scaled": r"deq_scaled\.safetensors: this DEQUnmix model file uses projection='scaled', an option removed since release 0\.1 \(the scaled "
                  r"projection left ConvergenceWarnings",
    "deq_ylinear_sub": r"uses y_features=2, an option removed since release 0\.1 \(a learned spectral "
                       r"input",
    "deq_metric": r"uses metric=True, an option removed since release 0\.1 \(a learned Tikhonov metric",
}


@pytest.mark.parametrize("name", DEQ)
def test_release_deq_files_load_the_same(name: str) -> None:
    path = DATA / f"{name}.safetensors"
    if name in REFUSED:
        from xr_unmix.errors import ModelFileError

        with pytest.raises(ModelFileError, match=REFUSED[name]):
            load_model(path)
        return
    m = load_model(path)
    Y = torch.as_tensor(np.load(DATA / "Y.npy"))
    with torch.no_grad():
        A = m(Y, warn=False).numpy()
    np.testing.assert_allclose(A, np.load(DATA / f"{name}_out.npy"), atol=1e-5)


def test_release_uadmm_and_mnnae_files_load_the_same() -> None:
    m = load_model(DATA / "uadmm.safetensors")
    Y = torch.as_tensor(np.load(DATA / "Y.npy"))[0].reshape(20, -1).T
    with torch.no_grad():
        np.testing.assert_allclose(m(Y).numpy(), np.load(DATA / "uadmm_out.npy"), atol=1e-6)
    assert type(load_model(DATA / "mnnae.safetensors")).__name__ == "MNNAE"
