"""What the devices need in AWS, and the record of what they say.

- `IotPolicy`: attached to each core device's certificate. A device connects as itself, publishes
  only under its own topics (`{TopicPrefix}/{thing}/...`; the thing comes from the certificate's
  connection, never from the device) and talks to Greengrass's and IoT's own per-thing topics.
- `TokenExchangeRole` + `TokenExchangeRoleAlias`: the AWS credentials the Greengrass token exchange
  service vends to components. The daemon may only PutObject its frames, under its own thing's
  raw prefix (`credentials-iot:ThingName`, which the nucleus sends with each credentials request),
  and Greengrass may read the model component's artifacts.
- `FleetTable` + `FleetRule`: every model, notice, error and event message, as items
  `cloud.deploy.fleet_store.DynamoFleetStore` reads (partitioned by the topic's thing).
"""

from __future__ import annotations

from typing import Any

from .policy import arn, document, fsub, role_policy, statement, trust
from .storage import BUCKET, KEY

IOT_POLICY, TES_ROLE, TES_ALIAS = "IotPolicy", "TokenExchangeRole", "TokenExchangeRoleAlias"
FLEET_TABLE, FLEET_RULE, FLEET_RULE_ROLE = "FleetMessages", "FleetRule", "FleetRuleRole"
THING = "${!iot:Connection.Thing.ThingName}"  # an IoT policy variable, escaped for Fn::Sub
FLEET_TOPICS = ("model", "notices", "errors", "events")  # cloud.deploy.observations.TOPICS with JSON bodies
RULE_FIELDS = ("thing_from_topic", "kind", "sk", "received_ms", "expires_at")  # what the rule adds to a message
FLEET_RULE_ERRORS = "FleetRuleErrors"


def iot_policy() -> dict[str, Any]:
    own = f"${{TopicPrefix}}/{THING}"
    things = f"$aws/things/{THING}"
    greengrass_topics = [fsub(arn("iot", f"topic/{things}/{sub}")) for sub in
                         ("greengrass/health/json", "greengrassv2/health/json", "jobs/*", "shadow/*")]
    return {"Type": "AWS::IoT::Policy", "Properties": {"PolicyDocument": document(
        statement("DeviceConnectAsItself", ["iot:Connect"], fsub(arn("iot", f"client/{THING}*")),
                  "a core device connects with its thing name as client id; the nucleus opens further "
                  "connections as `{thing}#2`, `#3`... (AWS's minimal Greengrass core policy grants `client/{thing}*` "
                  "for this), hence the trailing *."),
        statement("DevicePublishOwnTopics", ["iot:Publish", "iot:RetainPublish"], fsub(arn("iot", f"topic/{own}/*")),
                  "the daemon's events, notices, errors, stats and retained status and model messages, under its own "
                  "thing only: a device cannot speak for another line."),
        statement("DeviceGreengrassTopics", ["iot:Publish", "iot:Receive"], greengrass_topics,
                  "the nucleus reports health and follows its jobs and shadows, its own thing's only."),
        statement("DeviceGreengrassSubscriptions", ["iot:Subscribe"],
                  [fsub(arn("iot", f"topicfilter/{things}/{sub}")) for sub in ("jobs/*", "shadow/*")],
                  "the nucleus subscribes to its own jobs (deployments) and shadows."),
        statement("DeviceAssumeTokenExchangeRole", ["iot:AssumeRoleWithCertificate"],
                  {"Fn::GetAtt": [TES_ALIAS, "RoleAliasArn"]},
                  "the token exchange service trades the certificate for the role below, and only that role."),
        statement("DeviceGreengrassDataPlane", ["greengrass:GetComponentVersionArtifact",
                                                "greengrass:ResolveComponentCandidates",
                                                "greengrass:GetDeploymentConfiguration",
                                                "greengrass:ListThingGroupsForCoreDevice"], "*",
                  "Resource is *: the minimal core-device policy AWS documents; the nucleus resolves and downloads "
                  "every component it is deployed (its own and AWS's), which a component ARN list cannot name "
                  "ahead of time, and the calls act on the calling core device only."),
    )}}


