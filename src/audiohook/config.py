"""Every setting, read from the environment, with its default, in one place.

The SAM template, the local gateway and the relay set these variables; nothing else
in the code reads ``os.environ``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "")
    return int(raw) if raw.strip() else default


@dataclass(frozen=True)
class Settings:
    sessions_table: str = "audiohook-sessions"
    audio_stream: str = "audiohook-audio"
    api_keys_secret: str = "audiohook/api-keys"
    # Path+query Genesys signed. Empty: derive "/<stage>" from the event (execute-api URL).
    # Set it for a custom domain, e.g. "/audiohook" for wss://hooks.example.com/audiohook.
    request_target: str = ""
    # Comma separated "<format>/<channels>" in order of preference; "stereo" means two channels.
    media_preference: str = "PCMU/stereo,L16/stereo,PCMU/mono,L16/mono"
    # Comma separated language codes offered when open asks for supportedLanguages.
    supported_languages: str = ""
    start_paused: bool = False
    signature_max_age_s: int = 10
    signature_clock_skew_s: int = 5
    nonce_ttl_s: int = 300
    # Lambda path (docs/sequencing.md): how long a message ahead of its predecessor waits in the
    # mailbox (from when it was parked) before the next input reports the gap; how long the
    # invocation applying a session holds its lease (at least the longest Timeout of the
    # functions that take it, so an expired lease means its holder is dead); how many bytes
    # of inputs may wait in one session's mailbox (the item must stay below 400 KB).
    predecessor_wait_ms: int = 3000
    lease_ms: int = 15000
    mailbox_bytes: int = 128 * 1024
    session_ttl_s: int = 3 * 24 * 3600
    # Lambda path: a session whose connection is this old gets one `reconnect` ("connection
    # limit") from the next lease holder, before API Gateway cuts it at 2 hours (docs/control.md).
    reconnect_after_s: int = 6900
    # Control function: how long it waits for the lease holder to apply an action it parked.
    control_wait_ms: int = 5000
    # Override of the @connections endpoint (local gateway); empty: https://<domainName>/<stage>.
    connections_endpoint: str = ""
    secrets_cache_s: int = 300
    # Relay (audiohook.relay.server, the binary-capable front): listening port; how often buffered
    # audio goes to Kinesis (at most 200 ms keeps records close to real time); the cap on
    # audio held for Kinesis (reading pauses near it, frames beyond it become gap records);
    # how long a SIGTERM lets sessions finish before they get `disconnect`.
    relay_port: int = 8080
    relay_flush_ms: int = 1000
    relay_max_buffer_bytes: int = 256 * 1024 * 1024
    relay_drain_s: int = 60
    # How often the relay publishes its CloudWatch metrics (EMF lines on stdout).
    relay_metrics_s: int = 60
    # Relay control listener (docs/control.md): its port (second port, never behind the load
    # balancer; 0 = any free port, locally); the address other components reach it at when no
    # ECS task metadata says it (empty: the relay's bind host, 127.0.0.1 for 0.0.0.0); the role
    # ARNs whose presigned GetCallerIdentity it accepts (comma separated; empty: control off);
    # how often it polls the ECS task metadata for DesiredStatus STOPPED (ms).
    relay_control_port: int = 8081
    relay_control_host: str = ""
    control_role_arns: str = ""
    relay_metadata_poll_ms: int = 1000
    # The Control function runs outside the VPC; a second function inside it (in the relay's
    # subnets) makes the private call to the owning task. Empty: this process calls the task.
    control_relay_function: str = ""
    # Set by ECS in every container (task metadata endpoint v4); empty elsewhere.
    ecs_metadata_uri: str = ""
    metrics_namespace: str = "AudioHook"
    # Each attempt of an AWS call of the Lambda path: this long to answer, half of it to connect
    # (docs/architecture.md, "Time budget"). Only the local stack raises it: its moto server
    # serves one request at a time, so a flood of concurrent invocations queues there, which
    # DynamoDB never does.
    aws_call_timeout_s: float = 1.0
    # botocore reads AWS_ENDPOINT_URL itself; kept here so a change of it is a change of settings.
    aws_endpoint_url: str = ""

    @property
    def control_roles(self) -> frozenset[str]:
        return frozenset(arn.strip() for arn in self.control_role_arns.split(",") if arn.strip())

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        defaults = cls()
        return cls(
            sessions_table=env.get("SESSIONS_TABLE", defaults.sessions_table),
            audio_stream=env.get("AUDIO_STREAM", defaults.audio_stream),
            api_keys_secret=env.get("API_KEYS_SECRET", defaults.api_keys_secret),
            request_target=env.get("REQUEST_TARGET", defaults.request_target),
            media_preference=env.get("MEDIA_PREFERENCE", defaults.media_preference),
            supported_languages=env.get("SUPPORTED_LANGUAGES", defaults.supported_languages),
            start_paused=env.get("START_PAUSED", "").strip().lower() in ("1", "true", "yes"),
            signature_max_age_s=_int(env, "SIGNATURE_MAX_AGE_S", defaults.signature_max_age_s),
            signature_clock_skew_s=_int(env, "SIGNATURE_CLOCK_SKEW_S", defaults.signature_clock_skew_s),
            nonce_ttl_s=_int(env, "NONCE_TTL_S", defaults.nonce_ttl_s),
            predecessor_wait_ms=_int(env, "PREDECESSOR_WAIT_MS", defaults.predecessor_wait_ms),
            lease_ms=_int(env, "LEASE_MS", defaults.lease_ms),
            mailbox_bytes=_int(env, "MAILBOX_BYTES", defaults.mailbox_bytes),
            session_ttl_s=_int(env, "SESSION_TTL_S", defaults.session_ttl_s),
            reconnect_after_s=_int(env, "RECONNECT_AFTER_S", defaults.reconnect_after_s),
            control_wait_ms=_int(env, "CONTROL_WAIT_MS", defaults.control_wait_ms),
            connections_endpoint=env.get("CONNECTIONS_ENDPOINT", defaults.connections_endpoint),
            secrets_cache_s=_int(env, "SECRETS_CACHE_S", defaults.secrets_cache_s),
            relay_port=_int(env, "RELAY_PORT", defaults.relay_port),
            relay_flush_ms=_int(env, "RELAY_FLUSH_MS", defaults.relay_flush_ms),
            relay_max_buffer_bytes=_int(env, "RELAY_MAX_BUFFER_BYTES", defaults.relay_max_buffer_bytes),
            relay_drain_s=_int(env, "RELAY_DRAIN_S", defaults.relay_drain_s),
            relay_metrics_s=_int(env, "RELAY_METRICS_S", defaults.relay_metrics_s),
            relay_control_port=_int(env, "RELAY_CONTROL_PORT", defaults.relay_control_port),
            relay_control_host=env.get("RELAY_CONTROL_HOST", defaults.relay_control_host),
            control_role_arns=env.get("CONTROL_ROLE_ARNS", defaults.control_role_arns),
            relay_metadata_poll_ms=_int(env, "RELAY_METADATA_POLL_MS", defaults.relay_metadata_poll_ms),
            control_relay_function=env.get("CONTROL_RELAY_FUNCTION", defaults.control_relay_function),
            ecs_metadata_uri=env.get("ECS_CONTAINER_METADATA_URI_V4", defaults.ecs_metadata_uri),
            aws_endpoint_url=env.get("AWS_ENDPOINT_URL", ""),
            aws_call_timeout_s=float(env.get("AWS_CALL_TIMEOUT_S", "").strip() or defaults.aws_call_timeout_s),
            metrics_namespace=env.get("POWERTOOLS_METRICS_NAMESPACE", defaults.metrics_namespace),
        )
