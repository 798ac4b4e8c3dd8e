"""The configurations of a rehearsal, written into its folder as a plant would write them: the
line's daemon (normal, then drifted) and the cloud side (cloud.yaml), all on site, all on this
machine's loopback peers."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cloud.pipeline.backends import with_overrides
from cloud.settings import CloudConfig, parse_cloud_config
from device.config import DaemonConfig
from device.model_card import card_path_for

from .line import LinePhotos
from .settings import LoopSettings

THING, CAMERA, BUCKET, PREFIX = "line-1", "tagcam", "rehearsal-frames", "edge-inspect"
REGION = "us-east-1"


@dataclass(frozen=True)
class Peers:
    broker_port: int
    s3_url: str


@dataclass(frozen=True)
class Plan:
    folder: Path
    video: Path
    line_model: Path  # the daemon's watched model.path: the local deployer writes here
    daemon_normal: Path
    daemon_drifted: Path
    cloud_config: Path

    def cloud(self) -> CloudConfig:
        return parse_cloud_config(yaml.safe_load(self.cloud_config.read_text()), str(self.cloud_config))


def daemon_config(folder: Path, video: Path, model: Path, peers: Peers, drift: str | None) -> dict[str, Any]:
    line = folder / "line"
    return {
        "thing_name": THING,
        "state_dir": str(line / "state"),
        "mqtt": {"host": "127.0.0.1", "port": peers.broker_port},
        "cameras": [{"id": CAMERA, "source": str(video), "realtime": True, "loop": True, "drift": drift}],
        # a plant's line has its own box; here it shares two cores with the training, so it takes one
        # thread and does not spin (spinning inference threads took 70% of a core at 5 fps)
        "model": {"path": str(model), "watch_interval_s": 1.0, "threads": 1, "spinning": False},
        "stats": {"interval_s": 5},
        "file_sink": {"path": str(line / "messages.jsonl")},  # every message the line sent, for the record
        # only the drift strategy: the turn's labels are the frames the drifted line showed
        "active_learning": {
            "enabled": True,
            "strategies": [{"name": "drifted", "type": "drift", "percent": 100, "tags": ["rehearsal"]}],
            "limits": {"per_minute": 120, "per_hour": 3000, "per_day": 20000},
            # the shipped photos are shots of a few tags, alike but for the scratches: at the default
            # distance (4) only 74 of the line's 148 photos count as different (115 at 0). Exact
            # repeats (a tag held in view, the next pass of the line) are still sent once.
            "dedup": {"max_distance": 0},
            "spool": {"path": str(line / "spool"), "max_bytes": 500_000_000, "min_free_bytes": 0},
            "upload": {"bucket": BUCKET, "prefix": PREFIX, "endpoint_url": peers.s3_url, "region": REGION,
                       "retry_min_s": 0.5, "retry_max_s": 2.0, "batch_size": 5},
        },
        "log_level": "INFO",
    }


def cloud_config(folder: Path, settings: LoopSettings, photos: LinePhotos, line_model: Path,
                 peers: Peers) -> dict[str, Any]:
    cloud = folder / "cloud"
    return {
        "storage": {"bucket": BUCKET, "prefix": PREFIX, "endpoint_url": peers.s3_url, "region": REGION},
        "broker": {"host": "127.0.0.1", "port": peers.broker_port, "client_id": "edge-inspect-loop"},
        "labeling": {"backend": "replay", "batch_size": 20, "max_wait_minutes": 0.25, "poll_interval_s": 1.0,
                     "catch_up_minutes": 0.5, "state_path": str(cloud / "labeling.sqlite"),
                     "replay": {"table": str(photos.labels_csv), "images": str(photos.images_root),
                                "drift": settings.drift}},
        "label_store": {"backend": "local", "local": {"path": str(cloud / "labels")}},
        "pipeline": {
            "state_path": str(cloud / "runs.sqlite"), "work_dir": str(cloud / "runs"),
            "photos": str(photos.images_root), "trigger_new_labels": settings.trigger_labels, "check_minutes": 0.1,
            "registry": {"backend": "mlflow", "mlflow": {"path": str(cloud / "registry")}}, "seed_bundled": True,
            "params": {"train": {"epochs": settings.epochs, "imgsz": settings.imgsz, "seed": settings.seed}},
        },
        "deploy": {
            "backend": "local", "state_path": str(cloud / "deploy.sqlite"), "work_dir": str(cloud / "shipments"),
            # one line, so it is the fleet: no canary. A canary's alert-rate band would (rightly, on a
            # real fleet) hold back a model that suddenly alerts far more than the blind one it replaces.
            "canary": [], "quantize": False,
            "promotion": {"window_minutes": 0.5, "poll_seconds": 1.0, "min_alerts": 5, "swap_timeout_minutes": 3},
            "local": {"lines": [{"thing": THING, "model_path": str(line_model)}]},
        },
    }


def write_plan(settings: LoopSettings, photos: LinePhotos, production_model: Path, video: Path,
               peers: Peers) -> Plan:
    """Every configuration, checked by the product's own models before anything starts."""
    folder = settings.out
    (folder / "line").mkdir(parents=True, exist_ok=True)
    (folder / "cloud").mkdir(parents=True, exist_ok=True)
    line_model = folder / "line" / "model.onnx"
    shutil.copyfile(production_model, line_model)
    shutil.copyfile(card_path_for(production_model), card_path_for(line_model))
    plan = Plan(folder, video, line_model, folder / "line" / "daemon.yaml", folder / "line" / "daemon-drifted.yaml",
                folder / "cloud" / "cloud.yaml")
    for path, drift in ((plan.daemon_normal, None), (plan.daemon_drifted, settings.drift)):
        config = daemon_config(folder, video, line_model, peers, drift)
        DaemonConfig.model_validate(config)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
    cloud = cloud_config(folder, settings, photos, line_model, peers)
    pipeline = parse_cloud_config(cloud, "the rehearsal's cloud configuration").pipeline
    cloud["pipeline"]["params"] = with_overrides(pipeline.params, settings.params).model_dump(mode="json")
    plan.cloud_config.write_text(yaml.safe_dump(cloud, sort_keys=False))
    plan.cloud()  # refuses now, with the reason, what `cloud serve` would refuse later
    return plan
