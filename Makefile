# calsync — the two commands: `make demo` (a demo sync on the embedded defaults) and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo standalone test lint bench clean

venv: $(STAMP)
$(STAMP): requirements.txt constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt -c constraints.txt
	touch $(STAMP)

## Seed an embedded SQLite OA and local Office 365, Exchange and Alibaba Mail emulators, run
## the three demo integrations' DAGs once each (dag.test()), print what each synced.
demo: venv
	$(BIN)/python scripts/demo.py run

## The same demo data under `airflow standalone` (UI on http://localhost:8080).
standalone: venv
	$(BIN)/python scripts/demo.py standalone

## Unit + integration tests (SQLite, PostgreSQL and MariaDB on 127.0.0.1, real Airflow DAGs).
test: venv
	$(BIN)/python scripts/services.py ensure
	$(BIN)/python scripts/browser_deps.py
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure"; exit 1; fi; \
	  exit $$rc

## The scale benchmark (README "Benchmarks"): every suite, 200 users × 40 events, scenarios
## 1-5 with the naive baseline and the network floor. Heavy: never part of `make test`.
## The full run: make bench BENCH_ARGS="--users 2000 --oa postgresql --processes 2 --scenarios 1,2,3,4,5,6"
BENCH_ARGS ?= --suite all --users 200 --events 40 --scenarios 1,2,3,4,5
bench: venv
	$(BIN)/python scripts/services.py ensure
	mkdir -p .artifacts
	$(BIN)/python bench/scale.py --json .artifacts/scale.json $(BENCH_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf .demo .artifacts
