"""The pre-label savings figure: the bundled model pre-labels every labelled photo shipped in
data/metal-tags; the label table is what the labeler finished with. Printed separately for the
photos the model never trained on (the honest figure) and for the ones it did.

    .venv/bin/python -m benchmarks.prelabel_savings [--conf 0.25]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.machine import cpu_info
from cloud.heldout import split_by_training
from cloud.label_table import LabelRecord
from cloud.labeling.prelabels import DEFAULT_CONF, PreLabeler
from cloud.labeling.savings import Savings, frame_edit, summarise
from cloud.labeling.service import Box
from device.bundled import bundled_model_path
from device.images import read_image
from device.model_card import ModelCard, card_path_for

REPO = Path(__file__).resolve().parent.parent
TAGS = REPO / "data" / "metal-tags"


def final_boxes(record: LabelRecord, classes: list[str]) -> list[Box]:
    return [Box(class_name=classes[b.class_id], left=b.left, top=b.top, width=b.width, height=b.height)
            for b in record.boxes]


def measure(records: list[LabelRecord], prelabeler: PreLabeler) -> Savings:
    return summarise(frame_edit(prelabeler.boxes(read_image(TAGS / r.source_ref)), final_boxes(r, prelabeler.classes))
                     for r in records)


def describe(name: str, s: Savings) -> dict[str, object]:
    return {"photos": name, "frames": s.frames, "final_boxes": s.final_boxes, "kept_unchanged": s.kept_boxes,
            "kept_share": round(s.kept_share, 3), "no_edit_frames": s.no_edit_frames,
            "no_edit_share": round(s.no_edit_share, 3), "adjusted": s.adjusted_boxes, "drawn": s.drawn_boxes,
            "prelabels_deleted": s.deleted_prelabels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conf", type=float, default=DEFAULT_CONF)
    args = parser.parse_args()
    model = bundled_model_path()
    split = split_by_training(ModelCard.read(card_path_for(model)), TAGS / "labels.csv")
    prelabeler = PreLabeler(model, conf=args.conf)
    cpu = cpu_info()
    print(f"{cpu['model']}, {cpu['logical_cores']} cores, ISA {' '.join(cpu.get('isa', []))}")
    print(f"model {model.name}, pre-label conf {args.conf}, kept = same class at IoU >= 0.9")
    for name, records in (("held out", split.heldout), ("trained on", split.trained)):
        print(json.dumps(describe(name, measure(records, prelabeler))))


if __name__ == "__main__":
    main()
