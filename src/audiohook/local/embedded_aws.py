"""Embedded AWS for the local stack: moto's HTTP server holding the resources of ``template.yaml``.

The DynamoDB table, the Kinesis stream and the Secrets Manager secret are created from the
template's own resource definitions (not from a copy of them), so the local stack and a
deployed stack cannot drift apart. The handlers' environment variables come from the
template too (``Globals`` and each function's ``Environment``), resolved against the local
resources.

Usage::

    with EmbeddedAws("template.yaml") as aws:
        os.environ.update(aws.env())          # what the handlers need
        aws.client("dynamodb").scan(TableName=aws.resources.table_name)

Only what matters locally is translated: key schema, billing mode, indexes, TTL, DynamoDB
streams; stream mode, shard count, retention; secret name and description. Encryption,
point-in-time recovery, tags and deletion policies are ignored. The secret's content is
replaced by a demo API key map (see ``DEMO_API_KEY`` / ``DEMO_CLIENT_SECRET``).

moto keeps its state per process: a second ``EmbeddedAws`` in the same process with the
same stack name reuses the resources the first one created.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import boto3

logger = logging.getLogger(__name__)

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"  # moto's default account
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
DEFAULT_STACK_NAME = "audiohook-local"
# What the local stack's one-request-at-a-time moto server adds to the settings (see env()).
LOCAL_QUEUEING_ALLOWANCE = {"AWS_CALL_TIMEOUT_S": "10", "PREDECESSOR_WAIT_MS": "10000"}

# Fixed, documented demo credentials for the local stack only (never deployed): the CLI's
# `call`/`probe` use them by default, so a local run needs no setup.
DEMO_API_KEY = "audiohook-local-demo-key"
DEMO_CLIENT_SECRET = base64.b64encode(b"audiohook-local-demo-secret-0001").decode()

TABLE_TYPE = "AWS::DynamoDB::Table"
STREAM_TYPE = "AWS::Kinesis::Stream"
SECRET_TYPE = "AWS::SecretsManager::Secret"
FUNCTION_TYPES = ("AWS::Serverless::Function", "AWS::Lambda::Function")
# The properties translated locally; the others (encryption, recovery, tags...) are ignored.
TABLE_PROPERTIES = (
    "AttributeDefinitions", "KeySchema", "BillingMode", "ProvisionedThroughput", "GlobalSecondaryIndexes",
    "LocalSecondaryIndexes", "StreamSpecification", "TimeToLiveSpecification",
)
STREAM_PROPERTIES = ("StreamModeDetails", "ShardCount", "RetentionPeriodHours")

# Settings variable -> resource type it names, for templates that do not wire it themselves.
RESOURCE_VARIABLES = {"SESSIONS_TABLE": TABLE_TYPE, "AUDIO_STREAM": STREAM_TYPE, "API_KEYS_SECRET": SECRET_TYPE}


class TemplateError(ValueError):
    """The template cannot be read, or uses something the local stack cannot reproduce."""


_NO_VALUE = object()  # AWS::NoValue: the property is left out
_SUB_VARIABLE = re.compile(r"\$\{([^}!][^}]*)\}")


class Template:
    """A decoded SAM/CloudFormation template plus the values its intrinsics resolve to locally."""

    def __init__(self, path: str | Path, *, stack_name: str = DEFAULT_STACK_NAME, region: str = REGION,
                 account_id: str = ACCOUNT_ID) -> None:
        from cfnlint.decode import decode

        self.path = Path(path)
        body, problems = decode(str(self.path))
        if body is None:
            raise TemplateError(f"cannot read {self.path}: " + "; ".join(str(problem) for problem in problems))
        self.body: dict[str, Any] = body
        self.stack_name = stack_name
        self.region = region
        self.account_id = account_id
        # Ref / Fn::GetAtt values of the resources created so far, by logical id.
        self.refs: dict[str, str] = {}
        self.attributes: dict[tuple[str, str], str] = {}

    @property
    def directory(self) -> Path:
        return self.path.parent

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        return dict(self.body.get("Resources", {}))

    def resources_of_type(self, *types: str) -> dict[str, dict[str, Any]]:
        return {name: resource for name, resource in self.resources.items() if resource.get("Type") in types}

    def properties(self, logical_id: str) -> dict[str, Any]:
        return dict(self.resources[logical_id].get("Properties") or {})

    def resolved_properties(self, logical_id: str, names: tuple[str, ...]) -> dict[str, Any]:
        """The named properties, resolved; others are ignored (and may use any intrinsic)."""
        properties = self.properties(logical_id)
        return {name: self.resolve(properties[name]) for name in names if name in properties}

    def function_globals(self) -> dict[str, Any]:
        return dict((self.body.get("Globals") or {}).get("Function") or {})

    def parameter(self, name: str) -> str:
        parameter = (self.body.get("Parameters") or {}).get(name)
        if parameter is None or "Default" not in parameter:
            raise TemplateError(f"parameter {name} has no default value; the local stack uses defaults only")
        default = parameter["Default"]
        return ",".join(map(str, default)) if isinstance(default, list) else str(default)

    def resolve(self, value: Any) -> Any:
        """Resolve Ref, Fn::Sub, Fn::Join and Fn::GetAtt (of created resources) in ``value``."""
        if isinstance(value, dict):
            if len(value) == 1:
                ((key, argument),) = value.items()
                if key == "Ref":
                    return self._ref(str(argument))
                if key == "Fn::Sub":
                    return self._sub(argument)
                if key == "Fn::Join":
                    separator, items = argument
                    return str(separator).join(str(self.resolve(item)) for item in items)
                if key == "Fn::GetAtt":
                    return self._get_att(argument)
                if key.startswith("Fn::") or key == "Condition":
                    raise TemplateError(f"{key} is not supported by the local stack")
            resolved = {str(key): self.resolve(item) for key, item in value.items()}
            return {key: item for key, item in resolved.items() if item is not _NO_VALUE}
        if isinstance(value, list):
            return [item for item in map(self.resolve, value) if item is not _NO_VALUE]
        if isinstance(value, str):
            return str(value)
        return value

    def _ref(self, name: str) -> Any:
        pseudo = {
            "AWS::StackName": self.stack_name,
            "AWS::Region": self.region,
            "AWS::AccountId": self.account_id,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackId": f"arn:aws:cloudformation:{self.region}:{self.account_id}:stack/{self.stack_name}/"
                            f"{uuid.uuid5(uuid.NAMESPACE_URL, self.stack_name)}",
        }
        if name == "AWS::NoValue":
            return _NO_VALUE
        if name in pseudo:
            return pseudo[name]
        if name in (self.body.get("Parameters") or {}):
            return self.parameter(name)
        if name in self.refs:
            return self.refs[name]
        raise TemplateError(f"Ref {name}: not a parameter or a resource the local stack creates")

    def _get_att(self, argument: Any) -> str:
        logical_id, attribute = argument.split(".", 1) if isinstance(argument, str) else argument
        try:
            return self.attributes[(str(logical_id), str(attribute))]
        except KeyError:
            raise TemplateError(f"Fn::GetAtt {logical_id}.{attribute}: not known locally") from None

    def _sub(self, argument: Any) -> str:
        text, variables = (argument, {}) if isinstance(argument, str) else argument
        local = {str(name): str(self.resolve(value)) for name, value in dict(variables).items()}

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in local:
                return local[name]
            if "." in name and not name.startswith("AWS::"):
                return self._get_att(name)
            return str(self._ref(name))

        # "${!Name}" is CloudFormation's escape for a literal "${Name}".
        return _SUB_VARIABLE.sub(substitute, str(text)).replace("${!", "${")


@dataclass(frozen=True)
class LocalResources:
    table_name: str
    stream_name: str
    secret_name: str
    secret_arn: str


@dataclass(frozen=True)
class DemoCredentials:
    """The API key and its base64 client secret stored in the local secret."""

    api_key: str
    client_secret: str


def _atomic_moto_server(host: str, port: int) -> Any:
    """moto's threaded server, serving one request at a time.

    DynamoDB evaluates a ConditionExpression and applies the write atomically; moto does not
    lock, so two concurrent requests could both pass the same condition and the sequencing
    (docs/sequencing.md) would see a lost update that AWS never produces. Serialising whole
    requests gives moto DynamoDB's per-request atomicity; handlers still run concurrently.
    """
    import itertools
    import threading

    from moto.server import DomainDispatcherApplication, MotoRequestHandler, ThreadedMotoServer, create_backend_app
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)
    # First come, first served: threading.Lock is not fair, and under a flood of concurrent
    # invocations an unlucky request could wait for seconds while later ones pass, which a
    # DynamoDB request never does (and which the Lambda path would read as a sequence gap).
    turn = threading.Condition()
    tickets = itertools.count()
    serving = [0]

    def one_request_at_a_time(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with turn:
            ticket = next(tickets)
            turn.wait_for(lambda: serving[0] == ticket)
        try:
            return list(app(environ, start_response))
        finally:
            with turn:
                serving[0] += 1
                turn.notify_all()

    class KeepAlive(MotoRequestHandler):
        # HTTP/1.0 (werkzeug's default) means a new TCP connection and server thread per call.
        protocol_version = "HTTP/1.1"

    class AtomicMotoServer(ThreadedMotoServer):
        def _server_entry(self) -> None:  # the parent's, with the locking app and keep-alive
            self._server = make_server(self._ip_address, self._port, one_request_at_a_time, True,
                                       request_handler=KeepAlive)
            self._server_ready_event.set()
            self._server.serve_forever()

    return AtomicMotoServer(ip_address=host, port=port, verbose=False)


class EmbeddedAws:
    """moto's HTTP server (or any endpoint given) with the template's table, stream and secret."""

    def __init__(self, template_path: str | Path = "template.yaml", *, stack_name: str = DEFAULT_STACK_NAME,
                 demo_api_key: str = DEMO_API_KEY, demo_client_secret: str = DEMO_CLIENT_SECRET,
                 endpoint_url: str | None = None, host: str = "127.0.0.1", port: int = 0,
                 in_process: bool = False) -> None:
        """``in_process``: no server; the caller has moto's ``mock_aws`` active (tests, benchmarks)."""
        self.template = Template(template_path, stack_name=stack_name)
        self._in_process = in_process
        self.demo = DemoCredentials(demo_api_key, demo_client_secret)
        self._endpoint_url = endpoint_url
        self._host = host
        self._port = port
        self._server: Any = None
        self._resources: LocalResources | None = None
        self._env: dict[str, str] = {}
        self._session = boto3.session.Session(
            aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=self.template.region,
        )
        self._clients: dict[str, Any] = {}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Self:
        if self._endpoint_url is None and not self._in_process:
            _quiet_access_log()
            self._server = _atomic_moto_server(self._host, self._port)
            self._server.start()
            host, port = self._server.get_host_and_port()
            self._endpoint_url = f"http://{host}:{port}"
        try:
            self._resources = self._create_resources()
            self._env = self._handler_env()
        except BaseException:
            self.stop()
            raise
        logger.info("embedded AWS ready at %s", self._endpoint_url)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
            self._endpoint_url = None
            self._clients.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ accessors
    @property
    def endpoint_url(self) -> str:
        if self._endpoint_url is None:
            raise RuntimeError("EmbeddedAws is not started")
        return self._endpoint_url

    @property
    def resources(self) -> LocalResources:
        if self._resources is None:
            raise RuntimeError("EmbeddedAws is not started")
        return self._resources

    @property
    def region(self) -> str:
        return self.template.region

    def client(self, service: str) -> Any:
        """A boto3 client of the embedded AWS (fake credentials), one per service."""
        if service not in self._clients:
            self._clients[service] = self._session.client(  # type: ignore[call-overload]
                service, endpoint_url=self._endpoint_url
            )
        return self._clients[service]

    def env(self) -> dict[str, str]:
        """Environment variables for the handlers: the template's, resolved locally, plus AWS access."""
        endpoint = {} if self._in_process else {"AWS_ENDPOINT_URL": self.endpoint_url}
        return {
            **self._env,
            **endpoint,
            **FAKE_CREDENTIALS,
            # A session token left in the shell would be sent with the fake keys.
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            # Local only: this moto server serves one request at a time (DynamoDB's atomicity),
            # so under a flood of invocations a call may queue there for seconds; in AWS it does
            # not. Each call may take that long, and a message may reach the mailbox that much
            # after its successor before it counts as missing.
            **({} if self._in_process else LOCAL_QUEUEING_ALLOWANCE),
        }

    # ------------------------------------------------------------------ resources
    def _create_resources(self) -> LocalResources:
        tables = [self._create_table(name) for name in self.template.resources_of_type(TABLE_TYPE)]
        streams = [self._create_stream(name) for name in self.template.resources_of_type(STREAM_TYPE)]
        secrets = [self._create_secret(name) for name in self.template.resources_of_type(SECRET_TYPE)]
        if len(tables) != 1 or len(streams) != 1 or len(secrets) != 1:
            raise TemplateError(
                f"expected one table, one stream and one secret in {self.template.path}, "
                f"found {len(tables)}, {len(streams)} and {len(secrets)}"
            )
        self._wait_for_streams(streams)
        secret_name, secret_arn = secrets[0]
        self.client("secretsmanager").put_secret_value(
            SecretId=secret_arn, SecretString=json.dumps({self.demo.api_key: self.demo.client_secret})
        )
        return LocalResources(tables[0], streams[0], secret_name, secret_arn)

    def _physical_name(self, logical_id: str, name_property: str) -> str:
        properties = self.template.properties(logical_id)
        if name_property in properties:
            return str(self.template.resolve(properties[name_property]))
        # CloudFormation would add a random suffix; a stable name is friendlier locally.
        return f"{self.template.stack_name}-{logical_id}"

    def _create_table(self, logical_id: str) -> str:
        properties = self.template.resolved_properties(logical_id, TABLE_PROPERTIES)
        name = self._physical_name(logical_id, "TableName")
        dynamodb = self.client("dynamodb")
        try:
            description = dynamodb.create_table(**table_request(name, properties))
            arn = description["TableDescription"]["TableArn"]
        except dynamodb.exceptions.ResourceInUseException:
            arn = dynamodb.describe_table(TableName=name)["Table"]["TableArn"]
        ttl = properties.get("TimeToLiveSpecification")
        ttl_status = dynamodb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]["TimeToLiveStatus"]
        if ttl and _is_true(ttl.get("Enabled")) and ttl_status != "ENABLED":
            dynamodb.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": str(ttl["AttributeName"])},
            )
        self.template.refs[logical_id] = name
        self.template.attributes[(logical_id, "Arn")] = arn
        return name

    def _create_stream(self, logical_id: str) -> str:
        properties = self.template.resolved_properties(logical_id, STREAM_PROPERTIES)
        name = self._physical_name(logical_id, "Name")
        kinesis = self.client("kinesis")
        try:
            kinesis.create_stream(**stream_request(name, properties))
        except kinesis.exceptions.ResourceInUseException:
            pass
        retention = int(properties.get("RetentionPeriodHours", 24))
        self._wait_for_streams([name])
        if retention > 24:
            current = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
            if current["RetentionPeriodHours"] < retention:
                kinesis.increase_stream_retention_period(StreamName=name, RetentionPeriodHours=retention)
        summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
        self.template.refs[logical_id] = name
        self.template.attributes[(logical_id, "Arn")] = summary["StreamARN"]
        return name

    def _create_secret(self, logical_id: str) -> tuple[str, str]:
        properties = self.template.resolved_properties(logical_id, ("Description",))
        name = self._physical_name(logical_id, "Name")
        secrets = self.client("secretsmanager")
        request: dict[str, Any] = {"Name": name, "SecretString": "{}", **properties}
        try:
            arn = secrets.create_secret(**request)["ARN"]
        except secrets.exceptions.ResourceExistsException:
            arn = secrets.describe_secret(SecretId=name)["ARN"]
        # CloudFormation's Ref of a secret is its ARN.
        self.template.refs[logical_id] = arn
        self.template.attributes[(logical_id, "Id")] = arn
        return name, arn

    def _wait_for_streams(self, names: list[str], timeout_s: float = 10.0) -> None:
        kinesis = self.client("kinesis")
        deadline = time.monotonic() + timeout_s
        for name in names:
            while kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"][
                "StreamStatus"
            ] != "ACTIVE":
                if time.monotonic() > deadline:
                    raise TimeoutError(f"stream {name} is not ACTIVE after {timeout_s} s")
                time.sleep(0.05)

    # ------------------------------------------------------------------ environment
    def _handler_env(self) -> dict[str, str]:
        """The functions' environment variables, with the values they would have once deployed.

        The local gateway runs every handler in one process, so a variable must not differ
        between functions. Variables naming something that only exists once deployed (the
        API id in CONNECTIONS_ENDPOINT, say) are left out; the gateway sets its own.
        """
        sources = [self.template.function_globals()] + [
            self.template.properties(name) for name in self.template.resources_of_type(*FUNCTION_TYPES)
        ]
        env: dict[str, str] = {}
        for source in sources:
            for name, value in dict((source.get("Environment") or {}).get("Variables") or {}).items():
                try:
                    resolved = self.template.resolve(value)
                except TemplateError as error:
                    logger.debug("environment variable %s left out locally: %s", name, error)
                    continue
                if name in env and env[name] != str(resolved):
                    raise TemplateError(
                        f"{name} differs between functions; the local gateway runs all handlers in one process"
                    )
                env[str(name)] = str(resolved)
        for name, resource_type in RESOURCE_VARIABLES.items():
            if name not in env:
                (logical_id,) = self.template.resources_of_type(resource_type)
                env[name] = self.template.refs[logical_id]
        return env


