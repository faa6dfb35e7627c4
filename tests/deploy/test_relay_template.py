"""template.yaml's relay section: off by default, least privilege, wired to the code's settings."""

from __future__ import annotations

import ast
import json
from typing import Any

import pytest
from cfnlint.decode import decode

from conftest import REPO as ROOT

CONFIG_PY = ROOT / "src" / "audiohook" / "config.py"
POWERTOOLS_ENV = {"POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE", "LOG_LEVEL", "AWS_DEFAULT_REGION"}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, str) else value


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    decoded, matches = decode(str(ROOT / "template.yaml"))
    assert not matches, [str(m) for m in matches]
    return _plain(decoded)


def relay_resources(template: dict[str, Any]) -> dict[str, Any]:
    return {name: r for name, r in template["Resources"].items() if name.startswith("Relay")}


def only(template: dict[str, Any], rtype: str) -> dict[str, Any]:
    (resource,) = [r for r in relay_resources(template).values() if r["Type"] == rtype]
    return resource["Properties"]


def settings_env_names() -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(CONFIG_PY.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isupper():
            names.add(node.value)
    return names


def test_the_relay_is_off_by_default_and_everything_of_it_is_conditional(template: dict[str, Any]) -> None:
    assert template["Parameters"]["DeployRelay"] == {
        "Type": "String", "Default": "false", "AllowedValues": ["true", "false"],
        "Description": template["Parameters"]["DeployRelay"]["Description"],
    }
    for name in ("RelayCertificateArn", "RelayImageUri", "RelayVpcId", "RelaySubnetIds", "RelayMinTasks",
                 "RelayMaxTasks", "RelaySessionsPerTask", "RelayCpuTarget"):
        assert name in template["Parameters"], name
    assert template["Conditions"]["CreateRelay"] == {"Fn::Equals": [{"Ref": "DeployRelay"}, "true"]}
    resources = relay_resources(template)
    assert len(resources) >= 12
    assert all(resource.get("Condition") == "CreateRelay" for resource in resources.values())
    for output in ("RelayUrl", "RelayLoadBalancerDnsName"):
        assert template["Outputs"][output]["Condition"] == "CreateRelay"
    assert "wss://" in json.dumps(template["Outputs"]["RelayUrl"]["Value"])


def test_rules_require_the_relay_parameters_when_it_is_deployed(template: dict[str, Any]) -> None:
    (rule,) = template["Rules"].values()
    assert rule["RuleCondition"] == {"Fn::Equals": [{"Ref": "DeployRelay"}, "true"]}
    asserted = json.dumps(rule["Assertions"])
    for name in ("RelayImageUri", "RelayCertificateArn", "RelayVpcId", "RelaySubnetIds"):
        assert name in asserted, name


def test_fargate_arm64_task_runs_the_relay_with_the_settings_the_code_reads(template: dict[str, Any]) -> None:
    task = only(template, "AWS::ECS::TaskDefinition")
    assert task["RequiresCompatibilities"] == ["FARGATE"] and task["NetworkMode"] == "awsvpc"
    assert task["RuntimePlatform"] == {"CpuArchitecture": "ARM64", "OperatingSystemFamily": "LINUX"}
    (container,) = task["ContainerDefinitions"]
    assert container["Image"] == {"Ref": "RelayImageUri"}
    assert container["PortMappings"] == [{"ContainerPort": 8080, "Protocol": "tcp"}]
    env = {item["Name"]: item["Value"] for item in container["Environment"]}
    assert set(env) - POWERTOOLS_ENV <= settings_env_names(), set(env) - settings_env_names()
    assert {"SESSIONS_TABLE", "AUDIO_STREAM", "API_KEYS_SECRET", "MEDIA_PREFERENCE", "RELAY_PORT"} <= set(env)
    assert env["SESSIONS_TABLE"] == {"Ref": "SessionsTable"} and env["AUDIO_STREAM"] == {"Ref": "AudioStream"}
    assert env["RELAY_PORT"] == "8080" and int(env["RELAY_FLUSH_MS"]) <= 1000
    # SIGTERM drain (RELAY_DRAIN_S) plus the close wait and the last flush fit in the stop timeout.
    assert int(env["RELAY_DRAIN_S"]) + 10 + 15 <= container["StopTimeout"] <= 120
    assert container["LogConfiguration"]["Options"]["awslogs-group"] == {"Ref": "RelayLogGroup"}


# Settings the functions get that mean nothing on the relay: the relay verifies the signature
# against its own request's path and query, and writes replies to its own sockets.
LAMBDA_ONLY_SETTINGS = {"REQUEST_TARGET", "CONNECTIONS_ENDPOINT"}


def test_the_relay_gets_every_setting_the_functions_get_with_the_same_value(template: dict[str, Any]) -> None:
    (container,) = only(template, "AWS::ECS::TaskDefinition")["ContainerDefinitions"]
    relay_env = {item["Name"]: item["Value"] for item in container["Environment"]}
    function_env = template["Globals"]["Function"]["Environment"]["Variables"]
    shared = set(function_env) - LAMBDA_ONLY_SETTINGS
    assert {"SUPPORTED_LANGUAGES", "START_PAUSED", "MEDIA_PREFERENCE"} <= shared
    assert {name: relay_env.get(name) for name in shared} == {name: function_env[name] for name in shared}


def test_task_role_grants_exactly_what_the_relay_calls(template: dict[str, Any]) -> None:
    task = only(template, "AWS::ECS::TaskDefinition")
    role_name = task["TaskRoleArn"]["Fn::GetAtt"][0]
    role = template["Resources"][role_name]["Properties"]
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
    grants: dict[str, list[Any]] = {}
    for policy in role["Policies"]:
        for statement in policy["PolicyDocument"]["Statement"]:
            assert statement["Effect"] == "Allow" and "NotResource" not in statement
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            for action in actions:
                grants.setdefault(action, []).append(statement["Resource"])
    assert grants == {
        "dynamodb:GetItem": [{"Fn::GetAtt": ["SessionsTable", "Arn"]}],
        "dynamodb:PutItem": [{"Fn::GetAtt": ["SessionsTable", "Arn"]}],
        "dynamodb:UpdateItem": [{"Fn::GetAtt": ["SessionsTable", "Arn"]}],
        "dynamodb:DeleteItem": [{"Fn::GetAtt": ["SessionsTable", "Arn"]}],
        "kinesis:PutRecords": [{"Fn::GetAtt": ["AudioStream", "Arn"]}],
        "secretsmanager:GetSecretValue": [{"Ref": "ApiKeysSecret"}],
    }


def test_load_balancer_tls_long_idle_timeout_and_health_check(template: dict[str, Any]) -> None:
    alb = only(template, "AWS::ElasticLoadBalancingV2::LoadBalancer")
    attributes = {a["Key"]: a["Value"] for a in alb["LoadBalancerAttributes"]}
    assert attributes["idle_timeout.timeout_seconds"] == "4000"
    assert alb["Scheme"] == "internet-facing" and alb["Type"] == "application"
    listener = only(template, "AWS::ElasticLoadBalancingV2::Listener")
    assert (listener["Port"], listener["Protocol"]) == (443, "HTTPS")
    assert listener["Certificates"] == [{"CertificateArn": {"Ref": "RelayCertificateArn"}}]
    group = only(template, "AWS::ElasticLoadBalancingV2::TargetGroup")
    assert (group["Protocol"], group["Port"], group["TargetType"]) == ("HTTP", 8080, "ip")
    assert (group["HealthCheckPath"], group["Matcher"]) == ("/health", {"HttpCode": "200"})
    attributes = {a["Key"]: a["Value"] for a in group["TargetGroupAttributes"]}
    assert attributes["stickiness.enabled"] == "false"


def test_only_the_load_balancer_reaches_the_tasks(template: dict[str, Any]) -> None:
    groups = {name: r["Properties"] for name, r in relay_resources(template).items()
              if r["Type"] == "AWS::EC2::SecurityGroup"}
    alb = groups["RelayLoadBalancerSecurityGroup"]
    assert [(r["FromPort"], r["CidrIp"]) for r in alb["SecurityGroupIngress"]] == [(443, "0.0.0.0/0")]
    tasks = groups["RelayTaskSecurityGroup"]
    assert "SecurityGroupIngress" not in tasks
    (ingress,) = [r["Properties"] for r in relay_resources(template).values()
                  if r["Type"] == "AWS::EC2::SecurityGroupIngress"]
    assert ingress["SourceSecurityGroupId"] == {"Fn::GetAtt": ["RelayLoadBalancerSecurityGroup", "GroupId"]}
    assert (ingress["FromPort"], ingress["ToPort"]) == (8080, 8080)
    service = only(template, "AWS::ECS::Service")
    assert service["LoadBalancers"][0]["ContainerPort"] == 8080
