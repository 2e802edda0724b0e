import subprocess
import sys


def test_import_is_light():
    """`import xr_unmix` registers the accessor and imports no torch (no device probing)."""
    code = ("import sys, xarray as xr, xr_unmix; "
            "assert hasattr(xr.DataArray, 'unmix'); "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
