"""Local API Gateway WebSocket API: runs the real handlers behind ``ws://127.0.0.1:<port>/<stage>``.

SAM cannot run WebSocket APIs, so this emulator plays API Gateway for development and tests.
By default it is **faithful**: it does what API Gateway does, and nothing API Gateway does not.

- the upgrade request becomes a ``$connect`` event; a non-2xx ``statusCode`` from the handler
  is the HTTP answer to the upgrade (no connection is kept);
- every text message becomes a ``$default`` event, invoked at once in a thread of its own
  (one thread per in-flight invocation, up to ``max_concurrency``, Lambda's default account
  concurrency of 1,000): invocations of one connection run concurrently and finish in any
  order, as on AWS, and an invocation that waits never holds up another;
- a binary frame closes the connection with 1003, as API Gateway does (it has no binary
  route for WebSocket APIs);
- a close from either side becomes one ``$disconnect`` event with API Gateway's
  ``disconnectStatusCode`` and ``disconnectReason``;
- the ``@connections`` management API is served over real HTTP at ``connections_endpoint``,
  so the handlers' boto3 ``apigatewaymanagementapi`` client works unchanged;
- when a ``$default`` invocation raises, runs past its function's ``Timeout`` (read from
  template.yaml), or is throttled, the client gets **API Gateway's own error frame**, a text
  frame in API Gateway's exact bytes::

      {"message": "Internal server error", "connectionId":"<id>", "requestId":"<id>"}

  (``"Endpoint request timed out"`` instead when the 29 s integration timeout comes first).
  Python cannot stop a thread: a timed-out handler runs on in the background, but its
  result is dropped, as Lambda drops a timed-out invocation.

Not AWS, opt-in only:

- ``binary="base64"``: binary frames become base64 ``$default`` events (``isBase64Encoded``),
  so audio flows through the Lambda handlers locally. API Gateway has no such path. Audio is
  delivered **in order per connection**: one binary invocation of a connection in flight at a
  time, in arrival order, after every earlier message of that connection; a text message
  never overtakes earlier audio (text messages between two frames still run concurrently),
  and ``$disconnect`` runs after the connection's last audio invocation.
- ``serialize=True``: every ``$default`` invocation of a connection runs one at a time, in
  arrival order (``$disconnect`` last).

API Gateway's limits, with the close codes it uses (Amazon API Gateway developer guide,
"Quotas for configuring and running a WebSocket API"):

- frame over 32 KB, or message over 128 KB  -> close 1009 ("If a larger message (or larger
  frame size) is received, the connection is closed with code 1009");
- no message in either direction for 10 minutes (idle timeout) -> close 1001;
- connection older than 2 hours -> close 1001;
- binary frame -> close 1003;
- ``DELETE @connections/<id>`` -> close 1000;
- ``POST @connections/<id>`` over 128 KB -> 413 PayloadTooLargeException; to a closed or
  unknown connection -> 410 GoneException; posts over 32 KB reach the client as a
  fragmented message of frames of at most 32 KB.

``disconnectReason`` texts seen from API Gateway: "Client-side close frame status not set"
(1005), "Connection Closed Normally" (``DELETE @connections``), "" (1001); a client close
with a status reads "Client-side close frame status set to '<code>'". Other texts are the
emulator's own.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import re
import secrets
import string
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, Self, TypeVar
from urllib.parse import unquote, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response
from websockets.protocol import State

from audiohook.aws.apigw import Connection, aws_id
from audiohook.local.embedded_aws import (
    DEFAULT_STACK_NAME,
    FUNCTION_TYPES,
    DemoCredentials,
    EmbeddedAws,
    Template,
    TemplateError,
)

logger = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any], Any], Any]
BinaryMode = Literal["base64", "aws"]
_T = TypeVar("_T")

KB = 1024
# Lambda's default concurrency per account and Region: invocations beyond it are throttled.
LAMBDA_CONCURRENCY = 1000
# Lambda's default function Timeout, for handlers not defined by a template.
DEFAULT_FUNCTION_TIMEOUT_S = 3.0
# API Gateway's maximum integration timeout for WebSocket APIs.
INTEGRATION_TIMEOUT_S = 29.0
INTERNAL_SERVER_ERROR = "Internal server error"
ENDPOINT_TIMED_OUT = "Endpoint request timed out"
_ROUTE_KEYS = {"connect": "$connect", "message": "$default", "disconnect": "$disconnect"}
# Headers of the 101 response that a $connect handler must not override.
_HANDSHAKE_HEADERS = {"connection", "upgrade", "sec-websocket-accept", "sec-websocket-extensions",
                      "content-length", "content-type"}


@dataclass(frozen=True)
class GatewayLimits:
    """API Gateway's WebSocket quotas; lower them in tests."""

    frame_bytes: int = 32 * KB
    message_bytes: int = 128 * KB
    idle_timeout_s: float = 10 * 60
    max_connection_s: float = 2 * 60 * 60


