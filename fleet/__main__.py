"""``make fleet``: the fleet topology on this machine, in the foreground (Ctrl-C stops it).

Usage: python -m fleet [--web 3] [--workers-default 1] [--workers-webhooks 1]
       python -m fleet chaos [--only web-kill,...] [--out docs/chaos/fleet]
       python -m fleet capacity   (one web node and one worker node, measured)
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from fleet.stack import Fleet, FleetSpec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleet", description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="up", choices=["up", "chaos", "capacity"])
    parser.add_argument("--web", type=int, default=int(os.environ.get("FLEET_WEB_NODES", "3")))
    parser.add_argument("--workers-default", type=int, default=1)
    parser.add_argument("--workers-webhooks", type=int, default=1)
    parser.add_argument("--only", default="", help="chaos: comma-separated scenario names")
    parser.add_argument("--out", default="docs/chaos/fleet", help="chaos: report directory")
    args = parser.parse_args(argv)
    spec = FleetSpec(
        web_nodes=args.web,
        default_workers=args.workers_default,
        webhooks_workers=args.workers_webhooks,
        database_url=os.environ.get(
            "DATABASE_URL", "postgres://postgres@127.0.0.1:5432/resilient_fleet"
        ),
    )
    if args.command == "capacity":
        from fleet.capacity import run

        return run(spec)
    if args.command == "chaos":
        from fleet.chaos import run_all

        return run_all(spec, only=[n for n in args.only.split(",") if n], out=args.out)

    stopping = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    fleet = Fleet(spec)
    print("make fleet: starting (Redis Cluster, broker + Sentinels, PgBouncer, nodes)...")
    try:
        fleet.start()
    except Exception as exc:  # noqa: BLE001 - report and exit non-zero; everything is stopped
        print(f"make fleet: could not start: {exc}", file=sys.stderr)
        return 1
    print(f"\nReady.\n{fleet.summary()}\nCtrl-C stops everything.\n", flush=True)
    try:
        while not stopping.wait(1.0):
            # Like systemd or Kubernetes: an app process that exits is started again.
            for name in fleet.restart_exited():
                print(f"make fleet: {name} exited; started it again", flush=True)
            servers = [p.name for p in fleet.procs.values() if not p.alive]
            if servers:
                print(f"make fleet: exited: {', '.join(servers)}; stopping", flush=True)
                return 1
    finally:
        print("make fleet: stopping...", flush=True)
        fleet.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
