# Set-up and entry points. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3.11
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
# The CPU wheel of torch: pinned here (not in pyproject) so a fresh machine never pulls a CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: install demo test bench bench-scale scenes clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH)"
	$(PIP) install --quiet -e ".[test,scenes,notebook,dashboard]" "$(TORCH)"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/xr-unmix demo --out out

test: install
	$(PY) -m pytest -q -p no:cacheprovider tests

scenes: install
	$(PY) sample_scenes/make_scenes.py

bench: install
	$(PY) recipes/bench_sunsal.py

bench-scale: install  # writes multi-GB scratch GeoTIFFs under a temporary folder
	$(PY) recipes/bench_scale.py

clean:
	rm -rf $(VENV) out
