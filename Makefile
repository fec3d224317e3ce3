# The two commands of the quickstart: `make run` and `make test`.
# Every dependency is installed from the pinned requirements files; nothing by hand.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | sha1sum | cut -c1-12)
export DJANGO_SETTINGS_MODULE ?= config.settings.local

.PHONY: install promtool fleet-tools run fleet fleet-test fleet-chaos fleet-capacity migrate lint format test bench chaos-report loadtest clean

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

# make fleet needs nginx and PgBouncer (Redis Cluster and the Sentinels are the same
# redis-server as make run). Installing Debian's packages would start their system
# services, so, as for promtool, we download them (with libc-ares2, PgBouncer's one
# library not on the base system) and extract the binaries under .venv/fleet-tools;
# bin/ holds wrappers that find the library. Any failure stops the build.
FLEET_TOOLS := $(VENV)/fleet-tools
FLEET_DEBS := nginx pgbouncer libc-ares2
$(FLEET_TOOLS)/.installed: | $(STAMP)
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; cd "$$tmp"; \
	  if ! apt-get download $(FLEET_DEBS) >/dev/null 2>&1; then \
	    echo "fleet-tools: refreshing the package lists (apt-get update)"; \
	    apt-get update -qq >/dev/null || { echo "fleet-tools: apt-get update failed" >&2; exit 1; }; \
	    apt-get download $(FLEET_DEBS) >/dev/null 2>&1 || \
	      { echo "fleet-tools: apt-get download $(FLEET_DEBS) failed" >&2; exit 1; }; \
	  fi; \
	  dest="$(abspath $(FLEET_TOOLS))"; rm -rf "$$dest"; mkdir -p "$$dest/bin" "$$dest/lib"; \
	  for deb in *.deb; do dpkg-deb -x "$$deb" x; done; \
	  cp -a x/usr/sbin/nginx x/usr/sbin/pgbouncer "$$dest/lib/"; \
	  cp -a x/usr/lib/x86_64-linux-gnu/libcares.so* "$$dest/lib/" 2>/dev/null || \
	    cp -a x/usr/lib/*/libcares.so* "$$dest/lib/"; \
	  for b in nginx pgbouncer; do \
	    printf '#!/bin/sh\nLD_LIBRARY_PATH="%s" exec "%s" "$$@"\n' \
	      "$$dest/lib" "$$dest/lib/$$b" > "$$dest/bin/$$b"; chmod 0755 "$$dest/bin/$$b"; \
	  done; \
	  "$$dest/bin/pgbouncer" --version >/dev/null; "$$dest/bin/nginx" -v 2>/dev/null; \
	  touch "$$dest/.installed"; echo "fleet tools installed: $$dest/bin (nginx, pgbouncer)"

fleet-tools: $(FLEET_TOOLS)/.installed

migrate: install
	$(PY) manage.py ensure_database
	$(PY) manage.py migrate --noinput

run: migrate
	$(PY) manage.py collectstatic --noinput --verbosity 0
	$(PY) scripts/devstack.py

# The fleet topology on this machine (adr/0012, docs/scaling.md): N web nodes (FLEET_WEB_NODES,
# default 3) behind nginx, a worker per queue, one locked beat, PgBouncer in transaction
# pooling, a Redis Cluster of 3 masters + 3 replicas, a broker behind 3 Redis Sentinels.
# Every port is picked in 23000-23999; Ctrl-C stops everything. Database: DATABASE_URL
# (default .../resilient_fleet).
fleet: install fleet-tools
	$(PY) -m fleet $(ARGS)

# The fleet tests alone (they also run inside make test).
fleet-test: lint fleet-tools
	DJANGO_SETTINGS_MODULE=config.settings.test $(VENV)/bin/pytest tests/test_fleet.py -s $(ARGS)

# Failover experiments on a fleet: reports in docs/chaos/fleet/ (ARGS="--only web-kill").
fleet-chaos: install fleet-tools
	$(PY) -m fleet chaos $(ARGS)

# Capacity of one web node and one webhooks worker node on this machine (docs/scaling.md).
fleet-capacity: install fleet-tools
	$(PY) -m fleet capacity

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint $(PROMTOOL) fleet-tools
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
