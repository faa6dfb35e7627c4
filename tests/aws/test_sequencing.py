"""The Lambda path's mailbox under API Gateway's concurrent, unordered $default invocations."""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import replace
from typing import Any

import pytest
from aws_lambda_powertools.utilities.data_classes import APIGatewayWebSocketEvent

from audiohook.aws.poster import ConnectionPoster
from audiohook.aws.service import AudioHookService
from audiohook.aws.store import SessionStore
from audiohook.aws.stream import KinesisWriter
from audiohook.records import AudioRecord, LifecycleRecord, decode_record
from audiohook.sequencing import Entry
from conftest import API_KEY, CLIENT_SECRET, Client, open_parameters

CALL = open_parameters("4c3d4d4e-8f5a-4f43-9b0c-1a2b3c4d5e6f", "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d")


class AtomicCalls:
    """Each AWS call runs alone, as each DynamoDB request is atomic in AWS.

    moto evaluates a condition and applies the write in plain Python without a lock, so two
    threads could interleave inside one request; real DynamoDB never does. Our own code
    between calls still interleaves freely.
    """

    _lock = threading.Lock()

    def __init__(self, client: Any):
        self._client = client
        self.exceptions = client.exceptions
        self.meta = client.meta

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return method(*args, **kwargs)

        return call


def no_sleep(seconds: float) -> None:
    raise AssertionError(f"slept {seconds} s: no invocation may wait for another")


class Crash(BaseException):
    """The Lambda dies (timeout, out of memory): nothing after it runs, nothing catches it."""


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def concurrent_service(aws: Any, poster: Any = None, **overrides: Any) -> AudioHookService:
    poster = poster or ConnectionPoster(AtomicCalls(aws.management), sleep=no_sleep)
    return AudioHookService(
        aws.settings,
        SessionStore(AtomicCalls(aws.dynamodb), aws.settings.sessions_table, aws.settings.session_ttl_s),
        KinesisWriter(AtomicCalls(aws.kinesis), aws.settings.audio_stream, sleep=no_sleep),
        poster_for=lambda event: poster,
        client_secrets=lambda: {API_KEY: CLIENT_SECRET},
        **overrides,
    )


def script(client: Client) -> list[dict[str, Any]]:
    messages = [client.message("open", open_parameters())]
    client.serverseq = 1
    messages.append(client.message("ping"))
    messages.append(client.message("update", {"language": "fr-FR"}))
    messages.append(client.message("ping"))
    messages.append(client.message("close", {"reason": "end"}))
    return messages


def posted_summary(aws: Any, client: Client) -> list[tuple[str, int, int]]:
    return [(m["type"], m["seq"], m["clientseq"]) for m in aws.posted(client.connection.connection_id)]


def item_bytes(aws: Any, client: Client) -> int:
    item = aws.dynamodb.get_item(TableName=aws.settings.sessions_table,
                                 Key={"pk": {"S": f"conn#{client.connection.connection_id}"}})["Item"]
    return int(item["mailboxBytes"]["N"])


def lifecycle(aws: Any) -> list[LifecycleRecord]:
    return [r for r in map(decode_record, aws.stream_records()) if isinstance(r, LifecycleRecord)]


