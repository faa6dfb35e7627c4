"""Sequencing under API Gateway's concurrent, unordered $default invocations."""

from __future__ import annotations

import json
import random
import threading
from dataclasses import replace
from typing import Any

from audiohook.aws.poster import ConnectionPoster
from audiohook.aws.service import AudioHookService
from audiohook.aws.store import SessionStore
from audiohook.aws.stream import KinesisWriter
from conftest import API_KEY, CLIENT_SECRET, Client, open_parameters


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

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return method(*args, **kwargs)

        return call


def concurrent_service(aws: Any, **overrides: Any) -> AudioHookService:
    # moto behind one lock serves a few hundred calls a second, not DynamoDB's thousands, so a
    # predecessor can take seconds to land here; the wait budget is sized for that.
    settings = replace(aws.settings, predecessor_wait_ms=60_000)
    poster = ConnectionPoster(AtomicCalls(aws.management))
    return AudioHookService(
        settings,
        SessionStore(AtomicCalls(aws.dynamodb), settings.sessions_table, settings.session_ttl_s),
        KinesisWriter(AtomicCalls(aws.kinesis), settings.audio_stream),
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


def test_shuffled_concurrent_delivery_keeps_every_session_in_order(aws, service):
    rng = random.Random(20261124)
    shared = concurrent_service(aws)
    clients = [Client(service) for _ in range(200)]
    for client in clients:
        assert client.connect() == {"statusCode": 200}
    for chunk_start in range(0, len(clients), 8):
        deliveries = []
        for client in clients[chunk_start:chunk_start + 8]:
            for message in script(client):
                deliveries.append((client, json.dumps(message)))
                if rng.random() < 0.1:  # API Gateway may deliver a message twice
                    deliveries.append((client, json.dumps(message)))
        rng.shuffle(deliveries)
        threads = [
            threading.Thread(target=lambda c=c, t=t: shared.on_message(c.connection.message(t)))
            for c, t in deliveries
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    for client in clients:
        posted = aws.posted(client.connection.connection_id)
        assert [(m["type"], m["seq"], m["clientseq"]) for m in posted] == [
            ("opened", 1, 1), ("pong", 2, 2), ("updated", 3, 3), ("pong", 4, 4), ("closed", 5, 5),
        ], client.session_id


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_real_gap_becomes_a_protocol_error_after_the_wait(aws):
    clock = FakeClock()
    service = concurrent_service(aws, clock=clock, sleep=clock.sleep)
    client = Client(service)
    client.connect(now=clock.now)
    client.send(client.message("open", open_parameters()))
    client.seq += 1  # seq 2 never arrives
    client.send(client.message("ping"))
    assert aws.posted(client.connection.connection_id)[-1] == {
        "version": "2", "type": "disconnect", "seq": 2, "clientseq": 1, "id": client.session_id,
        "parameters": {"reason": "error", "info": "ping.seq is 3 but the previous client seq was 1; expected 2"},
    }


def test_duplicate_delivery_is_applied_once(aws, service):
    client = Client(service)
    client.connect()
    opening = json.dumps(client.message("open", open_parameters()))
    client.send(opening)
    result = client.send(opening)
    assert result.duplicate
    assert [m["type"] for m in aws.posted(client.connection.connection_id)] == ["opened"]


def test_old_seq_with_different_content_is_a_protocol_error(aws, service):
    client = Client(service)
    client.connect()
    client.send(client.message("open", open_parameters()))
    client.seq = 0
    client.send(client.message("ping"))
    assert aws.posted(client.connection.connection_id)[-1]["parameters"] == {
        "reason": "error", "info": "ping.seq is 1 but the previous client seq was 1; expected 2",
    }


def test_decide_reads_like_the_sequencing_rules():
    from audiohook.sequencing import Action, decide, digest

    d = digest("text")
    base = dict(text_digest=d, clientseq=4, seq_sent=4, delivered=4, recent={"4": d}, budget_left=True)
    assert decide(seq=5, **base) is Action.APPLY  # next in line, everything delivered
    assert decide(seq=4, **base) is Action.DUPLICATE  # same seq, same text
    assert decide(seq=4, **base | {"recent": {"4": "other"}}) is Action.APPLY  # old seq, new text: core errors
    assert decide(seq=7, **base) is Action.WAIT  # predecessor missing
    assert decide(seq=5, **base | {"delivered": 3}) is Action.WAIT  # earlier replies still being posted
    assert decide(seq=7, **base | {"budget_left": False}) is Action.APPLY  # a real gap: the core answers it
    assert decide(seq=7, **base | {"numbering_over": True}) is Action.APPLY  # after an error only close matters
    assert decide(seq=None, **base) is Action.APPLY  # unreadable: the core answers at once
