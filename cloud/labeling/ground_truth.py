"""The labeling backend on AWS: SageMaker Ground Truth, run by a private work team.

A batch becomes two chained Ground Truth jobs with AWS's built-in task types:

1. an **adjustment** bounding-box job: each frame's input manifest line carries the model's boxes in
   Ground Truth's own bounding-box output format, as if an earlier job had drawn them, and the
   labelers move, resize, relabel, delete or add boxes;
2. a **verification** job on the adjustment job's output manifest: a second look says whether the
   adjusted boxes are right. Only frames it calls right become APPROVED label rows.

Both jobs are named after the batch (`{job_name_prefix}-{batch_id}-adjust` / `-verify`), so `submit`
after a crash finds the job it created before instead of creating a second one (`describe` first,
`create` only on ResourceNotFound). `collect` creates the verification job once the adjustment job
has completed, and reads both output manifests once verification has completed.

The same steps run in AWS without this process: `step_functions.py` builds a state machine whose
Lambda handlers (`ground_truth_handlers.py`) call the methods here.

Everything Ground Truth reads and writes lives under `manifest_s3_uri`:
`batches/{batch_id}/...` for our inputs (manifests, label category configs, worker task templates)
and `output/` for the jobs' output. The IAM policies for the caller, the jobs' execution role and the
state machine are `ground_truth_policy.json` next to this file, explained in
`ground_truth_policy_why.json`.

Formats, from AWS's documentation:
- bounding-box and verification output manifests, adjustment output:
  https://docs.aws.amazon.com/sagemaker/latest/dg/sms-data-output.html
- chaining an adjustment or verification job:
  https://docs.aws.amazon.com/sagemaker/latest/dg/sms-data-verify-start-api.html
- the worker templates' `initial-value` / `overlay` Liquid:
  https://docs.aws.amazon.com/sagemaker/latest/dg/sms-ui-template-crowd-bounding-box.html and
  https://docs.aws.amazon.com/sagemaker/latest/dg/sms-ui-template-crowd-image-classifier.html
- the built-in Lambda ARNs: HumanTaskConfig.PreHumanTaskLambdaArn and
  AnnotationConsolidationConfig.AnnotationConsolidationLambdaArn in the API reference
  https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_HumanTaskConfig.html
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Generic, TypeVar

from botocore.exceptions import BotoCoreError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cloud.aws import AwsError, aws_call
from cloud.labeling.service import Answer, Batch, Box, LabelingError, Progress, Task

log = logging.getLogger(__name__)

# -- AWS's fixed values ---------------------------------------------------------------------------

# The AWS-owned accounts that hold Ground Truth's built-in pre-annotation (PRE-*) and annotation
# consolidation (ACS-*) Lambdas, per region, as listed in the API reference for
# HumanTaskConfig.PreHumanTaskLambdaArn and AnnotationConsolidationConfig.AnnotationConsolidationLambdaArn
# (the same table for every built-in task type). A region missing here has no built-in Lambdas to
# point at, so it is refused by name rather than guessed.
BUILTIN_LAMBDA_ACCOUNTS = {
    "us-east-1": "432418664414",
    "us-east-2": "266458841044",
    "us-west-2": "081040173940",
    "ca-central-1": "918755190332",
    "eu-west-1": "568282634449",
    "eu-west-2": "487402164563",
    "eu-central-1": "203001061592",
    "ap-northeast-1": "477331159723",
    "ap-northeast-2": "845288260483",
    "ap-south-1": "565803892007",
    "ap-southeast-1": "377565633583",
    "ap-southeast-2": "454466003867",
}
JOB_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")  # CreateLabelingJob's LabelingJobName
LABEL_CONFIG_VERSION = "2018-11-28"  # the label category configuration file's "document-version"
BOX_TYPE = "groundtruth/object-detection"
VERIFICATION_TYPE = "groundtruth/label-verification"
ENDED_BADLY = ("Failed", "Stopping", "Stopped")  # a job in these states will never complete
# The verification job's categories. A frame is approved only when the verification job's label is
# exactly VERIFY_OK; anything else (VERIFY_WRONG, a missing answer) leaves it PENDING.
VERIFY_OK = "Boxes are correct"
VERIFY_WRONG = "Boxes need fixing"
_SAFE_CLASS = re.compile(r"^[^{}%<>\"'\\\x00-\x1f]{1,64}$")  # class names go into Liquid/HTML templates

# -- settings -------------------------------------------------------------------------------------

_S3_PREFIX_URI = r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/[A-Za-z0-9_.\-]+)+$"  # no trailing slash, no ..
_ROLE_ARN = r"^arn:aws[a-z\-]*:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+$"
_WORKTEAM_ARN = re.compile(r"^arn:aws[a-z\-]*:sagemaker:(?P<region>[a-z0-9\-]+):\d{12}:"
                           r"workteam/(?P<kind>[a-z\-]+)/(?P<name>[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62})$")
_TAG_KEY = re.compile(r"^[\w.:/=+\-@ ]{1,128}$")
_TAG_VALUE = re.compile(r"^[\w.:/=+\-@ ]{0,256}$")
MAX_USER_TAGS = 49  # CreateLabelingJob takes 50 tags; one is ours (the batch id)


class GroundTruthSettings(BaseModel):
    """`labeling.ground_truth` in cloud.yaml."""

    model_config = ConfigDict(extra="forbid")

    role_arn: str = Field(pattern=_ROLE_ARN, description="the execution role Ground Truth assumes to run the jobs")
    workteam_arn: str = Field(description="a PRIVATE work team (…:workteam/private-crowd/NAME): the frames are factory images")
    manifest_s3_uri: str = Field(pattern=_S3_PREFIX_URI,
                                 description="s3://bucket/prefix: input manifests, label configs and templates, and job output")
    task_time_limit_s: int = Field(600, ge=30, le=28_800, description="how long one labeler has for one frame")
    task_availability_s: int = Field(3 * 24 * 3600, ge=60, le=2_592_000,
                                     description="how long a frame waits for a labeler before it expires")
    workers_per_object: int = Field(1, ge=1, le=9, description="labelers per frame (their boxes are consolidated)")
    max_concurrent_tasks: int = Field(1000, ge=1, le=5000, description="frames out with labelers at once")
    kms_key_id: str | None = Field(None, pattern=r"^[a-zA-Z0-9:/_-]{1,2048}$",
                                   description="KMS key for the job output and the objects we write (default: S3's)")
    label_attribute_prefix: str = Field("edge-inspect", pattern=r"^[a-z0-9](-?[a-z0-9]){0,40}$",
                                        description="label attributes are {prefix}-prelabels, -adjusted, -verified")
    job_name_prefix: str = Field("edge-inspect", pattern=r"^[a-z0-9](-?[a-z0-9]){0,19}$",
                                 description="job names are {prefix}-{batch_id}-adjust / -verify")
    tags: dict[str, str] = Field(default_factory=dict, description="tags on every labeling job")
    max_manifest_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="a larger output manifest is refused unread")

    @field_validator("workteam_arn")
    @classmethod
    def _private_workteam(cls, value: str) -> str:
        match = _WORKTEAM_ARN.match(value)
        if not match:
            raise ValueError("not a work team ARN (arn:aws:sagemaker:REGION:ACCOUNT:workteam/private-crowd/NAME)")
        if match["kind"] != "private-crowd":
            # Public (Mechanical Turk) and vendor work teams show the images to people outside the
            # company. There is no flag to allow them: a factory's images stay with its own people.
            raise ValueError(f"a {match['kind']} work team is refused: these are factory images, "
                             "use a private work team (…:workteam/private-crowd/NAME)")
        return value

    @field_validator("tags")
    @classmethod
    def _aws_tags(cls, tags: dict[str, str]) -> dict[str, str]:
        if len(tags) > MAX_USER_TAGS:
            raise ValueError(f"at most {MAX_USER_TAGS} tags")
        for key, value in tags.items():
            if not _TAG_KEY.match(key) or key.lower().startswith("aws:"):
                raise ValueError(f"tag key {key!r} is not an AWS tag key (1-128 of letters, digits, spaces, _.:/=+-@; no aws: prefix)")
            if not _TAG_VALUE.match(value):
                raise ValueError(f"tag {key!r}: value {value!r} is not an AWS tag value (0-256 of letters, digits, spaces, _.:/=+-@)")
        return tags

    @property
    def workteam_region(self) -> str:
        return _WORKTEAM_ARN.match(self.workteam_arn)["region"]

    @property
    def workteam_name(self) -> str:
        return _WORKTEAM_ARN.match(self.workteam_arn)["name"]


# -- names ----------------------------------------------------------------------------------------


class JobNames(BaseModel):
    """The two jobs of one batch; also `submit`'s reference (as JSON)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    adjustment: str = Field(pattern=JOB_NAME.pattern)
    verification: str = Field(pattern=JOB_NAME.pattern)


