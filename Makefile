# subbit: the two commands of the README are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(VENV)/bin/pip
DATA   ?= data/quick
RUN    ?= runs/demo-rnnt
MINUTES ?= 4
QAT_MINUTES ?= 2

.PHONY: install demo test test-fast system-deps clean

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch is pinned in pyproject.toml (local CPU wheel); install it first, alone
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev,bench]'
	touch $@

install: $(VENV)/.installed

# Debian TTS voices and text for the embedded corpus (optional: espeak-ng from PyPI always works)
system-deps:
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts fortunes fortunes-min) \
	  || echo "warning: Debian voices not installed; the corpus uses espeak-ng voices only"; \
	else echo "not root: skipping Debian voices (espeak-ng from PyPI is used)"; fi

demo: install
	$(VENV)/bin/subbit demo --data $(DATA) --out $(RUN) --minutes $(MINUTES) --qat-minutes $(QAT_MINUTES)

test: install
	$(PY) -m pytest

clean:
	rm -rf build dist src/*.egg-info .pytest_cache
