"""The local API Gateway emulator, driven by a real WebSocket client and stand-in handlers.

The handlers here stand in for the Lambdas: they record their events and answer through a
real boto3 ``apigatewaymanagementapi`` client pointed at the gateway's @connections API
(taken from ``CONNECTIONS_ENDPOINT``, which the gateway sets for its handlers).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import boto3
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from audiohook.aws.apigw import request_time
from audiohook.local.embedded_aws import Template
from audiohook.local.gateway import (
    GatewayLimits,
    HandlerRef,
    LocalGateway,
    LocalStack,
    RouteHandlers,
    stage_from_template,
    text_fragments,
)
from conftest import REPO

T = TypeVar("T")

CONNECTION_ID = re.compile(r"^[A-Za-z0-9_-]{15}=$")
REQUEST_TIME = re.compile(r"^\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} \+0000$")
CONTEXT_KEYS = {
    "routeKey", "eventType", "extendedRequestId", "requestTime", "messageDirection", "stage", "connectedAt",
    "requestTimeEpoch", "identity", "requestId", "domainName", "connectionId", "apiId",
}

_clients: dict[str, Any] = {}


def management_client() -> Any:
    endpoint = os.environ["CONNECTIONS_ENDPOINT"]
    if endpoint not in _clients:
        _clients[endpoint] = boto3.client(
            "apigatewaymanagementapi", endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )
    return _clients[endpoint]


class Lambdas:
    """Stand-in handlers: record every event; answer as each test configures."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.connect_response: dict[str, Any] = {"statusCode": 200}
        self.on_message: Callable[[dict[str, Any]], None] = self.echo

    def record(self, event: dict[str, Any]) -> None:
        with self.lock:
            self.events.append(event)

    def of(self, route_key: str) -> list[dict[str, Any]]:
        with self.lock:
            return [event for event in self.events if event["requestContext"]["routeKey"] == route_key]

    def connect(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        self.record(event)
        return self.connect_response

    def message(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        self.record(event)
        self.on_message(event)
        return {"statusCode": 200}

    def disconnect(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        self.record(event)
        return {"statusCode": 200}

    @staticmethod
    def echo(event: dict[str, Any]) -> None:
        management_client().post_to_connection(
            ConnectionId=event["requestContext"]["connectionId"], Data=event["body"].encode()
        )

    @property
    def handlers(self) -> RouteHandlers:
        return RouteHandlers(self.connect, self.message, self.disconnect)


@pytest.fixture
def lambdas() -> Lambdas:
    return Lambdas()


def run(coroutine: Awaitable[T], timeout_s: float = 15) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, timeout_s))  # type: ignore[arg-type]


async def eventually(condition: Callable[[], bool], timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def close_code(websocket: ClientConnection) -> int | None:
    """Wait for the server to close the connection; the close code it sent."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await websocket.recv()
    return closed.value.rcvd.code if closed.value.rcvd else None


def gateway(lambdas: Lambdas, **options: Any) -> LocalGateway:
    return LocalGateway(lambdas.handlers, stage="prod", **options)


# ---------------------------------------------------------------------------- event shapes
def test_connect_event_has_the_api_gateway_shape(lambdas: Lambdas) -> None:
    async def scenario() -> None:
        async with gateway(lambdas) as gw:
            async with connect(gw.url + "?probe=1&tag=a&tag=b", user_agent_header="GenesysCloud-AudioHook-Client",
                               additional_headers={"X-API-KEY": "key-1"}):
                pass
            await eventually(lambda: len(lambdas.of("$disconnect")) == 1)
            (event,) = lambdas.of("$connect")
            context = event["requestContext"]
            assert set(context) == CONTEXT_KEYS
            assert context["eventType"] == "CONNECT" and context["messageDirection"] == "IN"
            assert context["stage"] == "prod" and context["apiId"] == gw.api_id
            assert context["domainName"] == f"127.0.0.1:{gw.port}"
            assert CONNECTION_ID.match(context["connectionId"])
            assert REQUEST_TIME.match(context["requestTime"])
            assert abs(context["requestTimeEpoch"] - time.time() * 1000) < 10_000
            assert context["connectedAt"] == context["requestTimeEpoch"]
            assert context["requestId"] == context["extendedRequestId"]
            assert context["identity"] == {"sourceIp": "127.0.0.1", "userAgent": "GenesysCloud-AudioHook-Client"}
            headers = event["headers"]
            assert headers["Host"] == context["domainName"]
            assert headers["X-API-KEY"] == "key-1"
            assert headers["Sec-WebSocket-Version"] == "13" and headers["Sec-WebSocket-Key"]
            assert headers["X-Forwarded-For"] == "127.0.0.1"
            assert headers["X-Forwarded-Port"] == str(gw.port) and headers["X-Forwarded-Proto"] == "http"
            assert headers["X-Amzn-Trace-Id"].startswith("Root=1-")
            assert not {"Connection", "Upgrade"} & set(headers)
            assert event["multiValueHeaders"] == {name: [value] for name, value in headers.items()}
            assert event["queryStringParameters"] == {"probe": "1", "tag": "b"}
            assert event["multiValueQueryStringParameters"] == {"probe": ["1"], "tag": ["a", "b"]}
            assert event["isBase64Encoded"] is False

    run(scenario())


def test_connect_event_without_query_has_no_query_keys(lambdas: Lambdas) -> None:
    async def scenario() -> None:
        async with gateway(lambdas) as gw:
            async with connect(gw.url):
                pass
            (event,) = lambdas.of("$connect")
            assert "queryStringParameters" not in event and "multiValueQueryStringParameters" not in event

    run(scenario())


def test_message_event_has_the_api_gateway_shape_and_the_reply_is_a_text_frame(lambdas: Lambdas) -> None:
    async def scenario() -> None:
        async with gateway(lambdas) as gw:
            async with connect(gw.url) as websocket:
                await websocket.send('{"type": "ping"}')
                reply = await websocket.recv()
                assert reply == '{"type": "ping"}' and isinstance(reply, str)
            (connected,) = lambdas.of("$connect")
            (event,) = lambdas.of("$default")
            context = event["requestContext"]
            assert set(context) == CONTEXT_KEYS | {"messageId"}
            assert context["eventType"] == "MESSAGE" and CONNECTION_ID.match(context["messageId"])
            assert context["connectionId"] == connected["requestContext"]["connectionId"]
            assert context["connectedAt"] == connected["requestContext"]["connectedAt"]
            assert event["body"] == '{"type": "ping"}' and event["isBase64Encoded"] is False
            assert set(event) == {"requestContext", "body", "isBase64Encoded"}

    run(scenario())


def test_disconnect_is_invoked_exactly_once_with_the_client_close_code(lambdas: Lambdas) -> None:
    async def scenario() -> None:
        async with gateway(lambdas) as gw:
            async with connect(gw.url) as websocket:
                await websocket.send("hello")
                await websocket.recv()
            await eventually(lambda: len(lambdas.of("$disconnect")) == 1)
            await asyncio.sleep(0.1)
            (event,) = lambdas.of("$disconnect")
            context = event["requestContext"]
            assert context["eventType"] == "DISCONNECT"
            assert context["disconnectStatusCode"] == 1000
            assert context["disconnectReason"] == "Client-side close frame status set to '1000'"
            assert set(context) == CONTEXT_KEYS | {"disconnectStatusCode", "disconnectReason"}
            assert event["headers"]["Host"] == context["domainName"]
            assert gw.connection_ids() == []
        assert len(lambdas.of("$disconnect")) == 1

    run(scenario())


def test_disconnect_carries_a_custom_client_close_code(lambdas: Lambdas) -> None:
    async def scenario() -> None:
        async with gateway(lambdas) as gw:
            async with connect(gw.url) as websocket:
                await websocket.close(4001, "bye")
            await eventually(lambda: len(lambdas.of("$disconnect")) == 1)
            context = lambdas.of("$disconnect")[0]["requestContext"]
            assert (context["disconnectStatusCode"], context["disconnectReason"]) == (
                4001, "Client-side close frame status set to '4001'"
            )

    run(scenario())


# ---------------------------------------------------------------------------- $connect answers
def test_upgrade_is_rejected_with_the_status_the_connect_handler_returns(lambdas: Lambdas) -> None:
    lambdas.connect_response = {"statusCode": 401, "body": "Unauthorized"}

    async def scenario() -> None:
        async with gateway(lambdas) as gw:
            with pytest.raises(InvalidStatus) as rejected:
                async with connect(gw.url):
                    pass
            assert rejected.value.response.status_code == 401
            assert rejected.value.response.body == b"Unauthorized"
            await asyncio.sleep(0.1)
            assert gw.connection_ids() == []
        assert lambdas.of("$default") == [] and lambdas.of("$disconnect") == []

    run(scenario())


def test_connect_handler_headers_reach_the_handshake_response(lambdas: Lambdas) -> None:
    lambdas.connect_response = {"statusCode": 200, "headers": {"X-Session-Hint": "local"}}

    async def scenario() -> None:
        async with gateway(lambdas) as gw, connect(gw.url) as websocket:
            assert websocket.response is not None
            assert websocket.response.headers["X-Session-Hint"] == "local"

    run(scenario())


def test_connect_handler_crash_answers_502(lambdas: Lambdas) -> None:
    def crash(event: dict[str, Any], context: Any) -> Any:
        raise RuntimeError("boom")

    async def scenario() -> None:
        async with LocalGateway(RouteHandlers(crash, lambdas.message, lambdas.disconnect)) as gw:
            with pytest.raises(InvalidStatus) as rejected:
                async with connect(gw.url):
                    pass
            assert rejected.value.response.status_code == 502

    run(scenario())


def test_unknown_stage_is_forbidden_without_invoking_connect(lambdas: Lambdas) -> None:
    async def scenario() -> None:
        async with gateway(lambdas) as gw:
            with pytest.raises(InvalidStatus) as rejected:
                async with connect(gw.url.replace("/prod", "/dev")):
                    pass
            assert rejected.value.response.status_code == 403
        assert lambdas.events == []

    run(scenario())


# ---------------------------------------------------------------------------- @connections
def test_post_to_a_gone_connection_raises_gone_exception(lambdas: Lambdas) -> None:
    async def scenario() -> None:
        async with gateway(lambdas) as gw:
            async with connect(gw.url):
                pass
            await eventually(lambda: len(lambdas.of("$disconnect")) == 1)
            connection_id = lambdas.of("$connect")[0]["requestContext"]["connectionId"]
            client = management_client()
            for gone in (connection_id, "NotAConnection="):
                with pytest.raises(client.exceptions.GoneException):
                    await asyncio.to_thread(client.post_to_connection, ConnectionId=gone, Data=b"late")

    run(scenario())


def test_delete_connection_closes_with_1000(lambdas: Lambdas) -> None:
    lambdas.on_message = lambda event: management_client().delete_connection(
        ConnectionId=event["requestContext"]["connectionId"]
    )

    async def scenario() -> None:
        async with gateway(lambdas) as gw:
            async with connect(gw.url) as websocket:
                await websocket.send("close me")
                assert await close_code(websocket) == 1000
            await eventually(lambda: len(lambdas.of("$disconnect")) == 1)
            context = lambdas.of("$disconnect")[0]["requestContext"]
            assert (context["disconnectStatusCode"], context["disconnectReason"]) == (
                1000, "Connection Closed Normally"
            )

    run(scenario())


def test_get_connection_describes_the_connection(lambdas: Lambdas) -> None:
    infos: list[dict[str, Any]] = []
    lambdas.on_message = lambda event: infos.append(
        management_client().get_connection(ConnectionId=event["requestContext"]["connectionId"])
    )

    async def scenario() -> None:
        async with gateway(lambdas) as gw, connect(gw.url, user_agent_header="probe-agent") as websocket:
            await websocket.send("who am I")
            await eventually(lambda: len(infos) == 1)
        (info,) = infos
        assert info["Identity"] == {"SourceIp": "127.0.0.1", "UserAgent": "probe-agent"}
        assert info["ConnectedAt"] <= info["LastActiveAt"]

    run(scenario())


def test_post_over_128_kb_is_payload_too_large_and_32_kb_plus_arrives_whole(lambdas: Lambdas) -> None:
    outcomes: list[str] = []

    def post_sizes(event: dict[str, Any]) -> None:
        client = management_client()
        connection_id = event["requestContext"]["connectionId"]
        try:
            client.post_to_connection(ConnectionId=connection_id, Data=b"x" * (128 * 1024 + 1))
        except client.exceptions.PayloadTooLargeException:
            outcomes.append("too large")
        client.post_to_connection(ConnectionId=connection_id, Data=("é" * 30_000).encode())

    lambdas.on_message = post_sizes

    async def scenario() -> None:
        async with gateway(lambdas) as gw, connect(gw.url) as websocket:
            await websocket.send("go")
            assert await websocket.recv() == "é" * 30_000  # 60,000 bytes: two frames on the wire
        assert outcomes == ["too large"]

    run(scenario())


# ---------------------------------------------------------------------------- binary frames
def test_binary_frame_closes_with_1003_by_default_as_api_gateway_does(lambdas: Lambdas) -> None:
    async def scenario() -> None:
        async with gateway(lambdas) as gw:
            async with connect(gw.url) as websocket:
                await websocket.send(b"\x7f\xff")
                assert await close_code(websocket) == 1003
            await eventually(lambda: len(lambdas.of("$disconnect")) == 1)
            assert lambdas.of("$disconnect")[0]["requestContext"]["disconnectStatusCode"] == 1003
        assert lambdas.of("$default") == []

    run(scenario())


def test_binary_frame_in_base64_mode_reaches_the_handler_base64_encoded(lambdas: Lambdas) -> None:
    lambdas.on_message = lambda event: None
    audio = bytes(range(256)) * 4

    async def scenario() -> None:
        async with gateway(lambdas, binary="base64") as gw, connect(gw.url) as websocket:
            await websocket.send(audio)
            await eventually(lambda: len(lambdas.of("$default")) == 1)
        (event,) = lambdas.of("$default")
        assert event["isBase64Encoded"] is True
        assert base64.b64decode(event["body"]) == audio

    run(scenario())


# ---------------------------------------------------------------------------- size limits
def test_frame_over_32_kb_closes_with_1009(lambdas: Lambdas) -> None:
    lambdas.on_message = lambda event: None

    async def scenario() -> None:
        async with gateway(lambdas) as gw:
            async with connect(gw.url) as websocket:
                await websocket.send("a" * (32 * 1024))
                await websocket.send("b" * (32 * 1024 + 1))
                assert await close_code(websocket) == 1009
            await eventually(lambda: len(lambdas.of("$disconnect")) == 1)
            assert lambdas.of("$disconnect")[0]["requestContext"]["disconnectStatusCode"] == 1009
        assert [len(event["body"]) for event in lambdas.of("$default")] == [32 * 1024]

    run(scenario())


def test_message_over_128_kb_in_small_frames_closes_with_1009(lambdas: Lambdas) -> None:
    lambdas.on_message = lambda event: None

    async def scenario() -> None:
        async with gateway(lambdas) as gw, connect(gw.url) as websocket:
            await websocket.send(["a" * (32 * 1024)] * 4)  # exactly 128 KB in four frames: accepted
            await websocket.send(["b" * (32 * 1024)] * 4 + ["b"])
            assert await close_code(websocket) == 1009
        assert [len(event["body"]) for event in lambdas.of("$default")] == [128 * 1024]

    run(scenario())


# ---------------------------------------------------------------------------- timeouts
def test_idle_connection_is_closed_with_1001_and_disconnected(lambdas: Lambdas) -> None:
    async def scenario() -> None:
        async with gateway(lambdas, limits=GatewayLimits(idle_timeout_s=0.2)) as gw:
            async with connect(gw.url) as websocket:
                started = time.monotonic()
                assert await close_code(websocket) == 1001
                assert time.monotonic() - started >= 0.15
            await eventually(lambda: len(lambdas.of("$disconnect")) == 1)
            assert lambdas.of("$disconnect")[0]["requestContext"]["disconnectStatusCode"] == 1001

    run(scenario())


def test_connection_is_closed_at_the_maximum_duration_even_when_busy(lambdas: Lambdas) -> None:
    lambdas.on_message = lambda event: None

    async def scenario() -> None:
        limits = GatewayLimits(idle_timeout_s=5, max_connection_s=0.3)
        async with gateway(lambdas, limits=limits) as gw, connect(gw.url) as websocket:
            with pytest.raises(ConnectionClosed) as closed:
                for _ in range(100):
                    await websocket.send("keep alive")
                    await asyncio.sleep(0.02)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001

    run(scenario())


# ---------------------------------------------------------------------------- concurrency
def test_serialize_runs_messages_one_at_a_time_in_order(lambdas: Lambdas) -> None:
    bodies: list[str] = []
    running = threading.Semaphore(1)

    def slow_first(event: dict[str, Any]) -> None:
        assert running.acquire(blocking=False), "two $default invocations overlapped"
        try:
            time.sleep(0.05 if event["body"] == "0" else 0.001)
            bodies.append(event["body"])
        finally:
            running.release()

    lambdas.on_message = slow_first

    async def scenario() -> None:
        async with gateway(lambdas, serialize=True) as gw:
            async with connect(gw.url) as websocket:
                for number in range(10):
                    await websocket.send(str(number))
            await eventually(lambda: len(lambdas.of("$disconnect")) == 1)
        assert bodies == [str(number) for number in range(10)]
        # $disconnect comes after the last message in serialize mode.
        assert lambdas.events[-1]["requestContext"]["routeKey"] == "$disconnect"

    run(scenario())


def test_default_invocations_run_in_parallel(lambdas: Lambdas) -> None:
    both_running = threading.Barrier(2, timeout=5)
    passed: list[str] = []

    def meet(event: dict[str, Any]) -> None:
        both_running.wait()  # only returns when the other invocation is running too
        passed.append(event["body"])

    lambdas.on_message = meet

    async def scenario() -> None:
        async with gateway(lambdas) as gw, connect(gw.url) as websocket:
            await websocket.send("first")
            await websocket.send("second")
            await eventually(lambda: len(passed) == 2, timeout_s=8)
        assert sorted(passed) == ["first", "second"]

    run(scenario())


def test_a_waiting_invocation_never_starves_the_others(lambdas: Lambdas) -> None:
    # Each invocation waits until 64 of them run at once: more than any fixed worker pool the
    # emulator could hide, as Lambda starts every invocation at once.
    all_running = threading.Barrier(64, timeout=10)
    lambdas.on_message = lambda event: all_running.wait()

    async def scenario() -> None:
        async with gateway(lambdas) as gw, connect(gw.url) as websocket:
            for number in range(64):
                await websocket.send(str(number))
            await eventually(lambda: len(lambdas.of("$default")) == 64, timeout_s=10)
            await eventually(lambda: all_running.n_waiting == 0, timeout_s=10)
        assert not all_running.broken

    run(scenario())


def test_invocations_beyond_the_concurrency_limit_are_throttled_with_the_error_frame(lambdas: Lambdas) -> None:
    release = threading.Event()
    lambdas.on_message = lambda event: release.wait(5)

    async def scenario() -> str:
        async with gateway(lambdas, max_concurrency=2) as gw, connect(gw.url) as websocket:
            for number in range(2):
                await websocket.send(str(number))
            await eventually(lambda: len(lambdas.of("$default")) == 2)
            await websocket.send("throttled")
            frame = await asyncio.wait_for(websocket.recv(), 5)
            release.set()
            return str(frame)

    frame = run(scenario())
    assert len(lambdas.of("$default")) == 2  # the throttled one never ran
    error = json.loads(frame)
    assert error["message"] == "Internal server error" and set(error) == {"message", "connectionId", "requestId"}


def fail(event: dict[str, Any]) -> None:
    raise RuntimeError("handler bug")


def sleep_past_timeout(event: dict[str, Any]) -> None:
    time.sleep(0.6)


def test_failing_default_handler_sends_api_gateway_error_frame(lambdas: Lambdas) -> None:
    lambdas.on_message = fail

    async def scenario() -> str:
        async with gateway(lambdas) as gw, connect(gw.url) as websocket:
            await websocket.send("anything")
            return str(await websocket.recv())

    frame = run(scenario())
    (event,) = lambdas.of("$default")
    context = event["requestContext"]
    # API Gateway's exact bytes, spacing included.
    assert frame == (f'{{"message": "Internal server error", "connectionId":"{context["connectionId"]}", '
                     f'"requestId":"{context["requestId"]}"}}')


def test_default_handler_past_its_function_timeout_sends_api_gateway_error_frame(lambdas: Lambdas) -> None:
    lambdas.on_message = sleep_past_timeout
    handlers = RouteHandlers(lambdas.connect, lambdas.message, lambdas.disconnect, timeouts={"message": 0.2})

    async def scenario() -> tuple[str, float]:
        async with LocalGateway(handlers, stage="prod") as gw, connect(gw.url) as websocket:
            started = time.monotonic()
            await websocket.send("anything")
            frame = str(await websocket.recv())
            return frame, time.monotonic() - started

    frame, waited_s = run(scenario())
    (event,) = lambdas.of("$default")
    context = event["requestContext"]
    assert frame == (f'{{"message": "Internal server error", "connectionId":"{context["connectionId"]}", '
                     f'"requestId":"{context["requestId"]}"}}')
    assert waited_s < 0.6  # sent at the timeout, not when the handler returned


def test_function_timeouts_come_from_the_template() -> None:
    handlers = RouteHandlers.from_template(Template(REPO / "template.yaml"))
    assert handlers.timeouts == {"connect": 10.0, "message": 15.0, "disconnect": 15.0}


@pytest.mark.parametrize(("on_message", "timeouts"), [
    pytest.param(fail, {}, id="handler-raises"),
    pytest.param(sleep_past_timeout, {"message": 0.2}, id="handler-times-out"),
])
def test_probe_explains_api_gateway_error_frame(lambdas: Lambdas, on_message: Any, timeouts: dict) -> None:
    from audiohook.tools.client import probe

    lambdas.on_message = on_message
    handlers = RouteHandlers(lambdas.connect, lambdas.message, lambdas.disconnect, timeouts=timeouts)

    async def scenario() -> Any:
        async with LocalGateway(handlers, stage="prod") as gw:
            return await probe(gw.url, "any-key", "", timeout_close=1.0)

    report = run(scenario())
    open_event = lambdas.of("$default")[0]
    context = open_event["requestContext"]
    assert json.loads(open_event["body"])["type"] == "open"
    assert not report.passed
    assert report.findings[0].code == "api_gateway_error"
    assert report.findings[0].message == (
        'API Gateway\'s own error frame ("Internal server error"), not an AudioHook message: the $default Lambda '
        "function failed, timed out or was throttled, so API Gateway answered in its place and Genesys refuses "
        f"the frame as malformed; look up requestId {context['requestId']} (connection {context['connectionId']}) "
        "in the $default function's logs (key api_request_id) and API Gateway's execution logs")
    assert f"look up requestId {context['requestId']}" in report.to_text()


def test_base64_mode_applies_audio_in_order_and_text_never_overtakes_it(lambdas: Lambdas) -> None:
    spans: list[tuple[str, float, float]] = []
    lock = threading.Lock()

    def timed(event: dict[str, Any]) -> None:
        started = time.monotonic()
        is_audio = event["isBase64Encoded"]
        time.sleep(0.02 if is_audio else 0.001)
        body = base64.b64decode(event["body"]).decode() if is_audio else event["body"]
        with lock:
            spans.append((body, started, time.monotonic()))

    lambdas.on_message = timed
    sent = ["a0", "a1", "t0", "t1", "a2", "t2", "a3", "a4", "t3"]

    async def scenario() -> None:
        async with gateway(lambdas, binary="base64") as gw:
            async with connect(gw.url) as websocket:
                for body in sent:
                    await websocket.send(body.encode() if body.startswith("a") else body)
            await eventually(lambda: len(lambdas.of("$disconnect")) == 1)

    run(scenario())
    span = {body: (started, ended) for body, started, ended in spans}
    audio = sorted((body for body in span if body.startswith("a")), key=lambda body: span[body][0])
    assert audio == ["a0", "a1", "a2", "a3", "a4"]
    for index, body in enumerate(sent):
        for before in sent[:index]:
            if before.startswith("a") or body.startswith("a"):
                # Audio waits for everything before it; nothing overtakes earlier audio.
                assert span[before][1] <= span[body][0], (before, body)
    (disconnect,) = lambdas.of("$disconnect")
    assert lambdas.events.index(disconnect) == len(lambdas.events) - 1


def test_stopping_the_gateway_disconnects_open_connections(lambdas: Lambdas) -> None:
    async def scenario() -> None:
        gw = await gateway(lambdas).start()
        async with connect(gw.url) as websocket:
            await gw.stop()
            assert await close_code(websocket) == 1001
        assert [event["requestContext"]["disconnectStatusCode"] for event in lambdas.of("$disconnect")] == [1001]

    run(scenario())


# ---------------------------------------------------------------------------- environment and template
def test_handlers_see_connections_endpoint_only_while_the_gateway_runs(lambdas: Lambdas) -> None:
    seen: list[str] = []
    lambdas.on_message = lambda event: seen.append(os.environ["CONNECTIONS_ENDPOINT"])
    before = os.environ.get("CONNECTIONS_ENDPOINT")

    async def scenario() -> None:
        async with gateway(lambdas, handler_env={"SESSIONS_TABLE": "local-table"}) as gw:
            assert os.environ["SESSIONS_TABLE"] == "local-table"
            async with connect(gw.url) as websocket:
                await websocket.send("env?")
                await eventually(lambda: len(seen) == 1)
            assert seen == [gw.connections_endpoint] and seen[0].endswith("/prod")

    run(scenario())
    assert os.environ.get("CONNECTIONS_ENDPOINT") == before


def test_routes_resolve_to_the_template_functions() -> None:
    template = Template(REPO / "template.yaml")
    handlers = RouteHandlers.from_template(template)
    assert handlers.connect == HandlerRef("on_connect.handler", REPO / "handlers")
    assert handlers.message == HandlerRef("on_message.handler", REPO / "handlers")
    assert handlers.disconnect == HandlerRef("on_disconnect.handler", REPO / "handlers")
    assert stage_from_template(template) == "prod"


def test_local_stack_runs_handlers_against_the_embedded_aws(lambdas: Lambdas) -> None:
    def store(event: dict[str, Any]) -> None:
        boto3.client("dynamodb").put_item(  # credentials, region and endpoint all come from the env
            TableName=os.environ["SESSIONS_TABLE"], Item={"pk": {"S": event["body"]}}
        )
        Lambdas.echo(event)

    lambdas.on_message = store

    async def scenario() -> None:
        async with LocalStack(REPO / "template.yaml", stack_name="gateway-test", handlers=lambdas.handlers) as stack:
            assert stack.url.endswith("/prod")
            async with connect(stack.url) as websocket:
                await websocket.send("conn#1")
                assert await websocket.recv() == "conn#1"
            item = stack.aws.client("dynamodb").get_item(
                TableName=stack.aws.resources.table_name, Key={"pk": {"S": "conn#1"}}
            )
            assert "Item" in item

    run(scenario(), timeout_s=30)


def test_request_time_uses_api_gateway_format() -> None:
    assert request_time(1795507200000) == "24/Nov/2026:08:00:00 +0000"


def test_text_fragments_never_split_a_character() -> None:
    pieces = text_fragments("aé" * 10, 4)
    assert "".join(pieces) == "aé" * 10
    assert all(len(piece.encode()) <= 4 for piece in pieces)
    assert text_fragments("", 4) == [""]