# ---------------------------------------------------------------------------- handlers
@dataclass(frozen=True)
class HandlerRef:
    """A handler named like a template's ``Handler`` property, imported from its ``CodeUri``."""

    spec: str  # "module.function"
    code_uri: Path | None = None

    def load(self) -> Handler:
        module_name, _, function_name = self.spec.rpartition(".")
        if not module_name:
            raise ValueError(f"handler {self.spec!r} is not 'module.function'")
        if self.code_uri is not None:
            _add_to_path(self.code_uri)
        handler: Handler = getattr(importlib.import_module(module_name), function_name)
        return handler


@dataclass(frozen=True)
class RouteHandlers:
    """The three routes' handlers: callables, or references imported when the gateway starts."""

    connect: Handler | HandlerRef
    message: Handler | HandlerRef
    disconnect: Handler | HandlerRef
    # Directories importable by every handler (e.g. a layer's ContentUri).
    search_path: tuple[Path, ...] = ()
    # Each route's function Timeout in seconds ("connect", "message", "disconnect"); a route
    # left out gets Lambda's default (3 s).
    timeouts: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_template(cls, template: Template) -> RouteHandlers:
        """Follow each route to its integration and function, as API Gateway would."""
        functions = template.resources_of_type(*FUNCTION_TYPES)
        integrations = template.resources_of_type("AWS::ApiGatewayV2::Integration")
        function_for_route: dict[str, str] = {}
        for route in template.resources_of_type("AWS::ApiGatewayV2::Route").values():
            properties = route.get("Properties") or {}
            targets = _referenced_ids(properties.get("Target")) & integrations.keys()
            uris = [(integrations[target].get("Properties") or {}).get("IntegrationUri") for target in targets]
            found = set().union(*map(_referenced_ids, uris)) & functions.keys() if uris else set()
            if len(found) == 1:
                function_for_route[str(properties.get("RouteKey"))] = found.pop()
        missing = set(_ROUTE_KEYS.values()) - function_for_route.keys()
        if missing:
            raise TemplateError(f"no Lambda function found for route(s) {sorted(missing)} in {template.path}")
        defaults = template.function_globals()

        def ref(route_key: str) -> HandlerRef:
            properties = template.properties(function_for_route[route_key])
            code_uri = properties.get("CodeUri", defaults.get("CodeUri", "."))
            return HandlerRef(str(properties.get("Handler", defaults.get("Handler"))),
                              template.directory / str(code_uri))

        layers = template.resources_of_type("AWS::Serverless::LayerVersion")
        layer_dirs = tuple(template.directory / str(layer["Properties"]["ContentUri"]) for layer in layers.values()
                           if isinstance((layer.get("Properties") or {}).get("ContentUri"), str))
        timeouts = {
            route: float(template.properties(function_for_route[route_key]).get(
                "Timeout", defaults.get("Timeout", DEFAULT_FUNCTION_TIMEOUT_S)))
            for route, route_key in _ROUTE_KEYS.items()
        }
        return cls(ref("$connect"), ref("$default"), ref("$disconnect"), layer_dirs, timeouts)

    def timeout_s(self, route: str) -> float:
        return float(self.timeouts.get(route, DEFAULT_FUNCTION_TIMEOUT_S))

    def load(self) -> dict[str, Handler]:
        for directory in self.search_path:
            _add_to_path(directory)
        loaded = {route: getattr(self, route) for route in _ROUTE_KEYS}
        return {route: item.load() if isinstance(item, HandlerRef) else item for route, item in loaded.items()}


def stage_from_template(template: Template, default: str = "local") -> str:
    for stage in template.resources_of_type("AWS::ApiGatewayV2::Stage").values():
        return str(template.resolve((stage.get("Properties") or {}).get("StageName", default)))
    return default


def _add_to_path(directory: Path) -> None:
    path = str(Path(directory).resolve())
    if path not in sys.path:
        sys.path.insert(0, path)


