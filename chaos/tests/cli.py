"""Run one of the simulators' command lines for a test: up, serving, stopped by SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 15
STOP_TIMEOUT_S = 15


@dataclass
class CliRun:
    """What a test inspects after the block: the exit code and what was logged."""

    returncode: int | None = None
    stderr: str = ""


@contextmanager
def serving_cli(module: str, *args: str, health_url: str) -> Iterator[CliRun]:
    """``python -m module args``, once ``health_url`` answers; SIGTERM when the block ends."""
    run = CliRun()
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert process.poll() is None, "the CLI exited early"
            try:
                requests.get(health_url, timeout=1)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "the CLI never came up"
                time.sleep(0.05)  # poll interval while waiting for the listener
        yield run
        process.send_signal(signal.SIGTERM)
        _, run.stderr = process.communicate(timeout=STOP_TIMEOUT_S)
        run.returncode = process.returncode
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
