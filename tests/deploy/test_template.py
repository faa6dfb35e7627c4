"""template.yaml, samconfig.toml and events/*.json: lint-clean, least privilege, and in
step with the code (environment variable names, table key, sample events)."""

from __future__ import annotations

import ast
import base64
import binascii
import hashlib
import hmac
import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import lint, lint_file
from cfnlint.config import ManualArgs

from conftest import FIXTURES
from conftest import REPO as ROOT

TEMPLATE = ROOT / "template.yaml"
EVENTS = ROOT / "events"
CONFIG_PY = ROOT / "src" / "audiohook" / "config.py"
VECTORS = FIXTURES / "signature-vectors.json"

FUNCTIONS = {
    "ConnectFunction": "on_connect.handler",
    "MessageFunction": "on_message.handler",
    "DisconnectFunction": "on_disconnect.handler",
    "ControlFunction": "on_control.handler",
}
ROUTES = {"$connect": "ConnectFunction", "$default": "MessageFunction", "$disconnect": "DisconnectFunction"}
REQUIRED_ENV = {
    "SESSIONS_TABLE",
    "AUDIO_STREAM",
    "API_KEYS_SECRET",
    "REQUEST_TARGET",
    "MEDIA_PREFERENCE",
    "POWERTOOLS_SERVICE_NAME",
    "POWERTOOLS_METRICS_NAMESPACE",
    "LOG_LEVEL",
}
# Read by Powertools itself rather than by audiohook.config.
POWERTOOLS_ENV = {"POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE", "LOG_LEVEL"}
SESSION_ID = "30b0e395-84d3-4570-ac13-9a62d8f514c0"
CONNECTION_ID = "ITbAHeRmIAMCF3g="


# ----------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def resources(template: dict[str, Any]) -> dict[str, Any]:
    return template["Resources"]


def _of_type(resources: dict[str, Any], rtype: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in resources.items() if r["Type"] == rtype}


def _function_props(template: dict[str, Any], name: str) -> dict[str, Any]:
    """A function's properties with the Globals.Function values it inherits (SAM merge rules
    are richer, but the keys looked at here are plain scalars, lists or the env map)."""
    merged = dict(template.get("Globals", {}).get("Function", {}))
    for key, value in template["Resources"][name]["Properties"].items():
        if key == "Environment" and key in merged:
            merged[key] = {"Variables": {**merged[key]["Variables"], **value.get("Variables", {})}}
        else:
            merged[key] = value
    return merged


def _ref_name(value: Any) -> str | None:
    if isinstance(value, dict) and "Ref" in value:
        return value["Ref"]
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        att = value["Fn::GetAtt"]
        return att[0] if isinstance(att, list) else att.split(".")[0]
    return None


