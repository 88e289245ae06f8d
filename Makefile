# Two entry points do all setup on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# The package asks for torch>=2.3 so that it never replaces a user's torch; this project's own
# targets run on the CPU build of 2.13, installed before the package (pip takes it from the
# file on disk on these machines), so the range is already met and pip pulls no CUDA build.
TORCH := torch==2.13.*

.PHONY: demo test test-fast install system-deps bench evaluate lint dist

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet '$(TORCH)'
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Debian packages some tests use, installed as root via apt-get when missing: Prometheus'
# promtool and server (deployment tests) and stunnel4, the TLS terminator of
# tests/service/test_tls.py. Tests skip, saying why, where a package is absent.
SYSTEM_PACKAGES := promtool:prometheus stunnel4:stunnel4

system-deps:
	@for pair in $(SYSTEM_PACKAGES); do \
	  cmd=$${pair%%:*}; pkg=$${pair#*:}; \
	  command -v $$cmd >/dev/null 2>&1 && continue; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$pkg >/dev/null) \
	      || echo "warning: could not install $$pkg; its tests will be skipped"; \
	  else echo "note: $$cmd not found; install Debian's '$$pkg' to run the tests that need it"; fi; \
	done

demo: $(STAMP)
	$(VENV)/bin/streamvgan demo

test: $(STAMP) system-deps
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

# The development loop: unit tests and quick doctests only. No broker (tests marked `kafka`,
# tests/conftest.py marks every user of the broker fixture), nothing marked `slow` (training,
# example scripts, service processes, promtool, the wheel build). `make test` runs them all.
test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -m "not kafka and not slow"

bench: $(STAMP)
	$(PY) benchmarks/bench_engine.py

evaluate: $(STAMP)
	$(VENV)/bin/streamvgan evaluate all --out out/evaluation

# ruff (lint and format) and mypy over the package; all three run, the target fails if any did.
lint: $(STAMP)
	@status=0; \
	$(VENV)/bin/ruff check streamvgan || status=1; \
	$(VENV)/bin/ruff format --check streamvgan || status=1; \
	$(VENV)/bin/mypy || status=1; \
	exit $$status

# The sdist and the wheel under dist/, checked by twine. --no-isolation builds with the
# setuptools of .venv (the dev extra brings it), so the build downloads nothing.
dist: $(STAMP)
	rm -rf dist
	$(PY) -m build --no-isolation --outdir dist .
	$(VENV)/bin/twine check --strict dist/*
