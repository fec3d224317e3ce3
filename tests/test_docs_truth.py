"""Every name the handbook gives an operator exists in the code.

The handbook is README.md and the Markdown under docs/, runbooks/ and adr/. The names
are found by parsing it, not listed here: inline code spans, fenced code blocks and link
targets. Checked:

* commands: ``make X`` is a Makefile target; ``manage.py X`` a management command
  (and its first positional argument one of its choices, when it has choices);
  ``python -m X`` an importable module;
* settings and environment variables (``UPPER_CASE`` names): a Django setting, or a
  name the code, the Makefile, the Procfile or docker-compose.yml reads;
* metric names: exported by a metric defined in the code (the live registry);
* file paths and links: the file or directory exists (runbook links included).

A name that is not ours (a tool's variable, a Prometheus built-in) is in ``EXTERNAL``
with the reason; nothing else may be skipped.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from functools import cache
from pathlib import Path

import pytest

from tests.processes import ROOT

DOCS = sorted(
    [ROOT / "README.md"]
    + [p for d in ("docs", "runbooks", "adr") for p in (ROOT / d).rglob("*.md")]
)

# Names that are real but not defined by this repository, each with its reason.
EXTERNAL = {
    # environment variables and settings of other tools
    "HOSTNAME": "the container's host name (compose health checks)",
    "SIGSTOP": "the POSIX signal that pauses a process (a Redis that answers nothing)",
    "PATH": "the shell's search path",
    "CI": "set by CI runners",
    "GF_AUTH_ANONYMOUS_ENABLED": "Grafana's own setting (docker-compose.yml)",
    "PROMTOOL": "the Makefile variable naming the promtool binary",
    "TOKEN": "a shell variable of the README's curl session",
    "ORDER_ID": "a placeholder in a runbook command",
    "WEB_HOST": "a placeholder host in runbook commands, and gunicorn's bind host",
    "WORKER_HOST": "a placeholder host in runbook commands",
    "HOST": "a placeholder host in runbook commands",
    "PATH_INFO": "the WSGI environ key",
    "SELECT": "SQL keyword in a query",
    "JSON": "the format",
    "UTC": "the time zone",
    "SKIP": "SQL SKIP LOCKED",
    "LOCKED": "SQL SKIP LOCKED",
    "DROP": "SQL DROP DATABASE",
    "GCRA": "the algorithm's name",
    "TTL": "Redis TTL",
    "EVALSHA": "a Redis command",
    "BRPOP": "a Redis command",
    "PING": "a Redis command",
    "INFO": "a Redis command / log level",
    "CROSSSLOT": "a Redis Cluster error",
    "UPDATE": "SQL UPDATE",
    "DELETE": "HTTP method",
    "POST": "HTTP method",
    "GET": "HTTP method",
    "PUT": "HTTP method",
    "PATCH": "HTTP method",
    "HEAD": "HTTP method",
    "OPTIONS": "the DATABASES option key",
    "TEST": "the DATABASES test key",
    "MIRROR": "the DATABASES test key",
    "CONN_MAX_AGE": "Django's DATABASES key",
    "CONN_HEALTH_CHECKS": "Django's DATABASES key",
    "ATOMIC_REQUESTS": "Django's DATABASES key",
    "DEBUG": "Django's setting / log level",
    "WARNING": "log level",
    "ERROR": "log level",
    "NXDOMAIN": "a DNS answer",
    "SERVFAIL": "a DNS answer",
    "EXISTS": "a Redis command",
    "INCRBY": "a Redis command",
    "ZRANGE": "a Redis command",
    "WITHSCORES": "a Redis command option",
    "KILL": "a signal name (docker compose kill -s KILL)",
    "CONFLICT_STATUS_CODE": "a setting of drf-idempotency, a peer (docs/comparison.md)",
    "LOCK_TTL_SECONDS": "a setting of drf-idempotency, a peer (docs/comparison.md)",
    # metrics not made by our code
    "up": "made by Prometheus for every scrape target",
}
METRIC_PREFIXES = ("resilience_", "webhooks_", "celery_", "orders_", "django_")
TOP_LEVEL = {p.name for p in ROOT.iterdir() if not p.name.startswith(".")}

_FENCE = re.compile(r"```([^\n]*)\n(.*?)```", re.DOTALL)
_INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def code_of(path: Path, *, sql: bool = True) -> tuple[list[str], list[str]]:
    """(inline code spans, fenced blocks) of one Markdown file; ``sql=False`` drops SQL."""
    text = path.read_text()
    blocks = [body for lang, body in _FENCE.findall(text) if sql or lang.strip() != "sql"]
    prose = _FENCE.sub("", text)
    return _INLINE.findall(prose), blocks


def prose_of(path: Path) -> str:
    """The text outside code: paths written without backticks are checked too."""
    return _INLINE.sub("", _FENCE.sub("", path.read_text()))


def every_code(*, sql: bool = True) -> list[tuple[Path, str]]:
    found = []
    for path in DOCS:
        spans, blocks = code_of(path, sql=sql)
        found += [(path, span) for span in spans] + [(path, block) for block in blocks]
    return found


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# --- commands ------------------------------------------------------------------------


@cache
def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][\w-]*):", text, re.MULTILINE))


def test_every_make_target_named_exists():
    missing = []
    for path, code in every_code():
        for target in re.findall(r"(?:^|[\s(`])make ([a-z][\w-]*)", code):
            if target not in make_targets():
                missing.append((rel(path), target))
    assert not missing, f"make targets that do not exist: {missing}"


@cache
def management_commands() -> dict[str, str]:
    from django.core.management import get_commands

    return get_commands()


def _choices(command: str) -> set[str] | None:
    from django.core.management import load_command_class

    app = management_commands()[command]
    parser = load_command_class(app, command).create_parser("manage.py", command)
    for action in parser._actions:  # the first positional with choices
        if not action.option_strings and action.choices:
            return set(action.choices)
    return None


def test_every_management_command_named_exists_with_its_subcommand():
    missing = []
    pattern = r"manage\.py ([a-z_]+)(?:[ \t]+([a-z][\w-]*))?"
    for path, code in every_code():
        for command, first in re.findall(pattern, code):
            if command not in management_commands():
                missing.append((rel(path), command))
                continue
            choices = _choices(command)
            if first and choices is not None and first not in choices:
                missing.append((rel(path), f"{command} {first}"))
    assert not missing, f"manage.py commands that do not exist: {missing}"


def test_every_python_module_named_exists():
    missing = []
    for path, code in every_code():
        for module in re.findall(r"python3? -m ([\w.]+)", code):
            if module in {"json.tool", "venv", "pip", "pytest"}:
                continue  # the standard library's and the toolchain's own
            if importlib.util.find_spec(module) is None:
                missing.append((rel(path), module))
    assert not missing, f"python -m modules that do not exist: {missing}"


# --- settings and environment variables ------------------------------------------------


@cache
def code_corpus() -> str:
    """Everything that can read a setting or a variable: Python, shell and config files
    of the service (tests excluded)."""
    parts = []
    for path in ROOT.rglob("*"):
        if {".venv", "tests"} & set(path.parts) or not path.is_file():
            continue  # a name only tests read is not one an operator can set
        if path.suffix in {".py", ".yml", ".yaml", ".lua", ".conf", ".sh"} or path.name in {
            "Makefile",
            "Procfile",
            "Dockerfile",
        }:
            parts.append(path.read_text(errors="replace"))
    return "\n".join(parts)


def setting_exists(name: str) -> bool:
    from django.conf import settings

    if name.endswith("*"):  # a family: FOO_* is fine if some FOO_x exists
        prefix = name.rstrip("*")
        return re.search(rf"\b{re.escape(prefix)}\w+", code_corpus()) is not None
    return hasattr(settings, name) or re.search(rf"\b{name}\b", code_corpus()) is not None


def upper_names(code: str) -> set[str]:
    return set(
        re.findall(r"(?<![\w.$/-])([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\*?|[A-Z]{4,}_?\*?)(?![\w(])", code)
    )


def test_every_setting_and_environment_variable_named_exists():
    missing = set()
    for path, code in every_code(sql=False):
        for name in upper_names(code):
            if name in EXTERNAL:
                continue
            if not setting_exists(name):
                missing.add((rel(path), name))
    assert not missing, f"settings or variables the code never reads: {sorted(missing)}"


# --- metrics -----------------------------------------------------------------------------


@cache
def exported_names() -> set[str]:
    """Every series name the service's metrics can export (families and samples)."""
    from prometheus_client import REGISTRY

    for module in (
        "resilience.metrics",
        "resilience.ratelimit.metrics",
        "webhooks.metrics",
        "orders.metrics",
        "common.tasks",
        "common.worker_metrics",
        "django_prometheus.middleware",
        "django_prometheus.models",
        "django_prometheus.migrations",
    ):
        importlib.import_module(module)
    from django_prometheus.middleware import Metrics

    Metrics.get_instance()  # django-prometheus registers its HTTP metrics lazily
    names = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names |= {f"{family.name}{suffix}" for suffix in ("_total", "_bucket", "_count", "_sum")}
    return names


