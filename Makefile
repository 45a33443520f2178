# Two entry points: `make demo` trains the example, `make test` runs the suite.
# `make test-fast` is the inner-loop tier: everything but the multi-process, DeepSpeed and install tests.
# Both create .venv on first use. torch is pinned to the CPU build that lies on this
# machine's disk; pyproject.toml only asks for torch>=2.4 so users elsewhere are not pinned.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH := torch==2.13.0

.PHONY: demo test test-fast bench clean

# PYTHONWARNINGS below: setuptools prints an informational notice on every editable install
# (it maps trainer.callbacks/trainer.strategies with a finder); it is not for our users.
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	PYTHONWARNINGS=ignore::UserWarning $(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(PY) examples/char_transformer.py

test: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 --durations=15 tests

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -n 2 -m "not slow" --durations=10 tests

bench: $(VENV)/.installed
	$(PY) benchmarks/overhead.py

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
