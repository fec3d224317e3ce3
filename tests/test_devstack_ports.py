"""`make run` refuses to start when one of its ports is taken, naming port and holder.

The port is a free one this test holds (never 8000 or another port of the real stack),
given to devstack through WEB_PORT with only the web process selected.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from tests.processes import ROOT


def test_a_taken_port_stops_devstack_before_anything_starts(tmp_path):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    env = {**os.environ, "WEB_PORT": str(port)}
    marker = tmp_path / "started"
    procfile = tmp_path / "Procfile"
    # If devstack started anything despite the taken port, this file would appear.
    procfile.write_text(f"web: touch {marker} && sleep 30\n")
    try:
        result = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "devstack.py"), "--procfile", str(procfile)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        holder.close()
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"port {port} (for web) is taken by pid {os.getpid()}" in result.stderr
    assert "Refusing to start" in result.stderr
    assert not marker.exists()


def test_the_ports_of_each_process_come_from_the_procfile_and_the_environment():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import devstack
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    processes = devstack.read_procfile(ROOT / "Procfile")
    env = {"WEB_PORT": "18000", "WORKER_DEFAULT_METRICS_PORT": "19101"}
    ports = {name: devstack.ports_of(name, cmd, env) for name, cmd in processes.items()}
    assert ports["web"] == [18000]
    assert ports["worker-default"] == [19101]
    assert ports["worker-webhooks"] == [9102]
    assert ports["payments"] == [8101, 8102]
    assert set(devstack.PROXY_LISTEN.values()) <= set(ports["proxy"])
