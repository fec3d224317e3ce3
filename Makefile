# The two commands of the quickstart: `make run` and `make test`.
# Every dependency is installed from the pinned requirements files; nothing by hand.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | sha1sum | cut -c1-12)
export DJANGO_SETTINGS_MODULE ?= config.settings.local

.PHONY: install promtool run migrate lint format test bench chaos-report loadtest clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

# promtool checks the alert rules and their unit tests in the test suite, which fails
# without it. Debian ships it only inside the prometheus package, whose install would
# also start a Prometheus service: we download the package (refreshing the package lists
# when they are missing or stale) and extract the one binary. Any failure stops the
# build. PROMTOOL=/path/to/promtool uses another binary.
PROMTOOL ?= $(VENV)/bin/promtool
$(PROMTOOL): | $(STAMP)
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; cd "$$tmp"; \
	  if ! apt-get download prometheus >/dev/null 2>&1; then \
	    echo "promtool: refreshing the package lists (apt-get update)"; \
	    apt-get update -qq >/dev/null || { echo "promtool: apt-get update failed" >&2; exit 1; }; \
	    apt-get download prometheus >/dev/null 2>&1 || \
	      { echo "promtool: apt-get download prometheus failed; install promtool and set PROMTOOL" >&2; exit 1; }; \
	  fi; \
	  dpkg-deb -x prometheus_*.deb x; \
	  install -m 0755 x/usr/bin/promtool "$(abspath $(PROMTOOL))"; \
	  "$(abspath $(PROMTOOL))" --version >/dev/null; echo "promtool installed: $(PROMTOOL)"

promtool: $(PROMTOOL)

migrate: install
	$(PY) manage.py ensure_database
	$(PY) manage.py migrate --noinput

run: migrate
	$(PY) manage.py collectstatic --noinput --verbosity 0
	$(PY) scripts/devstack.py

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint $(PROMTOOL)
	PROMTOOL=$(abspath $(PROMTOOL)) \
	  DJANGO_SETTINGS_MODULE=config.settings.test $(VENV)/bin/pytest

bench: install
	DJANGO_SETTINGS_MODULE=config.settings.test $(PY) -m bench

# Every chaos scenario beside its baseline (RESILIENCE_ENABLED=false) at collapse load, on
# harness stacks with the shipped defaults: report.md, report.json, timelines in
# docs/chaos/<scenario>/ (chaos/README.md). About 25 minutes; ARGS="--only payments-slow".
chaos-report: migrate
	$(PY) manage.py chaos report --out docs/chaos $(ARGS)

# Burst a running server (make run) and compare admitted requests with the bucket, e.g.
# make loadtest ARGS="--url http://127.0.0.1:8000/api/v1/auth/me --duration 10 --policy flood"
LOADTEST_DEFAULT := --url http://127.0.0.1:8000/api/v1/auth/me --concurrency 16 --duration 10 --policy flood
loadtest: install
	$(PY) manage.py loadtest $(or $(ARGS),$(LOADTEST_DEFAULT))

clean:
	rm -rf $(VENV) .run staticfiles .pytest_cache
