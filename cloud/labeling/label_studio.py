"""The on-site labeling backend: Label Studio (Community edition), through its REST API
(`label_studio_api`: httpx; why not the SDK is said there).

- One project per line, titled `{project_prefix}-{line}`: found by its title, or created with a
  RectangleLabels config over the batch's classes. A batch with a class the project lacks adds
  it to the config (a retrained model may know one more class); nothing is ever removed.
- A frame is a task: `data` holds the image URL (presigned by the caller: Label Studio's browser
  fetches it directly, so it must still be valid when someone opens the task: at most 7 days,
  SigV4's limit, after which the task shows no image) and the frame's identity (`sha256`, `key`, `batch_id`, `width`, `height`). The
  model's boxes go in as the task's prediction, in Label Studio's rectangle format (percent of the
  image), so the labeler starts from them.
- `submit` is idempotent per batch: it first lists the project's tasks whose `data.batch_id` is
  the batch's (a Data Manager filter, exact match) and imports only the frames not there yet. The
  reference it returns is `{"project": id}`.
- `collect` reads the batch's tasks with their annotations. Per frame the answer is the latest
  ground-truth annotation (the star in the UI: Community edition has no review workflow, so the
  star is how a reviewer accepts), or else the latest submitted one, unapproved. Skipped
  (cancelled) annotations and drafts are no answer. Enterprise's review outcome is honoured when
  the annotation carries it (`last_action` accepted / fixed_and_accepted). The batch is finished
  when every task of it still in the project has an approved answer (a task deleted in Label
  Studio is a frame someone chose not to label); a deleted project fails the batch.
- Every call runs once (no retries): a POST retried after the server did it would import a
  batch twice, and the labeling loop retries the whole step at its next round anyway. (The one
  exception, a call refused with 401 because a Personal Access Token's access token expired, is
  retried once with a renewed one: label_studio_api.) No call is made before the first batch, so
  a server down when `cloud serve` starts only delays the batch.
- The API token comes from an environment variable or a file, never from cloud.yaml; it is
  registered with `device.redact` and never put in an error or a log record. Errors are built
  from the status code and the reply's `detail` only (never a header: replies set a cookie).

Concurrent `submit`s of one batch (two loops on one server) are not guarded against: the loop
is one process.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from cloud.labeling.label_studio_api import ApiError, LabelStudioApi, Page
from cloud.labeling.service import Answer, Batch, Box, LabelingError, Progress, Task
from device.redact import remember_secrets

log = logging.getLogger(__name__)

TOKEN_ENV = "EDGE_INSPECT_LABEL_STUDIO_TOKEN"
MAX_URL_EXPIRY_S = 7 * 24 * 3600  # SigV4's limit for a presigned URL
TITLE_MAX = 50  # Label Studio's PROJECT_TITLE_MAX_LEN
PAGE_SIZE = 100
IMAGE, LABEL = "image", "label"  # the config's Image name (and $image data key) and RectangleLabels name
ACCEPTED_ACTIONS = ("accepted", "fixed_and_accepted")  # Enterprise: a reviewer's verdict on an annotation
T = TypeVar("T")


class LabelStudioSettings(BaseModel):
    """`labeling.label_studio` in cloud.yaml."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(pattern=r"^https?://[^\s/?#@]+(/[^\s?#@]*)?$",
                     description="Label Studio's address, http(s)://host[:port][/path] (no credentials in it)")
    token_env: str = Field(TOKEN_ENV, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$",
                           description="the environment variable holding the API token (when token_file is not set)")
    token_file: Path | None = Field(None, description="a file holding the API token (readable by the service only)")
    project_prefix: str = Field("edge-inspect", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,29}$",
                                description="projects are titled {project_prefix}-{line}")
    timeout_s: float = Field(30.0, gt=0, le=600, description="for one request to Label Studio")
    url_expiry_s: int = Field(MAX_URL_EXPIRY_S, ge=300, le=MAX_URL_EXPIRY_S,
                              description="lifetime of the presigned image URLs in the tasks (SigV4: at most 7 days)")

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/")

    def read_token(self) -> SecretStr:
        """The API token, from token_file or the environment; registered with `device.redact` so
        the project's logging masks it wherever it might turn up."""
        if self.token_file is not None:
            try:
                token = self.token_file.read_text().strip()
            except OSError as exc:
                raise LabelingError(f"label_studio: cannot read the API token file {self.token_file} "
                                    f"({exc.strerror or type(exc).__name__})") from None
            where = f"the token file {self.token_file}"
        else:
            token = os.environ.get(self.token_env, "").strip()
            where = f"the environment variable {self.token_env}"
        if not token:
            raise LabelingError(f"label_studio: no API token for {self.base_url}: {where} is empty or not set "
                                "(Label Studio: Account & Settings, Personal Access Token or legacy Access Token)")
        remember_secrets([token])
        return SecretStr(token)


