"""CloudWatch alarms, all notifying one SNS topic, each one able to fire.

- tasks running below desired (Container Insights, metric math desired - running)
- ingestion Lambda errors (the function itself failed: bad configuration, crash)
- ingestion failures: the handler reports failed SQS messages as
  `batchItemFailures` instead of raising, so Lambda's `Errors` stays 0; a
  metric filter on its `ingest_summary` log line counts `failedUnits`
- DLQ not empty (an audit object failed ingestion `maxReceiveCount` times)
- ingestion queue backlog ageing (the Lambda is not keeping up or not running)
- audit shipping stalled: the sidecar's EMF metric `AuditOldestUnshippedAgeSeconds`
  above `HEALTH_MAX_SHIP_LAG_S` (300 s, where `/health` starts warning); missing
  data is breaching, since a sidecar that stopped reporting is not shipping
  either (with DesiredCount 0 the alarm is in ALARM by design)
- audit records dropped: `AuditRecordsDropped` is a per-process running total,
  so the alarm stays on until the sidecar that dropped records is replaced
- audit objects missing: per hour, records the sidecars shipped
  (`AuditRecordsShipped`, EMF, a per-interval count) against items the
  ingestion wrote (`AuditItemsIngested`, metric filter); a record in flight at
  an hour's edge makes one hour positive and the next negative, so two
  positive hours in a row mean records that never became items
"""

from __future__ import annotations

from ecs.stackgen.cfn import Json, get_att, ref

AUDIT_NAMESPACE = "CentralLLM/Audit"
SHIP_LAG_LIMIT_S = 300
SUMMARY_EVENT = "ingest_summary"  # the handler's one JSON log line per invocation
SUMMARY_PATTERN = f'{{ $.event = "{SUMMARY_EVENT}" }}'
FAILURES_PATTERN = f'{{ $.event = "{SUMMARY_EVENT}" && $.failedUnits > 0 }}'


def _metric_filter(pattern: str, name: str, value: str) -> Json:
    return {
        "Type": "AWS::Logs::MetricFilter",
        "Properties": {
            "LogGroupName": ref("IngestLogGroup"),
            "FilterPattern": pattern,
            "MetricTransformations": [
                {
                    "MetricNamespace": AUDIT_NAMESPACE,
                    "MetricName": name,
                    "MetricValue": value,
                    "Unit": "Count",
                }
            ],
        },
    }


def _missing_audit_objects() -> Json:
    def hourly(metric_id: str, name: str, dimensions: list[Json]) -> Json:
        return {
            "Id": metric_id,
            "ReturnData": False,
            "MetricStat": {
                "Metric": {
                    "Namespace": AUDIT_NAMESPACE,
                    "MetricName": name,
                    "Dimensions": dimensions,
                },
                "Period": 3600,
                "Stat": "Sum",
            },
        }

    metrics = {
        "Metrics": [
            hourly(
                "shipped",
                "AuditRecordsShipped",
                [{"Name": "ServiceName", "Value": ref("ServiceName")}],
            ),
            hourly("ingested", "AuditItemsIngested", []),
            {
                "Id": "missing",
                "Expression": "FILL(shipped, 0) - FILL(ingested, 0)",
                "Label": "records shipped but not ingested",
                "ReturnData": True,
            },
        ]
    }
    return alarm(
        "Audit records shipped to S3 did not become DynamoDB items (two hours in a row)",
        metrics,
        threshold=0,
        periods=2,
        missing="notBreaching",
    )


def alarm(
    description: str,
    metric: Json,
    *,
    threshold: Json,
    periods: int,
    missing: str,
    datapoints: int | None = None,
) -> Json:
    """An alarm above `threshold` on the alarm topic (the stack's one alarm shape).

    `metric` is either a single metric (Namespace, MetricName, Dimensions,
    Statistic/ExtendedStatistic, Period) or `Metrics` for metric math.
    """
    properties: dict[str, Json] = {
        "AlarmDescription": description,
        "ComparisonOperator": "GreaterThanThreshold",
        "Threshold": threshold,
        "EvaluationPeriods": periods,
    }
    if datapoints is not None:
        properties["DatapointsToAlarm"] = datapoints
    properties.update(
        {
            "TreatMissingData": missing,
            "AlarmActions": [ref("AlarmTopic")],
            "OKActions": [ref("AlarmTopic")],
            **metric,
        }
    )
    return {"Type": "AWS::CloudWatch::Alarm", "Properties": properties}