def job_names(prefix: str, batch_id: str) -> JobNames:
    """`{prefix}-{batch_id}-adjust` / `-verify`. A batch id too long for that (job names stop at 63
    characters) is replaced by a digest of it: still one name per batch, just less readable."""
    base = f"{prefix}-{batch_id}"
    if len(base) + len("-verify") > 63:
        base = f"{prefix}-{hashlib.sha256(batch_id.encode()).hexdigest()[:20]}"
    names = JobNames(adjustment=f"{base}-adjust", verification=f"{base}-verify")
    return names


class Attributes(BaseModel):
    """The label attribute names in the manifests: the model's boxes, the labelers' adjusted boxes and
    the verification verdict. Chained jobs must each use a new one (AWS's rule)."""

    model_config = ConfigDict(frozen=True)

    prelabels: str
    adjusted: str
    verified: str

    @classmethod
    def for_prefix(cls, prefix: str) -> Attributes:
        return cls(prelabels=f"{prefix}-prelabels", adjusted=f"{prefix}-adjusted", verified=f"{prefix}-verified")


class TaskLambdas(BaseModel):
    """The built-in Lambdas of the two task types in one region."""

    model_config = ConfigDict(frozen=True)

    adjustment_pre: str
    adjustment_consolidation: str
    verification_pre: str
    verification_consolidation: str


