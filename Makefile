# statestore — developer tasks. `make demo` and `make test` do all set-up themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install browser pgbouncer demo test test-slow lint format bench bench-scale bench-turns bench-wakeup bench-capacity clean

install: $(STAMP) browser pgbouncer

# The inspector's browser tests (tests/test_ui_browser.py) drive Debian's chromium through
# Playwright (which downloads no browser here): installed with apt-get when missing. Where
# that cannot be done the browser tests skip, except under CI=true, where they fail.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium for the browser tests (apt-get)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get \
	    install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null; \
	} || echo "warning: chromium not installed; the browser tests will skip (fail under CI=true)"

# tests/test_pgbouncer.py (and the queue and append tests' pgbouncer runs) start Debian's
# pgbouncer in front of the test database: installed the same way, skipped or failed alike.
pgbouncer:
	@command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || { \
	  echo "installing pgbouncer for the PgBouncer tests (apt-get)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get \
	    install -y -qq --no-install-recommends pgbouncer >/dev/null; \
	} || echo "warning: pgbouncer not installed; the PgBouncer tests will skip (fail under CI=true)"

# Idempotent: makes .venv once, reinstalls only when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

demo: install
	$(BIN)/statestore demo

test: install
	$(BIN)/python -m pytest

# Volume runs: property-test, crash and fuzz volume (slow-marked tests included).
test-slow: install
	STATESTORE_CRASH_ROUNDS=20 STATESTORE_FUZZ_EXAMPLES=2000 \
		$(BIN)/python -m pytest -m "slow or not slow" tests/test_crash.py tests/test_fuzz_api.py \
		tests/test_tenant_isolation.py tests/test_group_commit.py tests/test_tokens.py

lint: install
	$(BIN)/python -m ruff check .
	$(BIN)/python -m ruff format --check .
	$(BIN)/python -m mypy

format: install
	$(BIN)/python -m ruff format .
	$(BIN)/python -m ruff check --fix .

# The hot paths against the raw driver (and, with the bench extra installed with dev, the peer
# libraries): figures saved in bench/results/run.json and rendered into the marked blocks of
# docs/benchmarks.md (bench/render.py renders them again from the JSON).
bench: install
	$(BIN)/python bench/run.py --peers --json --write docs/benchmarks.md

# Tables of a million rows and a million-event history (several minutes).
bench-scale: install
	$(BIN)/python bench/scale.py --write docs/benchmarks.md

# commit_turn against its raw transaction, engines on turns, on separate calls and DBOS, and
# the round trips of a turn (about a minute; PostgreSQL at $STATESTORE_BENCH_PG_URL).
bench-turns: install
	$(BIN)/python bench/turns.py --write docs/benchmarks.md

# Enqueue-to-pickup latency of waiting workers and the load of idle ones: the store on
# SQLite, and on PostgreSQL beside pgqueuer and procrastinate (about 1.5 minutes;
# PostgreSQL at $STATESTORE_BENCH_PG_URL).
bench-wakeup: install
	$(BIN)/python bench/wakeup.py --write docs/benchmarks.md

# Capacity curve on PostgreSQL: append and claim+complete with 1, 2, 4, 8 and 16 worker
# processes, the store against raw asyncpg on the same SQL (about 4 minutes; the server at
# $STATESTORE_BENCH_PG_URL). Writes the figures and bench/results/capacity.json.
bench-capacity: install
	$(BIN)/python bench/capacity.py --write docs/benchmarks.md --json bench/results/capacity.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache dist build