def _referenced_ids(value: Any) -> set[str]:
    """Logical ids a template value points at (Ref, Fn::GetAtt, ${Id} / ${Id.Attr} in Fn::Sub)."""
    if isinstance(value, list):
        return set().union(*map(_referenced_ids, value)) if value else set()
    if not isinstance(value, dict):
        return set()
    if len(value) == 1:
        ((key, argument),) = value.items()
        if key == "Ref":
            return {str(argument)}
        if key == "Fn::GetAtt":
            return {str(argument).split(".")[0] if isinstance(argument, str) else str(argument[0])}
        if key == "Fn::Sub":
            text, variables = (argument, {}) if isinstance(argument, str) else argument
            names = {name.split(".")[0] for name in re.findall(r"\$\{([^}!][^}]*)\}", str(text))}
            return names | _referenced_ids(list(dict(variables).values()))
    return _referenced_ids(list(value.values()))


@dataclass
class LocalLambdaContext:
    """The attributes of a Lambda context object that handlers and Powertools read."""

    function_name: str
    timeout_s: float
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 512
    region: str = "us-east-1"
    account_id: str = "123456789012"
    started: float = field(default_factory=time.monotonic)

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{self.account_id}:function:{self.function_name}"

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    @property
    def log_stream_name(self) -> str:
        return "local"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.timeout_s - (time.monotonic() - self.started)) * 1000))


# ---------------------------------------------------------------------------- connections
def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class _Connection(Connection):
    """One accepted (or being accepted) WebSocket connection: API Gateway's view plus ours."""

    last_active_ms: int = field(default_factory=_now_ms)
    last_active: float = field(default_factory=time.monotonic)
    opened: float = field(default_factory=time.monotonic)
    websocket: ServerConnection | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    # Set when the gateway closes the connection: (disconnectStatusCode, disconnectReason).
    server_close: tuple[int, str] | None = None
    queue: asyncio.Queue[dict[str, Any] | None] | None = None
    worker: asyncio.Task[None] | None = None
    # binary="base64" only: the connection's last audio invocation, and the text invocations
    # dispatched since (the next audio frame waits for all of them).
    last_audio: asyncio.Future[None] | None = None
    since_audio: set[asyncio.Future[None]] = field(default_factory=set)

    def touch(self) -> None:
        self.last_active = time.monotonic()
        self.last_active_ms = _now_ms()


def disconnect_status(connection: _Connection) -> tuple[int, str]:
    """``disconnectStatusCode`` and ``disconnectReason`` once the connection is closed."""
    if connection.server_close is not None:
        return connection.server_close
    assert connection.websocket is not None
    protocol = connection.websocket.protocol
    if protocol.close_rcvd is not None and protocol.close_rcvd_then_sent is not False:
        code = protocol.close_rcvd.code
        if code == CloseCode.NO_STATUS_RCVD:
            return code, "Client-side close frame status not set"
        return code, f"Client-side close frame status set to '{code}'"
    if protocol.close_sent is not None:
        # The protocol layer failed the connection (frame/message too big, invalid UTF-8...).
        return protocol.close_sent.code, protocol.close_sent.reason
    return CloseCode.ABNORMAL_CLOSURE, "Connection was closed abnormally"


