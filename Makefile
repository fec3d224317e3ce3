# The two commands of the quickstart: `make run` and `make test`.
# Every dependency is installed from the pinned requirements files; nothing by hand.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | sha1sum | cut -c1-12)
export DJANGO_SETTINGS_MODULE ?= config.settings.local

.PHONY: install run migrate lint format test bench clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

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

test: lint
	DJANGO_SETTINGS_MODULE=config.settings.test $(VENV)/bin/pytest

bench: install
	DJANGO_SETTINGS_MODULE=config.settings.test $(PY) -m bench

clean:
	rm -rf $(VENV) .run staticfiles .pytest_cache
