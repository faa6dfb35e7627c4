"""Bad upgrades and AWS faults: exact answers, and nothing recorded is lost."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from aws_lambda_powertools.utilities.data_classes import APIGatewayWebSocketEvent

from audiohook.aws.stream import KinesisWriter
from audiohook.records import AudioRecord, LifecycleRecord, decode_record
from conftest import API_KEY, DOMAIN, STAGE, Client, open_parameters
from faults import Faults, fail_calls, function_timeouts

NOW = time.time()
CALL = open_parameters("4c3d4d4e-8f5a-4f43-9b0c-1a2b3c4d5e6f", "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d")


def table_items(aws) -> list[dict]:
    return aws.dynamodb.scan(TableName=aws.settings.sessions_table)["Items"]


@pytest.mark.parametrize("change", [
    pytest.param({"Audiohook-Session-Id": "30b0e395-84d3-4570-ac13-9a62d8f514c0"}, id="tampered-header"),
    pytest.param({"Signature": "sig1=:NZBwyBHRRyRoeLqy1IzOa9VYBuI8TgMFt2GRDkDuJh4=:"}, id="tampered-signature"),
    pytest.param({"Host": "evil.example.com"}, id="other-authority"),
])
def test_tampered_upgrade_is_refused_with_401_and_no_state(aws, service, change):
    client = Client(service)
    assert service.on_connect(client.connect_event(**change)).response == {"statusCode": 401}
    assert table_items(aws) == []


@pytest.mark.parametrize("signed_at", [NOW - 60, NOW + 60], ids=["expired", "from-the-future"])
def test_stale_or_future_signature_is_refused(aws, service, signed_at):
    client = Client(service)
    event = client.connect_event(now=signed_at)
    event["requestContext"]["requestTimeEpoch"] = int(NOW * 1000)
    assert service.on_connect(event).response == {"statusCode": 401}
    assert table_items(aws) == []


def test_wrong_client_secret_and_unknown_key_get_the_same_401(aws, service):
    client = Client(service)
    wrong_secret = client.connect_event(secret="c29tZSBvdGhlciBzZWNyZXQ=")
    unknown_key = client.connect_event(api_key="no-such-key", secret="c29tZSBvdGhlciBzZWNyZXQ=")
    assert service.on_connect(wrong_secret).response == service.on_connect(unknown_key).response == {
        "statusCode": 401}
    assert table_items(aws) == []


def test_replayed_nonce_is_refused(aws, service):
    first, second = Client(service), Client(service)
    assert first.connect(nonce="a-nonce-used-only-once-0001") == {"statusCode": 200}
    replay = second.connect_event(nonce="a-nonce-used-only-once-0001")
    assert service.on_connect(replay).response == {"statusCode": 401}
    assert [item["pk"]["S"] for item in table_items(aws) if item["pk"]["S"].startswith("conn#")] == [
        f"conn#{first.connection.connection_id}"]


def test_unsigned_upgrade_is_accepted_for_a_key_without_secret(aws, service):
    client = Client(service)
    assert client.connect(api_key="unsigned-key", secret="") == {"statusCode": 200}


def test_unsigned_upgrade_is_refused_for_a_key_with_secret(aws, service):
    client = Client(service)
    assert client.connect(api_key=API_KEY, secret="") == {"statusCode": 401}


def poster_client(service):
    event = APIGatewayWebSocketEvent(Client(service).connection.message(""))
    return service.poster_for(event).client


def failing_kinesis(aws, service, faults: Faults) -> None:
    faults.install(aws.kinesis)
    service.records = KinesisWriter(aws.kinesis, aws.settings.audio_stream, sleep=lambda seconds: None)


def test_gone_connection_ends_quietly_and_keeps_the_session(aws, service):
    client = Client(service)
    client.connect()
    fail_calls(poster_client(service), "apigatewaymanagementapi.PostToConnection", "GoneException", 410)
    result = client.send(client.message("open", CALL))
    assert result.response == {"statusCode": 200} and result.gone
    client.disconnect(1006, "Going away")
    records = [decode_record(data) for data in aws.stream_records()]
    assert [r.event for r in records] == ["opened", "disconnected"]
    assert records[-1].data["outcome"] == "abandoned"


def test_throttled_post_is_retried_and_delivered(aws, service):
    client = Client(service)
    client.connect()
    made = fail_calls(poster_client(service), "apigatewaymanagementapi.PostToConnection",
                      "LimitExceededException", 429, calls=1)
    client.send(client.message("open", CALL))
    assert len(made) == 2  # one retry: the Lambda's time budget (wiring.POST_ATTEMPTS)
    assert [m["type"] for m in aws.posted(client.connection.connection_id)] == ["opened"]


def test_partial_kinesis_failure_loses_no_audio(aws, service):
    faults = Faults(entry_errors=lambda call, index, data: "ProvisionedThroughputExceededException"
                    if call <= 2 and data.startswith(b"AHAU") else None)
    failing_kinesis(aws, service, faults)
    client = Client(service)
    client.connect()
    client.send(client.message("open", CALL))
    frames = [bytes([n]) * 1600 for n in range(4)]
    for frame in frames:
        client.send(frame)
    audio = sorted((r for r in map(decode_record, aws.stream_records()) if isinstance(r, AudioRecord)),
                   key=lambda r: r.position)
    assert [(r.position, r.audio) for r in audio] == [(800 * n, frames[n]) for n in range(4)]


def test_audio_kinesis_cannot_take_is_recorded_as_a_gap(aws, service):
    faults = Faults(entry_errors=lambda call, index, data: "InternalFailure" if data.startswith(b"AHAU") else None)
    failing_kinesis(aws, service, faults)
    client = Client(service)
    client.connect()
    client.send(client.message("open", CALL))
    client.send(bytes(3200))
    gaps = [r for r in map(decode_record, aws.stream_records()) if isinstance(r, LifecycleRecord) and r.event == "gap"]
    assert [g.data for g in gaps] == [{"start": 0, "samples": 1600, "frames": 1, "reason": "Kinesis: InternalFailure"}]


def test_messages_for_an_unknown_connection_are_acknowledged_and_ignored(aws, service):
    client = Client(service)
    assert client.send(client.message("ping")).response == {"statusCode": 200}
    assert client.disconnect().response == {"statusCode": 200}


def test_endpoint_for_replies_is_the_execute_api_stage(service):
    event = APIGatewayWebSocketEvent(Client(service).connection.message(""))
    assert service.poster_for(event).client.meta.endpoint_url == f"https://{DOMAIN}/{STAGE}"


class SilentEndpoint:
    """A TCP server that accepts every connection and never answers (an AWS endpoint hanging)."""

    def __init__(self) -> None:
        import socket
        import threading

        self._server = socket.create_server(("127.0.0.1", 0))
        self._held: list[Any] = []
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                self._held.append(self._server.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self._server.close()
        for connection in self._held:
            connection.close()


def unreachable_endpoint() -> str:
    """A local port nobody listens on: every call fails at once."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as probe:
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


