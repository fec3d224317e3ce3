"""A Toxiproxy-compatible TCP fault proxy, in pure Python (asyncio, stdlib only).

Chaos experiments put this proxy between the application and its dependencies
(Postgres, Redis, HTTP services) and inject faults through an HTTP control API:
latency, blackholes, connection resets, bandwidth limits, slow closes, or the whole
dependency going down.

Why our own: Toxiproxy is a Go binary usually run from Docker, and neither Docker nor
a Go toolchain nor a Toxiproxy binary can be installed from the package registries on
the machines this project runs on. We keep Toxiproxy's HTTP API, so the same chaos
commands (and :class:`chaos.toxiproxy_client.ToxiproxyClient`) drive a real Toxiproxy
wherever one exists.

Implemented subset of Toxiproxy 2.x:

* Routes: ``GET /version``, ``GET|POST /proxies``, ``POST /populate``,
  ``GET|POST|DELETE /proxies/{name}``, ``GET|POST /proxies/{name}/toxics``,
  ``GET|POST|DELETE /proxies/{name}/toxics/{toxic}``, ``POST /reset``.
  Not implemented: ``/metrics``, ``/events``, the web UI.
* Toxics: ``latency`` (latency, jitter), ``timeout`` (timeout), ``reset_peer``
  (timeout), ``bandwidth`` (rate, KB/s), ``slow_close`` (delay). Not implemented:
  ``slicer``, ``limit_data``.
* Semantics kept from Toxiproxy: toxics apply to connections that are already open;
  toxicity is rolled once per connection and toxic; disabling a proxy closes its
  listener and drops its connections; a ``timeout`` toxic drops data (and closes the
  connection when removed, as the dropped bytes leave the stream corrupt);
  ``reset_peer`` is armed by the next chunk of data and then resets the client with a
  TCP RST. One difference: a ``timeout`` toxic's clock starts when it takes effect and
  is not restarted by each chunk of data it swallows.

Run it with ``python -m chaos.proxy --host 127.0.0.1 --port 8474 [--config proxies.json]``
or, inside tests, ``ProxyServer(port=0).start_in_thread()``.
"""

from chaos.proxy.errors import BadRequest, Conflict, NotFound, ProxyAPIError
from chaos.proxy.proxy import Proxy
from chaos.proxy.server import ProxyServer
from chaos.proxy.toxics import TOXIC_TYPES, Toxic

__all__ = [
    "TOXIC_TYPES",
    "BadRequest",
    "Conflict",
    "NotFound",
    "Proxy",
    "ProxyAPIError",
    "ProxyServer",
    "Toxic",
]