def text_fragments(text: str, limit: int) -> list[str]:
    """Split ``text`` into pieces of at most ``limit`` UTF-8 bytes, never inside a character."""
    data = text.encode()
    pieces, start = [], 0
    while start < len(data):
        end = min(start + limit, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # continuation byte
            end -= 1
        pieces.append(data[start:end].decode())
        start = end
    return pieces or [""]


# ---------------------------------------------------------------------------- gateway
class _GatewayConnection(ServerConnection):
    gateway_connection: _Connection | None = None


class _Gone(Exception):
    pass


class IntegrationError(Exception):
    """A ``$default`` integration failed as API Gateway sees it; ``message`` is what it tells the client."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(detail)
        self.message = message


def api_gateway_error_frame(message: str, connection_id: str, request_id: str) -> str:
    """The text frame API Gateway sends the client when a ``$default`` integration fails.

    Hand-written, not ``json.dumps``: these are API Gateway's exact bytes (one space after the
    first colon only), as clients receive them, e.g.
    ``{"message": "Internal server error", "connectionId":"VNRUSeldSwMCIRQ=", "requestId":"VNRXVFJOywMF3-Q="}``.
    """
    return (f'{{"message": {json.dumps(message)}, "connectionId":{json.dumps(connection_id)}, '
            f'"requestId":{json.dumps(request_id)}}}')


class LocalGateway:
    """An API Gateway WebSocket API on ``url``, with its ``@connections`` API on ``connections_endpoint``.

    ``handler_env`` is set in ``os.environ`` (with ``CONNECTIONS_ENDPOINT``) while the gateway
    runs and restored by ``stop()``. Each route's timeout is its function's ``Timeout``
    (``handlers.timeouts``); ``handler_timeout_s`` overrides it for every route.
    ``binary="base64"`` and ``serialize=True`` are not AWS behaviours (see the module doc).
    """

    def __init__(self, handlers: RouteHandlers, *, stage: str = "local", host: str = "127.0.0.1",
                 port: int = 0, connections_port: int = 0, binary: BinaryMode = "aws",
                 serialize: bool = False, limits: GatewayLimits = GatewayLimits(),
                 handler_env: Mapping[str, str] | None = None, api_id: str | None = None,
                 max_concurrency: int = LAMBDA_CONCURRENCY, handler_timeout_s: float | None = None) -> None:
        if binary not in ("base64", "aws"):
            raise ValueError(f"binary must be 'base64' or 'aws', not {binary!r}")
        self.stage = stage
        self.binary = binary
        self.serialize = serialize
        self.limits = limits
        self.api_id = api_id or "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(10))
        self._route_handlers = handlers
        self._handlers: dict[str, Handler] = {}
        self._host = host
        self._port = port
        self._connections_port = connections_port
        self._handler_env = dict(handler_env or {})
        self._saved_env: dict[str, str | None] = {}
        self._max_concurrency = max_concurrency
        self._in_flight = 0  # invocations running (a timed-out one until its thread returns)
        self._handler_timeout_s = handler_timeout_s
        self._connections: dict[str, _Connection] = {}
        self._pending: set[asyncio.Future[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._server: Server | None = None
        self._http: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> Self:
        self._loop = asyncio.get_running_loop()
        try:
            self._start_connections_api()
            self._apply_env()
            self._handlers = self._route_handlers.load()
            # A pool that only grows: a thread is started whenever no idle one is free, so each
            # in-flight invocation has a thread of its own (the limit is enforced in _invoke).
            self._executor = ThreadPoolExecutor(self._max_concurrency + 1, thread_name_prefix="lambda")
            self._server = await serve(
                self._serve_connection, self._host, self._port,
                process_request=self._on_upgrade, process_response=self._on_handshake_response,
                create_connection=_GatewayConnection,
                max_size=(self.limits.message_bytes, self.limits.frame_bytes),
                # No keepalive pings of our own (they would hide the idle timeout) and no
                # compression, so the size limits apply to the bytes the client sent.
                compression=None, ping_interval=None,
                open_timeout=self.timeout_s("connect") + 5, close_timeout=5,
            )
        except BaseException:
            await self.stop()
            raise
        logger.info("local gateway on %s, @connections on %s", self.url, self.connections_endpoint)
        return self

    async def stop(self) -> None:
        """Close every connection (1001, each gets its $disconnect), then stop serving."""
        if self._server is not None:
            await asyncio.gather(*(self._close(connection, CloseCode.GOING_AWAY, "Going away")
                                   for connection in list(self._connections.values())))
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        if self._http is not None:
            await asyncio.to_thread(self._http.shutdown)
            self._http.server_close()
            self._http = None
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown, True)
            self._executor = None
        self._restore_env()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("LocalGateway is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"ws://{self._host}:{self.port}/{self.stage}"

    @property
    def connections_endpoint(self) -> str:
        """``endpoint_url`` for boto3's ``apigatewaymanagementapi`` client."""
        if self._http is None:
            raise RuntimeError("LocalGateway is not started")
        return f"http://{self._host}:{self._http.server_address[1]}/{self.stage}"

    def connection_ids(self) -> list[str]:
        return list(self._connections)

    def _apply_env(self) -> None:
        env = {
            **self._handler_env,
            "CONNECTIONS_ENDPOINT": self.connections_endpoint,
            # Also catches an apigatewaymanagementapi client created without endpoint_url.
            "AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI": self.connections_endpoint,
        }
        for name, value in env.items():
            self._saved_env.setdefault(name, os.environ.get(name))
            os.environ[name] = value

    def _restore_env(self) -> None:
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env.clear()

    # ------------------------------------------------------------------ invocations
    def timeout_s(self, route: str) -> float:
        """How long an invocation of ``route`` may run: its function's Timeout."""
        return self._handler_timeout_s if self._handler_timeout_s is not None else \
            self._route_handlers.timeout_s(route)

    async def _invoke(self, route: str, event: dict[str, Any]) -> Any:
        """Invoke ``route``'s handler as Lambda would: at once, in a thread of its own, with a timeout.

        Raises IntegrationError when the invocation is throttled, raises or times out.
        """
        assert self._loop is not None and self._executor is not None
        if self._in_flight >= self._max_concurrency:
            raise IntegrationError(INTERNAL_SERVER_ERROR,
                                   f"{route} throttled: {self._in_flight} invocations in flight "
                                   f"(concurrency limit {self._max_concurrency})")
        function_timeout_s = self.timeout_s(route)
        # API Gateway stops waiting at its integration timeout even if the function runs on.
        timeout_s = min(function_timeout_s, INTEGRATION_TIMEOUT_S)
        context = LocalLambdaContext(function_name=route, timeout_s=function_timeout_s)
        self._in_flight += 1
        running = self._loop.run_in_executor(self._executor, self._handlers[route], event, context)
        running.add_done_callback(self._invocation_done)
        try:
            return await asyncio.wait_for(asyncio.shield(running), timeout_s)
        except TimeoutError:
            # The thread runs on (Python cannot stop it); its result is dropped, as Lambda's would be.
            running.add_done_callback(_drop_result)
            message = INTERNAL_SERVER_ERROR if function_timeout_s <= INTEGRATION_TIMEOUT_S else ENDPOINT_TIMED_OUT
            raise IntegrationError(message, f"{route} timed out after {timeout_s:g} s") from None
        except Exception as error:
            raise IntegrationError(INTERNAL_SERVER_ERROR, f"{route} raised {error!r}") from error

    def _invocation_done(self, _: asyncio.Future[Any]) -> None:
        self._in_flight -= 1

    async def _invoke_message(self, connection: _Connection, event: dict[str, Any],
                              after: tuple[asyncio.Future[None], ...] = ()) -> None:
        if after:
            await asyncio.wait(after)
        try:
            await self._invoke("message", event)
        except IntegrationError as error:
            request_id = event["requestContext"]["requestId"]
            logger.error("$default integration failed (connection %s, request %s): %s",
                         connection.connection_id, request_id, error, exc_info=error.__cause__ is not None)
            frame = api_gateway_error_frame(error.message, connection.connection_id, request_id)
            websocket = connection.websocket
            if websocket is not None and websocket.state is State.OPEN:
                try:
                    await websocket.send(frame)
                except ConnectionClosed:
                    pass

    async def _run_in_order(self, connection: _Connection) -> None:
        assert connection.queue is not None
        while (event := await connection.queue.get()) is not None:
            await self._invoke_message(connection, event)

    def _dispatch(self, connection: _Connection, event: dict[str, Any]) -> None:
        if connection.queue is not None:
            connection.queue.put_nowait(event)
            return
        after: tuple[asyncio.Future[None], ...] = ()
        if self.binary == "base64":
            # Audio in order per connection (not AWS: see the module doc).
            if event.get("isBase64Encoded"):
                after = tuple(connection.since_audio) + ((connection.last_audio,) if connection.last_audio else ())
            elif connection.last_audio is not None:
                after = (connection.last_audio,)
        task = asyncio.ensure_future(self._invoke_message(connection, event, after))
        if self.binary == "base64":
            if event.get("isBase64Encoded"):
                connection.last_audio = task
                connection.since_audio.clear()
            else:
                connection.since_audio.add(task)
                task.add_done_callback(connection.since_audio.discard)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    # ------------------------------------------------------------------ WebSocket side
    async def _on_upgrade(self, websocket: ServerConnection, request: Request) -> Response | None:
        path, _, query = request.path.partition("?")
        if path.rstrip("/") != f"/{self.stage}":
            return _json_response(websocket, HTTPStatus.FORBIDDEN, {"message": "Forbidden"})
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return websocket.respond(HTTPStatus.UPGRADE_REQUIRED, "WebSocket upgrade required\n")
        source_ip = str(websocket.remote_address[0]) if websocket.remote_address else "127.0.0.1"
        connection = _Connection(
            connection_id=aws_id(), stage=self.stage, api_id=self.api_id,
            domain_name=request.headers.get("Host", f"{self._host}:{self.port}"),
            source_ip=source_ip, user_agent=request.headers.get("User-Agent"),
        )
        event = connection.connect(list(request.headers.raw_items()), query=query, forwarded_port=self.port,
                                   forwarded_proto="http")
        try:
            result = await self._invoke("connect", event)
        except IntegrationError as error:
            logger.error("$connect integration failed: %s", error, exc_info=error.__cause__ is not None)
            return _json_response(websocket, HTTPStatus.BAD_GATEWAY, {"message": error.message})
        status = int(result.get("statusCode", 200)) if isinstance(result, dict) else 200
        headers = {str(name): str(value) for name, value in
                   ((result.get("headers") or {}) if isinstance(result, dict) else {}).items()}
        if not 200 <= status < 300:
            body = (result.get("body") or "") if isinstance(result, dict) else ""
            response = websocket.respond(_http_status(status), str(body))
            for name, value in headers.items():
                response.headers[name] = value
            return response
        connection.response_headers = headers
        assert isinstance(websocket, _GatewayConnection)
        websocket.gateway_connection = connection
        return None

    def _on_handshake_response(self, websocket: ServerConnection, request: Request,
                               response: Response) -> None:
        connection = getattr(websocket, "gateway_connection", None)
        if connection is not None and response.status_code == HTTPStatus.SWITCHING_PROTOCOLS:
            for name, value in connection.response_headers.items():
                if name.lower() not in _HANDSHAKE_HEADERS:
                    response.headers[name] = value

    async def _serve_connection(self, websocket: ServerConnection) -> None:
        connection = getattr(websocket, "gateway_connection", None)
        if connection is None:
            return
        connection.websocket = websocket
        connection.opened = connection.last_active = time.monotonic()
        if self.serialize:
            connection.queue = asyncio.Queue()
            connection.worker = asyncio.create_task(self._run_in_order(connection))
        self._connections[connection.connection_id] = connection
        try:
            await self._receive(connection)
        finally:
            # Gone before $disconnect runs: posts from it answer 410, as on AWS.
            self._connections.pop(connection.connection_id, None)
            await self._disconnect(connection)

    async def _receive(self, connection: _Connection) -> None:
        websocket = connection.websocket
        assert websocket is not None
        while True:
            now = time.monotonic()
            idle_deadline = connection.last_active + self.limits.idle_timeout_s
            age_deadline = connection.opened + self.limits.max_connection_s
            if now >= min(idle_deadline, age_deadline):
                logger.info("closing %s: %s", connection.connection_id,
                            "maximum connection duration" if now >= age_deadline else "idle timeout")
                await self._close(connection, CloseCode.GOING_AWAY, "")
                return
            try:
                data = await asyncio.wait_for(websocket.recv(), min(idle_deadline, age_deadline) - now)
            except TimeoutError:
                continue  # re-check: a post may have kept the connection active
            except ConnectionClosed:
                return
            connection.touch()
            if isinstance(data, bytes) and self.binary == "aws":
                await self._close(connection, CloseCode.UNSUPPORTED_DATA, "Binary frames are not supported")
                return
            self._dispatch(connection, connection.message(data))

    async def _close(self, connection: _Connection, code: int, reason: str) -> None:
        if connection.server_close is None:
            connection.server_close = (code, reason)
        if connection.websocket is not None:
            await connection.websocket.close(code, reason)

    async def _disconnect(self, connection: _Connection) -> None:
        if connection.worker is not None and connection.queue is not None:
            connection.queue.put_nowait(None)
            await connection.worker
        if connection.last_audio is not None:
            # binary="base64": $disconnect after the connection's last audio (not AWS).
            await asyncio.wait((connection.last_audio,))
        status, reason = disconnect_status(connection)
        try:
            await self._invoke("disconnect", connection.disconnect(int(status), reason))
        except IntegrationError as error:
            logger.error("$disconnect integration failed (connection %s): %s", connection.connection_id, error,
                         exc_info=error.__cause__ is not None)

    # ------------------------------------------------------------------ @connections side
    def _start_connections_api(self) -> None:
        self._http = _ConnectionsServer((self._host, self._connections_port), self)
        # A short poll interval keeps stop() quick: shutdown() waits for the next poll.
        threading.Thread(target=self._http.serve_forever, args=(0.05,), name="connections-api",
                         daemon=True).start()

    def call_soon(self, coroutine: Coroutine[Any, Any, _T], timeout_s: float = 35.0) -> _T:
        """Run ``coroutine`` on the gateway's loop from another thread and wait for its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    def _open_connection(self, connection_id: str) -> _Connection:
        connection = self._connections.get(connection_id)
        if connection is None or connection.websocket is None or connection.websocket.state is not State.OPEN:
            raise _Gone(connection_id)
        return connection

    async def post(self, connection_id: str, data: bytes) -> None:
        """``POST @connections/<id>``: send ``data`` to the client as one TEXT message."""
        connection = self._open_connection(connection_id)
        text = data.decode()
        fragments = text_fragments(text, self.limits.frame_bytes)
        assert connection.websocket is not None
        try:
            await connection.websocket.send(fragments[0] if len(fragments) == 1 else fragments)
        except ConnectionClosed:
            raise _Gone(connection_id) from None
        connection.touch()

    async def info(self, connection_id: str) -> dict[str, Any]:
        """``GET @connections/<id>``, as the service sends it (boto3 renames the keys)."""
        connection = self._open_connection(connection_id)
        identity = {"sourceIp": connection.source_ip, "userAgent": connection.user_agent}
        return {
            "connectedAt": _iso8601(connection.connected_at_ms),
            "identity": {key: value for key, value in identity.items() if value is not None},
            "lastActiveAt": _iso8601(connection.last_active_ms),
        }

    async def delete(self, connection_id: str) -> None:
        """``DELETE @connections/<id>``: close with 1000, without waiting for the handshake."""
        connection = self._open_connection(connection_id)
        connection.server_close = (CloseCode.NORMAL_CLOSURE, "Connection Closed Normally")
        task = asyncio.ensure_future(self._close(connection, CloseCode.NORMAL_CLOSURE, ""))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)


class _ConnectionsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], gateway: LocalGateway) -> None:
        self.gateway = gateway
        super().__init__(address, _ConnectionsApi)


class _ConnectionsApi(BaseHTTPRequestHandler):
    """``<stage>/@connections/<id>`` over HTTP/1.1; request signatures are not checked."""

    protocol_version = "HTTP/1.1"
    server: _ConnectionsServer

    def do_POST(self) -> None:
        self._handle("POST")

    def do_GET(self) -> None:
        self._handle("GET")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        gateway = self.server.gateway
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        prefix = f"/{gateway.stage}/@connections/"
        path = unquote(urlsplit(self.path).path)
        if not path.startswith(prefix) or len(path) == len(prefix):
            self._reply(HTTPStatus.FORBIDDEN, {"message": "Forbidden"}, "ForbiddenException")
            return
        connection_id = path[len(prefix):]
        try:
            if method == "POST":
                if len(body) > gateway.limits.message_bytes:
                    self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                {"message": f"Message of {len(body)} bytes exceeds the "
                                            f"{gateway.limits.message_bytes} bytes limit"},
                                "PayloadTooLargeException")
                    return
                try:
                    body.decode()
                except UnicodeDecodeError:
                    # The emulator only sends TEXT frames (all AudioHook server messages are text).
                    self._reply(HTTPStatus.BAD_REQUEST, {"message": "Data is not valid UTF-8"},
                                "BadRequestException")
                    return
                gateway.call_soon(gateway.post(connection_id, body))
                self._reply(HTTPStatus.OK, None)
            elif method == "GET":
                self._reply(HTTPStatus.OK, gateway.call_soon(gateway.info(connection_id)))
            else:
                gateway.call_soon(gateway.delete(connection_id))
                self._reply(HTTPStatus.NO_CONTENT, None)
        except _Gone:
            self._reply(HTTPStatus.GONE, {"message": f"Connection {connection_id} is gone"}, "GoneException")
        except Exception:
            logger.exception("@connections %s failed", method)
            self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"message": "Internal server error"},
                        "InternalServerErrorException")

    def _reply(self, status: HTTPStatus, payload: Any, error_type: str | None = None) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        if error_type:
            self.send_header("x-amzn-ErrorType", error_type)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("@connections: " + format, *args)


def _drop_result(future: asyncio.Future[Any]) -> None:
    """Retrieve a timed-out invocation's outcome so that asyncio does not report it as lost."""
    if not future.cancelled():
        future.exception()