# -- what crosses the boundary ----------------------------------------------------------------------


class _Reply(BaseModel):
    """A part of Label Studio's reply this module reads; everything else in it is ignored."""

    model_config = ConfigDict(extra="ignore")


class Ref(BaseModel):
    """What `submit` returns and `collect` gets back."""

    model_config = ConfigDict(extra="forbid")

    project: int = Field(ge=1)


class Rectangle(_Reply):
    """A `rectanglelabels` region's `value`: percent of the image, rotation in degrees clockwise
    around the top-left corner. Every number finite: JSON's 1e400 parses as infinity, and
    `inf % 360` is NaN, which math.cos refuses with a ValueError outside the batch's guard."""

    model_config = ConfigDict(allow_inf_nan=False)

    x: float
    y: float
    width: float
    height: float
    rotation: float = 0.0
    rectanglelabels: list[str] = Field(default_factory=list)


class Region(_Reply):
    type: str
    from_name: str | None = None
    value: dict[str, Any] = Field(default_factory=dict)


class LsAnnotation(_Reply):
    id: int
    result: list[dict[str, Any]] | None = None
    was_cancelled: bool | None = False
    ground_truth: bool | None = False
    completed_by: int | dict[str, Any] | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    last_action: str | None = None

    @property
    def approved(self) -> bool:
        return bool(self.ground_truth) or self.last_action in ACCEPTED_ACTIONS

    @property
    def answered_at(self) -> float:
        when = self.updated_at or self.created_at
        if when is None:
            raise LabelingError(f"label_studio: annotation {self.id} has neither updated_at nor created_at")
        return when.timestamp()


class LsTask(_Reply):
    id: int
    data: dict[str, Any]
    annotations: list[LsAnnotation] | None = None


class LsProject(_Reply):
    id: int
    title: str | None = None
    label_config: str | None = None


class LsUser(_Reply):
    id: int
    email: str | None = None


class ImportReply(_Reply):
    task_count: int | None = None
    import_: int | None = Field(None, alias="import")  # non-Community editions import asynchronously and say so


class RegionOut(BaseModel):
    """A pre-label as a prediction region."""

    model_config = ConfigDict(extra="forbid")

    id: str
    from_name: str = LABEL
    to_name: str = IMAGE
    type: str = "rectanglelabels"
    original_width: int
    original_height: int
    image_rotation: int = 0
    value: Rectangle
    score: float | None = None


class PredictionOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_version: str
    score: float | None = None
    result: list[RegionOut]


class TaskData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str
    sha256: str
    key: str
    batch_id: str
    width: int
    height: int


class TaskOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: TaskData
    predictions: list[PredictionOut] = Field(default_factory=list)


# -- conversions ------------------------------------------------------------------------------------


def project_title(prefix: str, line: str) -> str:
    """`{prefix}-{line}`; a title over Label Studio's 50 characters keeps its start and gets a hash
    of the line, so two long line names never share a project."""
    title = f"{prefix}-{line}"
    if len(title) <= TITLE_MAX:
        return title
    digest = hashlib.sha256(line.encode()).hexdigest()[:8]
    return f"{title[:TITLE_MAX - 9]}-{digest}"