def test_shuffled_concurrent_delivery_keeps_every_session_in_order(aws, monkeypatch):
    monkeypatch.setattr(time, "sleep", no_sleep)  # nothing in the service may sleep
    rng = random.Random(20261124)
    # moto behind one lock serves a few hundred calls a second, not DynamoDB's thousands: a
    # predecessor may take seconds to land, so the gap bound is sized for that here.
    shared = concurrent_service(aws)
    shared.settings = replace(aws.settings, predecessor_wait_ms=60_000)
    clients = [Client(shared) for _ in range(200)]
    for client in clients:
        assert client.connect() == {"statusCode": 200}
    parked = 0
    for chunk_start in range(0, len(clients), 8):
        deliveries = []
        for client in clients[chunk_start:chunk_start + 8]:
            for message in script(client):
                deliveries.append((client, json.dumps(message)))
                if rng.random() < 0.1:  # API Gateway may deliver a message twice
                    deliveries.append((client, json.dumps(message)))
        rng.shuffle(deliveries)
        results: list[Any] = []
        threads = [
            threading.Thread(target=lambda c=c, t=t, r=results: r.append(shared.on_message(c.connection.message(t))))
            for c, t in deliveries
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(results) == len(deliveries)  # every invocation returned (none died waiting)
        parked += sum(result.parked for result in results)

    for client in clients:
        assert posted_summary(aws, client) == [
            ("opened", 1, 1), ("pong", 2, 2), ("updated", 3, 3), ("pong", 4, 4), ("closed", 5, 5),
        ], client.session_id
    assert parked > 0  # the mailbox was exercised, not only the uncontended path
    assert shared.metrics.counts.get("ProtocolErrors") is None


def test_uncontended_ping_costs_two_dynamodb_calls_and_one_post(aws, service):
    client = Client(service)
    client.connect()
    client.send(client.message("open", CALL))
    client.serverseq = 1
    poster = service.poster_for(APIGatewayWebSocketEvent(client.connection.message("")))
    before, posts_before = service.store.calls, poster.calls
    client.send(client.message("ping"))
    assert (service.store.calls - before, poster.calls - posts_before) == (2, 1)


def test_message_parked_while_busy_is_applied_by_the_holder_in_seq_order(aws):
    """The holder re-reads the mailbox before it releases: nothing parked is stranded."""
    holds: list[Client] = []

    class SlowPoster:
        """Posts; while the first reply is posted, the next messages arrive (and park)."""

        calls = 0

        def __init__(self) -> None:
            self.inner = ConnectionPoster(aws.management, sleep=no_sleep)

        def post_all(self, connection_id: str, texts: list[str]) -> bool:
            if holds:
                client = holds.pop()
                for _ in range(2):
                    assert service.on_message(client.connection.message(json.dumps(client.message("ping")))).parked
            return self.inner.post_all(connection_id, texts)

    service = concurrent_service(aws, poster=SlowPoster())
    client = Client(service)
    client.connect()
    holds.append(client)
    client.send(client.message("open", CALL))
    assert posted_summary(aws, client) == [("opened", 1, 1), ("pong", 2, 2), ("pong", 3, 3)]
    item = aws.dynamodb.get_item(TableName=aws.settings.sessions_table,
                                 Key={"pk": {"S": f"conn#{client.connection.connection_id}"}})["Item"]
    assert (item["mailbox"], item["leaseUntil"], "leaseOwner" in item) == ({"L": []}, {"N": "0"}, False)


def test_crash_between_apply_and_post_is_answered_by_the_next_holder_in_order(aws):
    clock = FakeClock()

    class CrashingPoster:
        calls = 0
        crash = True

        def __init__(self) -> None:
            self.inner = ConnectionPoster(aws.management, sleep=no_sleep)

        def post_all(self, connection_id: str, texts: list[str]) -> bool:
            if self.crash and any('"pong"' in text for text in texts):
                self.crash = False
                raise Crash()
            return self.inner.post_all(connection_id, texts)

    service = concurrent_service(aws, poster=CrashingPoster(), clock=clock)
    client = Client(service)
    client.connect(now=clock.now)
    client.send(client.message("open", CALL))
    client.serverseq = 1
    with pytest.raises(Crash):
        service.on_message(client.connection.message(json.dumps(client.message("ping")), now=clock.now))
    # The dead invocation still holds the lease: the next message parks behind it.
    assert service.on_message(client.connection.message(json.dumps(client.message("ping")), now=clock.now)).parked
    assert posted_summary(aws, client) == [("opened", 1, 1)]
    clock.now += aws.settings.lease_ms / 1000 + 0.001  # the lease expires: the next input takes it over
    client.send(client.message("update", {"language": "de-DE"}))
    assert posted_summary(aws, client) == [("opened", 1, 1), ("pong", 2, 2), ("pong", 3, 3), ("updated", 4, 4)]


def test_expired_lease_is_taken_over_by_the_disconnect(aws):
    clock = FakeClock()
    service = concurrent_service(aws, clock=clock)
    client = Client(service)
    client.connect(now=clock.now)
    client.send(client.message("open", CALL))
    owner = SessionStore(aws.dynamodb, aws.settings.sessions_table, aws.settings.session_ttl_s)
    dead = owner.enter(client.connection.connection_id, '{"kind":"audio","at_ms":0,"audio":""}', owner="dead",
                       now_ms=int(clock.now * 1000), lease_ms=aws.settings.lease_ms, limit_bytes=1 << 20,
                       full_entry="")
    assert dead is not None and not isinstance(dead, str)
    update = client.message("update", {"language": "de-DE"})
    assert service.on_message(client.connection.message(json.dumps(update), now=clock.now)).parked
    clock.now += aws.settings.lease_ms / 1000 + 0.001
    result = service.on_disconnect(client.connection.disconnect(1000, "bye", now=clock.now))
    assert not result.parked
    assert [(r.event, r.data.get("language")) for r in lifecycle(aws)] == [
        ("opened", None), ("updated", "de-DE"), ("disconnected", None)]
    assert lifecycle(aws)[-1].data["emptyFrames"] == 1  # the dead holder's 0-byte frame, applied once


def test_real_gap_is_reported_by_the_next_input_after_the_wait(aws):
    clock = FakeClock()
    service = concurrent_service(aws, clock=clock)
    client = Client(service)
    client.connect(now=clock.now)
    client.send(client.message("open", CALL))
    client.serverseq = 1
    client.seq += 1  # seq 2 never arrives
    result = service.on_message(client.connection.message(json.dumps(client.message("ping")), now=clock.now))
    assert result.outcome.replies == []  # seq 3 waits for its predecessor
    clock.now += aws.settings.predecessor_wait_ms / 1000
    service.on_message(client.connection.message(json.dumps(client.message("ping")), now=clock.now))
    assert aws.posted(client.connection.connection_id)[-1] == {
        "version": "2", "type": "disconnect", "seq": 2, "clientseq": 1, "id": client.session_id,
        "parameters": {"reason": "error", "info": "ping.seq is 3 but the previous client seq was 1; expected 2"},
    }
    assert [m["type"] for m in aws.posted(client.connection.connection_id)] == ["opened", "disconnect"]


def test_gap_still_waiting_at_disconnect_is_recorded(aws):
    clock = FakeClock()
    service = concurrent_service(aws, clock=clock)
    client = Client(service)
    client.connect(now=clock.now)
    client.send(client.message("open", CALL))
    client.seq += 1
    service.on_message(client.connection.message(json.dumps(client.message("ping")), now=clock.now))
    service.on_disconnect(client.connection.disconnect(1006, "Going away", now=clock.now))
    records = lifecycle(aws)
    assert [(r.event, r.data.get("info")) for r in records] == [
        ("opened", None), ("error", "ping.seq is 3 but the previous client seq was 1; expected 2"),
        ("disconnected", None)]
    assert records[-1].data["error"] == "ping.seq is 3 but the previous client seq was 1; expected 2"
    assert [m["type"] for m in aws.posted(client.connection.connection_id)] == ["opened"]  # the socket is gone


def test_duplicate_delivery_is_acknowledged_without_effect(aws, service):
    client = Client(service)
    client.connect()
    opening = json.dumps(client.message("open", CALL))
    client.send(opening)
    result = client.send(opening)
    assert result.duplicate and result.response == {"statusCode": 200}
    assert [m["type"] for m in aws.posted(client.connection.connection_id)] == ["opened"]
    assert [r.event for r in lifecycle(aws)] == ["opened"]


def test_old_seq_with_different_content_is_a_protocol_error(aws, service):
    client = Client(service)
    client.connect()
    client.send(client.message("open", open_parameters()))
    client.seq = 0
    client.send(client.message("ping"))
    assert aws.posted(client.connection.connection_id)[-1]["parameters"] == {
        "reason": "error", "info": "ping.seq is 1 but the previous client seq was 1; expected 2",
    }


def test_audio_frames_parked_behind_a_holder_are_applied_in_arrival_order(aws):
    clock = FakeClock()
    service = concurrent_service(aws, clock=clock)
    client = Client(service)
    client.connect(now=clock.now)
    client.send(client.message("open", CALL))
    store = SessionStore(aws.dynamodb, aws.settings.sessions_table, aws.settings.session_ttl_s)
    store.enter(client.connection.connection_id, '{"kind":"audio","at_ms":0,"audio":""}', owner="dead",
                now_ms=int(clock.now * 1000), lease_ms=aws.settings.lease_ms, limit_bytes=1 << 20,
                full_entry="")
    frames = [bytes([n]) * (320 * (n + 1)) for n in range(6)]  # varied sizes
    for frame in frames:
        assert service.on_message(client.connection.message(frame, now=clock.now)).parked
    clock.now += aws.settings.lease_ms / 1000 + 0.001
    client.send(client.message("ping"))
    audio = [r for r in map(decode_record, aws.stream_records()) if isinstance(r, AudioRecord)]
    starts = [sum(len(f) // 2 for f in frames[:n]) for n in range(len(frames))]
    assert [(r.position, r.audio) for r in audio] == list(zip(starts, frames))


def test_concurrent_audio_frames_get_contiguous_positions(aws):
    service = concurrent_service(aws)
    client = Client(service)
    client.connect()
    client.send(client.message("open", CALL))
    frames = [bytes([n]) * 3200 for n in range(20)]  # 4 s of audio at once: the mailbox holds it all
    threads = [threading.Thread(target=service.on_message, args=(client.connection.message(f),)) for f in frames]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    audio = sorted((r for r in map(decode_record, aws.stream_records()) if isinstance(r, AudioRecord)),
                   key=lambda r: r.position)
    assert [r.position for r in audio] == [1600 * n for n in range(20)]
    assert sorted(r.audio for r in audio) == frames
    assert [m["type"] for m in aws.posted(client.connection.connection_id)] == ["opened"]


def test_a_client_flooding_far_ahead_gets_one_protocol_error(aws):
    clock = FakeClock()
    service = concurrent_service(aws, clock=clock)
    service.settings = replace(aws.settings, mailbox_bytes=1000)
    client = Client(service)
    client.connect(now=clock.now)
    client.send(client.message("open", CALL))
    client.serverseq = 1
    client.seq += 1  # seq 2 is missing: everything after it waits
    waiting: list[Entry] = []
    while sum(entry.size for entry in waiting) <= 1000:
        text = json.dumps(client.message("ping"))
        token = "0" * 16  # each invocation's own token, the same length
        waiting.append(Entry.of_text(text, int(clock.now * 1000)).model_copy(update={"token": token}))
        service.on_message(client.connection.message(text, now=clock.now))
    posted = aws.posted(client.connection.connection_id)
    assert [m["type"] for m in posted] == ["opened", "disconnect"]
    assert posted[-1]["parameters"]["info"] == (
        f"client seq 2 is missing and {len(waiting)} later inputs ({sum(e.size for e in waiting)} bytes) wait "
        "for it, more than the 1000 bytes a session may hold")
    assert item_bytes(aws, client) == 0  # the waiting inputs were applied as input after an error
