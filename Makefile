# Two entry points do all setup on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install system-deps bench evaluate lint

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Prometheus' promtool and server back the deployment tests (Debian package `prometheus`).
system-deps:
	@command -v promtool >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null) \
	      || echo "warning: could not install prometheus; its tests will be skipped"; \
	  else echo "note: promtool not found; install Debian's 'prometheus' to run the deployment tests"; fi; }

demo: $(STAMP)
	$(VENV)/bin/streamvgan demo

test: $(STAMP) system-deps
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_engine.py

evaluate: $(STAMP)
	$(VENV)/bin/streamvgan evaluate all --out out/evaluation
