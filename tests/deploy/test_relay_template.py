"""template.yaml's relay section: off by default, least privilege, wired to the code's settings."""

from __future__ import annotations

import ast
import json
from typing import Any

from conftest import REPO as ROOT

CONFIG_PY = ROOT / "src" / "audiohook" / "config.py"
POWERTOOLS_ENV = {"POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE", "LOG_LEVEL", "AWS_DEFAULT_REGION"}


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
    assert container["PortMappings"] == [{"ContainerPort": 8080, "Protocol": "tcp"},
                                         {"ContainerPort": 8081, "Protocol": "tcp"}]
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
    ingresses = {r["Properties"]["SourceSecurityGroupId"]["Fn::GetAtt"][0]: r["Properties"]
                 for r in relay_resources(template).values() if r["Type"] == "AWS::EC2::SecurityGroupIngress"}
    assert {source: (i["GroupId"], i["FromPort"], i["ToPort"]) for source, i in ingresses.items()} == {
        # WebSocket and health checks from the load balancer; control requests from the
        # function inside the VPC, never through the load balancer.
        "RelayLoadBalancerSecurityGroup": ({"Fn::GetAtt": ["RelayTaskSecurityGroup", "GroupId"]}, 8080, 8080),
        "ControlRelaySecurityGroup": ({"Fn::GetAtt": ["RelayTaskSecurityGroup", "GroupId"]}, 8081, 8081),
    }
    assert [(r["FromPort"], r["ToPort"]) for r in alb["SecurityGroupEgress"]] == [(8080, 8080)]
    service = only(template, "AWS::ECS::Service")
    assert service["LoadBalancers"] == [{"ContainerName": "relay", "ContainerPort": 8080,
                                         "TargetGroupArn": {"Ref": "RelayTargetGroup"}}]


def test_the_control_path_runs_in_the_vpc_and_its_role_is_the_only_one_the_tasks_accept(
        template: dict[str, Any]) -> None:
    resources = template["Resources"]
    function = resources["ControlRelayFunction"]
    assert function["Condition"] == "CreateRelay"
    props = function["Properties"]
    assert props["VpcConfig"] == {
        "SubnetIds": {"Fn::Split": [",", {"Fn::Join": [",", {"Ref": "RelaySubnetIds"}]}]},
        "SecurityGroupIds": [{"Fn::GetAtt": ["ControlRelaySecurityGroup", "GroupId"]}]}
    assert props["Role"] == {"Fn::GetAtt": ["ControlRelayFunctionRole", "Arn"]}
    assert "relay_forward_handler()" in props["Code"]["ZipFile"] and props["Handler"] == "index.handler"
    group = resources["ControlRelaySecurityGroup"]["Properties"]
    assert "SecurityGroupIngress" not in group
    assert group["SecurityGroupEgress"] == [{
        "Description": "control requests to the relay tasks", "IpProtocol": "tcp", "FromPort": 8081, "ToPort": 8081,
        "DestinationSecurityGroupId": {"Fn::GetAtt": ["RelayTaskSecurityGroup", "GroupId"]}}]
    (container,) = only(template, "AWS::ECS::TaskDefinition")["ContainerDefinitions"]
    env = {item["Name"]: item["Value"] for item in container["Environment"]}
    assert env["RELAY_CONTROL_PORT"] == "8081"
    assert env["CONTROL_ROLE_ARNS"] == {"Fn::GetAtt": ["ControlRelayFunctionRole", "Arn"]}
    control_env = resources["ControlFunction"]["Properties"]["Environment"]["Variables"]
    assert control_env["CONTROL_RELAY_FUNCTION"] == {"Fn::If": ["CreateRelay", {"Ref": "ControlRelayFunction"}, ""]}


def test_the_control_relay_role_may_only_log_and_attach_to_the_relay_vpc(template: dict[str, Any]) -> None:
    role = template["Resources"]["ControlRelayFunctionRole"]
    assert role["Condition"] == "CreateRelay"
    assert role["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "Service": "lambda.amazonaws.com"}
    assert "ManagedPolicyArns" not in role["Properties"]
    (policy,) = role["Properties"]["Policies"]
    grants = {}
    for statement in policy["PolicyDocument"]["Statement"]:
        assert statement["Effect"] == "Allow"
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        for action in actions:
            grants[action] = (statement["Resource"], statement.get("Condition"))
    in_vpc = {"ArnEquals": {"ec2:Vpc": {
        "Fn::Sub": "arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:vpc/${RelayVpcId}"}}}
    interface = {"Fn::Sub": "arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:network-interface/*"}
    assert grants == {
        "logs:CreateLogStream": ({"Fn::GetAtt": ["ControlRelayFunctionLogGroup", "Arn"]}, None),
        "logs:PutLogEvents": ({"Fn::GetAtt": ["ControlRelayFunctionLogGroup", "Arn"]}, None),
        "ec2:DescribeNetworkInterfaces": ("*", None),
        "ec2:DescribeSubnets": ("*", None),
        "ec2:CreateNetworkInterface": ([
            interface,
            {"Fn::Sub": "arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:subnet/*"},
            {"Fn::Sub": "arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:security-group/"
                        "${ControlRelaySecurityGroup.GroupId}"}], in_vpc),
        "ec2:DeleteNetworkInterface": (interface, in_vpc),
        "ec2:AssignPrivateIpAddresses": (interface, in_vpc),
        "ec2:UnassignPrivateIpAddresses": (interface, in_vpc),
    }
