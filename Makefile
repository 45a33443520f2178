# Two entry points: `make demo` trains the example, `make test` runs the suite.
# `make test-fast` is the inner-loop tier: everything but the multi-process, DeepSpeed and install tests.
# Both create .venv on first use. torch is pinned to the CPU build that lies on this
# machine's disk; pyproject.toml only asks for torch>=2.4 so users elsewhere are not pinned.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH := torch==2.13.0

.PHONY: demo test test-fast test-gpu bench docs clean

# PYTHONWARNINGS below: setuptools prints an informational notice on every editable install
# (it maps trainer.callbacks/trainer.strategies with a finder); it is not for our users.
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	PYTHONWARNINGS=ignore::UserWarning $(PY) -m pip install -q -e ".[dev]"
	touch $@

# The demo needs only the package and matplotlib (its loss PNG): no dev extras (DeepSpeed, W&B, MLflow,
# the docs tools...), so a fresh clone trains within minutes. `make test` adds the dev extras later.
$(VENV)/.installed-demo: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	PYTHONWARNINGS=ignore::UserWarning $(PY) -m pip install -q -e . matplotlib
	touch $@

demo: $(VENV)/.installed-demo
	$(PY) examples/char_transformer.py

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 --dist worksteal --durations=15 tests

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 --dist worksteal -m "not slow" --durations=10 tests

# The GPU tier: tests marked `cuda` (skipped on a machine without one). Refuses to report an
# all-skipped run as a pass: it first checks that torch sees a CUDA device.
test-gpu: $(VENV)/.installed
	@$(PY) -c "import sys, torch; n = torch.cuda.device_count() if torch.cuda.is_available() else 0; \
	sys.exit(0 if n else 'make test-gpu: torch ' + torch.__version__ + ' sees no CUDA device (no GPU, no driver, or a CPU build of torch).')"
	$(PY) -m pytest -q -m cuda -rs --durations=10 tests

# The documentation site (mkdocs.yml; MkDocs + Material + mkdocstrings from the dev extra) into site/.
# --strict: a broken link, a missing page or an API reference that does not resolve fails the build.
# NO_MKDOCS_2_WARNING: Material prints a notice about MkDocs 2 on every build; it is not about this site.
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

# One markdown table and one PNG per benchmark in benchmarks/results/ (peers from the `bench` extra).
bench: $(VENV)/.installed
	$(PY) benchmarks/realistic.py --results benchmarks/results
	$(PY) benchmarks/overhead.py --results benchmarks/results
	$(PY) benchmarks/ddp.py --results benchmarks/results
	$(PY) benchmarks/startup.py --results benchmarks/results
	$(PY) benchmarks/resume_memory.py --results benchmarks/results
	$(PY) benchmarks/sharded.py --save-stall --results benchmarks/results

clean:
	rm -rf $(VENV) runs site .pytest_cache .hypothesis
