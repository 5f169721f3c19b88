# Two commands do everything on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3.11
VENV   := .venv
STAMP  := $(VENV)/.installed
PERF_STAMP := $(VENV)/.perf_analyzer

.PHONY: venv perf-tools demo test perf clean

venv: $(STAMP)

$(STAMP): pyproject.toml client/pyproject.toml scripts/setup_venv.sh
	PYTHON=$(PYTHON) bash scripts/setup_venv.sh $(VENV)
	touch $(STAMP)

# perf_analyzer's libraries (libb64-0d from apt, libcudart from PyPI). Not fatal: without them the load tests
# skip with the reason and everything else runs.
perf-tools: $(PERF_STAMP)

$(PERF_STAMP): $(STAMP) scripts/install_perf_analyzer.sh
	VENV=$(VENV) bash scripts/install_perf_analyzer.sh && touch $(PERF_STAMP) || \
		echo "warning: perf_analyzer is not usable here; load tests will be skipped" >&2

demo: $(STAMP)
	$(VENV)/bin/nann demo

test: $(STAMP) $(PERF_STAMP)
	$(VENV)/bin/python -m pytest -q

perf: $(STAMP) $(PERF_STAMP)
	$(VENV)/bin/nann perf

clean:
	rm -rf $(VENV) demo
