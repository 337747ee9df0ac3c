# RPM: the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SUM    := $(shell cat pyproject.toml | cksum | cut -d' ' -f1)
STAMP  := $(VENV)/.installed-$(SUM)
TEST_STAMP := $(VENV)/.installed-test-$(SUM)

.PHONY: install install-test run test test-hosts browser lint unit soak bench bench-engine bench-audit bench-firm bench-instructions bench-lone bench-replication demo pg clean

## the service alone (what `make run` needs); the test toolchain only for the targets that use it
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(TEST_STAMP)

install: $(STAMP)

install-test: $(TEST_STAMP)

## run the service (an embedded PostgreSQL, data in ./instance/pgdata, unless DATABASE_URL is set), port RPM_PORT or 8005
run: install
	$(BIN)/rpm serve

## start the local PostgreSQL cluster if one is installed and down; without one, the tests use an embedded server
pg:
	@if [ -z "$$TEST_DATABASE_URL" ] && command -v pg_ctlcluster >/dev/null && ls /etc/postgresql >/dev/null 2>&1 \
			&& ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then \
		echo "starting the local PostgreSQL cluster"; \
		pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start || true; \
		for i in $$(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done; \
	fi

## Debian's chromium + chromedriver for the console's browser test (installed when missing and root)
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then \
			(apt-get update -q && apt-get install -y -q chromium chromium-driver) >/dev/null \
			|| echo "WARNING: chromium could not be installed: the console browser test will be skipped"; \
		else echo "NOTE: install chromium and chromium-driver to run the console browser test"; fi; \
	fi

lint: install-test
	$(BIN)/ruff check .

## the whole suite against real PostgreSQL: TEST_DATABASE_URL, else the local cluster, else an embedded server
## (each test gets its own fresh database), in TEST_PROCESSES processes (pytest-xdist; 1: in this one)
TEST_PROCESSES ?= 3
test: install-test browser lint
	$(BIN)/pytest $(if $(filter 1,$(TEST_PROCESSES)),,-n $(TEST_PROCESSES))

## past one machine: three `rpm serve` hosts in network namespaces over one database (races, kill -9, retries across
## hosts), failover to a promoted pg_basebackup standby under load, compliance reads on a replica
test-hosts: install-test pg
	$(BIN)/pytest -s tests/integration/test_hosts.py tests/integration/test_replication.py

unit: install-test
	$(BIN)/pytest tests/unit

## longer runs of the randomized and crash tests
soak: install-test pg
	RPM_BOOKS_OPS=10000 RPM_SOAK_KILLS=10 RPM_SOAK_SECONDS=5 \
		$(BIN)/pytest tests/integration/test_books.py tests/integration/test_guarantees.py -k "books or kill" -s

## the demo's sixteen scenarios (the nine of the original design and beyond), on a throw-away embedded database
demo: install
	$(BIN)/rpm demo

bench-engine: install-test
	$(BIN)/python -m bench.engine

## the benchmarks (throw-away databases; wrk from Debian's packages is installed if missing)
bench: install-test pg
	@command -v wrk >/dev/null || apt-get install -y -q wrk
	$(BIN)/python -m bench.engine
	$(BIN)/python -m bench.service
	$(BIN)/python -m bench.firm

## lone requests at 80/s from one keep-alive client: p50/p99 beside pgbench's naive transaction at the same rate
bench-lone: install-test pg
	$(BIN)/python -m bench.lone

## what a synchronous standby costs a lone decision, beside an asynchronous one (alternating rounds, one run)
bench-replication: install-test
	$(BIN)/python -m bench.replication

## what the groups and the firm above a portfolio cost a decision, beside the same decisions without them
bench-firm: install-test pg
	$(BIN)/python -m bench.firm

## the audit trail at 10,000,000 decisions over a year, partitioned by month and not, side by side (ROWS=...; about
## an hour and 30 GB of disk per layout at the default)
ROWS ?= 10000000
bench-audit: install-test pg
	$(BIN)/python -m bench.audit_scale --rows $(ROWS)

## instructions per decision (valgrind): compares two versions of the code where the clock cannot
bench-instructions: install-test pg
	@command -v valgrind >/dev/null || apt-get install -y -q valgrind
	$(BIN)/python -m bench.instructions

clean:
	rm -rf $(VENV) instance .pytest_cache .ruff_cache .hypothesis