def label_config(classes: list[str]) -> str:
    """The project's labeling config: rectangles over the image, one label per class. Built with
    ElementTree so class names are escaped for XML; rotation is off (our boxes are upright)."""
    view = ET.Element("View")
    ET.SubElement(view, "Image", name=IMAGE, value=f"${IMAGE}")
    labels = ET.SubElement(view, "RectangleLabels", name=LABEL, toName=IMAGE, canRotate="false")
    for name in classes:
        ET.SubElement(labels, "Label", value=name)
    return ET.tostring(view, encoding="unicode")


def with_classes(config: str, classes: list[str], title: str) -> str | None:
    """`config` with the classes it lacks added to our RectangleLabels, or None if it has them all."""
    try:
        view = ET.fromstring(config)
    except ET.ParseError as exc:
        raise LabelingError(f"label_studio: project {title!r} has a labeling config that is not XML ({exc})") from None
    labels = next((e for e in view.iter("RectangleLabels") if e.get("name") == LABEL and e.get("toName") == IMAGE), None)
    if labels is None:
        raise LabelingError(f"label_studio: project {title!r} has no <RectangleLabels name=\"{LABEL}\" "
                            f"toName=\"{IMAGE}\"> in its labeling config: it is not one edge-inspect made; "
                            "rename it or fix its config")
    have = {e.get("value") for e in labels.iter("Label")}
    missing = [name for name in classes if name not in have]
    if not missing:
        return None
    for name in missing:
        ET.SubElement(labels, "Label", value=name)
    return ET.tostring(view, encoding="unicode")


def to_region(box: Box, index: int, task: Task) -> RegionOut:
    """A pixel box as a Label Studio rectangle (percent of the frame)."""
    return RegionOut(id=f"p{index}", original_width=task.width, original_height=task.height, score=box.score,
                     value=Rectangle(x=100 * box.left / task.width, y=100 * box.top / task.height,
                                     width=100 * box.width / task.width, height=100 * box.height / task.height,
                                     rectanglelabels=[box.class_name]))


def to_prediction(task: Task, model_version: str) -> PredictionOut | None:
    """The frame's pre-labels as one prediction; its score is the least confident box's (Label
    Studio's uncertainty sampling shows the most doubtful frames first). None without pre-labels."""
    if not task.prelabels:
        return None
    scores = [b.score for b in task.prelabels if b.score is not None]
    return PredictionOut(model_version=model_version, score=min(scores) if scores else None,
                         result=[to_region(b, i, task) for i, b in enumerate(task.prelabels)])