def _metric(namespace: str, name: str, stat: str, period: int, **dimensions: Json) -> Json:
    return {
        "Namespace": namespace,
        "MetricName": name,
        "Statistic": stat,
        "Period": period,
        "Dimensions": [{"Name": key, "Value": value} for key, value in dimensions.items()],
    }


def _tasks_below_desired() -> Json:
    def stat(metric_id: str, name: str) -> Json:
        return {
            "Id": metric_id,
            "ReturnData": False,
            "MetricStat": {
                "Metric": {
                    "Namespace": "ECS/ContainerInsights",
                    "MetricName": name,
                    "Dimensions": [
                        {"Name": "ClusterName", "Value": ref("ClusterName")},
                        {"Name": "ServiceName", "Value": ref("ServiceName")},
                    ],
                },
                "Period": 60,
                "Stat": "Average",
            },
        }

    metrics = {
        "Metrics": [
            stat("running", "RunningTaskCount"),
            stat("desired", "DesiredTaskCount"),
            {
                "Id": "missing",
                "Expression": "desired - running",
                "Label": "tasks missing",
                "ReturnData": True,
            },
        ]
    }
    return alarm(
        "Central LLM: fewer tasks running than desired for 5 minutes",
        metrics,
        threshold=0,
        periods=5,
        missing="notBreaching",
    )


def alarm_resources() -> dict[str, Json]:
    return {
        "AlarmTopic": {
            "Type": "AWS::SNS::Topic",
            "Properties": {"TopicName": ref("AlarmTopicName")},
        },
        "AlarmEmailSubscription": {
            "Type": "AWS::SNS::Subscription",
            "Condition": "HasAlarmEmail",
            "Properties": {
                "TopicArn": ref("AlarmTopic"),
                "Protocol": "email",
                "Endpoint": ref("AlarmEmail"),
            },
        },
        "TasksBelowDesiredAlarm": _tasks_below_desired(),
        "IngestErrorsAlarm": alarm(
            "Audit ingestion Lambda reported errors",
            _metric("AWS/Lambda", "Errors", "Sum", 300, FunctionName=ref("IngestFunction")),
            threshold=0,
            periods=1,
            missing="notBreaching",
        ),
        "IngestFailuresMetricFilter": _metric_filter(
            FAILURES_PATTERN, "AuditIngestFailedUnits", "$.failedUnits"
        ),
        "IngestedItemsMetricFilter": _metric_filter(
            SUMMARY_PATTERN, "AuditItemsIngested", "$.items"
        ),
        "IngestFailuresAlarm": alarm(
            "Audit ingestion failed messages or objects (ingest_summary failedUnits)",
            _metric(AUDIT_NAMESPACE, "AuditIngestFailedUnits", "Sum", 300),
            threshold=0,
            periods=1,
            missing="notBreaching",
        ),
        "AuditObjectsMissingAlarm": _missing_audit_objects(),
        "DlqDepthAlarm": alarm(
            "Audit objects failed ingestion and wait in the DLQ (central-llm-dlq-redrive)",
            _metric(
                "AWS/SQS",
                "ApproximateNumberOfMessagesVisible",
                "Maximum",
                300,
                QueueName=get_att("Dlq", "QueueName"),
            ),
            threshold=0,
            periods=1,
            missing="notBreaching",
        ),
        "IngestBacklogAlarm": alarm(
            "Audit notifications wait more than 15 minutes for the ingestion Lambda",
            _metric(
                "AWS/SQS",
                "ApproximateAgeOfOldestMessage",
                "Maximum",
                300,
                QueueName=get_att("IngestQueue", "QueueName"),
            ),
            threshold=900,
            periods=1,
            missing="notBreaching",
        ),
        "AuditShippingStalledAlarm": alarm(
            "Audit shipping stalled: the oldest unshipped record is older than 5 minutes",
            _metric(
                AUDIT_NAMESPACE,
                "AuditOldestUnshippedAgeSeconds",
                "Maximum",
                60,
                ServiceName=ref("ServiceName"),
            ),
            threshold=SHIP_LAG_LIMIT_S,
            periods=3,
            missing="breaching",
        ),
        "AuditRecordsDroppedAlarm": alarm(
            "Audit records were dropped (spool full or failed under the drop policy)",
            _metric(
                AUDIT_NAMESPACE,
                "AuditRecordsDropped",
                "Maximum",
                60,
                ServiceName=ref("ServiceName"),
            ),
            threshold=0,
            periods=1,
            missing="notBreaching",
        ),
    }