def builtin_lambdas(region: str, partition: str = "aws") -> TaskLambdas:
    account = BUILTIN_LAMBDA_ACCOUNTS.get(region)
    if account is None:
        raise LabelingError(f"Ground Truth has no built-in bounding-box Lambdas listed for region {region!r}; "
                            f"supported regions: {', '.join(sorted(BUILTIN_LAMBDA_ACCOUNTS))}")

    def arn(name: str) -> str:
        return f"arn:{partition}:lambda:{region}:{account}:function:{name}"

    return TaskLambdas(adjustment_pre=arn("PRE-AdjustmentBoundingBox"), adjustment_consolidation=arn("ACS-AdjustmentBoundingBox"),
                       verification_pre=arn("PRE-VerificationBoundingBox"),
                       verification_consolidation=arn("ACS-VerificationBoundingBox"))


def split_s3_uri(uri: str) -> tuple[str, str]:
    match = re.match(r"^s3://([^/]+)/(.+)$", uri)
    if not match:
        raise LabelingError(f"not an s3://bucket/key URI: {uri!r}")
    return match[1], match[2]


# -- AWS calls ------------------------------------------------------------------------------------


class AwsCallError(AwsError, LabelingError):
    """An AWS call failed (see cloud.aws); `code` lets callers tell an expected error from a real one."""


def _call(client: Any, operation: str, **params: Any) -> dict[str, Any]:
    return aws_call(client, operation, AwsCallError, **params)


# -- manifests: writing ---------------------------------------------------------------------------


def _iso(t: float) -> str:
    """Ground Truth's creation-date format: UTC, no zone suffix."""
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")


def prelabel_line(task: Task, classes: list[str], attribute: str, created: float, job_name: str) -> dict[str, Any]:
    """One input manifest line for the adjustment job: the frame, and the model's boxes in Ground
    Truth's bounding-box output format, as the "previous job" whose labels are adjusted."""
    annotations, objects = [], []
    for box in task.prelabels:
        if box.class_name not in classes:
            raise LabelingError(f"frame {task.sha256[:12]}: pre-label class {box.class_name!r} is not one of {classes}")
        annotations.append({"class_id": classes.index(box.class_name), "left": round(box.left), "top": round(box.top),
                            "width": max(1, round(box.width)), "height": max(1, round(box.height))})
        objects.append({"confidence": box.score if box.score is not None else 0.0})
    return {
        "source-ref": f"s3://{task.bucket}/{task.key}",
        attribute: {"image_size": [{"width": task.width, "height": task.height, "depth": 3}], "annotations": annotations},
        f"{attribute}-metadata": {
            "objects": objects,
            "class-map": {str(i): name for i, name in enumerate(classes)},
            "type": BOX_TYPE,
            "human-annotated": "no",  # the model drew them
            "creation-date": _iso(created),
            "job-name": job_name,
        },
    }


def label_category_config(labels: list[str]) -> dict[str, Any]:
    return {"document-version": LABEL_CONFIG_VERSION, "labels": [{"label": label} for label in labels]}


def _liquid_boxes(attribute: str) -> str:
    """Liquid that lists a manifest attribute's boxes as the crowd elements' box objects (class
    names from the attribute's class-map), one per line; both templates show boxes this way."""
    return f"""{{% for box in task.input.manifestLine.{attribute}.annotations %}}
        {{% capture class_id %}}{{{{ box.class_id }}}}{{% endcapture %}}
        {{% assign label = task.input.manifestLine.{attribute}-metadata.class-map[class_id] %}}
        {{ label: {{{{label | to_json}}}}, left: {{{{box.left}}}}, top: {{{{box.top}}}}, width: {{{{box.width}}}},
          height: {{{{box.height}}}} }},
      {{% endfor %}}
"""