def to_box(rect: Rectangle, width: int, height: int) -> Box:
    """A Label Studio rectangle in pixels of a `width` x `height` frame. A rotated rectangle
    becomes the upright box around it. Numbers are not clipped: `rows` checks bounds."""
    left, top = rect.x * width / 100, rect.y * height / 100
    w, h = rect.width * width / 100, rect.height * height / 100
    if rect.rotation % 360:
        angle = math.radians(rect.rotation)
        cos, sin = math.cos(angle), math.sin(angle)
        xs = [left + dx * cos - dy * sin for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
        ys = [top + dx * sin + dy * cos for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
        left, top, w, h = min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)
    return Box(class_name=rect.rectanglelabels[0], left=left, top=top, width=w, height=h)


def boxes_of(annotation: LsAnnotation, task: Task, where: str) -> list[Box]:
    boxes = []
    for raw in annotation.result or []:
        region = Region.model_validate(raw)
        if region.type != "rectanglelabels" or region.from_name != LABEL:
            continue  # relations, text areas someone added to the config: not boxes
        rect = Rectangle.model_validate(region.value)
        if not rect.rectanglelabels:
            log.warning("%s: annotation %d has a rectangle without a label; it is left out", where, annotation.id)
            continue
        boxes.append(to_box(rect, task.width, task.height))
    return boxes


def chosen_annotation(annotations: list[LsAnnotation]) -> LsAnnotation | None:
    """The frame's answer: the latest approved annotation, else the latest submitted one. Skipped
    (cancelled) annotations are no answer."""
    done = [a for a in annotations if not a.was_cancelled]
    if not done:
        return None
    approved = [a for a in done if a.approved]
    return max(approved or done, key=lambda a: (a.answered_at, a.id))


# -- the backend ------------------------------------------------------------------------------------


class LabelStudioLabeling:
    name = "label_studio"

    def __init__(self, settings: LabelStudioSettings, image_url: Callable[[str, str], str],
                 model_version: str = "production", client: Any = None) -> None:
        """`image_url(bucket, key)` gives the URL a labeler's browser loads (a presigned S3 URL);
        `model_version` names the pre-labels' model in Label Studio; `client` is a
        `LabelStudioApi` (default: one made from the settings)."""
        self.settings = settings
        self.image_url = image_url
        self.model_version = model_version
        self._token = settings.read_token()
        self._client = client if client is not None else self._make_client()
        self._emails: dict[int, str] = {}

    def _make_client(self) -> Any:
        def make() -> LabelStudioApi:
            return LabelStudioApi(self.settings.base_url, self._token.get_secret_value(), self.settings.timeout_s)

        return self._call("connecting", make)  # no call yet: a server down at start fails the first call

    # -- errors -------------------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """`fn()`, with every failure turned into a LabelingError that names the server and the call
        and says what to check. The token is never in it (and masked if a reply echoed it)."""
        try:
            return fn()
        except LabelingError:
            raise
        except Exception as exc:  # httpx's errors, ApiError, a reply that is not what we expect
            raise LabelingError(self._scrub(self._explain(what, exc))) from None

    def _explain(self, what: str, exc: Exception) -> str:
        import httpx

        url, where = self.settings.base_url, f"label_studio: {what} at {self.settings.base_url}"
        if isinstance(exc, httpx.TimeoutException):
            return (f"{where}: no answer within {self.settings.timeout_s:g} s ({type(exc).__name__}): "
                    "is the server overloaded or the network slow? (`timeout_s`)")
        if isinstance(exc, httpx.ConnectError):
            return f"{where}: cannot connect ({_one_line(exc)}): is Label Studio running, and is `url` right?"
        if isinstance(exc, httpx.HTTPError):
            return f"{where}: {type(exc).__name__}: {_one_line(exc)}"
        if isinstance(exc, ApiError):
            detail = _detail(exc.body)
            if exc.status_code in (401, 403):
                source = (f"the token file {self.settings.token_file}" if self.settings.token_file
                          else f"the environment variable {self.settings.token_env}")
                # worded without `NAME=value`: the log redactor masks any value after a name that
                # says "token", and the hint must stay readable (device.redact)
                return (f"{where}: the API token was refused (HTTP {exc.status_code}: {detail}). Check {source}; "
                        "a legacy token works on Label Studio 1.23 and later only when its environment sets "
                        f"LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN to true; or use a Personal Access Token from "
                        f"{url}/user/account")
            return f"{where}: HTTP {exc.status_code}: {detail}"
        if isinstance(exc, (ValidationError, ValueError, AttributeError, TypeError)):
            return f"{where}: unexpected reply ({type(exc).__name__}: {_one_line(exc)[:300]}): is `url` a Label Studio?"
        return f"{where}: {type(exc).__name__}: {_one_line(exc)[:300]}"

    def _scrub(self, text: str) -> str:
        token = self._token.get_secret_value()
        return text.replace(token, "***") if token else text

    # -- projects -----------------------------------------------------------------------------------

    def _project(self, batch: Batch) -> LsProject:
        """The line's project: found by exact title, created if missing, its classes completed."""
        title = project_title(self.settings.project_prefix, batch.line)
        listed = self._pages("projects.list", lambda page: self._client.projects_page(title, page, PAGE_SIZE))
        found = [p for p in (self._reply(LsProject, raw, "projects.list") for raw in listed) if p.title == title]
        if len(found) > 1:
            raise LabelingError(f"label_studio: {len(found)} projects are titled {title!r} at {self.settings.base_url} "
                                f"(ids {', '.join(str(p.id) for p in found)}): rename or delete all but one")
        if not found:
            created = self._call("projects.create", lambda: self._client.create_project(
                title, label_config(batch.classes), f"edge-inspect: frames of line {batch.line} to label"))
            project = self._reply(LsProject, created, "projects.create")
            log.info("label_studio: created project %d %r", project.id, title)
            return project
        project = self._full_project(found[0].id)
        extended = with_classes(project.label_config or "", batch.classes, title)
        if extended is not None:
            self._call("projects.update", lambda: self._client.update_project(project.id, extended))
            log.info("label_studio: project %d %r: labeling config extended to the batch's classes", project.id, title)
        return project

    def _full_project(self, project_id: int) -> LsProject:
        got = self._call(f"projects.get {project_id}", lambda: self._client.project(project_id))
        return self._reply(LsProject, got, "projects.get")

    def _pages(self, what: str, list_page: Callable[[int], Page]) -> list[dict[str, Any]]:
        """Every item of a paged list. The reply's total (`total` for tasks, `count` for projects)
        says when to stop, never a page past the end (Label Studio answers that with a 404 and
        logs a traceback), as a server may cap the page size below ours."""

        def one(page: int) -> tuple[list[dict[str, Any]], int | None]:
            try:
                got = list_page(page)
            except ApiError as exc:
                if exc.status_code == 404 and page > 1:  # past the end after all
                    return [], None
                raise
            return got.items, got.total

        items: list[dict[str, Any]] = []
        for page in range(1, 100_000):
            got, total = self._call(what, functools.partial(one, page))
            items += got
            if not got or (len(items) >= total if isinstance(total, int) else len(got) < PAGE_SIZE):
                break
        return items

    def _reply(self, model: type[BaseModel], raw: Any, what: str) -> Any:
        try:
            return model.model_validate(raw)
        except ValidationError as exc:
            raise LabelingError(self._scrub(f"label_studio: {what} at {self.settings.base_url}: unexpected reply "
                                            f"({exc.error_count()} problems, first: {_first_problem(exc)})")) from None

    # -- tasks --------------------------------------------------------------------------------------

    def _batch_tasks(self, project_id: int, batch_id: str) -> list[LsTask]:
        """The project's tasks of this batch, with their annotations. The filter is the Data
        Manager's exact match on `data.batch_id`; it is checked again here all the same."""
        query = json.dumps({"filters": {"conjunction": "and", "items": [
            {"filter": "filter:tasks:data.batch_id", "operator": "equal", "type": "String", "value": batch_id}]}})
        listed = self._pages(f"tasks.list (project {project_id})",
                             lambda page: self._client.tasks_page(project_id, query, page, PAGE_SIZE))
        tasks = [self._reply(LsTask, raw, "tasks.list") for raw in listed]
        return [t for t in tasks if t.data.get("batch_id") == batch_id]

    def _task_out(self, batch: Batch, task: Task) -> dict[str, Any]:
        prediction = to_prediction(task, self.model_version)
        out = TaskOut(data=TaskData(image=self.image_url(task.bucket, task.key), sha256=task.sha256, key=task.key,
                                    batch_id=batch.batch_id, width=task.width, height=task.height),
                      predictions=[prediction] if prediction else [])
        return out.model_dump(exclude_none=True)

    def submit(self, batch: Batch) -> str:
        project = self._project(batch)
        present = {t.data.get("sha256") for t in self._batch_tasks(project.id, batch.batch_id)}
        missing = [t for t in batch.tasks if t.sha256 not in present]
        if missing:
            request = [self._task_out(batch, t) for t in missing]
            reply = self._call(f"projects.import_tasks (project {project.id})",
                               lambda: self._client.import_tasks(project.id, request))
            imported = self._reply(ImportReply, reply, "projects.import_tasks")
            if imported.import_ is None and imported.task_count != len(missing):
                raise LabelingError(f"label_studio: projects.import_tasks at {self.settings.base_url} imported "
                                    f"{imported.task_count} of {len(missing)} tasks of batch {batch.batch_id} "
                                    f"into project {project.id}; the next submit imports the rest")
            log.info("label_studio: batch %s: %d frames imported into project %d (%d were there)",
                     batch.batch_id, len(missing), project.id, len(present))
        return Ref(project=project.id).model_dump_json()

    # -- answers ------------------------------------------------------------------------------------

    def collect(self, batch: Batch, ref: str) -> Progress:
        try:
            project_id = Ref.model_validate_json(ref).project
        except ValidationError:
            raise LabelingError(f"label_studio: batch {batch.batch_id}: reference {ref[:100]!r} is not one "
                                "this backend made ({\"project\": id})") from None
        try:
            tasks = self._batch_tasks(project_id, batch.batch_id)
        except LabelingError:
            if self._project_gone(project_id):
                return Progress(failure=f"project {project_id} no longer exists at {self.settings.base_url}")
            raise
        by_sha: dict[str, list[LsAnnotation]] = {}
        for ls_task in tasks:
            by_sha.setdefault(str(ls_task.data.get("sha256")), []).extend(ls_task.annotations or [])
        present = [t for t in batch.tasks if t.sha256 in by_sha]
        if not present:
            return Progress(failure=f"none of the batch's {len(batch.tasks)} tasks are in project {project_id} "
                                    f"at {self.settings.base_url} (deleted?)")
        answers = [a for a in (self._answer(t, by_sha[t.sha256], project_id) for t in present) if a is not None]
        approved = {a.sha256 for a in answers if a.approved}
        # a task deleted in Label Studio is a frame someone chose not to label: it no longer holds the batch up
        return Progress(answers=answers, finished=all(t.sha256 in approved for t in present))

    def _project_gone(self, project_id: int) -> bool:
        try:
            self._client.project(project_id)
        except ApiError as exc:
            return exc.status_code == 404
        except Exception:  # down, refused: not known to be gone; the first error stands
            return False
        return False

    def _answer(self, task: Task, annotations: list[LsAnnotation], project_id: int) -> Answer | None:
        chosen = chosen_annotation(annotations)
        if chosen is None:
            return None
        where = f"label_studio: project {project_id}, frame {task.sha256[:12]}"
        try:
            boxes = boxes_of(chosen, task, where)
        except ValidationError as exc:  # one odd annotation must not stop the rest of the batch
            log.warning("%s: annotation %d is not in the rectangle format (%s); the frame waits for another",
                        where, chosen.id, _first_problem(exc))
            return None
        return Answer(sha256=task.sha256, boxes=boxes, approved=chosen.approved, labeler=self._labeler(chosen),
                      answered_at=chosen.answered_at, job=f"label-studio:{project_id}")

    def _labeler(self, annotation: LsAnnotation) -> str:
        who = annotation.completed_by
        if isinstance(who, dict):  # some serializers nest the user
            return str(who.get("email") or who.get("id") or "unknown")
        if who is None:
            return "unknown"
        if who not in self._emails:
            self._load_emails()
            self._emails.setdefault(who, f"label-studio-user-{who}")  # a deleted user: not looked up again
        return self._emails[who]

    def _load_emails(self) -> None:
        """Every user's email, once per new annotator (an organization's few users in one call).
        A token that may not list users (an Enterprise annotator's) names labelers by id."""
        try:
            listed = self._call("users.list", self._client.users)
        except LabelingError as exc:
            log.warning("%s; labelers are named by their Label Studio id", exc)
            return
        for raw in listed:
            user = self._reply(LsUser, raw, "users.list")
            if user.email:
                self._emails[user.id] = user.email


def _detail(body: Any) -> str:
    """The useful part of an error reply: Label Studio's `detail` and validation errors."""
    if isinstance(body, dict):
        parts = [str(body.get("detail") or "")]
        if body.get("validation_errors"):
            parts.append(json.dumps(body["validation_errors"], sort_keys=True))
        return _one_line(" ".join(p for p in parts if p))[:500] or "(no detail)"
    return _one_line(body)[:300] or "(empty reply)"


def _one_line(value: object) -> str:
    return " ".join(str(value).split())


def _first_problem(exc: ValidationError) -> str:
    first = exc.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc']) or '(top)'}: {first['msg']}"
