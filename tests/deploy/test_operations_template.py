"""template.yaml's operations: alarms, dashboard and relay autoscaling name the metrics the
code publishes (audiohook.metrics), notify the optional topic, and grant nothing new."""

from __future__ import annotations

import json
import re
from typing import Any

from audiohook import metrics as M

OUR_DIMENSIONS = {"service", "Front"}


def of_type(template: dict[str, Any], rtype: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == rtype}


def metric_stats(alarm: dict[str, Any]) -> list[dict[str, Any]]:
    """Every metric an alarm reads, as {Namespace, MetricName, Dimensions{name: value}}."""
    properties = alarm["Properties"]
    if "MetricName" in properties:
        stats = [properties]
    else:
        stats = [query["MetricStat"]["Metric"] for query in properties["Metrics"] if "MetricStat" in query]
    return [{"Namespace": s["Namespace"], "MetricName": s["MetricName"],
             "Dimensions": {d["Name"]: d["Value"] for d in s.get("Dimensions", [])}} for s in stats]


def test_the_namespace_and_service_the_code_publishes_under(template: dict[str, Any]) -> None:
    assert template["Parameters"]["MetricsNamespace"]["Default"] == M.NAMESPACE
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["POWERTOOLS_METRICS_NAMESPACE"] == {"Ref": "MetricsNamespace"}
    assert variables["POWERTOOLS_SERVICE_NAME"] == M.SERVICE


EXPECTED_ALARMS = {
    "AudioLossAlarm": {"AudioGaps", "RecordsUndelivered"},
    "KinesisThrottlingAlarm": {"KinesisThrottles", "WriteProvisionedThroughputExceeded"},
    "ProtocolErrorsAlarm": {"ProtocolErrors"},
    "RejectedUpgradesAlarm": {"UpgradesRejected"},
    "LambdaErrorsAlarm": {"Errors"},
    "LambdaThrottlesAlarm": {"Throttles"},
    "ApiGatewayErrorsAlarm": {"ExecutionError"},
    "RelayCpuAlarm": {"CPUUtilization"},
    "RelayMemoryAlarm": {"MemoryUtilization"},
    "RelayUnhealthyTargetsAlarm": {"UnHealthyHostCount"},
}


