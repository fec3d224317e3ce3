"""A SIGTERM'd chaos run or bench stops the processes its stacks started.

Python's default for SIGTERM skips ``finally`` blocks; the harness's stacks stop their
processes in ``__exit__``. A run killed that way once left its whole stack (gunicorn, a
Celery worker with beat, the proxy, the simulators) running under every later run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.processes import wait_for

PARENT = textwrap.dedent(
    """
    import subprocess, sys, time
    from chaos.scenarios.stack import stop_stacks_on_sigterm

    stop_stacks_on_sigterm()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        print(child.pid, flush=True)
        time.sleep(120)
    finally:  # what LocalStack.__exit__ does for its processes
        child.terminate()
        child.wait(10)
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is gone for our purpose.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_sigterm_unwinds_so_the_stack_stops_its_processes():
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, cwd=Path.cwd()
    )
    child_pid = None
    try:
        child_pid = int(parent.stdout.readline())
        assert _alive(child_pid)
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(15) == 128 + signal.SIGTERM
        wait_for(lambda: not _alive(child_pid), timeout=10, what="the stack's child stopped")
    finally:
        parent.kill()
        parent.wait(5)
        if child_pid is not None and _alive(child_pid):
            os.kill(child_pid, signal.SIGKILL)
