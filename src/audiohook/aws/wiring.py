"""Builds the service from settings with real boto3 clients (Lambda and local gateway).

Clients come from botocore directly: importing boto3 pulls in s3transfer and costs a
cold start ~130 ms for nothing. botocore honours ``AWS_ENDPOINT_URL``, so the same wiring
talks to AWS or to the embedded moto server. The @connections endpoint is ``https://<domainName>/<stage>`` unless
``CONNECTIONS_ENDPOINT`` overrides it (local gateway).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable

import botocore.session
from aws_lambda_powertools.utilities.data_classes import APIGatewayWebSocketEvent
from botocore.config import Config

from audiohook.aws.emf import EmfMetrics
from audiohook.aws.keys import ClientSecrets
from audiohook.aws.poster import ConnectionPoster
from audiohook.aws.service import AudioHookService
from audiohook.aws.store import SessionStore
from audiohook.aws.stream import KinesisWriter
from audiohook.config import Settings


# Every AWS call of an invocation is bounded, so that the worst path ends well inside the
# functions' Timeout (docs/architecture.md, "Time budget"): API Gateway answers a function
# that raises or times out with its own error frame, which Genesys reads as a malformed
# message. DynamoDB and Secrets Manager: one retry after 50 ms (botocore's legacy mode
# backoff for DynamoDB; standard mode waits up to 1 s); each attempt at most 0.5 s to connect
# and 1 s to answer (in-region, single-item requests answer in milliseconds; AWS_CALL_TIMEOUT_S,
# set by the local stack only, scales both). Every conditional write is safe to retry after a
# timeout whose first attempt did succeed (store.py).
def _config(total_attempts: int) -> Config:
    timeout_s = Settings.from_env().aws_call_timeout_s
    retries: dict[str, Any] = {"total_max_attempts": total_attempts}
    if total_attempts > 1:
        retries["mode"] = "legacy"
    return Config(retries=retries, connect_timeout=timeout_s / 2, read_timeout=timeout_s, max_pool_connections=64)


POST_ATTEMPTS = 2  # per reply: one retry of a throttled post, after at most 0.1 s
KINESIS_ATTEMPTS = 2  # per PutRecords batch: one retry, after at most 0.1 s


def connections_endpoint(settings: Settings, event: APIGatewayWebSocketEvent) -> str:
    if settings.connections_endpoint:
        return settings.connections_endpoint
    context = event.request_context
    return f"https://{context.domain_name}/{context.stage}"


@lru_cache(maxsize=1)
def _botocore() -> botocore.session.Session:
    return botocore.session.get_session()


def client(service: str, config: Config | None = None, **kwargs: Any) -> Any:
    """A botocore client with the time budget: two attempts unless ``config`` says otherwise."""
    return _botocore().create_client(service, config=config or _config(2), **kwargs)


def single_attempt_client(service: str, **kwargs: Any) -> Any:
    """For KinesisWriter and ConnectionPoster, which retry with their own backoff: botocore must
    not multiply it."""
    return client(service, _config(1), **kwargs)


@lru_cache(maxsize=16)
def poster_for_endpoint(endpoint: str) -> ConnectionPoster:
    return ConnectionPoster(single_attempt_client("apigatewaymanagementapi", endpoint_url=endpoint),
                            max_attempts=POST_ATTEMPTS)


def build_service(settings: Settings | None = None, *, metrics: Any = None, **clients: Any) -> AudioHookService:
    settings = settings or Settings.from_env()
    dynamodb = clients.get("dynamodb") or client("dynamodb")
    kinesis = clients.get("kinesis")
    # The Lambda's own clients get the time budget; a front that brings its own Kinesis client
    # (the relay, with no function Timeout) keeps the writer's default retries.
    writer_options: dict[str, Any] = {}
    if kinesis is None:
        kinesis = single_attempt_client("kinesis")
        writer_options = {"max_attempts": KINESIS_ATTEMPTS, "max_delay_s": 0.1}
    return AudioHookService(
        settings,
        SessionStore(dynamodb, settings.sessions_table, settings.session_ttl_s),
        KinesisWriter(kinesis, settings.audio_stream, **writer_options),
        poster_for=lambda event: poster_for_endpoint(connections_endpoint(settings, event)),
        client_secrets=ClientSecrets(lambda: client("secretsmanager"), settings.api_keys_secret,
                                     settings.secrets_cache_s),
        metrics=metrics,
    )


def lambda_handler(route: str) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    """The Lambda entry point of one route; the service is built once per container, lazily."""
    from aws_lambda_powertools import Logger

    logger = Logger(service="audiohook")
    built: dict[Settings, tuple[AudioHookService, EmfMetrics]] = {}

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        # Local fronts pass no Lambda context and run routes in threads of one process, so keys
        # are added per thread by hand, not by inject_lambda_context; the service adds the
        # session's ids once it knows them. Nothing of a previous invocation stays.
        logger.thread_safe_clear_keys()
        logger.thread_safe_append_keys(
            route=route, request_id=getattr(context, "aws_request_id", None),
            connection_id=event.get("requestContext", {}).get("connectionId"),
            # API Gateway's id of the request: the `requestId` of its error frame, when it sends one.
            api_request_id=event.get("requestContext", {}).get("requestId"),
        )
        try:
            # Built once per container; rebuilt only if the environment changed (a local stack
            # restarted in the same process), never per invocation.
            settings = Settings.from_env()
            if settings not in built:
                built.clear()
                metrics = EmfMetrics(settings.metrics_namespace)
                built[settings] = (build_service(settings, metrics=metrics), metrics)
            service, metrics = built[settings]
            try:
                return getattr(service, f"on_{route}")(event).response
            finally:
                metrics.flush()
        except BaseException as error:
            if isinstance(error, (KeyboardInterrupt, SystemExit)):
                raise
            # A route must answer: $connect refuses the upgrade, the others acknowledge.
            logger.exception("route failed", extra={"route": route})
            return {"statusCode": 500 if route == "connect" else 200}

    return handler