def test_the_alarms_and_what_they_watch(template: dict[str, Any]) -> None:
    alarms = of_type(template, "AWS::CloudWatch::Alarm")
    assert {name: {s["MetricName"] for s in metric_stats(alarm)} for name, alarm in alarms.items()} == EXPECTED_ALARMS
    for name, alarm in alarms.items():
        properties = alarm["Properties"]
        topic = {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}
        assert properties["AlarmActions"] == properties["OKActions"] == topic, name
        assert properties["TreatMissingData"] == "notBreaching", name
        assert (alarm.get("Condition") == "CreateRelay") == name.startswith("Relay"), name
        for stat in metric_stats(alarm):
            if stat["Namespace"] == {"Ref": "MetricsNamespace"}:
                # Our metrics: both fronts, added together, under the code's dimensions.
                assert stat["MetricName"] in M.BY_NAME and set(stat["Dimensions"]) == OUR_DIMENSIONS, name
                assert stat["Dimensions"]["service"] == M.SERVICE
        ours = [s for s in metric_stats(alarm) if s["Namespace"] == {"Ref": "MetricsNamespace"}]
        for metric in {s["MetricName"] for s in ours}:
            assert {s["Dimensions"]["Front"] for s in ours if s["MetricName"] == metric} == {f.value for f in M.Front}
    assert template["Parameters"]["AlarmTopicArn"]["Default"] == ""
    assert template["Conditions"]["HasAlarmTopic"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmTopicArn"}, ""]}]}
    # Any lost audio alarms at once; throttling only when sustained; errors above their baselines.
    loss = alarms["AudioLossAlarm"]["Properties"]
    assert (loss["Threshold"], loss["EvaluationPeriods"], loss["ComparisonOperator"]) == (0, 1, "GreaterThanThreshold")
    throttling = alarms["KinesisThrottlingAlarm"]["Properties"]
    assert throttling["DatapointsToAlarm"] == throttling["EvaluationPeriods"] == 5
    assert alarms["ProtocolErrorsAlarm"]["Properties"]["Threshold"] == {"Ref": "ProtocolErrorBaseline"}
    assert alarms["RejectedUpgradesAlarm"]["Properties"]["Threshold"] == {"Ref": "RejectedUpgradeBaseline"}
    (api,) = metric_stats(alarms["ApiGatewayErrorsAlarm"])
    assert api["Dimensions"] == {"ApiId": {"Ref": "Api"}, "Stage": {"Ref": "StageName"}}


def dashboard_bodies(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The dashboard as JSON, without and with the relay (substitutions replaced by their names)."""
    (dashboard,) = of_type(template, "AWS::CloudWatch::Dashboard").values()
    separator, (common, relay, end) = dashboard["Properties"]["DashboardBody"]["Fn::Join"]
    condition, with_relay, without = relay["Fn::If"]
    assert (separator, condition, without) == ("", "CreateRelay", "")

    def text(part: Any) -> str:
        return re.sub(r"\$\{([^}]+)\}", r"\1", part["Fn::Sub"] if isinstance(part, dict) else part)

    return {"without relay": json.loads(text(common) + end),
            "with relay": json.loads(text(common) + text(with_relay) + end)}


def test_the_dashboard_shows_what_an_operator_needs(template: dict[str, Any]) -> None:
    bodies = dashboard_bodies(template)
    for variant, body in bodies.items():
        ours = {(row[1], row[5]) for widget in body["widgets"] for row in widget["properties"]["metrics"]
                if row[0] == "MetricsNamespace"}
        for name, front in ours:
            assert name in M.BY_NAME and front in {f.value for f in M.Front}, (variant, name)
        names = {name for name, _ in ours}
        assert {"CallSessions", "ProbeSessions", "ActiveSessions", "AudioBytes", "AudioAckDelay", "ProtocolErrors",
                "AudioGaps", "RecordsUndelivered", "KinesisThrottles", "UpgradesRejected"} <= names, variant
        delays = [row[-1]["stat"] for widget in body["widgets"] for row in widget["properties"]["metrics"]
                  if row[1] == "AudioAckDelay"]
        assert sorted(set(delays)) == ["p50", "p90", "p99"]
    relay_only = {row[1] for widget in bodies["with relay"]["widgets"] for row in widget["properties"]["metrics"]}
    assert {"CPUUtilization", "MemoryUtilization", "RunningTaskCount"} <= relay_only
    assert not {"CPUUtilization", "RunningTaskCount"} & {
        row[1] for widget in bodies["without relay"]["widgets"] for row in widget["properties"]["metrics"]}


def test_relay_autoscaling_on_sessions_per_task_and_cpu(template: dict[str, Any]) -> None:
    parameters = template["Parameters"]
    assert parameters["RelayMinTasks"]["Default"] == 2 and parameters["RelayMaxTasks"]["Default"] >= 2
    (target_name, target), = of_type(template, "AWS::ApplicationAutoScaling::ScalableTarget").items()
    properties = target["Properties"]
    assert target["Condition"] == "CreateRelay"
    assert (properties["ServiceNamespace"], properties["ScalableDimension"]) == ("ecs", "ecs:service:DesiredCount")
    assert (properties["MinCapacity"], properties["MaxCapacity"]) == ({"Ref": "RelayMinTasks"}, {"Ref": "RelayMaxTasks"})
    assert "RoleARN" not in properties  # the service-linked role: no role of ours, nothing granted
    assert properties["ResourceId"] == {"Fn::Sub": "service/${RelayCluster}/${RelayService.Name}"}
    service = template["Resources"]["RelayService"]["Properties"]
    assert "DesiredCount" not in service  # scaling owns it; a stack update must not reset it
    assert (service["DeploymentConfiguration"]["MinimumHealthyPercent"],
            service["DeploymentConfiguration"]["MaximumPercent"]) == (100, 200)
    policies = {name: r["Properties"] for name, r in of_type(template, "AWS::ApplicationAutoScaling::ScalingPolicy").items()}
    assert all(p["ScalingTargetId"] == {"Ref": target_name} and p["PolicyType"] == "TargetTrackingScaling"
               for p in policies.values())
    configs = [p["TargetTrackingScalingPolicyConfiguration"] for p in policies.values()]
    (sessions,) = [c for c in configs if "CustomizedMetricSpecification" in c]
    spec = sessions["CustomizedMetricSpecification"]
    assert (spec["MetricName"], spec["Statistic"], spec["Namespace"]) == (
        M.ACTIVE_SESSIONS.name, "Average", {"Ref": "MetricsNamespace"})
    assert {d["Name"]: d["Value"] for d in spec["Dimensions"]} == {"service": M.SERVICE, "Front": "relay"}
    assert sessions["TargetValue"] == {"Ref": "RelaySessionsPerTask"}
    (cpu,) = [c for c in configs if "PredefinedMetricSpecification" in c]
    assert cpu["PredefinedMetricSpecification"] == {"PredefinedMetricType": "ECSServiceAverageCPUUtilization"}
    # A scale-in is over (deregistration, then SIGTERM and the drain) before the next one is decided.
    group = template["Resources"]["RelayTargetGroup"]["Properties"]
    delay = int({a["Key"]: a["Value"] for a in group["TargetGroupAttributes"]}["deregistration_delay.timeout_seconds"])
    (container,) = template["Resources"]["RelayTaskDefinition"]["Properties"]["ContainerDefinitions"]
    for config in configs:
        assert config["ScaleInCooldown"] >= delay + container["StopTimeout"]
        assert config["ScaleOutCooldown"] <= 60
    env = {item["Name"]: item["Value"] for item in container["Environment"]}
    assert int(env["RELAY_METRICS_S"]) <= 60  # the sessions metric is fresh every minute


def test_operations_add_no_iam_role_or_policy(template: dict[str, Any]) -> None:
    iam = {name for name, r in template["Resources"].items() if r["Type"].startswith("AWS::IAM::")}
    assert iam == {"ApiGatewayLoggingRole", "RelayExecutionRole", "RelayTaskRole", "ControlRelayFunctionRole"}
