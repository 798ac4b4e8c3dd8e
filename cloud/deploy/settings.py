"""`deploy` in cloud.yaml: where approved models go and what proves them there.

    deploy:
      backend: local                      # or greengrass (AWS)
      state_path: /var/lib/edge-inspect/deploy.sqlite
      work_dir: /var/lib/edge-inspect/shipments
      canary: [line-1]                    # things that get a new version first
      gate_labels: /srv/photos/labels.csv # labelled photos the INT8 model is checked on
      recent_frames: /var/lib/edge-inspect/recent-frames
      signing_key: /etc/edge-inspect/keys/signing.key  # optional: sign each shipped model card
      promotion: {window_minutes: 10, min_ratio: 0.5, max_ratio: 2.0}
      local:
        lines:
          - {thing: line-1, model_path: /opt/edge-inspect/line-1/model.onnx}
          - {thing: line-2, model_path: /opt/edge-inspect/line-2/model.onnx}
      greengrass:
        bucket: plant-frames
        canary_thing_group: edge-inspect-canary
        fleet_thing_group: edge-inspect-fleet
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cloud.quantize.gate import GateSettings
from device.contracts import SAFE_ID

Stage = Literal["canary", "fleet"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def deploy_gate() -> GateSettings:
    """The shipping gate: INT8 must raise FP32's alerts at the same places (IoU 0.9, not the
    quantize command's 0.5) with scores that stay close, and keep mAP50 within a point."""
    return GateSettings(max_drop=0.01, min_fidelity=0.98, match_iou=0.9, max_mean_score_diff=0.05)


class PromotionRule(Strict):
    window_minutes: float = Field(10, gt=0, le=7 * 24 * 60,
                                  description="the canary's alert rate is measured over this long after its swap, "
                                              "against the previous model's over as long before it")
    min_ratio: float = Field(0.5, ge=0, le=1, description="lowest alert rate allowed, times the previous rate")
    max_ratio: float = Field(2.0, ge=1, description="highest alert rate allowed, times the previous rate")
    min_alerts: int = Field(5, ge=1, description="enough alerts to compare a rate by: when the previous model "
                                                 "raised at least this many, the new one must raise min_ratio to "
                                                 "max_ratio times as many (and more than none); when it raised "
                                                 "fewer, the new one is in band unless it raises at least this "
                                                 "many and more than max_ratio times as many (it floods a quiet "
                                                 "line) or none where the previous raised 3 or more (blind)")
    swap_timeout_minutes: float = Field(30, gt=0, le=7 * 24 * 60,
                                        description="a stage's devices must report the new model within this")
    poll_seconds: float = Field(15, ge=0.05, le=3600, description="how often a waiting stage is judged")


class LocalLine(Strict):
    thing: str = Field(pattern=SAFE_ID, description="the daemon's thing name (its MQTT topics)")
    model_path: Path = Field(description="the daemon's model.path: the file it watches")


class LocalDeploySettings(Strict):
    lines: list[LocalLine] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> LocalDeploySettings:
        things = [line.thing for line in self.lines]
        if len(set(things)) != len(things):
            raise ValueError("a thing is named twice in deploy.local.lines")
        return self


class GreengrassDeploySettings(Strict):
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$", description="bucket for component artifacts")
    # no segment starts with a dot (nor does the component name): `..` would put artifacts outside
    # the prefix the roles are granted
    prefix: str = Field("edge-inspect/components", pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*$")
    component_name: str = Field("com.edgeinspect.Model", pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")
    canary_thing_group: str = Field(pattern=r"^[A-Za-z0-9:_-]{1,128}$")
    fleet_thing_group: str = Field(pattern=r"^[A-Za-z0-9:_-]{1,128}$")
    fleet_table: str = Field("edge-inspect-fleet", pattern=r"^[A-Za-z0-9_.-]{3,255}$",
                             description="the DynamoDB table the IoT rule writes device messages to")
    max_concurrent_per_minute: int = Field(50, ge=1, le=1000, description="IoT job rollout rate")
    abort_failure_percent: float = Field(10, gt=0, le=100, description="abort the job when this share of devices fail")


class DeploySettings(Strict):
    backend: Literal["local", "greengrass"] = "local"
    state_path: Path = Field(description="rollouts and, on site, the fleet's messages (SQLite)")
    work_dir: Path = Field(description="one folder per shipped version")
    canary: list[str] = Field(default_factory=list, description="on site: the things that get a version first")
    quantize: bool = Field(True, description="ship INT8 when it passes the gate, else FP32")
    gate_labels: Path | None = Field(None, description="label table (CSV) whose photos gate the INT8 model")
    gate_images_root: Path | None = Field(None, description="folder the table's photo paths are relative to")
    recent_frames: Path | None = Field(None, description="recent line frames (e.g. a copy of a spool) the INT8 "
                                                         "model must also raise FP32's alerts on")
    calibration_frames: Path | None = Field(None, description="frames to calibrate INT8 on (e.g. the line's own); "
                                                              "default: the model's training photos")
    calibration_method: Literal["minmax", "entropy", "percentile"] = Field(
        "percentile", description="how INT8 activation ranges are calibrated; percentile is the one measured to keep "
                                  "FP32's alerts at IoU 0.9 on the bundled model (minmax and entropy do not)")
    quantize_candidates: list[str] | None = Field(None, description="try only these INT8 candidates (names from "
                                                                    "`edge-inspect quantize`); default: all")
    gate: GateSettings = Field(default_factory=deploy_gate)
    signing_key: Path | None = Field(None, description="Ed25519 private key (PEM, from `edge-inspect cloud keys "
                                                       "generate`) that signs each shipped model card; daemons with "
                                                       "model.public_key serve only signed models")
    promotion: PromotionRule = PromotionRule()
    local: LocalDeploySettings | None = None
    greengrass: GreengrassDeploySettings | None = None

    @model_validator(mode="after")
    def _consistent(self) -> DeploySettings:
        if getattr(self, self.backend) is None:
            raise ValueError(f"backend is {self.backend} but the `{self.backend}` section is missing")
        if self.quantize and self.gate_labels is None:
            raise ValueError("quantize is on but gate_labels is missing: the INT8 model needs labelled photos to be "
                             "checked on (or set quantize: false to ship FP32)")
        if self.local is not None and self.backend == "local":
            known = {line.thing for line in self.local.lines}
            unknown = [t for t in self.canary if t not in known]
            if unknown:
                raise ValueError(f"canary names things that are not in deploy.local.lines: {', '.join(unknown)}")
            if self.canary and set(self.canary) == known:
                raise ValueError("every line is a canary: leave at least one for the fleet stage")
        return self
