"""The SageMaker side: the roles SageMaker assumes (pipeline jobs, Ground Truth jobs, the feature
store's offline writer), the label store's feature group and Athena workgroup, and the model
package group the registry versions live in. The pipeline and Ground Truth roles are the repo's
own policy files (`cloud/pipeline/pipeline_policy.json`, `cloud/labeling/ground_truth_policy.json`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cloud.labels.versions import COLUMNS, EVENT_TIME, RECORD_ID

from .policy import document, from_file, fsub, role_policy, statement, trust
from .storage import BUCKET, KEY

CLOUD = Path(__file__).resolve().parents[1]
PIPELINE_POLICY = CLOUD / "pipeline" / "pipeline_policy.json"
GROUND_TRUTH_POLICY = CLOUD / "labeling" / "ground_truth_policy.json"
FEATURE_STORE_POLICY = CLOUD / "labels" / "feature_store_policy.json"

PIPELINE_ROLE, LABELING_ROLE, FEATURE_STORE_ROLE = "PipelineRole", "LabelingJobRole", "FeatureStoreRole"
FEATURE_GROUP, ATHENA_WORKGROUP, MODEL_PACKAGE_GROUP = "LabelStoreFeatureGroup", "AthenaWorkGroup", "ModelPackageGroup"
GLUE_DATABASE = "sagemaker_featurestore"  # where Feature Store creates the offline store's Glue table


def _role(trust_policy: dict[str, Any], description: str) -> dict[str, Any]:
    return {"Type": "AWS::IAM::Role", "Properties": {"Description": description,
                                                     "AssumeRolePolicyDocument": trust_policy}}


def _trust_from_file(path: Path, name: str, prefix: str) -> dict[str, Any]:
    return from_file(path, name, {}, prefix)


def pipeline_role(names: dict[str, Any]) -> dict[str, Any]:
    return {
        PIPELINE_ROLE: _role(_trust_from_file(PIPELINE_POLICY, "PipelineRoleTrustPolicy", "Pipeline"),
                             "edge-inspect retraining pipeline jobs (SageMaker processing and training)"),
        "PipelineRolePolicy": role_policy(PIPELINE_ROLE, "pipeline-jobs",
                                          from_file(PIPELINE_POLICY, "PipelineRolePolicy", names, "Pipeline")),
    }


def labeling_role(names: dict[str, Any]) -> dict[str, Any]:
    return {
        LABELING_ROLE: _role(_trust_from_file(GROUND_TRUTH_POLICY, "ExecutionRoleTrustPolicy", "Labeling"),
                             "edge-inspect Ground Truth labeling jobs"),
        "LabelingJobRolePolicy": role_policy(LABELING_ROLE, "labeling-jobs",
                                             from_file(GROUND_TRUTH_POLICY, "ExecutionRolePolicy", names, "Labeling")),
    }


def feature_store_role() -> dict[str, Any]:
    offline = fsub("${" + BUCKET + ".Arn}/${OfflineStorePrefix}/*")
    glue = [fsub(f"arn:${{AWS::Partition}}:glue:${{AWS::Region}}:${{AWS::AccountId}}:{r}")
            for r in ("catalog", f"database/{GLUE_DATABASE}", f"table/{GLUE_DATABASE}/*")]
    return {
        FEATURE_STORE_ROLE: _role(trust("sagemaker.amazonaws.com", "TrustFeatureStore",
                                        "only SageMaker (Feature Store) assumes the role, for this account.",
                                        {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}),
                                  "edge-inspect label store: Feature Store writes the offline store"),
        "FeatureStoreRolePolicy": role_policy(FEATURE_STORE_ROLE, "offline-store", document(
            statement("OfflineStoreWrite", ["s3:PutObject", "s3:PutObjectAcl", "s3:GetObject"], offline,
                      "Feature Store writes the label versions' Parquet files under the offline store prefix, with "
                      "the bucket-owner-full-control ACL (hence PutObjectAcl; the bucket enforces owner anyway), "
                      "and reads back what it wrote when it compacts."),
            statement("OfflineStoreBucketAcl", ["s3:GetBucketAcl"], {"Fn::GetAtt": [BUCKET, "Arn"]},
                      "Feature Store checks the bucket's ownership before its first write."),
            statement("OfflineStoreGlueTable", ["glue:GetTable", "glue:CreateTable", "glue:UpdateTable",
                                                "glue:GetDatabase", "glue:CreateDatabase"], glue,
                      "Feature Store creates the offline store's Glue table (named {group}_{creation time}, hence "
                      "table/sagemaker_featurestore/*, the only database it uses) so that Athena can read it."),
            statement("OfflineStoreKms", ["kms:GenerateDataKey", "kms:Decrypt"], {"Fn::GetAtt": [KEY, "Arn"]},
                      "the offline store's objects are SSE-KMS with the product's key."),
        )),
    }


def feature_group() -> dict[str, Any]:
    return {"Type": "AWS::SageMaker::FeatureGroup", "DependsOn": ["FeatureStoreRolePolicy"], "Properties": {
        "FeatureGroupName": {"Ref": "FeatureGroup"},
        "Description": "edge-inspect label store: every label row version, append-only",
        "RecordIdentifierFeatureName": RECORD_ID,
        "EventTimeFeatureName": EVENT_TIME,
        # the same columns cloud/labels/feature_store.py creates and checks the group against
        "FeatureDefinitions": [{"FeatureName": name, "FeatureType": kind} for name, kind in COLUMNS.items()],
        "OnlineStoreConfig": {"EnableOnlineStore": False},  # as_of needs every version: the offline store's
        "OfflineStoreConfig": {
            "S3StorageConfig": {"S3Uri": fsub("s3://${" + BUCKET + "}/${OfflineStorePrefix}"),
                                "KmsKeyId": {"Fn::GetAtt": [KEY, "Arn"]}},
            "DisableGlueTableCreation": False},
        "RoleArn": {"Fn::GetAtt": [FEATURE_STORE_ROLE, "Arn"]},
    }}


def athena_workgroup() -> dict[str, Any]:
    return {"Type": "AWS::Athena::WorkGroup", "Properties": {
        "Name": fsub("${AWS::StackName}-labels"),
        "Description": "edge-inspect label store queries (as_of, history)",
        "WorkGroupConfiguration": {
            "EnforceWorkGroupConfiguration": True,  # a query cannot send its results elsewhere, unencrypted
            "PublishCloudWatchMetricsEnabled": True,
            "ResultConfiguration": {
                "OutputLocation": fsub("s3://${" + BUCKET + "}/${AthenaPrefix}/"),
                "EncryptionConfiguration": {"EncryptionOption": "SSE_KMS", "KmsKey": {"Fn::GetAtt": [KEY, "Arn"]}}},
        },
    }}


def model_package_group() -> dict[str, Any]:
    return {"Type": "AWS::SageMaker::ModelPackageGroup", "DeletionPolicy": "Retain", "UpdateReplacePolicy": "Retain",
            "Properties": {"ModelPackageGroupName": {"Ref": "ModelGroup"},
                           "ModelPackageGroupDescription": "edge-inspect detector versions (the registry)"}}


def operator_policies(names: dict[str, Any]) -> dict[str, Any]:
    """For whatever runs `edge-inspect cloud` (an instance or task role, or the engineer's own):
    the caller policies of the repo's files, as managed policies to attach."""
    def managed(description: str, doc: dict[str, Any]) -> dict[str, Any]:
        return {"Type": "AWS::IAM::ManagedPolicy", "Properties": {"Description": description, "PolicyDocument": doc}}

    return {
        "OperatorPipelinePolicy": managed("edge-inspect cloud: the SageMaker pipeline and the model registry",
                                          from_file(PIPELINE_POLICY, "CallerPolicy", names, "Operator")),
        "OperatorLabelingPolicy": managed("edge-inspect cloud: Ground Truth labeling jobs",
                                          from_file(GROUND_TRUTH_POLICY, "CallerPolicy", names, "OperatorLabeling")),
        "OperatorLabelStorePolicy": managed("edge-inspect cloud: the label store (Feature Store, Athena)",
                                            from_file(FEATURE_STORE_POLICY, None, names, "OperatorStore")),
    }


def resources(names: dict[str, Any]) -> dict[str, Any]:
    return {**operator_policies(names), **pipeline_role(names), **labeling_role(names), **feature_store_role(),
            FEATURE_GROUP: feature_group(), ATHENA_WORKGROUP: athena_workgroup(),
            MODEL_PACKAGE_GROUP: model_package_group()}
