"""The labeling capability's interface and the typed values that cross it.

A backend gets a `Batch` (frames of one line, each with the current model's boxes as pre-labels),
returns a reference it needs to find the batch again, and later reports `Answer`s: the boxes a
person settled on, and whether a reviewer (Label Studio) or a verification job (Ground Truth)
accepted them. Boxes cross the interface in pixels of the frame with class *names*: each backend
speaks its own tool's coordinates and the shared `rows` module checks names and bounds once.
"""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

SHA256 = r"^[0-9a-f]{64}$"
BATCH_ID = r"^[a-z0-9][a-z0-9-]{0,62}$"  # safe as a Ground Truth job name part, a tag, a file name


class Value(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Box(Value):
    """One box in pixels of the frame: Ground Truth's left/top/width/height."""

    class_name: str = Field(min_length=1)
    left: float
    top: float
    width: float
    height: float
    score: float | None = Field(None, ge=0, le=1, description="the model's confidence (pre-labels only)")


class Task(Value):
    """One frame to label: where it is, how big, and the model's boxes on it."""

    sha256: str = Field(pattern=SHA256)
    bucket: str = Field(min_length=3)
    key: str = Field(min_length=1, description="the frame's S3 key; also its source_ref in the label store")
    thing: str
    camera: str
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    prelabels: list[Box] = Field(default_factory=list)


class Batch(Value):
    """Frames of one line (thing), labelled together. `classes[i]` is the model's class i."""

    batch_id: str = Field(pattern=BATCH_ID)
    line: str
    created: float = Field(description="seconds since the epoch")
    classes: list[str] = Field(min_length=1)
    tasks: list[Task] = Field(min_length=1)


class Answer(Value):
    """A person's labels for one frame, as the backend holds them now."""

    sha256: str = Field(pattern=SHA256)
    boxes: list[Box]
    approved: bool = Field(description="a reviewer accepted it (Label Studio) / verification passed (Ground Truth)")
    labeler: str = Field(description="who labelled it, as the backend names them (no secrets)")
    answered_at: float = Field(description="seconds since the epoch: the label row's event time")
    job: str = Field(description="the backend's job or project reference: the row's labeling_job")


class Progress(Value):
    """What a backend can say about a submitted batch now."""

    answers: list[Answer] = Field(default_factory=list, description="at most one per frame, the latest")
    finished: bool = Field(False, description="the backend will not answer more (job ended)")
    failure: str | None = Field(None, description="the job failed: why, in the backend's words")


class LabelingError(RuntimeError):
    """A backend cannot do what was asked (down, refused credentials, bad reply); the message says
    which call and why, and never carries a secret. The batch stays as it was: retried later."""


class LabelingService(Protocol):
    name: str

    def submit(self, batch: Batch) -> str:
        """Hand the batch to labelers; return the reference `collect` needs. Idempotent per
        `batch_id`: submitting again after a crash finds the first submission, never a second."""
        ...

    def collect(self, batch: Batch, ref: str) -> Progress:
        """The answers so far. Called repeatedly; an unchanged answer is reported again."""
        ...