def table_request(name: str, properties: Mapping[str, Any]) -> dict[str, Any]:
    """CloudFormation ``AWS::DynamoDB::Table`` properties -> ``create_table`` arguments."""
    request: dict[str, Any] = {
        "TableName": name,
        "AttributeDefinitions": properties["AttributeDefinitions"],
        "KeySchema": properties["KeySchema"],
        "BillingMode": properties.get("BillingMode", "PROVISIONED"),
    }
    if "ProvisionedThroughput" in properties:
        request["ProvisionedThroughput"] = _throughput(properties["ProvisionedThroughput"])
    for index_kind in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
        if index_kind in properties:
            request[index_kind] = [_index(index) for index in properties[index_kind]]
    if "StreamSpecification" in properties:
        request["StreamSpecification"] = {
            "StreamEnabled": True, "StreamViewType": properties["StreamSpecification"]["StreamViewType"],
        }
    return request


def stream_request(name: str, properties: Mapping[str, Any]) -> dict[str, Any]:
    """CloudFormation ``AWS::Kinesis::Stream`` properties -> ``create_stream`` arguments."""
    mode = (properties.get("StreamModeDetails") or {}).get("StreamMode", "PROVISIONED")
    request: dict[str, Any] = {"StreamName": name, "StreamModeDetails": {"StreamMode": mode}}
    if mode == "PROVISIONED":
        request["ShardCount"] = int(properties.get("ShardCount", 1))
    return request


def _throughput(value: Mapping[str, Any]) -> dict[str, int]:
    return {key: int(value[key]) for key in ("ReadCapacityUnits", "WriteCapacityUnits")}


def _index(index: Mapping[str, Any]) -> dict[str, Any]:
    request = {key: index[key] for key in ("IndexName", "KeySchema", "Projection") if key in index}
    if "ProvisionedThroughput" in index:
        request["ProvisionedThroughput"] = _throughput(index["ProvisionedThroughput"])
    return request


def _quiet_access_log() -> None:
    """Silence moto's one-line-per-request access log, unless someone configured it already."""
    werkzeug_logger = logging.getLogger("werkzeug")
    if werkzeug_logger.level == logging.NOTSET:
        werkzeug_logger.setLevel(logging.WARNING)


def _is_true(value: Any) -> bool:
    return value is True or str(value).lower() == "true"
