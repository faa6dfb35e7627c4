"""Kinesis writer: PutRecords batching with retries of failed entries and throttled calls.

``KinesisWriter.put`` never raises for AWS errors and never drops a record silently: every
entry is either delivered or listed in ``PutOutcome.undelivered`` with the error that
stopped it. Kinesis delivers at least once, so a retried call may still write duplicates
(an answer lost in transit); consumers dedupe audio by (session, position).

Pass a boto3 Kinesis client whose own retries are off (``Config(retries={"total_max_attempts": 1})``)
or low: this writer already retries, and botocore's retries would multiply its attempts.
"""

from __future__ import annotations

import copy
import random as random_module
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

MAX_RECORDS_PER_CALL: Final = 500
MAX_BYTES_PER_CALL: Final = 5 * 1024 * 1024
# Data blob plus partition key (the stream's default maximum record size).
MAX_RECORD_BYTES: Final = 1024 * 1024
MAX_PARTITION_KEY_CHARS: Final = 256

# Whole-call errors worth another try: throttling, KMS throttling and server-side failures.
RETRYABLE_CALL_ERRORS: Final = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "LimitExceededException",
        "ThrottlingException",
        "Throttling",
        "KMSThrottlingException",
        "InternalFailure",
        "InternalFailureException",
        "InternalServerError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
# Per-entry error codes PutRecords reports for an entry that may succeed when sent again.
RETRYABLE_ENTRY_ERRORS: Final = frozenset(
    {"ProvisionedThroughputExceededException", "InternalFailure", "KMSThrottlingException"}
)

# Codes that mean "over the stream's (or its KMS key's) throughput": counted as throttles.
THROTTLE_ERRORS: Final = frozenset(
    {"ProvisionedThroughputExceededException", "LimitExceededException", "ThrottlingException", "Throttling",
     "KMSThrottlingException"}
)

# Codes this writer reports for entries it refused before calling Kinesis.
RECORD_TOO_LARGE: Final = "RecordTooLarge"
INVALID_PARTITION_KEY: Final = "InvalidPartitionKey"
MISSING_RESULT: Final = "MissingResult"


@dataclass(frozen=True, slots=True)
class UndeliveredEntry:
    index: int
    """Position of the entry in the sequence given to ``put``."""
    partition_key: str
    data: bytes = field(repr=False)
    error_code: str
    error_message: str
    attempts: int
    """How many PutRecords calls carried this entry (0: refused before any call)."""


@dataclass(frozen=True, slots=True)
class PutOutcome:
    delivered: int = 0
    undelivered: tuple[UndeliveredEntry, ...] = ()
    calls: int = 0
    """PutRecords calls made, failed ones included."""
    entries_sent: int = 0
    """Entries carried by those calls; above ``delivered`` when entries were sent again."""
    retries: int = 0
    """Backoff pauses taken before sending a call again."""
    slept_s: float = 0.0
    throttled: int = 0
    """Records Kinesis refused for throughput (a whole call refused counts all its records)."""

    @property
    def ok(self) -> bool:
        return not self.undelivered

    @property
    def error_codes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for entry in self.undelivered:
            counts[entry.error_code] = counts.get(entry.error_code, 0) + 1
        return counts


@dataclass(slots=True)
class _Tally:
    """Per-``put`` counters; never shared between calls."""

    delivered: int = 0
    undelivered: list[UndeliveredEntry] = field(default_factory=list)
    calls: int = 0
    entries_sent: int = 0
    retries: int = 0
    slept_s: float = 0.0
    throttled: int = 0

    def outcome(self) -> PutOutcome:
        return PutOutcome(
            delivered=self.delivered,
            undelivered=tuple(sorted(self.undelivered, key=lambda entry: entry.index)),
            calls=self.calls,
            entries_sent=self.entries_sent,
            retries=self.retries,
            slept_s=self.slept_s,
            throttled=self.throttled,
        )


@dataclass(slots=True)  # not frozen: a frozen dataclass pays a setattr call per field, per record
class _Entry:
    index: int
    partition_key: str
    data: bytes
    size: int


