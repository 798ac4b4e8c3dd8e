"""The KMS key and the product's bucket.

One bucket, one prefix per job (frames under `{FramesPrefix}/raw/`, labeling, pipeline, registry,
components), so that each role below is granted its prefixes and nothing else. One customer key:
the bucket, the fleet table, the logs and the Lambda environments are encrypted with it, and its
use is logged in CloudTrail.

How frames are protected: a frame's key names its sha256, and the cloud checks the bytes against
it at every read (ingest, batch, pre-label, dataset copy). The bucket adds three layers so that a
frame cannot be replaced at all, not only detected:
- write once: the bucket policy refuses any PutObject under `{FramesPrefix}/raw/` without
  `If-None-Match` (the `s3:if-none-match` condition key AWS documents for enforcing conditional
  writes), so an existing frame is never overwritten, even by a compromised device's own role;
- versioning: an overwrite or delete by anyone else keeps the old version for NONCURRENT_DAYS;
- optional S3 Object Lock (`ObjectLockDays` > 0, governance mode, chosen when the bucket is
  created): no version of any object can be deleted for that many days, by lifecycle or by anyone
  without s3:BypassGovernanceRetention.
"""

from __future__ import annotations

from typing import Any

from .policy import WHY, arn, fsub

KEY, BUCKET, ACCESS_LOGS = "Key", "Bucket", "AccessLogBucket"
NONCURRENT_DAYS = 30  # an overwritten or deleted object can be brought back for a month
OBJECT_LOCK = "ObjectLockOn"  # the template's condition: ObjectLockDays > 0


def conditions() -> dict[str, Any]:
    return {OBJECT_LOCK: {"Fn::Not": [{"Fn::Equals": [{"Ref": "ObjectLockDays"}, "0"]}]}}


def key() -> dict[str, Any]:
    WHY["KeyAdministeredByAccount"] = (
        "Resource is *: in a key policy it means this key. The account's root principal delegates "
        "the key's use to IAM, where each role below is granted only the calls it makes.")
    WHY["KeyForLogs"] = ("CloudWatch Logs encrypts this product's log groups with the key; Resource * is "
                         "this key, and the condition keeps it to this account's log groups. ReEncrypt* and "
                         "GenerateDataKey* are the action families CloudWatch Logs documents for this grant.")
    return {"Type": "AWS::KMS::Key", "Properties": {
        "Description": "edge-inspect: frames, labels, models, the fleet table and logs",
        "EnableKeyRotation": True,
        "KeyPolicy": {"Version": "2012-10-17", "Statement": [
            {"Sid": "KeyAdministeredByAccount", "Effect": "Allow",
             "Principal": {"AWS": fsub("arn:${AWS::Partition}:iam::${AWS::AccountId}:root")},
             "Action": "kms:*", "Resource": "*"},
            {"Sid": "KeyForLogs", "Effect": "Allow",
             "Principal": {"Service": fsub("logs.${AWS::Region}.amazonaws.com")},
             "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"],
             "Resource": "*",
             "Condition": {"ArnLike": {"kms:EncryptionContext:aws:logs:arn":
                                       fsub(arn("logs", "log-group:*"))}}},
        ]},
    }}


