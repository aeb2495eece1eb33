# bayesinv: one command sets up and runs each job from nothing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch, installed explicitly before anything can pull a CUDA build.
# On these machines pip takes torch==2.13.0 from a local CPU wheel; elsewhere use e.g.
#   make install TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
OUT ?= demo_out

.PHONY: install install-bench install-docs demo test test-slow bench bench-quick docs lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# Benchmark peers (normflows, FrEIA, scikit-fmm) beside the same CPU torch: never a CUDA build.
$(VENV)/.bench: $(VENV)/.installed
	$(PY) -m pip install -q "$(TORCH_SPEC)" -e ".[bench]"
	touch $@

install-bench: $(VENV)/.bench

$(VENV)/.docs: $(VENV)/.installed
	$(PY) -m pip install -q "$(TORCH_SPEC)" -e ".[docs]"
	touch $@

install-docs: $(VENV)/.docs

demo: install
	$(VENV)/bin/bayesinv demo --out $(OUT)

test: install
	$(PY) -m pytest

test-slow: install install-docs install-bench
	$(PY) -m pytest -m slow

# All benchmarks (tens of minutes on 2 cores); results in benchmarks/results/.
bench: install-bench
	$(PY) -m benchmarks.run

# The bounded quick mode CI runs: fails if a quality number drops below benchmarks/floors.json.
bench-quick: install-bench
	$(PY) -m benchmarks.run --quick --check-floors

docs: install-docs
	$(VENV)/bin/mkdocs build --strict -d site

lint: install
	$(VENV)/bin/ruff check bayesinv tests benchmarks

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
