"""A strict parser for the Structured Field Lists the RateLimit fields use (RFC 8941).

Only what draft-ietf-httpapi-ratelimit-headers needs: a List of Items (no Inner Lists)
whose bare items are Strings, Tokens, Integers, Byte Sequences or Booleans, each with
Parameters. Anything else raises ``ValueError``, so a malformed header fails the test.
"""

from __future__ import annotations

import base64
import re
import string

KEY_FIRST = set(string.ascii_lowercase + "*")
KEY_REST = KEY_FIRST | set(string.digits + "_-.")
TOKEN_FIRST = set(string.ascii_letters + "*")
TOKEN_REST = TOKEN_FIRST | set(string.digits + "!#$%&'*+-.^_`|~:/")
INTEGER = re.compile(r"-?[0-9]{1,15}")


class Token(str):
    """A Structured Field Token (unquoted), distinct from a String."""


class _Parser:
    def __init__(self, text: str) -> None:
        if any(ord(ch) > 0x7E for ch in text):
            raise ValueError("non-ASCII in a structured field")
        self.text = text.strip(" ")
        self.pos = 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def take(self) -> str:
        ch = self.peek()
        self.pos += 1
        return ch

    def list(self) -> list[tuple[object, dict[str, object]]]:
        members = []
        if not self.text:
            raise ValueError("an empty list is not allowed here")
        while True:
            members.append(self.item())
            while self.peek() in (" ", "\t") and self.peek():
                self.take()
            if not self.peek():
                return members
            if self.take() != ",":
                raise ValueError(f"expected ',' at {self.pos} in {self.text!r}")
            while self.peek() in (" ", "\t") and self.peek():
                self.take()
            if not self.peek():
                raise ValueError("trailing comma")

    def item(self) -> tuple[object, dict[str, object]]:
        return self.bare_item(), self.parameters()

    def bare_item(self) -> object:
        ch = self.peek()
        if ch == '"':
            return self.string()
        if ch == ":":
            return self.byte_sequence()
        if ch == "?":
            self.take()
            value = self.take()
            if value not in ("0", "1"):
                raise ValueError("bad boolean")
            return value == "1"
        if ch == "-" or ch.isdigit():
            match = INTEGER.match(self.text, self.pos)
            if not match:
                raise ValueError("bad integer")
            self.pos = match.end()
            if self.peek() == ".":
                raise ValueError("decimals are not expected in these fields")
            return int(match.group())
        if ch in TOKEN_FIRST:
            start = self.pos
            while self.peek() and self.peek() in TOKEN_REST:
                self.take()
            return Token(self.text[start : self.pos])
        raise ValueError(f"unexpected {ch!r} at {self.pos} in {self.text!r}")

    def string(self) -> str:
        self.take()
        out = []
        while True:
            ch = self.take()
            if ch == "":
                raise ValueError("unterminated string")
            if ch == "\\":
                escaped = self.take()
                if escaped not in ('"', "\\"):
                    raise ValueError("bad escape")
                out.append(escaped)
            elif ch == '"':
                return "".join(out)
            elif not 0x20 <= ord(ch) <= 0x7E:
                raise ValueError("control character in string")
            else:
                out.append(ch)

    def byte_sequence(self) -> bytes:
        self.take()
        end = self.text.index(":", self.pos)
        raw = self.text[self.pos : end]
        self.pos = end + 1
        return base64.b64decode(raw, validate=True)

    def parameters(self) -> dict[str, object]:
        params: dict[str, object] = {}
        while self.peek() == ";":
            self.take()
            while self.peek() == " ":
                self.take()
            start = self.pos
            if self.peek() not in KEY_FIRST:
                raise ValueError(f"bad parameter key at {self.pos} in {self.text!r}")
            while self.peek() and self.peek() in KEY_REST:
                self.take()
            key = self.text[start : self.pos]
            value: object = True
            if self.peek() == "=":
                self.take()
                value = self.bare_item()
            params[key] = value
        return params


def parse_list(text: str) -> list[tuple[object, dict[str, object]]]:
    """Parse a Structured Field List of Items; raise ``ValueError`` if malformed."""
    return _Parser(text).list()


def parse_ratelimit_fields(headers) -> tuple[dict[str, dict], dict[str, dict]]:
    """Parse and check ``RateLimit-Policy`` and ``RateLimit`` per the current draft.

    Returns ``(policies, limits)`` keyed by policy name. Asserts the draft's rules: the
    item value is a String (or Token), ``q`` a non-negative Integer, ``w`` a positive
    Integer, ``r`` a non-negative Integer, ``t`` a non-negative Integer, and every
    ``RateLimit`` item names a policy of ``RateLimit-Policy``.
    """
    policies: dict[str, dict] = {}
    for name, params in parse_list(headers["RateLimit-Policy"]):
        assert isinstance(name, str), name
        assert isinstance(params.get("q"), int)
        assert not isinstance(params["q"], bool)
        assert params["q"] >= 0
        if "w" in params:
            assert isinstance(params["w"], int)
            assert params["w"] > 0
        policies[str(name)] = params
    limits: dict[str, dict] = {}
    for name, params in parse_list(headers["RateLimit"]):
        assert isinstance(name, str), name
        assert isinstance(params.get("r"), int)
        assert params["r"] >= 0
        if "t" in params:
            assert isinstance(params["t"], int)
            assert params["t"] >= 0
        assert str(name) in policies, (name, policies)
        limits[str(name)] = params
    return policies, limits
