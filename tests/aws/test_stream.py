"""KinesisWriter against moto: every record arrives exactly once, or is reported undelivered.

moto never fails a PutRecords call on its own: faults are injected on the real client
(see tests/faults.py).
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from moto import mock_aws

from audiohook.aws import stream
from audiohook.aws.stream import (
    INVALID_PARTITION_KEY,
    MAX_RECORD_BYTES,
    MISSING_RESULT,
    RECORD_TOO_LARGE,
    THROTTLE_ERRORS,
    KinesisWriter,
    PutOutcome,
    UndeliveredEntry,
)
from audiohook.relay.putrecords import PutRecordsClient
from faults import Faults, Sleeps

STREAM = "audiohook-audio"
SESSION_A = "e160e428-53e2-487c-977d-96989bf5c99d"
SESSION_B = "00000000-0000-0000-0000-000000000000"
THROUGHPUT = "ProvisionedThroughputExceededException"
# Ceilings of the first seven pauses with base 0.05 s, doubling, capped at 2 s.
CEILINGS = [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0]


@pytest.fixture
def kinesis(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        client = boto3.client(
            "kinesis", region_name="us-east-1", config=Config(retries={"total_max_attempts": 1})
        )
        client.create_stream(StreamName=STREAM, ShardCount=2)
        yield client


def read_stream(client: Any) -> list[tuple[str, bytes]]:
    return stream.read_stream(client, STREAM)


def entries(
    count: int, size: int = 20, keys: tuple[str, ...] = (SESSION_A, SESSION_B)
) -> list[tuple[str, bytes]]:
    """Distinct payloads, so a duplicate or a loss is visible."""
    return [
        (keys[index % len(keys)], index.to_bytes(4, "big") + bytes([index % 251]) * (size - 4))
        for index in range(count)
    ]


def writer(client: Any, sleeps: Sleeps | None = None, **options: Any) -> KinesisWriter:
    return KinesisWriter(client, STREAM, sleep=sleeps or Sleeps(), random=lambda: 1.0, **options)


def assert_exactly_once(client: Any, expected: list[tuple[str, bytes]]) -> None:
    stored = read_stream(client)
    assert sorted(stored) == sorted(expected)
    assert len(set(stored)) == len(stored)


# --- happy paths and batching -----------------------------------------------------------------


def test_records_of_several_sessions_arrive_byte_exact_in_one_call(kinesis: Any) -> None:
    batch = entries(40, size=3245)

    outcome = writer(kinesis).put(batch)

    assert outcome == PutOutcome(delivered=40, calls=1, entries_sent=40)
    assert outcome.ok
    assert_exactly_once(kinesis, batch)


def test_records_of_one_session_keep_their_order_in_the_shard(kinesis: Any) -> None:
    batch = entries(30, keys=(SESSION_A,))

    writer(kinesis).put(batch)

    assert read_stream(kinesis) == batch


def test_an_empty_put_makes_no_call(kinesis: Any) -> None:
    assert writer(kinesis).put([]) == PutOutcome()


def test_more_than_500_entries_are_split_into_calls_of_500(kinesis: Any) -> None:
    faults = Faults()
    faults.install(kinesis)
    batch = entries(1100)

    outcome = writer(kinesis).put(batch)

    assert outcome == PutOutcome(delivered=1100, calls=3, entries_sent=1100)
    assert [len(call) for call in faults.sent] == [500, 500, 100]
    assert_exactly_once(kinesis, batch)


def test_calls_stay_under_5_mib_including_partition_keys(kinesis: Any) -> None:
    faults = Faults()
    faults.install(kinesis)
    batch = entries(12, size=900 * 1024)  # moto itself refuses a call over 5 MiB

    outcome = writer(kinesis).put(batch)

    assert outcome == PutOutcome(delivered=12, calls=3, entries_sent=12)
    assert [len(call) for call in faults.sent] == [5, 5, 2]
    assert_exactly_once(kinesis, batch)


def test_a_record_of_exactly_the_limit_is_sent_and_one_byte_more_is_refused(kinesis: Any) -> None:
    largest = (SESSION_A, b"\x01" * (MAX_RECORD_BYTES - len(SESSION_A)))
    too_large = (SESSION_A, b"\x02" * (MAX_RECORD_BYTES - len(SESSION_A) + 1))
    unkeyed = ("", b"\x03")
    long_key = ("k" * 257, b"\x04")

    outcome = writer(kinesis).put([too_large, largest, unkeyed, long_key])

    assert outcome.delivered == 1
    assert outcome.calls == 1
    assert outcome.undelivered == (
        UndeliveredEntry(
            0,
            SESSION_A,
            too_large[1],
            RECORD_TOO_LARGE,
            "data plus partition key is 1048577 bytes; a Kinesis record holds at most 1048576",
            attempts=0,
        ),
        UndeliveredEntry(
            2, "", b"\x03", INVALID_PARTITION_KEY, "partition key has 0 characters; Kinesis takes 1 to 256", 0
        ),
        UndeliveredEntry(
            3,
            "k" * 257,
            b"\x04",
            INVALID_PARTITION_KEY,
            "partition key has 257 characters; Kinesis takes 1 to 256",
            0,
        ),
    )
    assert_exactly_once(kinesis, [largest])


# --- (a) partially failed batches -------------------------------------------------------------


def test_only_the_failed_entries_of_a_partial_failure_are_sent_again(kinesis: Any) -> None:
    faults = Faults(
        entry_errors=lambda call, index, data: THROUGHPUT if call == 1 and index % 3 == 0 else None
    )
    faults.install(kinesis)
    sleeps = Sleeps()
    batch = entries(30)

    outcome = writer(kinesis, sleeps).put(batch)

    # Every third entry of the first call was refused for throughput: 10 throttled records.
    assert outcome == PutOutcome(delivered=30, calls=2, entries_sent=40, retries=1, slept_s=0.05, throttled=10)
    assert faults.sent[1] == [data for index, (_, data) in enumerate(batch) if index % 3 == 0]
    assert sleeps.delays == [0.05]
    assert_exactly_once(kinesis, batch)


def test_retried_entries_land_after_later_entries_so_consumers_order_by_position(kinesis: Any) -> None:
    faults = Faults(
        entry_errors=lambda call, index, data: "InternalFailure" if call == 1 and index % 2 else None
    )
    faults.install(kinesis)
    batch = entries(10, keys=(SESSION_A,))

    writer(kinesis).put(batch)

    assert read_stream(kinesis) == batch[0::2] + batch[1::2]


def test_an_entry_failing_every_attempt_is_reported_with_its_last_error(kinesis: Any) -> None:
    stubborn = entries(10)[7]
    faults = Faults(entry_errors=lambda call, index, data: THROUGHPUT if data == stubborn[1] else None)
    faults.install(kinesis)
    sleeps = Sleeps()
    batch = entries(10)

    outcome = writer(kinesis, sleeps).put(batch)

    assert outcome.delivered == 9
    assert outcome.undelivered == (
        UndeliveredEntry(7, stubborn[0], stubborn[1], THROUGHPUT, f"injected {THROUGHPUT}", attempts=8),
    )
    assert outcome.error_codes == {THROUGHPUT: 1}
    assert (outcome.calls, outcome.entries_sent, outcome.retries) == (8, 10 + 7, 7)
    assert sleeps.delays == CEILINGS
    assert_exactly_once(kinesis, batch[:7] + batch[8:])


def test_a_non_retryable_entry_error_is_reported_without_retry(kinesis: Any) -> None:
    faults = Faults(entry_errors=lambda call, index, data: "KMSAccessDeniedException" if index == 2 else None)
    faults.install(kinesis)
    batch = entries(5)

    outcome = writer(kinesis).put(batch)

    assert outcome.delivered == 4
    assert outcome.calls == 1
    assert [(entry.index, entry.error_code, entry.attempts) for entry in outcome.undelivered] == [
        (2, "KMSAccessDeniedException", 1)
    ]
    assert_exactly_once(kinesis, batch[:2] + batch[3:])


# --- (b) throttled whole calls ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (THROUGHPUT, 400),
        ("LimitExceededException", 400),
        ("ThrottlingException", 400),
        ("KMSThrottlingException", 400),
        ("InternalFailure", 500),
        ("ServiceUnavailable", 503),
        ("SomethingNew", 502),
    ],
)
def test_throttled_calls_are_retried_with_growing_pauses(kinesis: Any, code: str, status: int) -> None:
    faults = Faults(call_error=lambda call: (code, status) if call <= 3 else None)
    faults.install(kinesis)
    sleeps = Sleeps()
    batch = entries(25)

    outcome = writer(kinesis, sleeps).put(batch)

    assert outcome == PutOutcome(
        delivered=25, calls=4, entries_sent=100, retries=3, slept_s=sum(CEILINGS[:3]),
        throttled=3 * 25 if code in THROTTLE_ERRORS else 0,  # server faults are retried, not throttles
    )
    assert sleeps.delays == CEILINGS[:3]
    assert faults.sent == [[data for _, data in batch]] * 4
    assert_exactly_once(kinesis, batch)


def test_a_call_throttled_every_time_reports_every_entry_after_max_attempts(kinesis: Any) -> None:
    Faults(call_error=lambda call: ("ThrottlingException", 400)).install(kinesis)
    sleeps = Sleeps()
    batch = entries(3)

    outcome = writer(kinesis, sleeps, max_attempts=10).put(batch)

    assert outcome.delivered == 0
    assert outcome.undelivered == tuple(
        UndeliveredEntry(index, key, data, "ThrottlingException", "injected ThrottlingException", 10)
        for index, (key, data) in enumerate(batch)
    )
    assert (outcome.calls, outcome.entries_sent, outcome.retries, outcome.throttled) == (10, 30, 9, 30)
    assert sleeps.delays == CEILINGS + [2.0, 2.0]  # capped at max_delay_s
    assert read_stream(kinesis) == []


def test_pauses_use_full_jitter_below_the_ceiling(kinesis: Any) -> None:
    Faults(call_error=lambda call: (THROUGHPUT, 400) if call <= 4 else None).install(kinesis)
    sleeps = Sleeps()
    draws = iter([0.5, 0.0, 0.25, 0.999])

    outcome = KinesisWriter(kinesis, STREAM, sleep=sleeps, random=lambda: next(draws)).put(entries(2))

    assert outcome.ok
    assert sleeps.delays == pytest.approx([0.025, 0.0, 0.05, 0.3996])
    assert outcome.slept_s == pytest.approx(sum(sleeps.delays))


def test_backoff_ceiling_doubles_from_base_up_to_the_cap(kinesis: Any) -> None:
    custom = KinesisWriter(kinesis, STREAM, base_delay_s=0.1, max_delay_s=1.0)
    assert [custom.backoff_ceiling(retry) for retry in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_a_lost_connection_is_retried(kinesis: Any) -> None:
    faults = Faults(connection_error_calls={1, 2})
    faults.install(kinesis)
    batch = entries(4)

    outcome = writer(kinesis).put(batch)

    assert (outcome.delivered, outcome.calls, outcome.retries) == (4, 3, 2)
    assert_exactly_once(kinesis, batch)


def test_a_connection_that_never_comes_back_reports_every_entry(kinesis: Any) -> None:
    Faults(connection_error_calls=set(range(1, 10))).install(kinesis)

    outcome = writer(kinesis, max_attempts=3).put(entries(2))

    assert outcome.calls == 3
    assert outcome.error_codes == {"EndpointConnectionError": 2}
    assert outcome.undelivered[0].error_message == (
        'Could not connect to the endpoint URL: "https://kinesis.us-east-1.amazonaws.com/"'
    )


# --- (c) non-retryable errors -----------------------------------------------------------------


def test_a_missing_stream_is_reported_at_once(kinesis: Any) -> None:
    sleeps = Sleeps()
    batch = entries(3)

    outcome = KinesisWriter(kinesis, "no-such-stream", sleep=sleeps).put(batch)

    assert outcome.delivered == 0
    assert outcome.calls == 1
    assert outcome.error_codes == {"ResourceNotFoundException": 3}
    assert [entry.data for entry in outcome.undelivered] == [data for _, data in batch]
    assert sleeps.delays == []
    assert read_stream(kinesis) == []


@pytest.mark.parametrize("code", ["ValidationException", "AccessDeniedException", "KMSDisabledException"])
def test_a_non_retryable_call_error_surfaces_immediately(kinesis: Any, code: str) -> None:
    Faults(call_error=lambda call: (code, 400)).install(kinesis)
    sleeps = Sleeps()

    outcome = writer(kinesis, sleeps).put(entries(3))

    assert (outcome.delivered, outcome.calls, outcome.retries) == (0, 1, 0)
    assert outcome.error_codes == {code: 3}
    assert {entry.error_message for entry in outcome.undelivered} == {f"injected {code}"}
    assert {entry.attempts for entry in outcome.undelivered} == {1}
    assert sleeps.delays == []


def test_a_failed_batch_does_not_stop_the_next_batches(kinesis: Any) -> None:
    Faults(call_error=lambda call: ("ValidationException", 400) if call == 2 else None).install(kinesis)
    batch = entries(1200)

    outcome = writer(kinesis).put(batch)

    assert (outcome.delivered, outcome.calls) == (700, 3)
    assert [entry.index for entry in outcome.undelivered] == list(range(500, 1000))
    assert_exactly_once(kinesis, batch[:500] + batch[1000:])


def test_a_response_missing_results_is_reported_not_guessed_or_resent(kinesis: Any) -> None:
    Faults(truncate_results_calls={1}).install(kinesis)
    batch = entries(3)

    outcome = writer(kinesis).put(batch)

    assert outcome.delivered == 0
    assert outcome.calls == 1
    assert outcome.error_codes == {MISSING_RESULT: 3}
    assert outcome.undelivered[0].error_message == "PutRecords answered 2 results for 3 records"
    assert_exactly_once(kinesis, batch)  # Kinesis did store them; consumers dedupe


# --- concurrency ------------------------------------------------------------------------------


def test_one_writer_serves_several_threads(kinesis: Any) -> None:
    shared = writer(kinesis)
    batches = [[(SESSION_A, f"{thread}-{index}".encode()) for index in range(60)] for thread in range(4)]
    outcomes: list[PutOutcome] = []

    def run(batch: list[tuple[str, bytes]]) -> None:
        outcomes.append(shared.put(batch))

    threads = [threading.Thread(target=run, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcome.delivered for outcome in outcomes) == [60, 60, 60, 60]
    assert_exactly_once(kinesis, [entry for batch in batches for entry in batch])


def test_max_attempts_must_allow_one_call(kinesis: Any) -> None:
    with pytest.raises(ValueError, match="max_attempts must be at least 1, not 0"):
        KinesisWriter(kinesis, STREAM, max_attempts=0)


# --- the relay's PutRecords client ---------------------------------------------------------------


def test_the_relays_client_carries_every_record_byte_exact_in_one_signed_body(kinesis: Any) -> None:
    sent: list[Any] = []
    kinesis.meta.events.register("before-send.kinesis.PutRecords", lambda request, **_: sent.append(request))
    expected = entries(700, size=3245) + [(SESSION_A, bytes(range(256)))]

    outcome = writer(PutRecordsClient(kinesis)).put(expected)

    assert outcome == PutOutcome(delivered=701, calls=2, entries_sent=701)
    assert_exactly_once(kinesis, expected)
    request = sent[1]  # the model's JSON, built by hand, signed once
    body = json.loads(request.body)
    assert body["StreamName"] == STREAM and len(body["Records"]) == 201
    assert body["Records"][-1] == {"Data": base64.b64encode(bytes(range(256))).decode(), "PartitionKey": SESSION_A}
    assert request.headers["X-Amz-Target"] == "Kinesis_20131202.PutRecords"
    assert request.headers["Content-Type"] == "application/x-amz-json-1.1"
    assert re.fullmatch(r"AWS4-HMAC-SHA256 Credential=\w+/\d{8}/us-east-1/kinesis/aws4_request, "
                        r"SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target, "
                        r"Signature=[0-9a-f]{64}", request.headers["Authorization"])


def test_the_relays_client_keeps_partial_failures_and_retries(kinesis: Any) -> None:
    faults = Faults(entry_errors=lambda call, index, data: THROUGHPUT if call == 1 and index % 3 == 0 else None)
    faults.install(kinesis)
    expected = entries(30)

    outcome = writer(PutRecordsClient(kinesis)).put(expected)

    assert outcome.delivered == 30 and outcome.calls == 2 and outcome.entries_sent == 40
    assert_exactly_once(kinesis, expected)


def test_the_relays_client_retries_a_throttled_call_like_boto3(kinesis: Any) -> None:
    faults = Faults(call_error=lambda call: (THROUGHPUT, 400) if call == 1 else None)
    faults.install(kinesis)
    sleeps = Sleeps()
    expected = entries(5)

    outcome = writer(PutRecordsClient(kinesis), sleeps).put(expected)

    assert outcome == PutOutcome(delivered=5, calls=2, entries_sent=10, retries=1, slept_s=0.05, throttled=5)
    assert sleeps.delays == [0.05]
    assert_exactly_once(kinesis, expected)


def test_the_relays_client_reports_what_a_connection_failure_left_undelivered(kinesis: Any) -> None:
    Faults(connection_error_calls={1, 2}).install(kinesis)

    outcome = writer(PutRecordsClient(kinesis), max_attempts=2).put(entries(3))

    assert [(entry.index, entry.error_code, entry.attempts) for entry in outcome.undelivered] == [
        (0, "EndpointConnectionError", 2), (1, "EndpointConnectionError", 2), (2, "EndpointConnectionError", 2)]
    assert read_stream(kinesis) == []


def test_the_relays_client_raises_the_error_boto3_raises(kinesis: Any) -> None:
    records = [{"Data": b"x", "PartitionKey": SESSION_A}]
    with pytest.raises(ClientError) as from_boto3:
        kinesis.put_records(StreamName="no-such-stream", Records=records)
    with pytest.raises(ClientError) as from_ours:
        PutRecordsClient(kinesis).put_records(StreamName="no-such-stream", Records=records)

    assert type(from_ours.value) is type(from_boto3.value)
    assert from_ours.value.response["Error"] == from_boto3.value.response["Error"]
    assert from_ours.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
