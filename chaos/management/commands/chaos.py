"""Chaos experiments from the command line: list, run, inject, heal, status.

Why here and not a ``chaos`` Django app: ``chaos/`` is the test rig (a stdlib proxy,
simulators, scenarios) with no models, admin or migrations; making it an installed app
would ship the rig into production's INSTALLED_APPS for the sake of one command.
``resilience`` already owns the operator commands (``breakers``, ``resilience``), and this
one only imports ``chaos.scenarios`` when it runs.

Examples (against ``make run``'s stack; see chaos/README.md)::

    python manage.py chaos list
    python manage.py chaos run redis-down --duration 30
    python manage.py chaos run payments-503 --duration 20 --baseline
    python manage.py chaos run payments-slow --baseline --load collapse
    python manage.py chaos report --out docs/chaos   # every scenario (make chaos-report)
    python manage.py chaos inject postgres-slow      # and leave it
    python manage.py chaos status
    python manage.py chaos heal
"""

from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

# The ceiling of the collapse load (chaos.scenarios.load.COLLAPSE_CEILING_RPS, restated so
# the command imports the rig only when it runs; a test compares the two).
COLLAPSE_CEILING_RPS = 60.0


class Command(BaseCommand):
    help = "Run fault-injection experiments against a running stack and report on them."

    def add_arguments(self, parser: CommandParser) -> None:
        # Where the stack is: accepted after any subcommand (make run's ports by default).
        where = argparse.ArgumentParser(add_help=False)
        where.add_argument("--base-url", default="http://127.0.0.1:8000", help="the API")
        where.add_argument(
            "--proxy-url",
            default="http://127.0.0.1:8474",
            help="Toxiproxy API (ours from make run, or a real Toxiproxy)",
        )
        where.add_argument("--payments-control-url", default="http://127.0.0.1:8102")
        where.add_argument("--receiver-control-url", default="http://127.0.0.1:8202")
        where.add_argument("--receiver-url", default="http://127.0.0.1:8201")
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("list", help="the scenarios")
        run = sub.add_parser("run", parents=[where], help="run one experiment, write its report")
        run.add_argument("scenario")
        run.add_argument("--duration", type=float, help="fault seconds (default per scenario)")
        run.add_argument("--rps", type=float, default=10.0, help="requests per second")
        run.add_argument("--steady", type=float, help="seconds of traffic before the fault")
        run.add_argument("--users", type=int, help="how many API users send the traffic")
        run.add_argument("--out", type=Path, help="report directory")
        run.add_argument(
            "--baseline",
            action="store_true",
            help="also run it on a harness stack with RESILIENCE_ENABLED=false; implies "
            "--stack local for both runs, so only the switch differs",
        )
        run.add_argument(
            "--stack",
            choices=["external", "local"],
            default="external",
            help="external: the stack at --base-url (make run); local: start one on free "
            "ports (gunicorn, proxy, simulators, own redis-server, Celery worker)",
        )
        run.add_argument("--seed", type=int)
        run.add_argument(
            "--keep-logs",
            type=Path,
            help="copy the harness stacks' logs (web, worker, simulators) to DIR/<run>/",
        )
        run.add_argument(
            "--load",
            choices=["steady", "collapse"],
            default=None,
            help="steady: --rps; collapse: above the capacity the fault leaves the baseline "
            "(web processes x threads / fault latency, from the stack's settings); "
            "default: the scenario's (collapse for bulkhead-saturation)",
        )
        run.add_argument(
            "--max-rps",
            type=float,
            default=COLLAPSE_CEILING_RPS,
            help="ceiling of the collapse load (what this machine can send and serve)",
        )
        every = sub.add_parser(
            "report",
            help="every scenario with its baseline at collapse load on harness stacks; "
            "reports in OUT/<scenario>/ (make chaos-report)",
        )
        every.add_argument("--out", type=Path, default=Path("docs/chaos"))
        every.add_argument("--duration", type=float, default=20.0, help="fault seconds")
        every.add_argument("--steady", type=float, default=5.0)
        every.add_argument("--only", help="comma-separated scenario names (default: all)")
        every.add_argument("--seed", type=int, default=7)
        every.add_argument("--max-rps", type=float, default=COLLAPSE_CEILING_RPS)
        capacity = sub.add_parser(
            "capacity",
            help="measure a harness stack's healthy capacity several times in a row, as "
            "overload and the collapse loads measure it (statuses of each probe printed)",
        )
        capacity.add_argument("--repeat", type=int, default=4)
        capacity.add_argument("--users", type=int, default=1000)
        capacity.add_argument(
            "--baseline", action="store_true", help="the stack with RESILIENCE_ENABLED=false"
        )
        inject = sub.add_parser("inject", parents=[where], help="inject a scenario's fault")
        inject.add_argument("scenario")
        heal = sub.add_parser("heal", parents=[where], help="heal one scenario's fault, or all")
        heal.add_argument("scenario", nargs="?")
        sub.add_parser("status", parents=[where], help="proxies, simulators, readiness, breakers")

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        from chaos.scenarios import ChaosError
        from chaos.scenarios.stack import stop_stacks_on_sigterm

        stop_stacks_on_sigterm()
        try:
            getattr(self, f"_{action}")(**options)
        except ChaosError as exc:
            raise CommandError(str(exc)) from exc

    # -- helpers -------------------------------------------------------------------------

    def _endpoints(self, options: dict[str, Any]):
        from chaos.scenarios import Endpoints
        from chaos.scenarios.client import require_loopback

        return Endpoints(
            base_url=require_loopback(options["base_url"]),
            proxy_url=options["proxy_url"],
            payments_control_url=options["payments_control_url"],
            receiver_control_url=options["receiver_control_url"],
            receiver_url=options["receiver_url"],
            label=f"external stack at {options['base_url']} (make run)",
        )

    def _scenario(self, name: str):
        from chaos.scenarios import SCENARIOS

        try:
            return SCENARIOS[name]
        except KeyError:
            raise CommandError(f"unknown scenario {name!r}; try: {', '.join(SCENARIOS)}") from None

    # -- subcommands ---------------------------------------------------------------------

    def _list(self, **options: Any) -> None:
        from chaos.scenarios import SCENARIOS

        for scenario in SCENARIOS.values():
            needs = f" [needs: {', '.join(sorted(scenario.needs))}]" if scenario.needs else ""
            self.stdout.write(f"{scenario.name:<22} {scenario.summary}{needs}")

    def _capacity(self, *, repeat: int, users: int, baseline: bool, **_: Any) -> None:
        import tempfile

        from chaos.scenarios import SCENARIOS
        from chaos.scenarios.runner import measure_stack_capacity
        from chaos.scenarios.stack import LocalStack
        from chaos.scenarios.traffic import make_users

        if not 1 <= repeat <= 20 or not 1 <= users <= 5000:
            raise CommandError("--repeat must be within 1..20 and --users within 1..5000")
        mix = SCENARIOS["overload"].mix
        with (
            tempfile.TemporaryDirectory(prefix="chaos-capacity-") as workdir,
            LocalStack(
                database_url=self._database_url(),
                workdir=Path(workdir),
                base_env=self._base_env(),
                resilience_enabled=not baseline,
                proxied=False,  # as overload runs: its Celery worker takes CPU too
            ) as endpoints,
        ):
            pool = make_users(endpoints.base_url, users)
            self.stdout.write(f"{endpoints.label}; {users} users; the overload mix {mix}")
            for run in range(1, repeat + 1):
                rate, how, statuses = measure_stack_capacity(endpoints, pool, mix)
                answers = dict(sorted(statuses.items()))
                self.stdout.write(f"{run}: {rate:.1f} answers/s ({how}); by status {answers}")

    def _inject(self, *, scenario: str, **options: Any) -> None:
        chosen = self._scenario(scenario)
        chosen.fault.inject(self._endpoints(options))
        self.stdout.write(f"injected: {chosen.fault.description} (undo: manage.py chaos heal)")

    def _heal(self, *, scenario: str | None, **options: Any) -> None:
        from chaos.scenarios import heal_everything

        endpoints = self._endpoints(options)
        if scenario:
            self._scenario(scenario).fault.heal(endpoints)
            self.stdout.write(f"healed: {scenario}")
            return
        for line in heal_everything(endpoints):
            self.stdout.write(line)

    def _status(self, **options: Any) -> None:
        from chaos.scenarios.client import request
        from chaos.scenarios.faults import NO_FAULTS
        from chaos.scenarios.observe import BREAKER_STATES, breaker_states, fetch_metrics
        from chaos.toxiproxy_client import ToxiproxyError

        endpoints = self._endpoints(options)
        try:
            for name, proxy in sorted(endpoints.proxy.proxies().items()):
                toxics = ", ".join(t["name"] for t in proxy.get("toxics", [])) or "no toxics"
                state = "enabled" if proxy["enabled"] else "DOWN"
                self.stdout.write(
                    f"proxy {name:<10} {proxy['listen']} -> {proxy['upstream']} {state}; {toxics}"
                )
        except ToxiproxyError as exc:
            self.stdout.write(f"proxy: {exc}")
        for service in ("payments", "receiver"):
            answer = request("GET", f"{endpoints.simulator(service)}/control/faults", timeout=3)
            active = (
                {k: answer.body[k] for k, off in NO_FAULTS.items() if answer.body.get(k) != off}
                if answer.status == 200
                else f"unreachable ({answer.status or answer.error})"
            )
            self.stdout.write(f"{service:<9} faults: {active}")
        ready = request("GET", f"{endpoints.base_url}/readyz", timeout=5)
        body = ready.body if isinstance(ready.body, dict) else {}
        self.stdout.write(f"/readyz {ready.status} degraded={body.get('degraded')}")
        metrics = fetch_metrics(endpoints.base_url) or {}
        for name, value in sorted(breaker_states(metrics).items()):
            self.stdout.write(f"breaker {name:<22} {BREAKER_STATES.get(value, value)}")

    def _run(self, *, scenario: str, **options: Any) -> None:
        chosen = self._scenario(scenario)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        out = options["out"] or Path("chaos-reports") / f"{chosen.name}-{stamp}"
        kwargs = {
            "duration_s": options["duration"],
            "rps": options["rps"],
            "steady_s": options["steady"],
            "users": options["users"],
            "seed": options["seed"],
            "load": options["load"],
            "collapse_ceiling_rps": options["max_rps"],
            "log": self.stdout.write,
        }
        local = options["stack"] == "local" or options["baseline"]
        command = "python manage.py chaos " + shlex.join(sys.argv[2:])
        if local:
            kwargs["keep_logs"] = options["keep_logs"]
            passed = self._experiment(
                chosen, out, kwargs, baseline=options["baseline"], command=command
            )
        else:
            from chaos.scenarios import run_scenario
            from chaos.scenarios.load import settings_of_this_process

            endpoints = self._endpoints(options)
            endpoints.settings = settings_of_this_process()
            ctx = run_scenario(chosen, endpoints, **kwargs)
            self._write(out, ctx, None, command)
            passed = ctx.passed
        if not passed:
            raise CommandError(f"{chosen.name}: verdict FAIL (report in {out})")

    def _report(self, *, out: Path, only: str | None, **options: Any) -> None:
        """Every scenario beside its baseline, at collapse load: the committed evidence."""
        from chaos.scenarios import SCENARIOS

        names = [n.strip() for n in only.split(",")] if only else list(SCENARIOS)
        kwargs = {  # and each scenario's duration_s, below
            "steady_s": options["steady"],
            "seed": options["seed"],
            "load": "collapse",
            "collapse_ceiling_rps": options["max_rps"],
            "log": self.stdout.write,
        }
        failed = []
        for name in names:
            chosen = self._scenario(name)
            duration = max(options["duration"], chosen.report_min_duration_s or 0.0)
            command = (
                f"python manage.py chaos run {name} --baseline --load collapse "
                f"--duration {duration:g} --steady {options['steady']:g} "
                f"--seed {options['seed']} --max-rps {options['max_rps']:g}"
            )
            runs = {**kwargs, "duration_s": duration}
            if not self._experiment(chosen, out / name, runs, baseline=True, command=command):
                failed.append(name)
        self.stdout.write(f"reports in {out}/<scenario>/; FAIL: {', '.join(failed) or 'none'}")
        if failed:
            raise CommandError(f"verdict FAIL for {', '.join(failed)} (reports in {out})")

    def _experiment(
        self, chosen, out: Path, kwargs: dict[str, Any], *, baseline: bool, command: str
    ) -> bool:
        """One scenario on a harness stack, and its baseline on another; write the report."""
        from chaos.scenarios.runner import beside_baseline_check, measured_capacity

        ctx = self._run_local(chosen, resilience=True, **kwargs)
        other = None
        if baseline:
            # The same load as the resilient run (collapse: computed from its settings).
            same_load = {"rps": ctx.config["rps"], "capacity_rps": measured_capacity(ctx)}
            other = self._run_local(chosen, resilience=False, **{**kwargs, **same_load})
            if chosen.beats_baseline_by and ctx.collapse and ctx.summary and other.summary:
                ctx.checks.append(beside_baseline_check(ctx, other))
        self._write(out, ctx, other, command)
        return ctx.passed

    def _write(self, out: Path, ctx, baseline, command: str) -> None:
        from chaos.scenarios import report

        for path in report.write(out, ctx, baseline, command=command):
            self.stdout.write(f"wrote {path}")
        for check in ctx.checks:
            mark = {True: "ok  ", False: "FAIL", None: "skip"}[check.passed]
            self.stdout.write(f"  {mark} {check.name}: {check.detail}")
        self.stdout.write(f"verdict: {'PASS' if ctx.passed else 'FAIL'}")

    @staticmethod
    def _database_url() -> str:
        db = connections["default"].settings_dict
        return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"

    @staticmethod
    def _base_env() -> dict[str, str]:
        import os

        # The in-thread simulators and proxy log every request; keep the output readable.
        for name in ("chaos.payments", "chaos.receiver", "chaos.proxy"):
            logging.getLogger(name).setLevel(logging.WARNING)
        return {**os.environ, "DJANGO_SETTINGS_MODULE": os.environ["DJANGO_SETTINGS_MODULE"]}

    def _run_local(self, chosen, *, resilience: bool, **kwargs: Any):
        from chaos.scenarios import run_scenario
        from chaos.scenarios.stack import LocalStack

        database_url, base_env = self._database_url(), self._base_env()
        label = "resilient" if resilience else "baseline"
        kwargs["log"](f"starting a {label} harness stack (RESILIENCE_ENABLED={resilience})")
        keep_logs = kwargs.pop("keep_logs", None)
        with tempfile.TemporaryDirectory(prefix=f"chaos-{label}-") as workdir:
            try:
                with LocalStack(
                    database_url=database_url,
                    workdir=Path(workdir),
                    base_env=base_env,
                    resilience_enabled=resilience,
                    proxied="direct" not in chosen.needs,
                ) as endpoints:
                    return run_scenario(chosen, endpoints, **kwargs)
            finally:
                if keep_logs is not None:
                    kept = keep_logs / label
                    kept.mkdir(parents=True, exist_ok=True)
                    for log in Path(workdir).glob("*.log"):
                        shutil.copy(log, kept / log.name)
