# Every target sets itself up: a fresh machine needs only python3 and make.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	# torch first, pinned: a bare "torch" requirement would pull a multi-GB CUDA build. The CI machines
	# hold the CPU wheel locally; elsewhere pip takes PyPI's (on Linux the CUDA build): for the CPU
	# one, install torch first with --index-url https://download.pytorch.org/whl/cpu (README.md).
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m local_reg.demo

test: $(STAMP)
	$(PY) -m pytest -n 2 -q

# Only the source folders that exist (git does not keep empty ones).
SOURCES = $(wildcard local_reg tests experiments benchmarks examples docs/*.py)

lint: $(STAMP)
	$(VENV)/bin/ruff check $(SOURCES)
	$(VENV)/bin/ruff format --check $(SOURCES)
	$(VENV)/bin/mypy