@cache
def other_snake_names() -> set[str]:
    """Names shaped like metrics that are not: database tables and rate-limit policies."""
    from django.apps import apps
    from django.conf import settings

    tables = {model._meta.db_table for model in apps.get_models()}
    return tables | set(settings.RESILIENCE_RATELIMIT["policies"])


def metric_names_in(code: str) -> set[str]:
    tokens = re.findall(r"(?<![\w:./-])([a-z][a-z0-9]*(?:_[a-z0-9]+)+)(?![\w(/.])", code)
    return {t for t in tokens if t.startswith(METRIC_PREFIXES) and not t.endswith("_")}


def test_every_metric_named_is_exported_by_the_code():
    missing = set()
    for path, code in every_code():
        for name in metric_names_in(code):
            if name in EXTERNAL or name in other_snake_names():
                continue
            if name not in exported_names():
                missing.add((rel(path), name))
    assert not missing, f"metrics no code exports: {sorted(missing)}"


# --- file paths and links ------------------------------------------------------------------


def path_candidates(code: str) -> set[str]:
    tokens = re.findall(
        r"(?<![\w@:/.-])((?:[\w.-]+/)+[\w.*-]*|[\w-]+\.(?:md|py|yml|json|txt|lua|conf))", code
    )
    found = set()
    for token in tokens:
        first = token.split("/", 1)[0]
        if first not in TOP_LEVEL and "/" in token:
            continue  # not a path of this repository (a URL path, a MIME type...)
        if "/" not in token and not (ROOT / token).exists() and token not in TOP_LEVEL:
            continue  # a bare file name: checked only where it names a top-level file
        found.add(token)
    return found


