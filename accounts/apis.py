"""Thin views: validate, call one service, serialise the result."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import services
from accounts.serializers import (
    CredentialsInputSerializer,
    LoginInputSerializer,
    TokenOutputSerializer,
    UserOutputSerializer,
)
from common.errors import ErrorCode
from common.schema import problems
from resilience.concurrency import priority
from resilience.problems import ProblemCode
from resilience.ratelimit.throttles import throttle

# The API login and the admin login draw from the same buckets (config/admin.py).
LOGIN_POLICIES = ("login_ip", "login_username")


@priority("normal")
class SignupApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes = [throttle("signup")]  # per client IP: slows mass account creation

    @problems({400: [ProblemCode.INVALID], 409: [ErrorCode.EMAIL_TAKEN]})
    @extend_schema(
        request=CredentialsInputSerializer,
        responses={201: UserOutputSerializer},
        operation_id="auth_signup_create",
        description="Create an account. A weak password: 400 `invalid`; a taken email: 409.",
        examples=[
            OpenApiExample(
                "New account",
                value={"email": "ada@example.com", "password": "correct horse battery"},
                request_only=True,
            ),
            OpenApiExample(
                "Created",
                value={"id": 7, "email": "ada@example.com", "date_joined": "2026-12-01T09:00:00Z"},
                response_only=True,
                status_codes=[201],
            ),
        ],
    )
    def post(self, request: Request) -> Response:
        data = CredentialsInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user = services.user_signup(**data.validated_data)
        return Response(UserOutputSerializer(user).data, status=status.HTTP_201_CREATED)


@priority("critical")
class LoginApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    # Per IP stops one source trying many accounts (credential stuffing); per username
    # stops many sources trying one account. Every attempt counts, right or wrong.
    throttle_classes = [throttle(*LOGIN_POLICIES)]

    @problems({401: [ErrorCode.INVALID_CREDENTIALS]})
    @extend_schema(
        request=LoginInputSerializer,
        responses={200: TokenOutputSerializer},
        operation_id="auth_login_create",
        description=(
            "Exchange credentials for a token; send it as `Authorization: Token <token>`. "
            "A wrong email or password: one uniform 401 `invalid_credentials`."
        ),
        examples=[
            OpenApiExample(
                "Credentials",
                value={"email": "ada@example.com", "password": "correct horse battery"},
                request_only=True,
            ),
            OpenApiExample(
                "Token",
                value={
                    "token": "9944b09199c62bcf9418ad846dd0e4bbdfc6ee4b",
                    "created": "2026-12-01T09:00:05Z",
                },
                response_only=True,
                status_codes=[200],
            ),
        ],
    )
    def post(self, request: Request) -> Response:
        data = LoginInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        token = services.auth_login(**data.validated_data)
        return Response(TokenOutputSerializer(token).data)


class LogoutApi(APIView):
    @extend_schema(
        request=None,
        responses={204: None},
        operation_id="auth_logout_create",
        description="Revoke the token of this request.",
    )
    def post(self, request: Request) -> Response:
        services.auth_logout(token=request.auth)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MeApi(APIView):
    @extend_schema(responses={200: UserOutputSerializer}, operation_id="auth_me_retrieve")
    def get(self, request: Request) -> Response:
        return Response(UserOutputSerializer(request.user).data)
