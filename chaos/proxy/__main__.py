"""Command line: ``python -m chaos.proxy [--host H] [--port P] [--config proxies.json]``.

The config file is a Toxiproxy populate list, e.g.
``[{"name": "redis", "listen": "127.0.0.1:26379", "upstream": "127.0.0.1:6379"}]``.
Stops cleanly on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

from chaos.proxy.errors import ProxyAPIError
from chaos.proxy.server import DEFAULT_PORT, ProxyServer


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the server until a signal arrives, return the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m chaos.proxy", description="Toxiproxy-compatible TCP fault proxy."
    )
    parser.add_argument("--host", default="127.0.0.1", help="control API host")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="control API port")
    parser.add_argument("--config", type=Path, help="JSON list of proxies to create at start")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ...")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    proxies = []
    if args.config:
        try:
            proxies = json.loads(args.config.read_text())
        except (OSError, ValueError) as exc:
            parser.error(f"cannot read {args.config}: {exc}")
    server = ProxyServer(args.host, args.port, proxies=proxies)
    try:
        asyncio.run(_serve(server))
    except (OSError, ProxyAPIError) as exc:
        # Port taken, invalid config: say so in one line rather than a traceback.
        logging.getLogger("chaos.proxy").error("cannot start: %s", exc)
        return 1
    return 0


async def _serve(server: ProxyServer) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, server.request_stop)
    await server.run()


if __name__ == "__main__":
    sys.exit(main())
