"""Pickle-free model files: round trip and clear failures on foreign, truncated or tampered files."""

import json
import struct

import numpy as np
import pytest
import torch

from xr_unmix.errors import BandMismatchError, ModelFileError
from xr_unmix.models.base import UnmixModel, load_model, register_model


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
    raw = p.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = json.loads(header["__metadata__"]["xr_unmix"])
    meta["config"]["n_bands"] = 31
    meta["config"]["wavelengths"] = None
    header["__metadata__"]["xr_unmix"] = json.dumps(meta)
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    tampered = tmp_path / "tampered.safetensors"
    tampered.write_bytes(struct.pack("<Q", len(hb)) + hb + raw[8 + n:])
    with pytest.raises(ModelFileError, match=r"config does not fit its tensors .*\[3, 30\] in the file"):
        load_model(tampered)
    meta["class"] = "os.system"
    header["__metadata__"]["xr_unmix"] = json.dumps(meta)
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    tampered.write_bytes(struct.pack("<Q", len(hb)) + hb + raw[8 + n:])
    with pytest.raises(ModelFileError, match="unknown model class"):
        load_model(tampered)


def test_save_is_atomic(tmp_path, monkeypatch):
    m = _model()
    target = tmp_path / "m.safetensors"
    import safetensors.torch

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        m.save(target)
    assert not target.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("meta", ['{"format": "xr_unmix-model", "class": 3, "config": []}',
                                  '["not", "a", "dict"]', '{"format_version": "x"}'])
def test_tampered_metadata_is_a_model_file_error(tmp_path, meta):
    import torch
    from safetensors.torch import save_file

    from xr_unmix.errors import ModelFileError
    from xr_unmix.models.base import load_model

    p = tmp_path / "m.safetensors"
    save_file({"W": torch.zeros(2, 2)}, str(p), metadata={"xr_unmix": meta})
    with pytest.raises(ModelFileError):
        load_model(p)
