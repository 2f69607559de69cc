"""Hello Bank webhooks -> balance changes, in Python.

The same connector as the Rust and JavaScript examples beside this one:
Hello Bank posts `{"id", "account", "amount", "memo"}` and signs the raw body
with hex HMAC-SHA256 in `X-Signature`.

`componentize-py` generates the `wit_world` bindings while it builds the
component (see build.sh); they are not part of the source.
"""

import hashlib
import hmac
import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import config
from wit_world.imports.types import (
    BalanceChange,
    ConnectorError_BadRequest,
    ConnectorError_Fatal,
    ConnectorError_Unauthorized,
    Direction,
    HttpRequest,
    HttpResponse,
    WebhookOutcome,
)

# The dedupe provider: every Hello Bank connector uses the same name, so a
# payment seen twice (a retry, or a second connector) is announced once.
PROVIDER = "hello-bank"

# componentize-py snapshots the app after importing it and ships only the
# modules loaded by then; `hmac` imports some lazily on first use (without
# OpenSSL it falls back to pure Python). One HMAC now brings them in.
hmac.new(b"warm-up", b"", hashlib.sha256).hexdigest()


class Webhook(exports.Webhook):
    """The `webhook` export: called once per POST /hooks/<connector>."""

    def handle(self, request: HttpRequest) -> WebhookOutcome:
        secret = config.get("secret")
        if not secret:
            raise Err(ConnectorError_Fatal("config key `secret` is not set"))
        verify(request, secret.encode())
        change = parse(request.body)
        return WebhookOutcome(
            changes=[change],
            reply=HttpResponse(
                status=200,
                headers=[("content-type", "application/json")],
                body=b'{"ok":true}',
            ),
        )


def header(request: HttpRequest, name: str) -> str | None:
    """The first header called `name` (the gateway lower-cases names)."""
    for key, value in request.headers:
        if key == name:
            return value
    return None


def verify(request: HttpRequest, secret: bytes) -> None:
    """X-Signature = hex HMAC-SHA256(secret, raw body), compared in constant time."""
    given = header(request, "x-signature")
    if given is None:
        raise Err(ConnectorError_Unauthorized("missing X-Signature"))
    expected = hmac.new(secret, bytes(request.body), hashlib.sha256).hexdigest()
    # compare_digest wants ASCII; anything else is simply a wrong signature.
    given = given.strip().lower()
    if not given.isascii() or not hmac.compare_digest(given, expected):
        raise Err(ConnectorError_Unauthorized("bad signature"))


def parse(body: bytes) -> BalanceChange:
    """Hello Bank's JSON -> one incoming balance change."""
    try:
        payment = json.loads(bytes(body))
    except (ValueError, UnicodeDecodeError) as e:
        raise Err(ConnectorError_BadRequest(f"bad JSON: {e}"))
    if not isinstance(payment, dict):
        raise Err(ConnectorError_BadRequest("bad JSON: expected an object"))
    id_ = text_field(payment, "id")
    account = text_field(payment, "account")
    amount = payment.get("amount")
    # bool is an int in Python: refuse it explicitly.
    if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount < 2**64:
        raise Err(ConnectorError_BadRequest("`amount` must be a positive integer (VND)"))
    memo = payment.get("memo")
    if memo is not None and not isinstance(memo, str):
        raise Err(ConnectorError_BadRequest("`memo` must be a string"))
    return BalanceChange(
        provider=PROVIDER,
        transaction_id=id_,
        account=account,
        amount=amount,
        currency="VND",
        direction=Direction.INCOMING,
        reference=None,
        counterparty=None,
        content=memo,
        occurred_at_ms=None,
        extra=[],
    )


def text_field(payment: dict, key: str) -> str:
    value = payment.get(key)
    if not isinstance(value, str) or not value:
        raise Err(ConnectorError_BadRequest(f"`{key}` must be a non-empty string"))
    return value