def _sub_text(value: Any) -> str:
    if isinstance(value, dict) and "Fn::Sub" in value:
        sub = value["Fn::Sub"]
        return sub if isinstance(sub, str) else sub[0]
    assert isinstance(value, str), value
    return value


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _policy_documents(resources: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """Every policy document of the template: SAM function policies and IAM resources."""
    for name, res in resources.items():
        props = res.get("Properties", {})
        if res["Type"] == "AWS::Serverless::Function":
            for policy in _as_list(props.get("Policies", [])):
                yield name, policy
        elif res["Type"] == "AWS::IAM::Role":
            for policy in props.get("Policies", []):
                yield name, policy["PolicyDocument"]
        elif res["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            yield name, props["PolicyDocument"]


def _statements(resources: dict[str, Any], function: str | None = None) -> list[dict[str, Any]]:
    """Every statement; a conditional one (``Fn::If``) as it is with the relay deployed."""
    out = []
    for owner, doc in _policy_documents(resources):
        if function is None or owner == function:
            for statement in _as_list(doc["Statement"]):
                if "Fn::If" in statement:
                    statement = statement["Fn::If"][1]
                out.append(statement)
    return out


# The one kind of action that takes no resource: what Lambda's VPC attachment describes.
UNSCOPABLE = {"ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets"}


def _config_env_names() -> set[str]:
    """The variable names Settings.from_env reads, taken from config.py's source."""
    tree = ast.parse(CONFIG_PY.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef) or node.name != "from_env":
            continue
        for call in ast.walk(node):
            if not isinstance(call, ast.Call):
                continue
            func = call.func
            if isinstance(func, ast.Attribute) and func.attr == "get":
                args = call.args[:1]  # env.get("NAME", default)
            elif isinstance(func, ast.Name) and func.id.startswith("_"):
                args = call.args[1:2]  # _int(env, "NAME", default)
            else:
                continue
            names.update(a.value for a in args if isinstance(a, ast.Constant) and isinstance(a.value, str))
    assert names, "found no environment variable names in Settings.from_env"
    return names


# ------------------------------------------------------------------ linting
def test_cfn_lint_reports_nothing() -> None:
    matches = lint_file(
        TEMPLATE,
        config=ManualArgs(regions=["us-east-1", "eu-west-1", "ap-southeast-2"], include_checks=["I"]),
    )
    assert [f"{m.rule.id} {m.message} (line {m.linenumber})" for m in matches] == []


def test_cfn_lint_api_does_find_problems() -> None:
    """Guards the test above against an API that silently lints nothing."""
    broken = TEMPLATE.read_text().replace("Runtime: python3.12", "Runtime: python2.7", 1)
    assert any(m.rule.id.startswith("E") for m in lint(broken, regions=["us-east-1"]))


# ---------------------------------------------------------------- WebSocket API
def test_websocket_api_routes_everything_to_default(resources: dict[str, Any]) -> None:
    (api,) = _of_type(resources, "AWS::ApiGatewayV2::Api").values()
    props = api["Properties"]
    assert props["ProtocolType"] == "WEBSOCKET"
    expression = props["RouteSelectionExpression"]
    assert expression.startswith("$request.body.")
    # AudioHook messages carry "type" (and "version", "id", ...); routing on any of their
    # fields would split one session's seq-ordered stream over several routes.
    assert expression.removeprefix("$request.body.") not in {
        "type",
        "action",
        "version",
        "id",
        "seq",
        "serverseq",
        "position",
        "parameters",
    }


def test_three_routes_with_lambda_proxy_integrations(resources: dict[str, Any]) -> None:
    routes = _of_type(resources, "AWS::ApiGatewayV2::Route")
    integrations = _of_type(resources, "AWS::ApiGatewayV2::Integration")
    assert sorted(r["Properties"]["RouteKey"] for r in routes.values()) == sorted(ROUTES)
    for route in routes.values():
        props = route["Properties"]
        assert props["ApiId"] == {"Ref": "Api"}
        assert props.get("AuthorizationType", "NONE") == "NONE"
        target = re.fullmatch(r"integrations/\$\{(\w+)\}", _sub_text(props["Target"]))
        assert target, props["Target"]
        integration = integrations[target.group(1)]["Properties"]
        assert integration["IntegrationType"] == "AWS_PROXY"
        uri = _sub_text(integration["IntegrationUri"])
        function = ROUTES[props["RouteKey"]]
        assert uri.endswith(f"/functions/${{{function}.Arn}}/invocations"), uri
        assert ":lambda:path/2015-03-31/functions/" in uri


def test_lambda_permissions_scoped_to_this_api(resources: dict[str, Any]) -> None:
    permissions = _of_type(resources, "AWS::Lambda::Permission")
    by_function = {p["Properties"]["FunctionName"]["Ref"]: p["Properties"] for p in permissions.values()}
    # API Gateway invokes the route functions only; the Control function has no route.
    assert set(by_function) == set(ROUTES.values())
    for route_key, function in ROUTES.items():
        props = by_function[function]
        assert props["Principal"] == "apigateway.amazonaws.com"
        assert props["Action"] == "lambda:InvokeFunction"
        source = _sub_text(props["SourceArn"])
        assert source.startswith("arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${Api}/")
        assert source.endswith(f"/{route_key}")


def test_deployment_and_stage(resources: dict[str, Any]) -> None:
    routes = set(_of_type(resources, "AWS::ApiGatewayV2::Route"))
    ((deployment_name, deployment),) = _of_type(resources, "AWS::ApiGatewayV2::Deployment").items()
    assert set(_as_list(deployment["DependsOn"])) >= routes
    (stage,) = _of_type(resources, "AWS::ApiGatewayV2::Stage").values()
    props = stage["Properties"]
    assert props["DeploymentId"] == {"Ref": deployment_name}
    assert props["StageName"] == {"Ref": "StageName"}
    log_group = resources[_ref_name(props["AccessLogSettings"]["DestinationArn"])]
    assert log_group["Type"] == "AWS::Logs::LogGroup"
    assert log_group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert "$context.requestId" in props["AccessLogSettings"]["Format"]
    json.loads(re.sub(r"\$context\.[\w.]+", "x", props["AccessLogSettings"]["Format"]))
    route_settings = props["DefaultRouteSettings"]
    assert route_settings["ThrottlingBurstLimit"] == {"Ref": "ThrottlingBurstLimit"}
    assert route_settings["ThrottlingRateLimit"] == {"Ref": "ThrottlingRateLimit"}
    assert route_settings.get("DataTraceEnabled") is False  # would log API keys and signatures


def test_parameters(template: dict[str, Any]) -> None:
    params = template["Parameters"]
    assert params["StageName"]["Default"] == "prod"
    assert params["RequestTarget"]["Default"] == ""
    assert params["MediaPreference"]["Default"] == "PCMU/stereo,L16/stereo,PCMU/mono,L16/mono"
    for name in ("LogRetentionDays", "ThrottlingBurstLimit", "ThrottlingRateLimit"):
        assert name in params


# ----------------------------------------------------------------- functions
def test_functions_runtime_architecture_handlers(template: dict[str, Any], resources: dict[str, Any]) -> None:
    functions = _of_type(resources, "AWS::Serverless::Function")
    assert set(functions) == set(FUNCTIONS)
    (layer_name,) = _of_type(resources, "AWS::Serverless::LayerVersion")
    for name, handler in FUNCTIONS.items():
        props = _function_props(template, name)
        assert props["Handler"] == handler
        assert props["Runtime"] == "python3.12"
        assert props["Architectures"] == ["arm64"]
        assert props["CodeUri"] == "handlers/"
        assert props["Layers"] == [{"Ref": layer_name}]
        log_group = resources[_ref_name(props["LoggingConfig"]["LogGroup"])]
        assert log_group["Type"] == "AWS::Logs::LogGroup"
        assert "RetentionInDays" in log_group["Properties"]
    assert _function_props(template, "ConnectFunction")["Timeout"] <= 10  # opened is due within 5 s


def test_one_shared_layer_built_for_python312_arm64(resources: dict[str, Any]) -> None:
    (layer,) = _of_type(resources, "AWS::Serverless::LayerVersion").values()
    assert layer["Properties"]["ContentUri"] == "src/"
    assert layer["Properties"]["CompatibleRuntimes"] == ["python3.12"]
    assert layer["Metadata"] == {"BuildMethod": "makefile", "BuildArchitecture": "arm64", "ContextPath": "layers/audiohook"}


def test_environment_names_match_settings_from_env(template: dict[str, Any]) -> None:
    config_names = _config_env_names()
    assert REQUIRED_ENV - POWERTOOLS_ENV <= config_names
    for name in FUNCTIONS:
        variables = _function_props(template, name)["Environment"]["Variables"]
        assert REQUIRED_ENV <= set(variables), name
        assert set(variables) - POWERTOOLS_ENV <= config_names, set(variables) - config_names
        assert variables["POWERTOOLS_SERVICE_NAME"] == "audiohook"
        assert variables["POWERTOOLS_METRICS_NAMESPACE"] == {"Ref": "MetricsNamespace"}
        assert variables["REQUEST_TARGET"] == {"Ref": "RequestTarget"}
        assert variables["MEDIA_PREFERENCE"] == {"Ref": "MediaPreference"}


def test_environment_names_match_imported_settings() -> None:
    """The same, through the module itself: from_env must pick every required name up."""
    from audiohook.config import Settings

    env = {
        "SESSIONS_TABLE": "t",
        "AUDIO_STREAM": "s",
        "API_KEYS_SECRET": "k",
        "REQUEST_TARGET": "/r",
        "MEDIA_PREFERENCE": "L16/mono",
    }
    settings = Settings.from_env(env)
    assert (settings.sessions_table, settings.audio_stream, settings.api_keys_secret) == ("t", "s", "k")
    assert (settings.request_target, settings.media_preference) == ("/r", "L16/mono")


# ------------------------------------------------------------------- data
def test_sessions_table(resources: dict[str, Any]) -> None:
    (table,) = _of_type(resources, "AWS::DynamoDB::Table").values()
    props = table["Properties"]
    assert props["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    assert props["AttributeDefinitions"] == [{"AttributeName": "pk", "AttributeType": "S"},
                                             {"AttributeName": "conversationId", "AttributeType": "S"}]
    # The control API finds a conversation's sessions without a Scan; keys only.
    assert props["GlobalSecondaryIndexes"] == [{
        "IndexName": "conversation", "KeySchema": [{"AttributeName": "conversationId", "KeyType": "HASH"}],
        "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["connectionId"]}}]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expiresAt", "Enabled": True}
    assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert props["SSESpecification"]["SSEEnabled"] is True


def test_audio_stream(resources: dict[str, Any]) -> None:
    (stream,) = _of_type(resources, "AWS::Kinesis::Stream").values()
    props = stream["Properties"]
    assert props["StreamModeDetails"] == {"StreamMode": "ON_DEMAND"}
    assert "ShardCount" not in props
    assert props["StreamEncryption"] == {"EncryptionType": "KMS", "KeyId": "alias/aws/kinesis"}
    assert props["RetentionPeriodHours"] == 24


def test_api_keys_secret(resources: dict[str, Any]) -> None:
    (secret,) = _of_type(resources, "AWS::SecretsManager::Secret").values()
    generate = secret["Properties"]["GenerateSecretString"]
    assert json.loads(generate["SecretStringTemplate"]) == {}
    assert generate["GenerateStringKey"]
    # The generated client secret must be valid base64: only letters and digits, length % 4 == 0.
    assert generate["ExcludePunctuation"] is True and generate["IncludeSpace"] is False
    assert generate["PasswordLength"] % 4 == 0


# -------------------------------------------------------------------- IAM
def test_function_policies_are_inline_documents(resources: dict[str, Any]) -> None:
    """No SAM policy templates or managed policy names: everything granted is spelled out
    here and checked below. (SAM itself attaches AWSLambdaBasicExecutionRole and, with
    Tracing Active, the X-Ray write policy; X-Ray actions take no resource ARNs.)"""
    for owner, doc in _policy_documents(resources):
        assert isinstance(doc, dict) and "Statement" in doc, (owner, doc)


def test_no_wildcard_resources_or_actions(resources: dict[str, Any]) -> None:
    statements = _statements(resources)
    assert statements
    for statement in statements:
        assert "NotResource" not in statement and "NotAction" not in statement, statement
        if set(_as_list(statement["Action"])) <= UNSCOPABLE:
            continue
        for resource in _as_list(statement["Resource"]):
            text = resource if isinstance(resource, str) else json.dumps(resource)
            assert resource != "*" and text.strip('"') != "*", statement
        for action in _as_list(statement["Action"]):
            assert action != "*" and not action.endswith(":*"), statement


def _grants(resources: dict[str, Any], function: str) -> dict[str, list[Any]]:
    grants: dict[str, list[Any]] = {}
    for statement in _statements(resources, function):
        assert statement["Effect"] == "Allow"
        for action in _as_list(statement["Action"]):
            grants.setdefault(action, []).extend(_as_list(statement["Resource"]))
    return grants


def test_lease_outlasts_every_function_that_takes_it(template: dict[str, Any]) -> None:
    """An expired lease must mean a dead holder: the lease is at least the longest Timeout."""
    from audiohook.config import Settings

    lease_ms = Settings().lease_ms
    for function in ("MessageFunction", "DisconnectFunction", "ControlFunction"):  # Control enters the mailbox too
        assert _function_props(template, function)["Timeout"] * 1000 <= lease_ms, function


def test_least_privilege_per_function(resources: dict[str, Any]) -> None:
    table = {"Fn::GetAtt": ["SessionsTable", "Arn"]}
    stream = {"Fn::GetAtt": ["AudioStream", "Arn"]}
    expected_dynamodb = {
        "ConnectFunction": {"dynamodb:PutItem", "dynamodb:DeleteItem"},
        # GetItem: the sessions an open continues (continuedSessions), looked up by the lease holder.
        "MessageFunction": {"dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:GetItem"},
        "DisconnectFunction": {"dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:GetItem"},
        # The Control function enters the mailbox like $default (and may hold the lease); Query
        # only on the conversation index.
        "ControlFunction": {"dynamodb:GetItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:Query"},
    }
    index = {"Fn::Sub": "${SessionsTable.Arn}/index/conversation"}
    # $connect only verifies the caller; records are written once a session exists.
    expected_kinesis = {"ConnectFunction": set(), "MessageFunction": {"kinesis:PutRecords"},
                        "DisconnectFunction": {"kinesis:PutRecords"}, "ControlFunction": {"kinesis:PutRecords"}}
    for function in FUNCTIONS:
        grants = _grants(resources, function)
        dynamodb = {a for a in grants if a.startswith("dynamodb:")}
        assert dynamodb == expected_dynamodb[function], function
        assert all(grants[a] == ([index] if a == "dynamodb:Query" else [table]) for a in dynamodb)
        kinesis = {a for a in grants if a.startswith("kinesis:")}
        assert kinesis == expected_kinesis[function], function
        assert all(grants[a] == [stream] for a in kinesis)
        secrets = {a for a in grants if a.startswith("secretsmanager:")}
        if function == "ConnectFunction":
            assert secrets == {"secretsmanager:GetSecretValue"}
            assert grants["secretsmanager:GetSecretValue"] == [{"Ref": "ApiKeysSecret"}]
        else:
            assert not secrets
        assert not {a for a in grants if a.startswith("kms:")}  # AWS managed keys only
        other = set(grants) - dynamodb - kinesis - secrets - {"execute-api:ManageConnections"}
        if function == "ControlFunction":  # sessions of relay tasks: through the function in the VPC
            assert grants.pop("lambda:InvokeFunction") == [{"Fn::GetAtt": ["ControlRelayFunction", "Arn"]}]
            other.discard("lambda:InvokeFunction")
        assert not other, (function, other)


def test_manage_connections_scoped_to_this_api(resources: dict[str, Any]) -> None:
    # Only $default posts: $connect cannot (the connection does not exist yet), $disconnect need not
    # (it is gone), and nothing closes a connection through @connections.
    assert "execute-api:ManageConnections" not in _grants(resources, "ConnectFunction")
    assert "execute-api:ManageConnections" not in _grants(resources, "DisconnectFunction")
    prefix = "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${Api}/${StageName}/"
    for function in ("MessageFunction", "ControlFunction"):  # the Control function posts server messages
        arns = [_sub_text(r) for r in _grants(resources, function)["execute-api:ManageConnections"]]
        assert arns == [prefix + "POST/@connections/*"]


def test_api_gateway_logging_role_uses_the_documented_trust_policy(resources: dict[str, Any]) -> None:
    role = resources["ApiGatewayLoggingRole"]["Properties"]
    assert role["AssumeRolePolicyDocument"]["Statement"] == [
        {"Effect": "Allow", "Principal": {"Service": "apigateway.amazonaws.com"}, "Action": "sts:AssumeRole"}]


# ----------------------------------------------------------------- outputs
def test_outputs(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    for name in (
        "WebSocketUrl",
        "ConnectionsEndpoint",
        "AudioStreamName",
        "SessionsTableName",
        "ApiKeysSecretArn",
    ):
        assert name in outputs, name
    host = "${Api}.execute-api.${AWS::Region}.${AWS::URLSuffix}/${StageName}"
    assert _sub_text(outputs["WebSocketUrl"]["Value"]) == f"wss://{host}"
    assert _sub_text(outputs["ConnectionsEndpoint"]["Value"]) == f"https://{host}"
    assert outputs["AudioStreamName"]["Value"] == {"Ref": "AudioStream"}
    assert outputs["SessionsTableName"]["Value"] == {"Ref": "SessionsTable"}
    assert outputs["ApiKeysSecretArn"]["Value"] == {"Ref": "ApiKeysSecret"}


# --------------------------------------------------------------- samconfig
def test_samconfig() -> None:
    config = tomllib.loads((ROOT / "samconfig.toml").read_text())
    assert config["version"] == 0.1
    deploy = config["default"]["deploy"]["parameters"]
    assert deploy["stack_name"] == "audiohook"
    assert deploy["resolve_s3"] is True
    assert deploy["capabilities"] == "CAPABILITY_IAM"
    assert deploy["confirm_changeset"] is True
    assert "StageName=" in deploy["parameter_overrides"]
    build = config["default"]["build"]["parameters"]
    assert build["cached"] is True and build["parallel"] is True


# ------------------------------------------------------------------ events
EVENT_FILES = sorted(p for p in EVENTS.glob("*.json") if p.name not in ("env.json", "api-keys.json"))
ROUTE_EVENT_TYPES = {"$connect": "CONNECT", "$disconnect": "DISCONNECT"}


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def test_event_files_present() -> None:
    assert [p.name for p in EVENT_FILES] == [
        "01-connect-signed.json",
        "02-open-probe.json",
        "03-ping.json",
        "04-update-language.json",
        "05-paused.json",
        "06-resumed.json",
        "07-audio-frame.json",
        "08-close.json",
        "09-disconnect.json",
    ]


@pytest.mark.parametrize("path", EVENT_FILES, ids=lambda p: p.name)
def test_event_is_an_api_gateway_websocket_event(path: Path) -> None:
    event = _load(path)
    ctx = event["requestContext"]
    for key in (
        "routeKey",
        "eventType",
        "extendedRequestId",
        "requestTime",
        "messageDirection",
        "stage",
        "connectedAt",
        "requestTimeEpoch",
        "identity",
        "requestId",
        "domainName",
        "connectionId",
        "apiId",
    ):
        assert key in ctx, key
    assert ctx["eventType"] == ROUTE_EVENT_TYPES.get(ctx["routeKey"], "MESSAGE")
    assert ctx["messageDirection"] == "IN"
    assert ctx["stage"] == "prod"
    assert ctx["connectionId"] == CONNECTION_ID
    assert isinstance(ctx["requestTimeEpoch"], int) and ctx["requestTimeEpoch"] >= ctx["connectedAt"]
    assert isinstance(event["isBase64Encoded"], bool)
    if ctx["eventType"] == "MESSAGE":
        assert ctx["messageId"] and isinstance(event["body"], str)
        if event["isBase64Encoded"]:
            try:
                audio = base64.b64decode(event["body"], validate=True)
            except binascii.Error as exc:  # pragma: no cover - failure path
                pytest.fail(f"body is not base64: {exc}")
            assert audio and len(audio) % 2 == 0
        else:
            message = json.loads(event["body"])
            assert message["version"] == "2"
            assert message["id"] == SESSION_ID
            assert isinstance(message["parameters"], dict)
    else:
        assert "body" not in event
        assert event["isBase64Encoded"] is False
        assert {k: [v] for k, v in event["headers"].items()} == event["multiValueHeaders"]
    if ctx["eventType"] == "DISCONNECT":
        assert ctx["disconnectStatusCode"] == 1000
        assert ctx["disconnectReason"] == "Client-side close frame status set to '1000'"


@pytest.mark.parametrize("path", EVENT_FILES, ids=lambda p: p.name)
def test_event_parses_with_powertools_models(path: Path) -> None:
    models = pytest.importorskip("aws_lambda_powertools.utilities.parser.models")
    event = _load(path)
    model = {
        "CONNECT": models.APIGatewayWebSocketConnectEventModel,
        "DISCONNECT": models.APIGatewayWebSocketDisconnectEventModel,
    }.get(event["requestContext"]["eventType"], models.APIGatewayWebSocketMessageEventModel)
    model.model_validate(event)


def test_events_form_one_consistent_session() -> None:
    events = [_load(p) for p in EVENT_FILES]
    times = [e["requestContext"]["requestTimeEpoch"] for e in events]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert len({e["requestContext"]["connectedAt"] for e in events}) == 1
    messages = [
        json.loads(e["body"])
        for e in events
        if e["requestContext"]["eventType"] == "MESSAGE" and not e["isBase64Encoded"]
    ]
    assert [m["type"] for m in messages] == ["open", "ping", "update", "paused", "resumed", "close"]
    assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))
    # The server answers open, ping and update (opened, pong, updated) and nothing else
    # before close, so serverseq never exceeds what it has sent.
    answered = {"open", "ping", "update"}
    sent = 0
    for message in messages:
        assert message["serverseq"] == sent, message
        sent += message["type"] in answered
    open_params = messages[0]["parameters"]
    assert (
        open_params["conversationId"]
        == open_params["participant"]["id"]
        == "00000000-0000-0000-0000-000000000000"
    )
    assert open_params["language"] is None and open_params["customConfig"] == {}
    assert messages[2]["parameters"] == {"language": "es-ES"}
    resumed = messages[4]
    assert resumed["parameters"] == {"start": "PT0S", "discarded": "PT0.4S"}
    assert resumed["position"] == "PT0.4S"
    # 200 ms of PCMU stereo (1 byte per sample and channel, 8000 Hz) moves the position to 0.6 s.
    (frame,) = [base64.b64decode(e["body"]) for e in events if e["isBase64Encoded"]]
    assert len(frame) == 3200
    assert messages[-1]["position"] == "PT0.6S" and messages[-1]["parameters"] == {"reason": "end"}


def test_connect_event_carries_signature_vector_1() -> None:
    vector = json.loads(VECTORS.read_text())["valid"][0]
    event = _load(EVENTS / "01-connect-signed.json")
    headers = {k.lower(): v for k, v in event["headers"].items()}
    for name, value in vector["headers"].items():
        assert headers[name] == value, name
    ctx = event["requestContext"]
    assert ctx["domainName"] == vector["headers"]["host"]
    assert ctx["requestTimeEpoch"] == 1641013202000
    created = int(re.search(r";created=(\d+)", headers["signature-input"]).group(1))
    assert 0 <= ctx["requestTimeEpoch"] // 1000 - created < 10  # fresh at that instant
    open_message = json.loads(_load(EVENTS / "02-open-probe.json")["body"])
    assert open_message["id"] == headers["audiohook-session-id"]
    assert open_message["parameters"]["organizationId"] == headers["audiohook-organization-id"]
    for key in (
        "sec-websocket-key",
        "sec-websocket-version",
        "x-forwarded-for",
        "x-forwarded-port",
        "x-forwarded-proto",
    ):
        assert key in headers


def test_connect_signature_verifies_with_env_request_target() -> None:
    """Independent recomputation of the HMAC over the event as replayed with env.json, so the
    event and REQUEST_TARGET cannot drift apart."""
    vector = json.loads(VECTORS.read_text())["valid"][0]
    env = _load(EVENTS / "env.json")["Parameters"]
    headers = {k.lower(): v for k, v in _load(EVENTS / "01-connect-signed.json")["headers"].items()}
    params = headers["signature-input"].split("=", 1)[1]
    components = re.match(r"\(([^)]*)\)", params).group(1).split()
    lines = []
    for component in components:
        name = component.strip('"')
        if name == "@request-target":
            value = env["REQUEST_TARGET"]
        elif name == "@authority":
            value = headers["host"].lower()
        else:
            value = headers[name]
        lines.append(f'"{name}": {value}')
    lines.append(f'"@signature-params": {params}')
    key = base64.b64decode(vector["client_secret_base64"])
    digest = hmac.new(key, "\n".join(lines).encode(), hashlib.sha256).digest()
    assert headers["signature"] == f"sig1=:{base64.b64encode(digest).decode()}:"


def test_env_json_for_sam_local_invoke() -> None:
    env = _load(EVENTS / "env.json")
    assert set(env) == {"Parameters"}
    variables = env["Parameters"]
    assert REQUIRED_ENV <= set(variables)
    assert set(variables) - POWERTOOLS_ENV <= _config_env_names()
    assert all(isinstance(v, str) for v in variables.values())
    assert variables["REQUEST_TARGET"] == "/api/v1/voicebiometrics/ws"