@pytest.mark.parametrize("endpoint", ["silent", "unreachable"])
def test_handlers_answer_within_the_timeout_when_every_aws_call_hangs_or_fails(monkeypatch, endpoint):
    """Never an unhandled exception, never past the function's Timeout: API Gateway would
    otherwise send the client its own error frame (Genesys: "Message is malformed")."""
    import on_connect
    import on_disconnect
    import on_message

    silent = SilentEndpoint() if endpoint == "silent" else None
    url = silent.url if silent else unreachable_endpoint()
    for name, value in {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_ENDPOINT_URL": url, "CONNECTIONS_ENDPOINT": url, "POWERTOOLS_METRICS_DISABLED": "true",
                        "POWERTOOLS_LOG_LEVEL": "CRITICAL"}.items():
        monkeypatch.setenv(name, value)
    timeouts = function_timeouts()
    client = Client(service=None)
    try:
        for handler, event, route, answer in [
            (on_connect.handler, client.connect_event(), "ConnectFunction", {"statusCode": 500}),
            (on_message.handler, client.connection.message(json.dumps(client.message("open", CALL))),
             "MessageFunction", {"statusCode": 200}),
            (on_message.handler, client.connection.message(bytes(3200)), "MessageFunction", {"statusCode": 200}),
            (on_disconnect.handler, client.connection.disconnect(1006, "Going away"), "DisconnectFunction",
             {"statusCode": 200}),
        ]:
            started = time.monotonic()
            assert handler(event, None) == answer
            assert time.monotonic() - started < timeouts[route] / 2, route  # well inside the Timeout
    finally:
        if silent:
            silent.close()
