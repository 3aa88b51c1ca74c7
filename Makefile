# The two commands of the README. Both create .venv when missing and are idempotent:
# the install step reruns only when pyproject.toml or constraints.txt change.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.meddiff-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test test-fast lint typecheck install clean-demo

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt "torch==2.13.0"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,text,lint]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/meddiff demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q --durations=15

# everything but the slow, GPU and real-data tests: the loop to run while editing (under 90 s here)
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not gpu and not data"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# the public API: meddiff.load, the run handles' shared base, devices, configs, metrics
typecheck: $(STAMP)
	$(VENV)/bin/mypy src/meddiff/api.py src/meddiff/devices.py src/meddiff/tasks/runs.py src/meddiff/config.py \
		src/meddiff/metrics

clean-demo:
	rm -rf runs/demo