def _public_access_blocked() -> dict[str, bool]:
    return {"BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True, "RestrictPublicBuckets": True}


def bucket() -> dict[str, Any]:
    return {"Type": "AWS::S3::Bucket", "DeletionPolicy": "Retain", "UpdateReplacePolicy": "Retain", "Properties": {
        "BucketName": {"Ref": "BucketName"},
        "BucketEncryption": {"ServerSideEncryptionConfiguration": [{
            "ServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": {"Fn::GetAtt": [KEY, "Arn"]}},
            "BucketKeyEnabled": True}]},  # one data key per object batch, not one KMS call per frame
        "VersioningConfiguration": {"Status": "Enabled"},
        # Object Lock can only be chosen when the bucket is made: set ObjectLockDays at the first deploy
        "ObjectLockEnabled": {"Fn::If": [OBJECT_LOCK, True, {"Ref": "AWS::NoValue"}]},
        "ObjectLockConfiguration": {"Fn::If": [OBJECT_LOCK, {
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": {"Ref": "ObjectLockDays"}}}},
            {"Ref": "AWS::NoValue"}]},
        "LifecycleConfiguration": {"Rules": [
            {"Id": "RawFramesExpire", "Status": "Enabled", "Prefix": fsub("${FramesPrefix}/raw/"),
             "ExpirationInDays": {"Ref": "RawFramesDays"}},
            {"Id": "OldVersionsExpire", "Status": "Enabled",
             "NoncurrentVersionExpiration": {"NoncurrentDays": NONCURRENT_DAYS},
             "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7}},
        ]},
        "PublicAccessBlockConfiguration": _public_access_blocked(),
        "OwnershipControls": {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},  # no ACLs at all
        "LoggingConfiguration": {"DestinationBucketName": {"Ref": ACCESS_LOGS}, "LogFilePrefix": "bucket/"},
        # Ground Truth's worker portal shows the frames from presigned URLs in the browser; CORS
        # only lets the portal's pages (this region's labeling domains) read what a URL grants.
        "CorsConfiguration": {"CorsRules": [{
            "AllowedMethods": ["GET"], "AllowedHeaders": [],
            "AllowedOrigins": [fsub("https://*.labeling.${AWS::Region}.sagemaker.aws")], "MaxAge": 3000}]},
    }}


def access_log_bucket() -> dict[str, Any]:
    return {"Type": "AWS::S3::Bucket", "DeletionPolicy": "Retain", "UpdateReplacePolicy": "Retain",
            "Metadata": {"checkov": {"skip": [
                {"id": "CKV_AWS_18", "comment": "the access log bucket does not log itself: it would log its own "
                                                "log deliveries without end"},
            ]}},
            "Properties": {
                "BucketEncryption": {"ServerSideEncryptionConfiguration": [{
                    "ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]},
                "VersioningConfiguration": {"Status": "Enabled"},
                "LifecycleConfiguration": {"Rules": [
                    {"Id": "AccessLogsExpire", "Status": "Enabled", "ExpirationInDays": 365,
                     "NoncurrentVersionExpiration": {"NoncurrentDays": NONCURRENT_DAYS}}]},
                "PublicAccessBlockConfiguration": _public_access_blocked(),
                "OwnershipControls": {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},
            }}


def _deny_plain_http(bucket_ref: str, sid: str) -> dict[str, Any]:
    WHY[sid] = ("Principal * in a Deny: nobody, whatever their permissions, reads or writes the bucket "
                "without TLS 1.2 or later.")
    return {"Sid": sid, "Effect": "Deny", "Principal": "*", "Action": "s3:*",
            "Resource": [{"Fn::GetAtt": [bucket_ref, "Arn"]}, fsub("${" + bucket_ref + ".Arn}/*")],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}}}


def _deny_old_tls(bucket_ref: str, sid: str) -> dict[str, Any]:
    WHY[sid] = "Principal * in a Deny: TLS before 1.2 is refused for everyone."
    return {"Sid": sid, "Effect": "Deny", "Principal": "*", "Action": "s3:*",
            "Resource": [{"Fn::GetAtt": [bucket_ref, "Arn"]}, fsub("${" + bucket_ref + ".Arn}/*")],
            "Condition": {"NumericLessThan": {"s3:TlsVersion": "1.2"}}}


def _frames_write_once(sid: str) -> dict[str, Any]:
    WHY[sid] = ("Principal * in a Deny: nobody, a device's own role included, puts a sampled frame or its sidecar "
                "without If-None-Match, so S3 refuses (412) any write over an existing frame: what was checked and "
                "labelled stays what is trained on. s3:ObjectCreationOperation leaves multipart parts alone (they "
                "take no conditional header), as AWS documents for enforcing conditional writes.")
    return {"Sid": sid, "Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
            "Resource": fsub("${" + BUCKET + ".Arn}/${FramesPrefix}/raw/*"),
            "Condition": {"Null": {"s3:if-none-match": "true"}, "Bool": {"s3:ObjectCreationOperation": "true"}}}


def bucket_policy() -> dict[str, Any]:
    return {"Type": "AWS::S3::BucketPolicy", "Properties": {"Bucket": {"Ref": BUCKET}, "PolicyDocument": {
        "Version": "2012-10-17",
        "Statement": [_deny_plain_http(BUCKET, "BucketDenyPlainHttp"), _deny_old_tls(BUCKET, "BucketDenyOldTls"),
                      _frames_write_once("BucketFramesWriteOnce")]}}}


def access_log_bucket_policy() -> dict[str, Any]:
    WHY["AccessLogsDelivery"] = "only S3's log delivery, for the product's bucket in this account, writes here."
    return {"Type": "AWS::S3::BucketPolicy", "Properties": {"Bucket": {"Ref": ACCESS_LOGS}, "PolicyDocument": {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "AccessLogsDelivery", "Effect": "Allow", "Principal": {"Service": "logging.s3.amazonaws.com"},
             "Action": "s3:PutObject", "Resource": fsub("${" + ACCESS_LOGS + ".Arn}/bucket/*"),
             "Condition": {"ArnLike": {"aws:SourceArn": fsub("arn:${AWS::Partition}:s3:::${BucketName}")},
                           "StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}},
            _deny_plain_http(ACCESS_LOGS, "AccessLogsDenyPlainHttp"),
        ]}}}


def resources() -> dict[str, Any]:
    return {KEY: key(), BUCKET: bucket(), ACCESS_LOGS: access_log_bucket(),
            "BucketPolicy": bucket_policy(), "AccessLogBucketPolicy": access_log_bucket_policy()}
