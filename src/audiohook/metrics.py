"""The metrics both fronts publish: names, units and dimensions, in one place (no I/O).

Every front emits CloudWatch embedded metric format (EMF) in the namespace
``POWERTOOLS_METRICS_NAMESPACE`` (``AudioHook``) with the same dimensions: ``service``
(powertools' own, ``POWERTOOLS_SERVICE_NAME``) and :data:`FRONT` (:class:`Front`). The
Lambda path emits once per invocation (:class:`audiohook.aws.wiring.EmfMetrics`); the relay
aggregates in memory and emits once per interval (:mod:`audiohook.relay.metrics`).

A metric with a ``breakdown`` is published twice: the total under the common dimensions
(what alarms watch) and once per value of the breakdown dimension (a bounded set of
values, e.g. the kind of a protocol error), like AWS/Lambda ``Errors`` with and without
``FunctionName``.

template.yaml's alarms, dashboard and scaling policy name these metrics; a test keeps them
in step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

NAMESPACE = "AudioHook"
SERVICE = "audiohook"
SERVICE_DIMENSION = "service"  # powertools Metrics' own dimension name
FRONT = "Front"


class Front(StrEnum):
    APIGATEWAY = "apigateway"  # the Lambda functions (and the local gateway that runs them)
    RELAY = "relay"


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str  # a CloudWatch unit, as powertools' MetricUnit names it
    meaning: str
    breakdown: str | None = None  # dimension of the per-value copy (bounded values)
    gauge: bool = False  # a level sampled by a long-running process, not a count of events


CONNECTIONS = Metric("Connections", "Count", "upgrades accepted")
UPGRADES_REJECTED = Metric("UpgradesRejected", "Count", "upgrades refused (401, 503 draining, 500)",
                           breakdown="Reason")
PROBE_SESSIONS = Metric("ProbeSessions", "Count", "sessions opened by a connection probe (null ids)")
CALL_SESSIONS = Metric("CallSessions", "Count", "sessions opened for a call")
ACTIVE_SESSIONS = Metric("ActiveSessions", "Count", "sessions connected to one relay task", gauge=True)
PROTOCOL_ERRORS = Metric("ProtocolErrors", "Count", "sessions ended by a client protocol error",
                         breakdown="Kind")
INPUT_IGNORED = Metric("InputIgnored", "Count", "input after the end of a session (not answered)")
DUPLICATE_MESSAGES = Metric("DuplicateMessages", "Count", "client messages delivered twice (ignored)")
GONE_CONNECTIONS = Metric("GoneConnections", "Count", "replies dropped: the connection was already gone")
AUDIO_FRAMES = Metric("AudioFrames", "Count", "audio frames accepted")
AUDIO_BYTES = Metric("AudioBytes", "Bytes", "audio bytes accepted")
AUDIO_ACK_DELAY = Metric("AudioAckDelay", "Milliseconds", "frame receipt to Kinesis acknowledgement")
KINESIS_THROTTLES = Metric("KinesisThrottles", "Count", "records Kinesis refused for throughput")
KINESIS_RETRIES = Metric("KinesisRetries", "Count", "PutRecords calls or records sent again")
RECORDS_UNDELIVERED = Metric("RecordsUndelivered", "Count", "records Kinesis never took after every retry")
AUDIO_GAPS = Metric("AudioGaps", "Count", "gap records: audio that never reached Kinesis")
AUDIO_DROPPED_FRAMES = Metric("AudioDroppedFrames", "Count", "audio frames lost (each is in a gap record)")
AUDIO_DROPPED_BYTES = Metric("AudioDroppedBytes", "Bytes", "audio bytes lost (each is in a gap record)")
BUFFERED_BYTES = Metric("BufferedBytes", "Bytes", "records held by one relay task for Kinesis", gauge=True)
CONTROL_ACTIONS = Metric("ControlActions", "Count", "server-initiated pause, resume, event, disconnect, reconnect",
                         breakdown="Action")
RECONNECTS = Metric("Reconnects", "Count", "sessions opened to continue another (open.continuedSessions)")
SESSION_ID_CONFLICTS = Metric("SessionIdConflicts", "Count", "upgrades refused (409): the session id is live elsewhere")
INPUTS_DROPPED = Metric("InputsDropped", "Count", "Lambda path: inputs refused by a full mailbox")
LEASES_LOST = Metric("LeasesLost", "Count", "Lambda path: a lease expired under its holder and was taken over")
POST_FAILURES = Metric("PostFailures", "Count", "posts to a connection that failed for a reason other than gone")

ALL: tuple[Metric, ...] = (
    CONNECTIONS, UPGRADES_REJECTED, PROBE_SESSIONS, CALL_SESSIONS, ACTIVE_SESSIONS, PROTOCOL_ERRORS,
    INPUT_IGNORED, DUPLICATE_MESSAGES, GONE_CONNECTIONS, AUDIO_FRAMES, AUDIO_BYTES, AUDIO_ACK_DELAY,
    KINESIS_THROTTLES, KINESIS_RETRIES, RECORDS_UNDELIVERED, AUDIO_GAPS, AUDIO_DROPPED_FRAMES,
    AUDIO_DROPPED_BYTES, BUFFERED_BYTES, CONTROL_ACTIONS, RECONNECTS, SESSION_ID_CONFLICTS, INPUTS_DROPPED,
    LEASES_LOST, POST_FAILURES,
)
BY_NAME: dict[str, Metric] = {metric.name: metric for metric in ALL}
# Levels only a long-running process has: a Lambda invocation cannot see the other connections.
RELAY_ONLY: frozenset[str] = frozenset(metric.name for metric in ALL if metric.gauge)

CONTROL_ACTION_VALUES = ("pause", "resume", "event", "disconnect", "reconnect")

# --- bounded breakdown values -------------------------------------------------------------
# Derived from the core's own wording of the problem (protocol.parse_client_message,
# session.receive/receive_audio, auth.verify_upgrade), first match wins; anything new is
# "other" until it is named here (a test runs every message the core can produce through it).
_PROTOCOL_ERROR_KINDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("too_large", re.compile(r"^text message of \d+ bytes exceeds")),
    ("malformed", re.compile(r"^message is not (valid JSON|a JSON object)")),
    ("version", re.compile(r"^unsupported version")),
    ("unknown_type", re.compile(r"^unknown message type")),
    ("invalid_message", re.compile(r"^invalid \w+ message: ")),
    ("sequence", re.compile(r"^\w+\.(seq|serverseq) is ")),
    ("session_id", re.compile(r"^\w+\.id .* does not match the session id")),
    ("organization", re.compile(r"organizationId .* does not match")),
    ("audio", re.compile(r"^audio frame")),
    ("state", re.compile(r"^unexpected \w+")),
)
PROTOCOL_ERROR_KINDS = tuple(kind for kind, _ in _PROTOCOL_ERROR_KINDS) + ("other",)

_UPGRADE_REJECTION_CLASSES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("replay", re.compile(r"nonce was already used")),
    ("clock", re.compile(r"is in the future|is older than|expired at")),
    ("missing_key", re.compile(r"^missing X-API-KEY")),
    ("unsigned", re.compile(r"^request is not signed")),
    ("bad_signature", re.compile(r"^signature does not verify")),
)
UPGRADE_REJECTION_CLASSES = tuple(name for name, _ in _UPGRADE_REJECTION_CLASSES) + (
    "malformed", "draining", "internal")


def protocol_error_kind(info: str) -> str:
    """The kind of a protocol error (one of :data:`PROTOCOL_ERROR_KINDS`) from its ``info``."""
    for kind, pattern in _PROTOCOL_ERROR_KINDS:
        if pattern.search(info):
            return kind
    return "other"


def upgrade_rejection_class(reason: str) -> str:
    """The class of a refused upgrade (one of :data:`UPGRADE_REJECTION_CLASSES`) from the
    verdict's reason; a signature that cannot be read or breaks AudioHook's policy is
    "malformed". "draining" and "internal" are the fronts' own (503, 500)."""
    for name, pattern in _UPGRADE_REJECTION_CLASSES:
        if pattern.search(reason):
            return name
    return "malformed"
