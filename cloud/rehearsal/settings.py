"""What a rehearsal is decided by (`edge-inspect loop` flags)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from device.rehearsal import DriftName


class LoopSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    drift: DriftName = Field(description="what changes on the line after the baseline")
    out: Path = Field(description="the rehearsal's folder: configurations, stores, logs and the report")
    auto_approve: bool = Field(False, description="approve each registered version (demo only); otherwise wait for "
                                                  "`cloud models approve`")
    fps: float = Field(5.0, gt=0, le=60, description="the line video's frame rate")
    hold_frames: int = Field(5, ge=1, le=1000, description="frames each tag stays in view")
    baseline_s: float = Field(30.0, ge=0, le=3600, description="undrifted line before the change")
    after_s: float = Field(60.0, ge=0, le=3600, description="the line runs on once the new model is in, so the report "
                                                            "shows its alerts")
    # most of a pass of the drifted line (115 different frames), so a run learns from most of what
    # the line shows rather than whichever frames came first
    trigger_labels: int = Field(100, ge=1, le=100_000, description="new approved labels that start a retraining run")
    epochs: int = Field(6, ge=1, le=1000, description="fine-tuning epochs per turn (from production, the val mAP50 "
                                                      "on the line's frames is 0.96 after one; 6 keep a turn "
                                                      "inside the 20 minutes)")
    imgsz: int = Field(448, ge=64, le=2048, multiple_of=32)
    max_turns: int = Field(2, ge=1, le=20, description="turns before the loop gives up on a drift that does not clear")
    time_limit_minutes: float = Field(20.0, gt=0, le=24 * 60, description="the whole rehearsal, start to report")
    seed: int = Field(0, ge=0)
    params: list[str] = Field([], description="pipeline parameter overrides, as `cloud train --param K=V`")
