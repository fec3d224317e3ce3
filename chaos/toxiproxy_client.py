"""A small client for the Toxiproxy HTTP API (ours in :mod:`chaos.proxy`, or the real one).

Stdlib only, synchronous, with a timeout on every request, so chaos scripts and tests
can use it without extra dependencies::

    client = ToxiproxyClient("http://127.0.0.1:8474")
    client.create_proxy("redis", listen="127.0.0.1:26379", upstream="127.0.0.1:6379")
    client.add_toxic("redis", "latency", {"latency": 200, "jitter": 50})
    ...
    client.reset()
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlsplit

DEFAULT_URL = "http://127.0.0.1:8474"


class ToxiproxyError(Exception):
    """The API answered with an error status, or could not be reached (``status`` None)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        """Keep the HTTP status next to the message so callers can branch on it."""
        super().__init__(message)
        self.status = status


class ToxiproxyClient:
    """Synchronous client for one Toxiproxy-compatible control API."""

    def __init__(self, base_url: str = DEFAULT_URL, timeout: float = 10.0) -> None:
        """``base_url`` like ``http://127.0.0.1:8474``; ``timeout`` in seconds per request."""
        if urlsplit(base_url).scheme not in ("http", "https"):
            raise ValueError(f"base_url must be an http(s) URL, not {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    # -- proxies -----------------------------------------------------------------------

    def version(self) -> str:
        """The server version (Toxiproxy answers JSON or, in old releases, plain text)."""
        answer = self._request("GET", "/version")
        return answer["version"] if isinstance(answer, dict) else str(answer)

    def proxies(self) -> dict[str, dict[str, Any]]:
        """All proxies, by name."""
        return self._request("GET", "/proxies")

    def create_proxy(
        self, name: str, listen: str, upstream: str, enabled: bool = True
    ) -> dict[str, Any]:
        """Create a proxy; its ``listen`` in the answer has the real port if you passed 0."""
        body = {"name": name, "listen": listen, "upstream": upstream, "enabled": enabled}
        return self._request("POST", "/proxies", body)

    def populate(self, proxies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Create or replace several proxies at once; return them."""
        return self._request("POST", "/populate", proxies)["proxies"]

    def get_proxy(self, name: str) -> dict[str, Any]:
        """One proxy, with its toxics."""
        return self._request("GET", f"/proxies/{quote(name, safe='')}")

    def update_proxy(self, name: str, **fields: Any) -> dict[str, Any]:
        """Change any of ``enabled``, ``listen``, ``upstream``."""
        return self._request("POST", f"/proxies/{quote(name, safe='')}", fields)

    def set_enabled(self, name: str, enabled: bool) -> dict[str, Any]:
        """Take a proxy down (listener closed, connections dropped) or bring it back."""
        return self.update_proxy(name, enabled=enabled)

    def delete_proxy(self, name: str) -> None:
        """Delete a proxy."""
        self._request("DELETE", f"/proxies/{quote(name, safe='')}")

    def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        self._request("POST", "/reset")

    # -- toxics ------------------------------------------------------------------------

    def toxics(self, proxy: str) -> list[dict[str, Any]]:
        """The toxics of a proxy."""
        return self._request("GET", f"/proxies/{quote(proxy, safe='')}/toxics")

    def add_toxic(
        self,
        proxy: str,
        type: str,  # the API's field name; shadowing the builtin here is harmless
        attributes: dict[str, float] | None = None,
        *,
        stream: str = "downstream",
        toxicity: float = 1.0,
        name: str | None = None,
    ) -> dict[str, Any]:
        """Add a toxic; ``name`` defaults to ``<type>_<stream>`` on the server."""
        body: dict[str, Any] = {
            "type": type,
            "stream": stream,
            "toxicity": toxicity,
            "attributes": attributes or {},
        }
        if name is not None:
            body["name"] = name
        return self._request("POST", f"/proxies/{quote(proxy, safe='')}/toxics", body)

    def get_toxic(self, proxy: str, name: str) -> dict[str, Any]:
        """One toxic of a proxy."""
        return self._request("GET", self._toxic_path(proxy, name))

    def update_toxic(
        self,
        proxy: str,
        name: str,
        attributes: dict[str, float] | None = None,
        toxicity: float | None = None,
    ) -> dict[str, Any]:
        """Change the attributes (merged) and/or toxicity of a toxic."""
        body: dict[str, Any] = {"attributes": attributes or {}}
        if toxicity is not None:
            body["toxicity"] = toxicity
        return self._request("POST", self._toxic_path(proxy, name), body)

    def remove_toxic(self, proxy: str, name: str) -> None:
        """Remove a toxic."""
        self._request("DELETE", self._toxic_path(proxy, name))

    # -- plumbing ----------------------------------------------------------------------

    @staticmethod
    def _toxic_path(proxy: str, name: str) -> str:
        return f"/proxies/{quote(proxy, safe='')}/toxics/{quote(name, safe='')}"

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        # The scheme is checked in __init__, so this only ever opens http(s) URLs.
        url = self.base_url + path
        request = urllib.request.Request(url, data=data, method=method)  # noqa: S310
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                raw = response.read()
        except urllib.error.HTTPError as exc:
            with exc:  # an HTTPError is also the open response; close it
                message = _error_message(exc.read())
            raise ToxiproxyError(f"{method} {path} -> {exc.code}: {message}", exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ToxiproxyError(f"{method} {path} failed: {exc}") from exc
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace").strip()  # old Toxiproxy: plain-text /version


def _error_message(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["error"])
    except (ValueError, KeyError, TypeError):
        return raw.decode(errors="replace").strip()
