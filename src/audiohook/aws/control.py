"""Control API: act on live sessions from anywhere in AWS (pause, resume, event, disconnect,
reconnect), with IAM permission only.

The session state machine decides (``audiohook.session.act``); this module finds the session
(:class:`SessionDirectory`) and hands the action to the front that holds it (:class:`Front`):

- the API Gateway front (:class:`LambdaFront`): the action goes into the connection's mailbox
  like a client input (docs/sequencing.md); the lease holder applies it with ``act`` in
  mailbox order, so it takes the next ``seq`` and is posted in ``seq`` order with the replies
  of concurrent ``$default`` invocations, and writes its result into the session item, where
  the control call reads it back;
- a relay task (the session item names its owner): the action goes to that task over its
  private control listener (docs/control.md); until a relay front is configured, the result
  says the session is unreachable.

Every call returns a :class:`ControlResult` saying whether the message reached the client,
and why not. Example::

    from audiohook.aws.control import build_controller
    controller = build_controller()
    controller.pause("5f020a60-a9cf-4a0a-add7-717401f04817").delivered
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Literal, Protocol, Sequence

from aws_lambda_powertools.utilities.data_classes import APIGatewayWebSocketEvent
from pydantic import BaseModel, ConfigDict, ValidationError

from audiohook.aws.service import AudioHookService
from audiohook.aws.store import CONVERSATION_INDEX
from audiohook.config import Settings
from audiohook.protocol import Uuid
from audiohook.session import (
    ContinuedSessionInfo,
    Disconnect,
    Pause,
    Reconnect,
    Resume,
    SendEvent,
    ServerAction,
    Session,
    action_message,
)

ResultCode = Literal[
    "delivered", "unknown_session", "wrong_state", "oversize_event", "bad_entity", "bad_request", "gone",
    "unreachable", "pending", "busy", "post_failed",
]


@dataclass(frozen=True, slots=True)
class ControlResult:
    """What one control action did. ``delivered``: the message was posted to the client."""

    action: str
    session_id: str | None
    delivered: bool
    code: ResultCode
    reason: str
    state: str | None = None
    message: dict[str, Any] | None = None  # the message sent, exactly

    def to_dict(self) -> dict[str, Any]:
        return {("sessionId" if k == "session_id" else k): v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ControlResult:
        return cls(action=data["action"], session_id=data.get("sessionId"), delivered=bool(data["delivered"]),
                   code=data["code"], reason=data["reason"], state=data.get("state"), message=data.get("message"))


@dataclass(frozen=True, slots=True)
class SessionLocation:
    """Where a live session is held."""

    session_id: str
    connection_id: str
    conversation_id: str | None
    state: str
    owner: str | None = None  # a relay task's private address; None: the API Gateway front

    def to_dict(self) -> dict[str, Any]:
        return {"sessionId": self.session_id, "connectionId": self.connection_id,
                "conversationId": self.conversation_id, "state": self.state, "owner": self.owner}


class Front(Protocol):
    """The front that holds a session: applies an action in the session's own order, delivers it."""

    def apply(self, location: SessionLocation, action: ServerAction) -> ControlResult: ...


def _location(item: dict[str, Any]) -> SessionLocation | None:
    if "session" not in item or "connectionId" not in item:
        return None
    session = Session.from_dict(json.loads(item["session"]["S"]))
    if session.session_id is None:
        return None
    return SessionLocation(session.session_id, item["connectionId"]["S"], session.conversation_id,
                           session.state.value, item.get("owner", {}).get("S"))


