# subbit: the two commands of the README are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(VENV)/bin/pip
DATA   ?= data/quick
RUN    ?= runs/demo-rnnt
MINUTES ?= 4
QAT_MINUTES ?= 2

.PHONY: install demo test test-fast test-paths system-deps clean

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch is pinned in pyproject.toml (local CPU wheel); install it first, alone
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev,bench]'
	touch $@

install: $(VENV)/.installed

# Debian TTS voices and text for the embedded corpus. With root and apt-get they are installed;
# otherwise one line says what is missing and what that changes (espeak-ng from PyPI always works).
SYSTEM_PACKAGES = flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts fortunes fortunes-min
system-deps:
	@if command -v flite >/dev/null && command -v festival >/dev/null && [ -f /usr/share/games/fortunes/fortunes ]; then \
	  echo "system voices and text: present (flite, festival, fortunes)"; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null) \
	  && echo "system voices and text: installed ($(SYSTEM_PACKAGES))" \
	  || echo "warning: apt-get could not install $(SYSTEM_PACKAGES): the corpus gets espeak-ng voices only (no flite/festival speakers) and no open fortune sentences"; \
	else \
	  echo "note: not root (or no apt-get), so flite, festival and fortunes are not installed: the corpus gets espeak-ng voices only (no flite/festival speakers) and no open fortune sentences; 'sudo make system-deps' adds them"; \
	fi

demo: install system-deps
	$(VENV)/bin/subbit demo --data $(DATA) --out $(RUN) --minutes $(MINUTES) --qat-minutes $(QAT_MINUTES)

# the whole suite (what CI runs)
test: install
	$(PY) -m pytest

# the suite without the end-to-end tests (training, compare, demo, DDP, corpus build)
test-fast: install
	$(PY) -m pytest -m "not slow"

# the fast suite once per kernel path this CPU has (ref, portable, avx2, avx512) and once with the
# native GQ helpers off, so a broken path cannot hide behind the best one
test-paths: install
	@set -e; for path in $$($(PY) -c 'from subbit.runtime.kernels import available_paths as a; print(*("portable" if p == "c" else p for p in a()))'); do \
	  echo "== SUBBIT_KERNEL=$$path"; SUBBIT_KERNEL=$$path $(PY) -m pytest -m "not slow"; \
	done; \
	echo "== SUBBIT_NATIVE=0"; SUBBIT_NATIVE=0 $(PY) -m pytest -m "not slow"

clean:
	rm -rf build dist src/*.egg-info .pytest_cache
