"""Where a stack's parts are, and the faults an experiment can inject into them.

Network faults go through the Toxiproxy API (our proxy or a real Toxiproxy); HTTP-level
faults through the simulators' control ports; a process fault (kill -9) only to a Redis
the harness started itself. Every fault can be healed, and healing twice is harmless.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from chaos.scenarios.client import ChaosError, request
from chaos.toxiproxy_client import ToxiproxyClient, ToxiproxyError

if TYPE_CHECKING:
    from chaos.scenarios.load import StackSettings

# The switches of chaos._httpserver.FaultConfig, all off: what "heal" sends.
NO_FAULTS = {
    "error_rate": 0.0,
    "status": None,
    "latency_ms": 0.0,
    "latency_jitter_ms": 0.0,
    "fail_first_n": 0,
    "down": False,
}


class KillableRedis(Protocol):
    """A redis-server the harness owns (see chaos.scenarios.stack.OwnedRedis)."""

    def kill(self) -> None: ...

    def start(self) -> None: ...


@dataclass
class Endpoints:
    """Addresses of one running stack; everything an experiment touches."""

    base_url: str = "http://127.0.0.1:8000"
    proxy_url: str = "http://127.0.0.1:8474"
    payments_control_url: str | None = "http://127.0.0.1:8102"
    receiver_control_url: str | None = "http://127.0.0.1:8202"
    receiver_url: str | None = "http://127.0.0.1:8201"
    redis: KillableRedis | None = None
    has_worker: bool = True  # a Celery worker + beat settle deferred work
    label: str = "external stack"
    env: dict[str, str] = field(default_factory=dict)  # what a harness-started stack got
    settings: StackSettings | None = None  # its worker model and policies (collapse load)

    @property
    def proxy(self) -> ToxiproxyClient:
        return ToxiproxyClient(self.proxy_url, timeout=5)

    def simulator(self, name: str) -> str:
        url = self.payments_control_url if name == "payments" else self.receiver_control_url
        if not url:
            raise ChaosError(f"no control URL for the {name} simulator on this stack")
        return url.rstrip("/")


class Fault(Protocol):
    description: str

    def inject(self, endpoints: Endpoints) -> None: ...

    def heal(self, endpoints: Endpoints) -> None: ...


def _proxy_call(action: str, call: Any) -> Any:
    try:
        return call()
    except ToxiproxyError as exc:
        raise ChaosError(
            f"{action}: {exc} (is the chaos proxy running with proxies postgres, redis "
            "and payments? `make run` starts it; see chaos/README.md)"
        ) from exc


@dataclass(frozen=True)
class ProxyDown:
    """The dependency's network is gone: the proxy stops listening, connections drop."""

    proxy: str

    @property
    def description(self) -> str:
        return f"proxy {self.proxy} disabled (connections refused and dropped)"

    def inject(self, endpoints: Endpoints) -> None:
        _proxy_call("disable proxy", lambda: endpoints.proxy.set_enabled(self.proxy, False))

    def heal(self, endpoints: Endpoints) -> None:
        _proxy_call("enable proxy", lambda: endpoints.proxy.set_enabled(self.proxy, True))


@dataclass(frozen=True)
class ProxyToxic:
    """A toxic on one proxy (latency, timeout, reset_peer, bandwidth, slow_close)."""

    proxy: str
    type: str
    attributes: tuple[tuple[str, float], ...]
    stream: str = "downstream"

    @property
    def name(self) -> str:
        return f"chaos_{self.type}_{self.stream}"

    @property
    def description(self) -> str:
        attrs = ", ".join(f"{k}={v:g}" for k, v in self.attributes)
        return f"{self.type} toxic on proxy {self.proxy} ({self.stream}; {attrs})"

    def inject(self, endpoints: Endpoints) -> None:
        self.heal(endpoints)  # re-injecting replaces, never fails on a leftover
        _proxy_call(
            "add toxic",
            lambda: endpoints.proxy.add_toxic(
                self.proxy, self.type, dict(self.attributes), stream=self.stream, name=self.name
            ),
        )

    def heal(self, endpoints: Endpoints) -> None:
        with contextlib.suppress(ToxiproxyError):
            endpoints.proxy.remove_toxic(self.proxy, self.name)


@dataclass(frozen=True)
class SimulatorFaults:
    """Fault switches of a simulator (payments, receiver) on its control port."""

    service: str
    switches: tuple[tuple[str, Any], ...]

    @property
    def description(self) -> str:
        return f"{self.service} simulator: " + ", ".join(f"{k}={v}" for k, v in self.switches)

    def _post(self, endpoints: Endpoints, body: dict[str, Any]) -> None:
        url = f"{endpoints.simulator(self.service)}/control/faults"
        answer = request("POST", url, body=body, timeout=5)
        if answer.status != 200:
            raise ChaosError(f"POST {url} -> {answer.status} {answer.error or answer.body!r}")

    def inject(self, endpoints: Endpoints) -> None:
        self._post(endpoints, dict(self.switches))

    def heal(self, endpoints: Endpoints) -> None:
        self._post(endpoints, NO_FAULTS)


@dataclass(frozen=True)
class KillRedis:
    """kill -9 of the harness's own redis-server, restarted (empty) on heal."""

    description: str = "redis-server killed with SIGKILL (restarted empty on heal)"

    def inject(self, endpoints: Endpoints) -> None:
        if endpoints.redis is None:
            raise ChaosError(
                "redis-kill needs a Redis the harness owns: run it with --stack local "
                "(never kills the shared Redis)"
            )
        endpoints.redis.kill()

    def heal(self, endpoints: Endpoints) -> None:
        if endpoints.redis is not None:
            endpoints.redis.start()


@dataclass(frozen=True)
class LoadSpike:
    """No dependency fails: the traffic itself rises to ``times_steady`` x its steady
    load, a fraction of the capacity the run measured (the runner changes its rate at
    inject and heal)."""

    times_steady: float = 3.0

    @property
    def description(self) -> str:
        return f"open-loop traffic raised to {self.times_steady:g}x its steady load"

    def inject(self, endpoints: Endpoints) -> None:
        """Nothing to break on the stack: the runner raises the traffic's rate."""

    def heal(self, endpoints: Endpoints) -> None:
        """Nothing to mend: the runner puts the traffic's rate back."""


def heal_everything(endpoints: Endpoints) -> list[str]:
    """Reset the proxy (every proxy enabled, every toxic removed) and every simulator's
    fault switches; return what was done. Counters and recorded data are kept."""
    done = []
    _proxy_call("reset proxy", endpoints.proxy.reset)
    done.append(f"proxy {endpoints.proxy_url}: reset")
    for service in ("payments", "receiver"):
        try:
            SimulatorFaults(service, ()).heal(endpoints)
            done.append(f"{service}: faults cleared")
        except ChaosError as exc:
            done.append(f"{service}: {exc}")
    return done