def token_exchange_role() -> dict[str, Any]:
    return {"Type": "AWS::IAM::Role", "Properties": {
        "Description": "edge-inspect devices (Greengrass token exchange): upload own frames, fetch model artifacts",
        "AssumeRolePolicyDocument": trust("credentials.iot.amazonaws.com", "TrustIotCredentialsProvider",
                                          "only the IoT credentials provider, for a certificate whose policy allows "
                                          "this role's alias, assumes the role."),
    }}


def token_exchange_policy() -> dict[str, Any]:
    return role_policy(TES_ROLE, "devices", document(
        statement("DeviceUploadOwnFrames", ["s3:PutObject"],
                  fsub("${" + BUCKET + ".Arn}/${FramesPrefix}/raw/${!credentials-iot:ThingName}/*"),
                  "the uploader writes sampled frames and their JSON beside them, under its own thing's raw "
                  "prefix only: it can neither read frames nor write another line's. It creates, never replaces: "
                  "the bucket policy (BucketFramesWriteOnce) refuses a put without If-None-Match."),
        statement("DeviceArtifactBucketLocation", ["s3:GetBucketLocation"], {"Fn::GetAtt": [BUCKET, "Arn"]},
                  "the nucleus asks the artifact bucket's region before it downloads a component's artifacts."),
        statement("DeviceFetchModelArtifacts", ["s3:GetObject"], fsub("${" + BUCKET + ".Arn}/${ComponentPrefix}/*"),
                  "Greengrass downloads com.edgeinspect.Model's artifacts (content-addressed, read only)."),
        statement("DeviceKms", ["kms:GenerateDataKey", "kms:Decrypt"], {"Fn::GetAtt": [KEY, "Arn"]},
                  "the bucket is SSE-KMS: writing a frame needs a data key, reading an artifact needs Decrypt."),
    ))


def token_exchange_alias() -> dict[str, Any]:
    return {"Type": "AWS::IoT::RoleAlias", "Properties": {
        "RoleAlias": fsub("${AWS::StackName}-token-exchange"),
        "RoleArn": {"Fn::GetAtt": [TES_ROLE, "Arn"]},
        "CredentialDurationSeconds": 3600,
    }}


def fleet_table() -> dict[str, Any]:
    return {"Type": "AWS::DynamoDB::Table", "DeletionPolicy": "Retain", "UpdateReplacePolicy": "Retain",
            "Properties": {
                "TableName": {"Ref": "FleetTable"},
                "BillingMode": "PAY_PER_REQUEST",
                "AttributeDefinitions": [{"AttributeName": "thing_from_topic", "AttributeType": "S"},
                                         {"AttributeName": "sk", "AttributeType": "S"}],
                "KeySchema": [{"AttributeName": "thing_from_topic", "KeyType": "HASH"},
                              {"AttributeName": "sk", "KeyType": "RANGE"}],
                "SSESpecification": {"SSEEnabled": True, "SSEType": "KMS",
                                     "KMSMasterKeyId": {"Fn::GetAtt": [KEY, "Arn"]}},
                "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": True},
                "TimeToLiveSpecification": {"AttributeName": "expires_at", "Enabled": True},
            }}


