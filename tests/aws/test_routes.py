"""The three routes driven with API Gateway-shaped events against moto."""

from __future__ import annotations

import json

from audiohook.records import AudioRecord, LifecycleRecord, decode_record
from conftest import Client, load_jsonl, open_parameters


def test_probe_exchange_answered_like_the_fixture(aws, service):
    exchange = load_jsonl("probe-exchange-ok.jsonl")
    session_id = exchange[0]["message"]["id"]
    client = Client(service, session_id=session_id, org_id=exchange[0]["message"]["parameters"]["organizationId"])
    assert client.connect() == {"statusCode": 200}
    for line in exchange:
        if line["direction"] == "client":
            client.send(line["message"])
    expected = [line["message"] for line in exchange if line["direction"] == "server"]
    assert aws.posted(client.connection.connection_id) == expected


def test_replies_are_bare_audiohook_json_text(aws, service):
    client = Client(service)
    client.connect()
    client.send(client.message("open", open_parameters()))
    posted = aws.posted(client.connection.connection_id)
    assert posted[0]["type"] == "opened"
    assert set(posted[0]) == {"version", "type", "seq", "clientseq", "id", "parameters"}


def test_lifecycle_records_mark_the_probe(aws, service):
    client = Client(service)
    client.connect()
    client.send(client.message("open", open_parameters()))
    client.send(client.message("close", {"reason": "end"}))
    client.disconnect()
    records = [decode_record(data) for data in aws.stream_records()]
    assert [r.event for r in records if isinstance(r, LifecycleRecord)] == ["opened", "closed", "disconnected"]
    assert all(r.probe for r in records)
    assert records[-1].data["outcome"] == "closed"


def test_audio_lands_in_kinesis_with_its_position(aws, service):
    client = Client(service)
    client.connect()
    client.send(client.message("open", open_parameters("4c3d4d4e-8f5a-4f43-9b0c-1a2b3c4d5e6f",
                                                        "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d")))
    frames = [bytes([n]) * 3200 for n in range(3)]
    for frame in frames:
        client.send(frame)
    audio = [r for r in map(decode_record, aws.stream_records()) if isinstance(r, AudioRecord)]
    assert [(r.position, r.audio) for r in audio] == [(0, frames[0]), (1600, frames[1]), (3200, frames[2])]
    assert audio[0].channels == ("external", "internal") and audio[0].format == "PCMU"


def test_disconnect_of_a_finished_session_is_harmless(aws, service):
    client = Client(service)
    client.connect()
    client.disconnect()
    assert client.disconnect().response == {"statusCode": 200}
    events = [r.event for r in map(decode_record, aws.stream_records())]
    assert events == ["disconnected"]  # once, and the second $disconnect changes nothing


def test_lambda_handlers_answer_and_emit_cloudwatch_metrics(aws, monkeypatch, capsys):
    import on_connect
    import on_message

    for name, value in {"SESSIONS_TABLE": aws.settings.sessions_table, "AUDIO_STREAM": aws.settings.audio_stream,
                        "API_KEYS_SECRET": aws.settings.api_keys_secret, "POWERTOOLS_METRICS_NAMESPACE": "AudioHook",
                        "POWERTOOLS_LOG_LEVEL": "WARNING"}.items():
        monkeypatch.setenv(name, value)
    client = Client(service=None)
    assert on_connect.handler(client.connect_event(), None) == {"statusCode": 200}
    assert on_message.handler(client.connection.message("{not json"), None) == {"statusCode": 200}
    posted = aws.posted(client.connection.connection_id)
    assert [m["type"] for m in posted] == ["disconnect"]
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    published = [(sorted(doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0]),
                  [metric["Name"] for metric in doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]]) for doc in emf]
    # One document per invocation, plus one per breakdown value (the kind of the protocol error).
    assert published == [(["Front", "service"], ["Connections"]), (["Front", "service"], ["ProtocolErrors"]),
                         (["Front", "Kind", "service"], ["ProtocolErrors"])]
    assert [(doc["Front"], doc["service"]) for doc in emf] == [("apigateway", "audiohook")] * 3
    assert (emf[1]["ProtocolErrors"], emf[2]["ProtocolErrors"], emf[2]["Kind"]) == ([1.0], [1.0], "malformed")