def path_exists(token: str, doc: Path) -> bool:
    token = token.split("#", 1)[0].rstrip(".,:;")
    for base in (ROOT, doc.parent):
        if "*" in token:
            if list(base.glob(token)):
                return True
        elif (base / token).exists() or list(base.glob(f"{token}-*.md")):
            return True  # adr/0003 names adr/0003-<title>.md
    return False


def test_every_file_path_and_link_exists():
    missing = set()
    for path in DOCS:
        spans, blocks = code_of(path)
        for code in spans + blocks:
            for token in path_candidates(code):
                if not path_exists(token, path):
                    missing.add((rel(path), token))
        for token in path_candidates(prose_of(path)):
            if "/" in token and not path_exists(token, path):
                missing.add((rel(path), token))
        for target in _LINK.findall(path.read_text()):
            if target.startswith(("http://", "https://", "mailto:", "#")):
                continue
            if not path_exists(target, path):
                missing.add((rel(path), target))
    assert not missing, f"paths that do not exist: {sorted(missing)}"


@pytest.mark.parametrize("doc", [p for p in DOCS if "runbooks" in p.parts], ids=lambda p: p.name)
def test_every_runbook_named_in_a_runbook_exists(doc):
    for name in re.findall(r"\b([A-Z][a-z]+(?:[A-Z][a-z]+)+)\.md\b", doc.read_text()):
        assert (ROOT / "runbooks" / f"{name}.md").is_file(), (doc.name, name)


def test_the_handbook_is_parsed_at_all():
    """Guards the parser itself: it finds names of every kind in today's handbook."""
    codes = [code for _, code in every_code()]
    assert len(DOCS) >= 25
    assert sum(len(metric_names_in(c)) for c in codes) >= 50
    assert sum(len(upper_names(c)) for c in codes) >= 50
    assert any("manage.py breakers" in c for c in codes)
    assert any(path_candidates(c) for c in codes)