class KinesisWriter:
    """Writes (partition key, data) entries to one stream with PutRecords."""

    def __init__(
        self,
        client: Any,
        stream_name: str,
        max_attempts: int = 8,
        base_delay_s: float = 0.05,
        max_delay_s: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
        random: Callable[[], float] = random_module.random,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {max_attempts}")
        self._client = client
        self._stream_name = stream_name
        self._max_attempts = max_attempts
        self._base_delay_s = base_delay_s
        self._max_delay_s = max_delay_s
        self._sleep = sleep
        self._random = random

    @property
    def client(self) -> Any:
        return self._client

    def using(self, client: Any) -> KinesisWriter:
        """The same writer (stream, attempts, backoff) over another client with ``put_records``."""
        writer = copy.copy(self)
        writer._client = client
        return writer

    @property
    def stream_name(self) -> str:
        return self._stream_name

    def backoff_ceiling(self, retry: int) -> float:
        """Upper bound of the pause before retry number ``retry`` (1-based); the pause is a
        uniform draw below it ("full jitter")."""
        return min(self._max_delay_s, self._base_delay_s * (2 ** (retry - 1)))

    def put(self, entries: Sequence[tuple[str, bytes]]) -> PutOutcome:
        tally = _Tally()
        accepted = list(self._screen(entries, tally))
        for batch in _batches(accepted):
            self._send_batch(batch, tally)
        return tally.outcome()

    def _screen(self, entries: Sequence[tuple[str, bytes]], tally: _Tally) -> Iterator[_Entry]:
        for index, (partition_key, data) in enumerate(entries):
            blob = bytes(data)
            if not 1 <= len(partition_key) <= MAX_PARTITION_KEY_CHARS:
                tally.undelivered.append(
                    UndeliveredEntry(
                        index,
                        partition_key,
                        blob,
                        INVALID_PARTITION_KEY,
                        f"partition key has {len(partition_key)} characters; Kinesis takes 1 to"
                        f" {MAX_PARTITION_KEY_CHARS}",
                        attempts=0,
                    )
                )
                continue
            size = len(blob) + len(partition_key.encode("utf-8"))
            if size > MAX_RECORD_BYTES:
                tally.undelivered.append(
                    UndeliveredEntry(
                        index,
                        partition_key,
                        blob,
                        RECORD_TOO_LARGE,
                        f"data plus partition key is {size} bytes; a Kinesis record holds at most"
                        f" {MAX_RECORD_BYTES}",
                        attempts=0,
                    )
                )
                continue
            yield _Entry(index, partition_key, blob, size)

    def _send_batch(self, batch: list[_Entry], tally: _Tally) -> None:
        pending = batch
        attempt = 0
        while pending:
            attempt += 1
            if attempt > 1:
                self._pause(attempt - 1, tally)
            tally.calls += 1
            tally.entries_sent += len(pending)
            try:
                response = self._client.put_records(
                    StreamName=self._stream_name,
                    Records=[{"Data": entry.data, "PartitionKey": entry.partition_key} for entry in pending],
                )
            except ClientError as error:
                code, message, retryable = _classify_client_error(error)
                if code in THROTTLE_ERRORS:
                    tally.throttled += len(pending)
                if retryable and attempt < self._max_attempts:
                    continue
                _give_up(pending, code, message, attempt, tally)
                return
            except (BotoConnectionError, HTTPClientError) as error:
                if attempt < self._max_attempts:
                    continue
                _give_up(pending, type(error).__name__, str(error), attempt, tally)
                return
            except BotoCoreError as error:
                _give_up(pending, type(error).__name__, str(error), attempt, tally)
                return
            pending = self._settle(pending, response, attempt, tally)

    def _settle(self, sent: list[_Entry], response: Any, attempt: int, tally: _Tally) -> list[_Entry]:
        """Count what the response says; return the entries to send again."""
        results = response.get("Records", [])
        if len(results) != len(sent):
            # Cannot tell which entries were written: report all, never guess.
            _give_up(
                sent,
                MISSING_RESULT,
                f"PutRecords answered {len(results)} results for {len(sent)} records",
                attempt,
                tally,
            )
            return []
        again: list[_Entry] = []
        last_attempt = attempt >= self._max_attempts
        for entry, result in zip(sent, results):
            code = result.get("ErrorCode")
            if not code:
                tally.delivered += 1
                continue
            if code in THROTTLE_ERRORS:
                tally.throttled += 1
            if code in RETRYABLE_ENTRY_ERRORS and not last_attempt:
                again.append(entry)
            else:
                _give_up([entry], code, result.get("ErrorMessage", ""), attempt, tally)
        return again

    def _pause(self, retry: int, tally: _Tally) -> None:
        delay = self._random() * self.backoff_ceiling(retry)
        tally.retries += 1
        tally.slept_s += delay
        self._sleep(delay)


def _batches(entries: list[_Entry]) -> Iterator[list[_Entry]]:
    batch: list[_Entry] = []
    batch_bytes = 0
    for entry in entries:
        if batch and (len(batch) == MAX_RECORDS_PER_CALL or batch_bytes + entry.size > MAX_BYTES_PER_CALL):
            yield batch
            batch, batch_bytes = [], 0
        batch.append(entry)
        batch_bytes += entry.size
    if batch:
        yield batch


def _classify_client_error(error: ClientError) -> tuple[str, str, bool]:
    details = error.response.get("Error", {})
    code = str(details.get("Code", "Unknown"))
    message = str(details.get("Message", ""))
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    retryable = code in RETRYABLE_CALL_ERRORS or status >= 500 or status == 429
    return code, message, retryable


def _give_up(entries: Sequence[_Entry], code: str, message: str, attempts: int, tally: _Tally) -> None:
    for entry in entries:
        tally.undelivered.append(
            UndeliveredEntry(entry.index, entry.partition_key, entry.data, code, message, attempts)
        )


def read_stream(client: Any, stream_name: str) -> list[tuple[str, bytes]]:
    """Every record now in the stream, as (partition key, data), shard by shard from the start.

    For ``audiohook export`` and tests; a production consumer would use the KCL or
    enhanced fan-out instead.
    """
    records: list[tuple[str, bytes]] = []
    for shard in client.list_shards(StreamName=stream_name)["Shards"]:
        iterator = client.get_shard_iterator(
            StreamName=stream_name, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            page = client.get_records(ShardIterator=iterator, Limit=10000)
            records.extend((record["PartitionKey"], record["Data"]) for record in page["Records"])
            iterator = page.get("NextShardIterator") if page["Records"] else None
    return records
