"""schemathesis hooks of the contract test (loaded with ``SCHEMATHESIS_HOOKS``).

Authentication as a client does it: log in through the API, reuse the token, and log in
again when an answer is 401 (the run calls ``POST /auth/logout`` too, which revokes the
token it used). The credentials are those of a user the test created.
"""

from __future__ import annotations

import os

import requests
import schemathesis


@schemathesis.auth(refresh_interval=600, retry_on=[401])
class TokenAuth:
    def get(self, case, ctx) -> str:
        response = requests.post(
            os.environ["CONTRACT_BASE_URL"] + "/api/v1/auth/login",
            json={
                "email": os.environ["CONTRACT_EMAIL"],
                "password": os.environ["CONTRACT_PASSWORD"],
            },
            timeout=10,
        )
        response.raise_for_status()
        return response.json()["token"]

    def set(self, case, data: str, ctx) -> None:
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Token {data}"