def adjustment_template(prelabels: str) -> str:
    """The adjustment job's worker task template: the documented crowd-bounding-box `initial-value`
    Liquid, reading the earlier boxes from the manifest line's `prelabels` attribute."""
    return f"""<script src="https://assets.crowd.aws/crowd-html-elements.js"></script>
<crowd-form>
  <crowd-bounding-box
    name="boundingBox"
    src="{{{{ task.input.taskObject | grant_read_access }}}}"
    header="Correct the boxes: move, resize, relabel or delete them, and draw every defect that has no box."
    labels="{{{{ task.input.labels | to_json | escape }}}}"
    initial-value="[
{_liquid_boxes(prelabels)}    ]"
  >
    <full-instructions header="Adjusting defect boxes">
      <p>The boxes were drawn by the inspection model. Fix each one so it fits the defect tightly and has the right class;
      delete boxes around things that are not defects; draw a box around every defect the model missed.</p>
    </full-instructions>
    <short-instructions>
      Fix, delete or add boxes so that every defect, and only defects, has a tight box of the right class.
    </short-instructions>
  </crowd-bounding-box>
</crowd-form>
"""


def verification_template(adjusted: str, classes: list[str]) -> str:
    """The verification job's worker task template: the documented crowd-image-classifier with the
    adjusted boxes as a `boundingBox` overlay; the categories come from the label category config."""
    labels = html.escape(json.dumps(classes), quote=True)  # checked safe names, escaped for the attribute
    return f"""<script src="https://assets.crowd.aws/crowd-html-elements.js"></script>
<crowd-form>
  <crowd-image-classifier
    name="verification"
    src="{{{{ task.input.taskObject | grant_read_access }}}}"
    header="Are these boxes right: every defect boxed, tightly, with the right class, and nothing else?"
    categories="{{{{ task.input.labels | to_json | escape }}}}"
    overlay="{{
      boundingBox: {{
        labels: {labels},
        value: [
{_liquid_boxes(adjusted)}        ]
      }}
    }}"
  >
    <full-instructions header="Checking defect boxes">
      <p>Choose "{VERIFY_OK}" only if every defect has a tight box with the right class and no box is around anything else.</p>
    </full-instructions>
    <short-instructions>
      Choose "{VERIFY_OK}" only if every defect, and nothing else, has a tight box of the right class.
    </short-instructions>
    <worker-comment header="What is wrong?" link-text="Add a comment"
                    placeholder="e.g. the scratch at the top left has no box"></worker-comment>
  </crowd-image-classifier>
</crowd-form>
"""


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines).encode()


# -- manifests: reading ---------------------------------------------------------------------------


