"""What the service counts, with the names and breakdowns of audiohook.metrics (both fronts run
this code; the relay adds its own counters, tests/relay/test_relay_metrics.py)."""

from __future__ import annotations

from audiohook.aws.service import Counters
from audiohook.aws.stream import KinesisWriter
from audiohook.session import disconnect
from conftest import Client, open_parameters
from faults import Faults

CALL = open_parameters("4c3d4d4e-8f5a-4f43-9b0c-1a2b3c4d5e6f", "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d")


def counting(service) -> Counters:
    service.metrics = Counters()
    return service.metrics


def test_an_audio_frame_counts_frames_bytes_and_its_ack_delay(service):
    counts = counting(service)
    client = Client(service)
    client.connect()
    client.send(client.message("open", CALL))
    client.send(bytes(3200))
    assert {name: counts.counts[name] for name in ("Connections", "CallSessions", "AudioFrames", "AudioBytes")} == {
        "Connections": 1, "CallSessions": 1, "AudioFrames": 1, "AudioBytes": 3200}
    assert 0 <= counts.counts["AudioAckDelay"] < 10_000


def test_a_session_continuing_another_is_a_reconnect(service):
    first = Client(service)
    first.connect()
    first.send(first.message("open", CALL))
    counts = counting(service)
    client = Client(service)
    client.connect()
    continued = [{"id": first.session_id, "serverseq": 1, "clientseq": 1}]
    client.send(client.message("open", CALL | {"continuedSessions": continued}))
    assert counts.counts["Reconnects"] == 1 and counts.counts["CallSessions"] == 1


def test_a_server_disconnect_is_a_control_action_a_protocol_error_is_not(service):
    counts = counting(service)
    client = Client(service)
    client.connect()
    client.send(client.message("open", CALL))
    stored = service.store.load(client.connection.connection_id)
    service.count_outcome(stored.session, disconnect(stored.session, "completed", "server shutting down"))
    assert counts.breakdowns == {("ControlActions", "Action", "disconnect"): 1}
    other = Client(service)
    other.connect()
    other.send(other.message("open", CALL))
    other.send(other.message("ping", serverseq=7))
    assert counts.breakdowns == {("ControlActions", "Action", "disconnect"): 1,
                                 ("ProtocolErrors", "Kind", "sequence"): 1}


def test_a_refused_upgrade_names_its_reason_class(service):
    counts = counting(service)
    client = Client(service)
    client.connect(secret="c29tZSBvdGhlciBzZWNyZXQ=")
    assert counts.counts == {"UpgradesRejected": 1}
    assert counts.breakdowns == {("UpgradesRejected", "Reason", "bad_signature"): 1}


def test_kinesis_throttling_then_loss_is_counted_as_throttles_retries_and_a_gap(aws, service):
    Faults(entry_errors=lambda call, index, data: "ProvisionedThroughputExceededException"
           if data.startswith(b"AHAU") else None).install(aws.kinesis)
    attempts = 3
    service.records = KinesisWriter(aws.kinesis, aws.settings.audio_stream, max_attempts=attempts,
                                    sleep=lambda seconds: None)
    counts = counting(service)
    client = Client(service)
    client.connect()
    client.send(client.message("open", CALL))
    client.send(bytes(3200))
    assert {name: counts.counts.get(name) for name in (
        "KinesisThrottles", "KinesisRetries", "RecordsUndelivered", "AudioGaps", "AudioDroppedFrames",
        "AudioDroppedBytes")} == {
        "KinesisThrottles": attempts, "KinesisRetries": attempts - 1, "RecordsUndelivered": 1, "AudioGaps": 1,
        "AudioDroppedFrames": 1, "AudioDroppedBytes": 3200}