def _json_response(websocket: ServerConnection, status: HTTPStatus, payload: Any) -> Response:
    response = websocket.respond(status, json.dumps(payload))
    response.headers["Content-Type"] = "application/json"
    return response


def _http_status(code: int) -> HTTPStatus:
    try:
        return HTTPStatus(code)
    except ValueError:
        return HTTPStatus.INTERNAL_SERVER_ERROR


def _iso8601(epoch_ms: int) -> str:
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---------------------------------------------------------------------------- whole stack
class LocalStack:
    """The product, locally: one embedded AWS and both production fronts over it.

    - ``url``: the API Gateway emulator running the template's Lambda handlers, faithful by
      default (a binary frame closes with 1003): what Genesys reaches at the stack's
      ``WebSocketUrl``; the connection probe and control traffic.
    - ``relay_url``: the relay (``audiohook.relay``) running in this process over the same
      table, stream and secret: what Genesys reaches at ``RelayUrl``; calls with audio.

    ``async with LocalStack("template.yaml") as stack:`` then connect to ``stack.url`` or
    ``stack.relay_url`` with ``stack.demo.api_key`` / ``stack.demo.client_secret``.
    ``relay=False`` runs the emulator alone.
    """

    def __init__(self, template_path: str | Path = "template.yaml", *, stack_name: str = DEFAULT_STACK_NAME,
                 host: str = "127.0.0.1", port: int = 0, connections_port: int = 0,
                 stage: str | None = None, binary: BinaryMode = "aws", serialize: bool = False,
                 limits: GatewayLimits = GatewayLimits(), handlers: RouteHandlers | None = None,
                 aws_endpoint_url: str | None = None, relay: bool = True, relay_port: int = 0) -> None:
        self.aws = EmbeddedAws(template_path, stack_name=stack_name, endpoint_url=aws_endpoint_url, host=host)
        self._gateway_options: dict[str, Any] = {
            "host": host, "port": port, "connections_port": connections_port, "binary": binary,
            "serialize": serialize, "limits": limits,
        }
        self._host = host
        self._stage = stage
        self._handlers = handlers
        self._with_relay = relay
        self._relay_port = relay_port
        self._gateway: LocalGateway | None = None
        self._relay: Any = None  # audiohook.relay.server.Relay, imported only when used

    async def start(self) -> Self:
        await asyncio.to_thread(self.aws.start)
        try:
            template = self.aws.template
            self._gateway = LocalGateway(
                self._handlers or RouteHandlers.from_template(template),
                stage=self._stage or stage_from_template(template),
                handler_env=self.aws.env(), **self._gateway_options,
            )
            await self._gateway.start()
            if self._with_relay:
                self._relay = await self._start_relay()
        except BaseException:
            await self.stop()
            raise
        return self

    async def _start_relay(self) -> Any:
        from audiohook.config import Settings
        from audiohook.relay.server import Relay, build_relay_service

        # Same settings as the handlers (the template's environment, resolved locally).
        service = await asyncio.to_thread(build_relay_service, Settings.from_env(self.aws.env()))
        # Its control port takes requests signed by the embedded AWS's identity (what
        # `audiohook control` and build_controller sign with locally), verified by its STS.
        caller = await asyncio.to_thread(lambda: self.aws.client("sts").get_caller_identity()["Arn"])
        return await Relay(service, host=self._host, port=self._relay_port, control_port=0,
                           control_roles=frozenset({caller})).start()

    async def stop(self) -> None:
        if self._relay is not None:
            await self._relay.stop()
            self._relay = None
        if self._gateway is not None:
            await self._gateway.stop()
            self._gateway = None
        await asyncio.to_thread(self.aws.stop)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def gateway(self) -> LocalGateway:
        if self._gateway is None:
            raise RuntimeError("LocalStack is not started")
        return self._gateway

    @property
    def relay(self) -> Any:
        if self._relay is None:
            raise RuntimeError("the relay is not running (LocalStack not started, or relay=False)")
        return self._relay

    @property
    def url(self) -> str:
        """The API Gateway front: ``ws://<host>:<port>/<stage>``."""
        return self.gateway.url

    @property
    def relay_url(self) -> str:
        """The relay front: ``ws://<host>:<port>/`` (any path; it is the signed request target)."""
        return str(self.relay.url)

    @property
    def connections_endpoint(self) -> str:
        return self.gateway.connections_endpoint

    @property
    def demo(self) -> DemoCredentials:
        return self.aws.demo


async def run_gateway(template_path: str | Path = "template.yaml", *,
                      on_ready: Callable[[LocalStack], Awaitable[None] | None] | None = None,
                      **options: Any) -> None:
    """Serve the local stack until cancelled (Ctrl-C under ``asyncio.run``), then stop cleanly."""
    async with LocalStack(template_path, **options) as stack:
        if on_ready is not None:
            ready = on_ready(stack)
            if ready is not None:
                await ready
        await asyncio.Event().wait()
