"""Reaching the relay task that holds a session: a private HTTP call authenticated by IAM.

Caller side (:class:`RelayFront`, used by the Control function): the action as the Control
payload's JSON, POSTed to ``http://<owner>/control`` (the task's private address and control
port, recorded in the session item), with a signed STS ``GetCallerIdentity`` request bound to
that task and that body in the ``X-Audiohook-Identity`` header.

Listener side (:func:`serve_request`, for the relay's control port): verify the caller with
STS, parse the request, apply it through the session's own lane, answer the result. It calls
STS, so a relay runs it off its event loop. See docs/control.md for why this path.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from datetime import datetime
from typing import Any, Callable, Mapping

from audiohook.aws.control import ControlResult, SessionLocation, parse_request, request_payload, server_action
from audiohook.aws.iam_identity import SignedIdentity, sign_identity, sts_endpoint, verify_identity
from audiohook.session import ServerAction

IDENTITY_HEADER = "X-Audiohook-Identity"
CONTROL_PATH = "/control"

Post = Callable[[str, dict[str, str], bytes, float], tuple[int, bytes]]


def _post(url: str, headers: dict[str, str], body: bytes, timeout_s: float) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - a private task address
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def encode_identity(signed: SignedIdentity) -> str:
    return base64.b64encode(json.dumps(signed.to_dict(), separators=(",", ":")).encode()).decode()


def decode_identity(header: str | None) -> SignedIdentity | None:
    if not header:
        return None
    try:
        return SignedIdentity.from_dict(json.loads(base64.b64decode(header, validate=True)))
    except ValueError:  # binascii.Error and json.JSONDecodeError are ValueErrors
        return None


class RelayFront:
    """Sends an action to the relay task that owns the session; the answer is the task's result."""

    def __init__(self, credentials: Callable[[], Any], region: str, *, endpoint: str | None = None,
                 timeout_s: float = 3.0, post: Post = _post) -> None:
        self._credentials = credentials
        self._region = region
        self._endpoint = endpoint or sts_endpoint(region)
        self._timeout_s = timeout_s
        self._post = post

    def apply(self, location: SessionLocation, action: ServerAction) -> ControlResult:
        owner = location.owner
        assert owner is not None
        body = json.dumps(request_payload(location.session_id, action), separators=(",", ":")).encode()
        signed = sign_identity(self._credentials(), self._region, owner, body, endpoint=self._endpoint)
        headers = {"Content-Type": "application/json", IDENTITY_HEADER: encode_identity(signed)}
        try:
            status, answer = self._post(f"http://{owner}{CONTROL_PATH}", headers, body, self._timeout_s)
        except OSError as error:
            return ControlResult(action.name, location.session_id, False, "unreachable",
                                 f"relay task {owner} did not answer: {error}", location.state)
        try:
            document = json.loads(answer)
        except ValueError:
            document = {}
        if status == 200 and isinstance(document, dict) and "delivered" in document:
            return ControlResult.from_dict(document)
        reason = document.get("reason") if isinstance(document, dict) else None
        return ControlResult(action.name, location.session_id, False, "unreachable",
                             f"relay task {owner} answered HTTP {status}: {reason or 'no reason'}", location.state)


class InvokedRelayFront:
    """The Control function's relay path when it runs outside the VPC: the ControlRelay
    function, inside the VPC next to the relay tasks, makes the private call
    (:func:`relay_forward_handler`); its answer is the task's result."""

    def __init__(self, invoke: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self._invoke = invoke

    def apply(self, location: SessionLocation, action: ServerAction) -> ControlResult:
        try:
            answer = self._invoke({"location": location.to_dict(),
                                   "request": request_payload(location.session_id, action)})
            return ControlResult.from_dict(answer)
        except Exception as error:  # an invocation error or an answer without a result
            return ControlResult(action.name, location.session_id, False, "unreachable",
                                 f"the relay control function failed: {type(error).__name__}: {error}",
                                 location.state)


def forward(front: RelayFront, event: dict[str, Any]) -> dict[str, Any]:
    """The ControlRelay function's work: one action to the task named in ``location.owner``."""
    location, payload = event.get("location") or {}, event.get("request")
    request = parse_request(payload)
    if isinstance(request, ControlResult):
        return request.to_dict()
    if not location.get("owner") or request.sessionId is None or request.action == "lookup":
        return ControlResult(request.action, request.sessionId, False, "bad_request",
                             "the relay control function takes a location with an owner and one action").to_dict()
    where = SessionLocation(request.sessionId, str(location.get("connectionId", "")), location.get("conversationId"),
                            str(location.get("state", "")), str(location["owner"]))
    return front.apply(where, server_action(request)).to_dict()


def relay_forward_handler() -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    """The ControlRelay Lambda's entry point: signs with its own role (the one relay tasks accept)."""
    from audiohook.aws.wiring import _botocore

    session = _botocore()
    front = RelayFront(session.get_credentials, str(session.get_config_variable("region") or "us-east-1"))

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return forward(front, event)

    return handler


def serve_request(
    body: bytes, headers: Mapping[str, str], *, audience: str, allowed_roles: frozenset[str], endpoint: str,
    now: datetime, apply: Callable[[str, ServerAction], ControlResult],
    verify: Callable[..., Any] = verify_identity,
) -> tuple[int, dict[str, Any]]:
    """One control request on a relay task's control port: (HTTP status, JSON answer)."""
    identity = decode_identity(next((v for k, v in headers.items() if k.lower() == IDENTITY_HEADER.lower()), None))
    verdict = verify(identity, audience=audience, payload=body, allowed_roles=allowed_roles, endpoint=endpoint,
                     now=now)
    if not verdict.ok:
        return 403, {"code": "unauthorized", "reason": verdict.reason}
    try:
        payload = json.loads(body)
    except ValueError as error:
        return 400, ControlResult("?", None, False, "bad_request", f"the body is not JSON: {error}").to_dict()
    request = parse_request(payload)
    if isinstance(request, ControlResult):
        return 400, request.to_dict()
    if request.action == "lookup" or request.sessionId is None:
        return 400, ControlResult(request.action, request.sessionId, False, "bad_request",
                                  "a relay task takes one action on one sessionId").to_dict()
    return 200, apply(request.sessionId, server_action(request)).to_dict()