class SessionDirectory:
    """Finds sessions in the sessions table, without a Scan.

    By session id: the ``session#<id>`` marker item (written at ``$connect``, it names the
    connection), then the connection's item. By conversation id: a Query of the
    ``conversation`` index (``conversationId`` is written once ``open`` was applied; probes,
    which all share the null conversation id, are not indexed).
    """

    def __init__(self, dynamodb: Any, table: str) -> None:
        self._client = dynamodb
        self._table = table
        self.calls = 0

    def _connection_item(self, connection_id: str) -> dict[str, Any] | None:
        self.calls += 1
        return self._client.get_item(TableName=self._table, Key={"pk": {"S": f"conn#{connection_id}"}},
                                     ConsistentRead=True, ProjectionExpression="#s, connectionId, #o",
                                     ExpressionAttributeNames={"#s": "session", "#o": "owner"}).get("Item")

    def _session_item(self, session_id: str) -> dict[str, Any] | None:
        for candidate in dict.fromkeys((session_id.lower(), session_id)):
            self.calls += 1
            marker = self._client.get_item(TableName=self._table, Key={"pk": {"S": f"session#{candidate}"}},
                                           ConsistentRead=True).get("Item")
            if marker and "connectionId" in marker:
                return self._connection_item(marker["connectionId"]["S"])
        return None

    def find(self, session_id: str) -> SessionLocation | None:
        item = self._session_item(session_id)
        return _location(item) if item else None

    def continued(self, session_ids: Sequence[str]) -> dict[str, ContinuedSessionInfo | None]:
        """What an ``open`` with ``continuedSessions`` needs checked (``receive(..., continued=)``):
        each listed session's identity and numbering, or None when it is not in the table."""
        found: dict[str, ContinuedSessionInfo | None] = {}
        for session_id in session_ids:
            item = self._session_item(session_id)
            if item is None or _location(item) is None:
                found[session_id] = None
                continue
            session = Session.from_dict(json.loads(item["session"]["S"]))
            found[session_id] = ContinuedSessionInfo(
                session_id=session.session_id or session_id, organization_id=session.organization_id,
                conversation_id=session.conversation_id, seq=session.seq, clientseq=session.clientseq,
                state=session.state.value)
        return found

    def by_conversation(self, conversation_id: str) -> list[SessionLocation]:
        """The conversation's sessions (the index is eventually consistent: a session opened
        a moment ago may be missing)."""
        found = []
        kwargs: dict[str, Any] = {
            "TableName": self._table, "IndexName": CONVERSATION_INDEX,
            "KeyConditionExpression": "conversationId = :c",
            "ExpressionAttributeValues": {":c": {"S": conversation_id.lower()}},
        }
        while True:
            self.calls += 1
            page = self._client.query(**kwargs)
            for key in page.get("Items", []):
                item = self._connection_item(key["connectionId"]["S"])
                location = _location(item) if item else None
                if location is not None:
                    found.append(location)
            if "LastEvaluatedKey" not in page:
                return sorted(found, key=lambda location: location.session_id)
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


_NO_EVENT = APIGatewayWebSocketEvent({})