def fleet_rule_sql(topic_prefix: str) -> dict[str, Any]:
    """Topics are {prefix}/{thing}/{kind}; `topic(n)` counts levels from 1, and the prefix may have
    several, so the levels are those of the configured prefix (TopicPrefix is fixed when the
    template is generated). `sk` sorts by receive time: timestamp() has 13 digits until 2286."""
    thing = topic_prefix.count("/") + 2
    kinds = " OR ".join(f"topic({thing + 1}) = '{t}'" for t in FLEET_TOPICS)
    # `SELECT *` puts the message's own keys beside the computed ones; a message that carries one
    # of those names (no schema in device/schemas has them) is not stored, so that a device can
    # never choose the partition it is filed under or its own expiry.
    untouched = " AND ".join(f"isUndefined({field})" for field in RULE_FIELDS)
    return fsub(f"SELECT *, topic({thing}) AS thing_from_topic, topic({thing + 1}) AS kind, "
                "concat(cast(timestamp() AS String), '-', newuuid()) AS sk, timestamp() AS received_ms, "
                "floor(timestamp() / 1000) + ${FleetDays} * 86400 AS expires_at "
                f"FROM '${{TopicPrefix}}/+/+' WHERE ({kinds}) AND {untouched}")


def fleet_rule(topic_prefix: str) -> dict[str, Any]:
    return {"Type": "AWS::IoT::TopicRule", "Properties": {"TopicRulePayload": {
        "Description": "edge-inspect: device model, notice, error and event messages into the fleet table",
        "AwsIotSqlVersion": "2016-03-23",
        "RuleDisabled": False,
        "Sql": fleet_rule_sql(topic_prefix),
        "Actions": [{"DynamoDBv2": {"PutItem": {"TableName": {"Ref": FLEET_TABLE}},
                                    "RoleArn": {"Fn::GetAtt": [FLEET_RULE_ROLE, "Arn"]}}}],
        # a message the table refused (throttled, too large) is logged, not lost without a trace
        "ErrorAction": {"CloudwatchLogs": {"LogGroupName": {"Ref": FLEET_RULE_ERRORS},
                                           "RoleArn": {"Fn::GetAtt": [FLEET_RULE_ROLE, "Arn"]}}},
    }}}


def fleet_rule_errors() -> dict[str, Any]:
    return {"Type": "AWS::Logs::LogGroup", "Properties": {
        "LogGroupName": fsub("/aws/iot/${AWS::StackName}-fleet-rule-errors"), "RetentionInDays": {"Ref": "LogDays"},
        "KmsKeyId": {"Fn::GetAtt": [KEY, "Arn"]}}}


def fleet_rule_role() -> dict[str, Any]:
    return {"Type": "AWS::IAM::Role", "Properties": {
        "Description": "edge-inspect: the IoT rule that writes device messages to the fleet table",
        "AssumeRolePolicyDocument": trust("iot.amazonaws.com", "TrustIotRules", "only IoT rules of this account "
                                          "assume the role.",
                                          {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}),
        "Policies": [{"PolicyName": "fleet-table", "PolicyDocument": document(
            statement("RulePutFleetItems", ["dynamodb:PutItem"], {"Fn::GetAtt": [FLEET_TABLE, "Arn"]},
                      "the rule adds one item per message; it never reads, updates or deletes."),
            statement("RuleFleetTableKms", ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey*", "kms:DescribeKey"],
                      {"Fn::GetAtt": [KEY, "Arn"]},
                      "the fleet table is encrypted with the product's key; only through DynamoDB. GenerateDataKey* is "
                      "the action family DynamoDB documents for a customer managed table key.",
                      condition={"StringEquals": {"kms:ViaService": fsub("dynamodb.${AWS::Region}.amazonaws.com")}}),
            statement("RuleErrorLog", ["logs:CreateLogStream", "logs:PutLogEvents"],
                      fsub("${" + FLEET_RULE_ERRORS + ".Arn}"),
                      "a message the rule could not store is written to the rule's own error log group."),
        )}],
    }}


def resources(topic_prefix: str) -> dict[str, Any]:
    return {IOT_POLICY: iot_policy(), TES_ROLE: token_exchange_role(), "TokenExchangePolicy": token_exchange_policy(),
            TES_ALIAS: token_exchange_alias(), FLEET_TABLE: fleet_table(), FLEET_RULE_ROLE: fleet_rule_role(),
            FLEET_RULE_ERRORS: fleet_rule_errors(),
            FLEET_RULE: fleet_rule(topic_prefix)}
