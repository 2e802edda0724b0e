"""Pickle-free model files: round trip and clear failures on foreign, truncated or tampered files."""

import numpy as np
import pytest
import torch

from xr_unmix.errors import BandMismatchError, ModelFileError
from xr_unmix.models import UnmixModel, load_model, model_from_bytes, model_to_bytes, register_model
from xr_unmix.testing import tamper_model_bytes, tamper_model_file


@register_model
class _Linear(UnmixModel):
    """A tiny pixel-wise model for the tests: softmax of a linear map."""

    def __init__(self, n_bands, n_endmembers, endmember_names=None, wavelengths=None):
        super().__init__(n_bands, n_endmembers, endmember_names, wavelengths)
        self.lin = torch.nn.Linear(n_bands, n_endmembers)

    def forward(self, y):
        return torch.softmax(self.lin(y), dim=-1)

    def endmember_matrix(self):
        return self.lin.weight.T


def _model():
    torch.manual_seed(0)
    return _Linear(30, 3, ["a", "b", "c"], list(np.linspace(400, 2400, 30)))


def test_round_trip_and_apply(tmp_path, scene):
    cube, _, _ = scene
    m = _model()
    p = m.save(tmp_path / "m.safetensors")
    back = load_model(p)
    assert back.endmember_names == ["a", "b", "c"] and back.wavelengths == m.wavelengths
    a = cube.unmix.apply_model(m)
    b = cube.chunk({"y": 7, "x": 9}).unmix.apply_model(str(p))
    np.testing.assert_array_equal(a.values, b.values)
    assert a.attrs["model"] == "_Linear"
    assert list(back.endmembers.endmember.values) == ["a", "b", "c"]


def test_band_mismatch(scene):
    cube, _, _ = scene
    with pytest.raises(BandMismatchError, match="30 bands but the cube has 29"):
        cube.isel(band=slice(0, 29)).unmix.apply_model(_model())


def test_missing_random_truncated_foreign_tampered(tmp_path):
    with pytest.raises(ModelFileError, match="no model file"):
        load_model(tmp_path / "none.safetensors")
    rnd = tmp_path / "random.safetensors"
    rnd.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(ModelFileError, match="not a readable"):
        load_model(rnd)
    p = _model().save(tmp_path / "m.safetensors")
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(p.read_bytes()[:-40])
    with pytest.raises(ModelFileError):
        load_model(trunc)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign))
    with pytest.raises(ModelFileError, match="not an xr_unmix model"):
        load_model(foreign)
    # tamper with the config: claim more bands than the weights have
    tampered = tamper_model_file(p, tmp_path / "tampered.safetensors",
                                 config={"n_bands": 31, "wavelengths": None})
    with pytest.raises(ModelFileError, match=r"config does not fit its tensors .*\[3, 30\] in the file"):
        load_model(tampered)
    tamper_model_file(p, tampered, meta={"class": "os.system"})
    with pytest.raises(ModelFileError, match="unknown model class 'os.system'"):
        load_model(tampered)


def test_bytes_round_trip_is_the_file_format(tmp_path):
    m = _model()
    data = model_to_bytes(m)
    p = m.save(tmp_path / "m.safetensors")
    assert p.read_bytes() == data  # one serializer: a file holds exactly the payload bytes
    back = model_from_bytes(data)
    y = torch.rand(5, 30)
    torch.testing.assert_close(back(y), m(y), rtol=0, atol=0)
    with pytest.raises(ModelFileError, match="^payload: tensor 'lin.weight' holds 90 NaN"):
        model_from_bytes(tamper_model_bytes(data, tensors={"lin.weight": lambda t: t * np.nan}),
                         source="payload")
    with pytest.raises(ModelFileError, match="header length .* does not fit"):
        model_from_bytes(b"\xff" * 8 + data[8:], source="payload")


def test_unregistered_module_cannot_become_bytes():
    class Plain(_Linear):  # an UnmixModel subclass nobody registered
        pass

    with pytest.raises(TypeError, match="not a registered xr_unmix model class .* never serialises code"):
        model_to_bytes(Plain(3, 2))


def test_save_is_atomic(tmp_path, monkeypatch):
    m = _model()
    target = tmp_path / "m.safetensors"
    import os

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)  # the scratch file is written, publishing it fails
    with pytest.raises(OSError, match="disk full"):
        m.save(target)
    assert not target.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("meta", ['{"format": "xr_unmix-model", "class": 3, "config": []}',
                                  '["not", "a", "dict"]', '{"format_version": "x"}'])
def test_tampered_metadata_is_a_model_file_error(tmp_path, meta):
    p = _model().save(tmp_path / "m.safetensors")
    bad = tamper_model_file(p, tmp_path / "bad.safetensors", raw_meta=meta)
    with pytest.raises(ModelFileError, match="not an xr_unmix model|format_version 'x' is not a number"):
        load_model(bad)


def test_kernel_refuses_a_module_that_is_not_a_registered_model():
    from xr_unmix._workers import ModelKernel
    from xr_unmix.errors import InputTypeError

    with pytest.raises(InputTypeError, match=r"torch.nn.modules.linear.Linear is not a registered "
                                             r"xr_unmix model.* never serialises code"):
        ModelKernel(torch.nn.Linear(3, 2), "cpu", np.dtype("float32"))