class LambdaFront:
    """The API Gateway front: the action goes through the connection's mailbox.

    It enters the mailbox like a ``$default`` input (docs/sequencing.md). Free session: this
    call takes the lease, applies everything waiting and its own action in mailbox order, posts
    and releases, and knows its result. Busy session: the action is parked, the lease holder
    applies and posts it and writes its result into the session item under the action's token;
    this call reads it back (one consistent GetItem of that entry per try) for at most
    ``wait_s``. Unlike ``$default``, the Control function may wait: it holds no lease and
    nobody waits for it (docs/control.md).
    """

    def __init__(self, service: AudioHookService, *, wait_s: float = 5.0,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> None:
        self.service = service
        self._wait_s = wait_s
        self._clock = clock
        self._sleep = sleep

    def apply(self, location: SessionLocation, action: ServerAction) -> ControlResult:
        token = secrets.token_hex(8)
        routed = self.service.control(location.connection_id, action, token)
        value = routed.actions.get(token)
        if value is None and routed.dropped:
            return ControlResult(action.name, location.session_id, False, "busy",
                                 "the session's mailbox is full (the client is far ahead of a missing message); "
                                 "nothing was sent", location.state)
        if value is None and not routed.parked:
            return ControlResult(action.name, location.session_id, False, "unknown_session",
                                 "the session's connection is gone")
        if value is None:
            value = self._wait_for(location, token)
        if value is None:
            return ControlResult(action.name, location.session_id, False, "pending",
                                 f"the action waits in the session's mailbox after {self._wait_s:g} s: the "
                                 "connection's next input applies it", location.state)
        message = None
        if value.get("seq") is not None:
            message = json.loads(action_message(location.session_id, action, value["seq"], value["clientseq"])
                                 .to_json())
        return ControlResult(action.name, location.session_id, bool(value["delivered"]), value["code"],
                             value["reason"], value.get("state"), message)

    def _wait_for(self, location: SessionLocation, token: str) -> dict[str, Any] | None:
        """The result the lease holder writes for ``token``; None when it took longer than the bound."""
        deadline = self._clock() + self._wait_s
        delay = 0.01
        while True:
            value, exists = self.service.store.action_result(location.connection_id, token)
            if value is not None:
                return value
            if not exists:
                return {"code": "gone", "reason": "the connection closed before the action was applied",
                        "delivered": False, "state": None}
            if self._clock() >= deadline:
                return None
            self._sleep(min(delay, max(0.0, deadline - self._clock())))
            delay = min(delay * 2, 0.1)


class Controller:
    """The control API: one method per action, each answering with a :class:`ControlResult`."""

    def __init__(self, directory: SessionDirectory, api_gateway: Front, relay: Front | None = None) -> None:
        self.directory = directory
        self.api_gateway = api_gateway
        self.relay = relay

    def pause(self, session_id: str) -> ControlResult:
        return self.act(session_id, Pause())

    def resume(self, session_id: str) -> ControlResult:
        return self.act(session_id, Resume())

    def send_event(self, session_id: str, entities: Sequence[Any]) -> ControlResult:
        return self.act(session_id, SendEvent(entities))

    def disconnect(self, session_id: str, reason: str = "completed", info: str | None = None) -> ControlResult:
        return self.act(session_id, Disconnect(reason, info))

    def reconnect(self, session_id: str, info: str | None = None) -> ControlResult:
        return self.act(session_id, Reconnect(info))

    def sessions(self, conversation_id: str) -> list[SessionLocation]:
        """The sessions of a conversation (a reconnect leaves the old one until it closes)."""
        return self.directory.by_conversation(conversation_id)

    def act(self, session_id: str, action: ServerAction) -> ControlResult:
        location = self.directory.find(session_id)
        if location is None:
            return ControlResult(action.name, session_id, False, "unknown_session",
                                 f"no live session {session_id} in the sessions table")
        if location.owner is None:
            return self.api_gateway.apply(location, action)
        if self.relay is None:
            return ControlResult(action.name, session_id, False, "unreachable",
                                 f"the session is held by relay task {location.owner}, and no relay control "
                                 "path is configured", location.state)
        return self.relay.apply(location, action)


def build_controller(settings: Settings | None = None, **clients: Any) -> Controller:
    """The controller with real clients (``AWS_ENDPOINT_URL`` points them at the embedded AWS)."""
    from audiohook.aws.wiring import build_service, client, connections_endpoint, poster_for_endpoint

    settings = settings or Settings.from_env()
    service = build_service(settings, **clients)
    if not settings.connections_endpoint:
        raise ValueError("CONNECTIONS_ENDPOINT must name the API's @connections endpoint "
                         "(https://<api>.execute-api.<region>.amazonaws.com/<stage>)")
    poster = clients.get("poster") or poster_for_endpoint(connections_endpoint(settings, _NO_EVENT))
    service.poster_for = lambda _event: poster
    dynamodb = clients.get("dynamodb") or client("dynamodb")
    return Controller(SessionDirectory(dynamodb, settings.sessions_table),
                      LambdaFront(service, wait_s=settings.control_wait_ms / 1000),
                      clients.get("relay") or relay_front(settings))


def relay_front(settings: Settings) -> Front:
    """The path to relay tasks. Deployed: the ControlRelay function inside the VPC
    (``CONTROL_RELAY_FUNCTION``). Otherwise (local stack, a caller inside the VPC) this process
    calls the task itself, its own credentials signing the identity (the embedded AWS's user
    locally), checked by STS of the region or of ``AWS_ENDPOINT_URL``."""
    from audiohook.aws.relay_control import InvokedRelayFront, RelayFront
    from audiohook.aws.wiring import _botocore, client

    if settings.control_relay_function:
        from botocore.config import Config

        # One attempt: a retried invocation could apply the action twice. Long enough for a
        # cold start in the VPC plus the task's STS check, inside the Control function's 10 s.
        lambda_client = client("lambda", Config(retries={"total_max_attempts": 1}, connect_timeout=1,
                                                read_timeout=8))

        def invoke(payload: dict[str, Any]) -> dict[str, Any]:
            response = lambda_client.invoke(FunctionName=settings.control_relay_function,
                                            Payload=json.dumps(payload).encode())
            answer: dict[str, Any] = json.loads(response["Payload"].read())
            if "FunctionError" in response:
                raise RuntimeError(answer.get("errorMessage", "function error"))
            return answer

        return InvokedRelayFront(invoke)
    session = _botocore()
    region = str(session.get_config_variable("region") or "us-east-1")
    endpoint = settings.aws_endpoint_url.rstrip("/") + "/" if settings.aws_endpoint_url else None
    return RelayFront(session.get_credentials, region, endpoint=endpoint)


# --- the Control Lambda's payload ---------------------------------------------------------------


class ControlRequest(BaseModel):
    """The Control function's input: ``{"action": "pause", "sessionId": "..."}``;
    ``event`` adds ``entities``; ``disconnect`` ``reason``/``info``; ``reconnect`` ``info``;
    ``lookup`` takes a ``conversationId`` (or a ``sessionId``) and sends nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: Literal["pause", "resume", "event", "disconnect", "reconnect", "lookup"]
    sessionId: Uuid | None = None
    conversationId: Uuid | None = None
    entities: list[Any] | None = None
    reason: Literal["completed", "unauthorized", "error"] = "completed"
    info: str | None = None


def parse_request(payload: Any) -> ControlRequest | ControlResult:
    try:
        return ControlRequest.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "payload"
        action = payload.get("action") if isinstance(payload, dict) else None
        return ControlResult(str(action), None, False, "bad_request", f"{where}: {first['msg']}")


def server_action(request: ControlRequest) -> ServerAction:
    """The core's input for a request whose action is not ``lookup``."""
    actions: dict[str, Callable[[], ServerAction]] = {
        "pause": Pause, "resume": Resume,
        "event": lambda: SendEvent(request.entities if request.entities is not None else []),
        "disconnect": lambda: Disconnect(request.reason, request.info),
        "reconnect": lambda: Reconnect(request.info),
    }
    return actions[request.action]()


def request_payload(session_id: str, action: ServerAction) -> dict[str, Any]:
    """The JSON request for one action (what the Control function and a relay task take)."""
    payload: dict[str, Any] = {"action": action.name, "sessionId": session_id}
    if isinstance(action, SendEvent):
        payload["entities"] = list(action.entities) if isinstance(action.entities, (list, tuple)) else action.entities
    elif isinstance(action, Disconnect):
        payload |= {"reason": action.reason, "info": action.info}
    elif isinstance(action, Reconnect):
        payload["info"] = action.info
    return payload


def handle(controller: Controller, payload: Any) -> dict[str, Any]:
    """Run one Control request; the answer is JSON (what the Lambda returns)."""
    request = parse_request(payload)
    if isinstance(request, ControlResult):
        return request.to_dict()
    if request.action == "lookup":
        if request.conversationId:
            return {"action": "lookup", "sessions": [s.to_dict() for s in controller.sessions(request.conversationId)]}
        if request.sessionId:
            found = controller.directory.find(request.sessionId)
            return {"action": "lookup", "sessions": [found.to_dict()] if found else []}
        return ControlResult("lookup", None, False, "bad_request", "lookup needs a conversationId or a sessionId"
                             ).to_dict()
    if request.sessionId is None:
        return ControlResult(request.action, None, False, "bad_request", f"{request.action} needs a sessionId"
                             ).to_dict()
    return controller.act(request.sessionId, server_action(request)).to_dict()


def control_handler() -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    """The Control Lambda's entry point; the controller is built once per container."""
    from aws_lambda_powertools import Logger

    logger = Logger(service="audiohook")
    built: dict[Settings, Controller] = {}

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        settings = Settings.from_env()
        if settings not in built:
            built.clear()
            built[settings] = build_controller(settings)
        answer = handle(built[settings], event)
        # Entities may hold what a caller said: the log keeps the outcome, not the message.
        logger.info("control action", extra={k: v for k, v in answer.items() if k != "message"})
        return answer

    return handler