class Value(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ManifestProblem(Value):
    line: int = Field(description="1-based line number in the manifest")
    message: str


class ObjectFailure(Value):
    """A data object Ground Truth gave up on (expired, no worker, consolidation failed)."""

    source_ref: str
    reason: str


class BoxLabel(Value):
    """One frame's boxes from a bounding-box (or adjustment) job's output."""

    source_ref: str
    width: int
    height: int
    boxes: list[Box]
    created: float = Field(description="creation-date, seconds since the epoch (UTC)")
    job_name: str
    human_annotated: bool
    adjustment_status: str | None = Field(None, description="adjusted/unadjusted (adjustment jobs only)")


class Verdict(Value):
    """One frame's label from a verification job's output."""

    source_ref: str
    class_name: str
    created: float
    job_name: str
    confidence: float | None = None
    comments: list[str] = Field(default_factory=list)

    @property
    def approved(self) -> bool:
        return self.class_name == VERIFY_OK


LabelT = TypeVar("LabelT", BoxLabel, Verdict)


@dataclass(frozen=True)
class ParsedManifest(Generic[LabelT]):
    """What an output manifest said: labels, objects that got none, and lines set aside."""

    labels: list[LabelT]
    failures: list[ObjectFailure]
    problems: list[ManifestProblem]


class _BadLine(ValueError):
    pass


def _need(mapping: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise _BadLine(f"{where} has no {key!r}")
    value = mapping[key]
    if not isinstance(value, kind) or isinstance(value, bool):  # JSON true is no class id or number here
        raise _BadLine(f"{where}.{key} is {value!r}, expected {kind.__name__}")
    return value


def parse_creation_date(text: str) -> float:
    """Ground Truth's creation-date: ISO 8601, usually without a zone (UTC), sometimes "+0000" or
    "Z". Normalised by hand: datetime.fromisoformat takes neither before Python 3.11."""
    normal = re.sub(r"([+-]\d\d)(\d\d)$", r"\1:\2", text.strip().replace("Z", "+00:00"))
    try:
        parsed = datetime.fromisoformat(normal)
    except ValueError as exc:
        raise _BadLine(f"creation-date {text!r} is not an ISO 8601 time") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):  # json takes NaN
        raise _BadLine(f"{where} is {value!r}, expected a number")
    return float(value)


def _box_label(source_ref: str, label: Any, metadata: dict[str, Any], attribute: str) -> BoxLabel:
    if metadata.get("type") != BOX_TYPE:
        raise _BadLine(f"{attribute}-metadata.type is {metadata.get('type')!r}, expected {BOX_TYPE!r}")
    class_map = _need(metadata, "class-map", dict, f"{attribute}-metadata")
    size = _need(label, "image_size", list, attribute)
    if not size or not isinstance(size[0], dict):
        raise _BadLine(f"{attribute}.image_size is empty")
    width, height = (_number(size[0].get(k), f"{attribute}.image_size.{k}") for k in ("width", "height"))
    if width < 1 or height < 1:
        raise _BadLine(f"{attribute}.image_size is {width:g}x{height:g}")
    boxes = []
    for n, annotation in enumerate(_need(label, "annotations", list, attribute)):
        where = f"{attribute}.annotations[{n}]"
        class_id = _need(annotation, "class_id", int, where)
        name = class_map.get(str(class_id))
        if not isinstance(name, str) or not name:
            raise _BadLine(f"{where}.class_id {class_id} is not in the class-map {class_map}")
        left, top, w, h = (_number(annotation.get(k), f"{where}.{k}") for k in ("left", "top", "width", "height"))
        if w <= 0 or h <= 0:
            raise _BadLine(f"{where} is {w:g}x{h:g}: a box needs a positive width and height")
        boxes.append(Box(class_name=name, left=left, top=top, width=w, height=h))
    return BoxLabel(source_ref=source_ref, width=round(width), height=round(height), boxes=boxes,
                    created=parse_creation_date(_need(metadata, "creation-date", str, f"{attribute}-metadata")),
                    job_name=_need(metadata, "job-name", str, f"{attribute}-metadata"),
                    human_annotated=metadata.get("human-annotated") == "yes",
                    adjustment_status=metadata.get("adjustment-status"))


def _verdict(source_ref: str, label: Any, metadata: dict[str, Any], attribute: str) -> Verdict:
    if metadata.get("type") != VERIFICATION_TYPE:
        raise _BadLine(f"{attribute}-metadata.type is {metadata.get('type')!r}, expected {VERIFICATION_TYPE!r}")
    if not isinstance(label, (str, int)) or isinstance(label, bool):
        raise _BadLine(f"{attribute} is {label!r}, expected the chosen category's index")
    confidence = metadata.get("confidence")
    feedback = metadata.get("worker-feedback", [])
    comments = [f["comment"] for f in feedback if isinstance(f, dict) and isinstance(f.get("comment"), str)] \
        if isinstance(feedback, list) else []
    return Verdict(source_ref=source_ref, class_name=_need(metadata, "class-name", str, f"{attribute}-metadata"),
                   created=parse_creation_date(_need(metadata, "creation-date", str, f"{attribute}-metadata")),
                   job_name=_need(metadata, "job-name", str, f"{attribute}-metadata"),
                   confidence=_number(confidence, f"{attribute}-metadata.confidence") if confidence is not None else None,
                   comments=comments)


def _parse_manifest(text: str, attribute: str, parse: Callable[[str, Any, dict[str, Any], str], LabelT]) -> ParsedManifest[LabelT]:
    labels, failures, problems = [], [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise _BadLine(f"not JSON: {exc.msg} at column {exc.colno}") from exc
            if not isinstance(item, dict):
                raise _BadLine(f"a JSON {type(item).__name__}, expected an object")
            source_ref = _need(item, "source-ref", str, "the line")
            metadata = item.get(f"{attribute}-metadata")
            if not isinstance(metadata, dict):
                raise _BadLine(f"no {attribute}-metadata object")
            if attribute not in item:
                if "failure-reason" not in metadata:
                    raise _BadLine(f"no {attribute!r} label and no failure-reason")
                failures.append(ObjectFailure(source_ref=source_ref, reason=str(metadata["failure-reason"])))
                continue
            labels.append(parse(source_ref, item[attribute], metadata, attribute))
        except (_BadLine, ValidationError) as exc:
            problems.append(ManifestProblem(line=number, message=" ".join(str(exc).split())))
    return ParsedManifest(labels, failures, problems)


def parse_box_manifest(text: str, attribute: str) -> ParsedManifest[BoxLabel]:
    """A bounding-box or adjustment job's output manifest, read for the boxes under `attribute`.
    A malformed line is set aside as a problem naming its line number; the other lines still parse."""
    return _parse_manifest(text, attribute, _box_label)


def parse_verification_manifest(text: str, attribute: str) -> ParsedManifest[Verdict]:
    """A verification job's output manifest, read for the verdict under `attribute`; problems as above."""
    return _parse_manifest(text, attribute, _verdict)


def _scaled(label: BoxLabel, task: Task) -> list[Box]:
    """The boxes in the task's pixels: Ground Truth measures the image itself, and a frame whose
    stored size differs (it should not) keeps its boxes where the labeler put them."""
    if (label.width, label.height) == (task.width, task.height):
        return list(label.boxes)
    sx, sy = task.width / label.width, task.height / label.height
    return [b.model_copy(update={"left": b.left * sx, "top": b.top * sy, "width": b.width * sx, "height": b.height * sy})
            for b in label.boxes]


# -- the backend ----------------------------------------------------------------------------------


class NothingToVerify(LabelingError):
    """The adjustment job labeled none of the batch's frames: there is no verification job to run."""


class GroundTruthLabeling:
    name = "ground_truth"

    def __init__(self, settings: GroundTruthSettings, sagemaker: Any, s3: Any) -> None:
        self.settings, self.sagemaker, self.s3 = settings, sagemaker, s3
        self.region = sagemaker.meta.region_name
        if settings.workteam_region != self.region:
            raise LabelingError(f"the work team is in {settings.workteam_region} but SageMaker calls go to {self.region}: "
                                "a labeling job can only use a work team of its own region")
        self.partition = settings.role_arn.split(":")[1]
        self.lambdas = builtin_lambdas(self.region, self.partition)
        self.attributes = Attributes.for_prefix(settings.label_attribute_prefix)
        self.bucket, self.prefix = split_s3_uri(settings.manifest_s3_uri)

    @classmethod
    def from_session(cls, settings: GroundTruthSettings, session: Any) -> GroundTruthLabeling:
        """The production clients, from a boto3 Session (its region and credentials)."""
        from botocore.config import Config

        config = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=10, read_timeout=60)
        return cls(settings, session.client("sagemaker", config=config), session.client("s3", config=config))

    # -- where things go --------------------------------------------------------------------------

    def job_names(self, batch: Batch) -> JobNames:
        return job_names(self.settings.job_name_prefix, batch.batch_id)

    def batch_key(self, batch: Batch, name: str) -> str:
        return f"{self.prefix}/batches/{batch.batch_id}/{name}"

    def batch_uri(self, batch: Batch, name: str) -> str:
        return f"s3://{self.bucket}/{self.batch_key(batch, name)}"

    @property
    def output_uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}/output/"

    # -- the LabelingService interface ----------------------------------------------------------

    def submit(self, batch: Batch) -> str:
        names = self.job_names(batch)
        existing = self.describe(names.adjustment)
        if existing is None:
            self.create(self.prepare_adjustment(batch))
        else:
            self._check_ours(existing, self.batch_uri(batch, "adjustment.manifest"))
        return names.model_dump_json()

    def collect(self, batch: Batch, ref: str) -> Progress:
        names = self._names(ref)
        adjustment = self._job(names.adjustment)
        if adjustment["LabelingJobStatus"] in ENDED_BADLY:
            return Progress(finished=True, failure=_ended(adjustment))
        if adjustment["LabelingJobStatus"] != "Completed":
            return Progress()
        verification = self.describe(names.verification)
        if verification is None:
            try:
                self.create(self.prepare_verification(batch, _output_uri(adjustment)))
            except NothingToVerify as exc:
                return Progress(finished=True, failure=str(exc))
            return Progress()
        if verification["LabelingJobStatus"] in ENDED_BADLY:
            return Progress(finished=True, failure=_ended(verification))
        if verification["LabelingJobStatus"] != "Completed":
            return Progress()
        answers = self.read_answers(batch, names.adjustment, _output_uri(adjustment), _output_uri(verification))
        return Progress(answers=answers, finished=True)

    # -- the steps (also run by the state machine's Lambda handlers) --------------------------------

    def prepare_adjustment(self, batch: Batch) -> dict[str, Any]:
        """Write the adjustment job's input manifest, label category config and worker template;
        return its CreateLabelingJob request."""
        self._check_classes(batch.classes)
        refs = [f"s3://{t.bucket}/{t.key}" for t in batch.tasks]
        if len(set(refs)) != len(refs):
            raise LabelingError(f"batch {batch.batch_id}: two frames share one S3 object; answers could not be told apart")
        names = self.job_names(batch)
        model = f"{self.settings.job_name_prefix}-model"  # the "job" that drew the pre-labels
        lines = [prelabel_line(t, batch.classes, self.attributes.prelabels, batch.created, model) for t in batch.tasks]
        self._put(batch, "adjustment.manifest", jsonl(lines), "application/jsonlines")
        self._put(batch, "classes.json", json.dumps(label_category_config(batch.classes)).encode(), "application/json")
        self._put(batch, "adjustment.liquid", adjustment_template(self.attributes.prelabels).encode(), "text/html")
        return self.create_request(batch, names.adjustment, "adjustment")

    def prepare_verification(self, batch: Batch, adjustment_output_uri: str) -> dict[str, Any]:
        """Write the verification job's input manifest (the adjustment output's labeled lines, as
        Ground Truth wrote them), its categories and template; return its CreateLabelingJob request.
        Raises NothingToVerify when no frame was labeled."""
        self._check_classes(batch.classes)
        text = self._read(adjustment_output_uri)
        parsed = parse_box_manifest(text, self.attributes.adjusted)
        self._report(batch, adjustment_output_uri, parsed)
        labeled = {label.source_ref for label in parsed.labels}
        lines = [line for line in _json_lines(text) if line.get("source-ref") in labeled]
        if not lines:
            reasons = sorted({f.reason for f in parsed.failures}) or ["no labeled line in the output manifest"]
            raise NothingToVerify(f"adjustment of batch {batch.batch_id} labeled none of its {len(batch.tasks)} frames: "
                                  + "; ".join(reasons))
        self._put(batch, "verification.manifest", jsonl(lines), "application/jsonlines")
        self._put(batch, "verification-categories.json", json.dumps(label_category_config([VERIFY_OK, VERIFY_WRONG])).encode(),
                  "application/json")
        self._put(batch, "verification.liquid", verification_template(self.attributes.adjusted, batch.classes).encode(), "text/html")
        return self.create_request(batch, self.job_names(batch).verification, "verification")

    def read_answers(self, batch: Batch, adjustment_job: str, adjustment_output_uri: str,
                     verification_output_uri: str) -> list[Answer]:
        """Both jobs' output manifests -> one Answer per labeled frame: the adjusted boxes, approved
        when the verification job said they are right."""
        boxes = parse_box_manifest(self._read(adjustment_output_uri), self.attributes.adjusted)
        verdicts = parse_verification_manifest(self._read(verification_output_uri), self.attributes.verified)
        self._report(batch, adjustment_output_uri, boxes)
        self._report(batch, verification_output_uri, verdicts)
        by_ref = {v.source_ref: v for v in verdicts.labels}
        tasks = {f"s3://{t.bucket}/{t.key}": t for t in batch.tasks}
        answers = []
        for label in boxes.labels:
            task = tasks.get(label.source_ref)
            if task is None:
                log.warning("batch %s: %s answers %s, which is not in the batch; ignored", batch.batch_id, adjustment_job,
                            label.source_ref)
                continue
            verdict = by_ref.get(label.source_ref)
            answered = max(label.created, verdict.created) if verdict else label.created
            answers.append(Answer(sha256=task.sha256, boxes=_scaled(label, task), approved=bool(verdict and verdict.approved),
                                  labeler=f"ground_truth:{self.settings.workteam_name}", answered_at=answered, job=adjustment_job))
        return answers

    def create_request(self, batch: Batch, job_name: str, kind: str) -> dict[str, Any]:
        """The CreateLabelingJob request for one of the batch's jobs (its inputs already written)."""
        adjustment = kind == "adjustment"
        output: dict[str, Any] = {"S3OutputPath": self.output_uri}
        if self.settings.kms_key_id:
            output["KmsKeyId"] = self.settings.kms_key_id
        s = self.settings
        return {
            "LabelingJobName": job_name,
            "LabelAttributeName": self.attributes.adjusted if adjustment else self.attributes.verified,
            "InputConfig": {"DataSource": {"S3DataSource": {
                "ManifestS3Uri": self.batch_uri(batch, "adjustment.manifest" if adjustment else "verification.manifest")}}},
            "OutputConfig": output,
            "RoleArn": s.role_arn,
            "LabelCategoryConfigS3Uri": self.batch_uri(batch, "classes.json" if adjustment else "verification-categories.json"),
            "HumanTaskConfig": {
                "WorkteamArn": s.workteam_arn,  # private: checked by the settings, and by the IAM policy's condition
                "UiConfig": {"UiTemplateS3Uri": self.batch_uri(batch, "adjustment.liquid" if adjustment else "verification.liquid")},
                "PreHumanTaskLambdaArn": self.lambdas.adjustment_pre if adjustment else self.lambdas.verification_pre,
                "TaskKeywords": ["Images", "Bounding Box", "Defects", "Adjustment" if adjustment else "Verification"],
                "TaskTitle": f"{'Adjust' if adjustment else 'Verify'} defect boxes: line {batch.line}"[:128],
                "TaskDescription": ("Correct the inspection model's boxes on each frame" if adjustment
                                    else "Check the corrected boxes on each frame"),
                "NumberOfHumanWorkersPerDataObject": s.workers_per_object,
                "TaskTimeLimitInSeconds": s.task_time_limit_s,
                "TaskAvailabilityLifetimeInSeconds": s.task_availability_s,
                "MaxConcurrentTaskCount": s.max_concurrent_tasks,
                "AnnotationConsolidationConfig": {"AnnotationConsolidationLambdaArn":
                                                  self.lambdas.adjustment_consolidation if adjustment
                                                  else self.lambdas.verification_consolidation},
            },
            "Tags": [{"Key": k, "Value": v} for k, v in sorted(s.tags.items())] + [{"Key": "edge-inspect:batch", "Value": batch.batch_id}],
        }

    # -- SageMaker --------------------------------------------------------------------------------

    def describe(self, job_name: str) -> dict[str, Any] | None:
        try:
            return _call(self.sagemaker, "describe_labeling_job", LabelingJobName=job_name)
        except AwsCallError as exc:
            if exc.code == "ResourceNotFound":
                return None
            raise

    def create(self, request: dict[str, Any]) -> None:
        try:
            _call(self.sagemaker, "create_labeling_job", **request)
        except AwsCallError as exc:
            if exc.code != "ResourceInUse":  # another process created it first: the same job, ours
                raise

    def _job(self, job_name: str) -> dict[str, Any]:
        described = self.describe(job_name)
        if described is None:
            raise LabelingError(f"labeling job {job_name} does not exist (SageMaker may not show a new job for a moment)")
        return described

    def _check_ours(self, described: dict[str, Any], manifest_uri: str) -> None:
        """An existing job of our name must read our manifest: a name clash with someone else's job
        would otherwise make us collect their answers as this batch's."""
        have = described.get("InputConfig", {}).get("DataSource", {}).get("S3DataSource", {}).get("ManifestS3Uri")
        if have != manifest_uri:
            raise LabelingError(f"labeling job {described.get('LabelingJobName')} exists but reads {have!r}, not {manifest_uri!r}: "
                                "the name is taken by another job")

    def _names(self, ref: str) -> JobNames:
        try:
            return JobNames.model_validate_json(ref)
        except ValidationError as exc:
            raise LabelingError(f"not a Ground Truth reference: {ref[:200]!r}") from exc

    # -- S3 -----------------------------------------------------------------------------------------

    def _put(self, batch: Batch, name: str, body: bytes, content_type: str) -> None:
        extra = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.settings.kms_key_id} if self.settings.kms_key_id else {}
        _call(self.s3, "put_object", Bucket=self.bucket, Key=self.batch_key(batch, name), Body=body,
              ContentType=content_type, **extra)

    def _read(self, uri: str) -> str:
        bucket, key = split_s3_uri(uri)
        response = _call(self.s3, "get_object", Bucket=bucket, Key=key)
        limit = self.settings.max_manifest_bytes
        if response.get("ContentLength", 0) > limit:
            raise LabelingError(f"{uri} is {response['ContentLength']} bytes, more than max_manifest_bytes ({limit})")
        try:
            data = response["Body"].read(limit + 1)
        except BotoCoreError as exc:
            raise AwsCallError("s3.get_object", type(exc).__name__, " ".join(str(exc).split())) from exc
        if len(data) > limit:
            raise LabelingError(f"{uri} is more than max_manifest_bytes ({limit})")
        return data.decode("utf-8", errors="replace")

    # -- checks and reports -------------------------------------------------------------------------

    @staticmethod
    def _check_classes(classes: list[str]) -> None:
        bad = [c for c in classes if not _SAFE_CLASS.match(c)]
        if bad or len(set(classes)) != len(classes):
            raise LabelingError(f"class names {bad or classes} cannot go into a Ground Truth label config and template: "
                                "1-64 characters without {{ }} % < > quotes or backslashes, each once")

    @staticmethod
    def _report(batch: Batch, uri: str, parsed: ParsedManifest[Any]) -> None:
        for problem in parsed.problems:
            log.warning("batch %s: %s line %d set aside: %s", batch.batch_id, uri, problem.line, problem.message)
        for failure in parsed.failures:
            log.info("batch %s: %s: no label for %s: %s", batch.batch_id, uri, failure.source_ref, failure.reason)


def _ended(described: dict[str, Any]) -> str:
    reason = described.get("FailureReason") or "no reason given"
    return f"labeling job {described.get('LabelingJobName')} {described['LabelingJobStatus']}: {reason}"


def _output_uri(described: dict[str, Any]) -> str:
    uri = described.get("LabelingJobOutput", {}).get("OutputDatasetS3Uri")
    if not uri:
        raise LabelingError(f"labeling job {described.get('LabelingJobName')} is {described['LabelingJobStatus']} "
                            "but names no output manifest")
    return uri


def _json_lines(text: str) -> list[dict[str, Any]]:
    """The manifest's lines that are JSON objects (the parser has already reported the others)."""
    lines = []
    for line in text.splitlines():
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(item, dict):
            lines.append(item)
    return lines
