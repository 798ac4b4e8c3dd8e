"""How much work pre-labels save: compare the boxes a labeler started from (the model's) with the
boxes they finished with. A final box is *kept* when a pre-label of the same class matches it at
IoU >= 0.9 (one-to-one, best IoU first): the labeler only had to look at it. A frame needs *no
edit* when every final box was kept and no pre-label had to be deleted. Between the two, a final
box matched at IoU >= 0.5 was *adjusted* (moved or resized: cheaper than drawing), and a final
box with no such match was *drawn*; a pre-label with no match at 0.5 was *deleted*."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cloud.labeling.service import Box

KEPT_IOU = 0.9
FOUND_IOU = 0.5  # the usual detection match: the box was there, in roughly the right place


def iou(a: Box, b: Box) -> float:
    width = min(a.left + a.width, b.left + b.width) - max(a.left, b.left)
    height = min(a.top + a.height, b.top + b.height) - max(a.top, b.top)
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    return inter / (a.width * a.height + b.width * b.height - inter)


def kept_boxes(prelabels: list[Box], final: list[Box], threshold: float = KEPT_IOU) -> int:
    pairs = sorted(((iou(p, f), i, j) for i, p in enumerate(prelabels) for j, f in enumerate(final)
                    if p.class_name == f.class_name), reverse=True)
    used_p, used_f = set(), set()
    for score, i, j in pairs:
        if score < threshold:
            break
        if i not in used_p and j not in used_f:
            used_p.add(i)
            used_f.add(j)
    return len(used_f)


@dataclass(frozen=True)
class FrameEdit:
    prelabels: int
    final: int
    kept: int  # final boxes matched at KEPT_IOU
    found: int  # final boxes matched at FOUND_IOU (kept ones included)

    @property
    def no_edit(self) -> bool:
        return self.kept == self.final == self.prelabels


def frame_edit(prelabels: list[Box], final: list[Box]) -> FrameEdit:
    return FrameEdit(len(prelabels), len(final), kept_boxes(prelabels, final),
                     kept_boxes(prelabels, final, FOUND_IOU))


@dataclass(frozen=True)
class Savings:
    frames: int
    final_boxes: int
    kept_boxes: int
    no_edit_frames: int
    adjusted_boxes: int
    drawn_boxes: int
    deleted_prelabels: int

    @property
    def kept_share(self) -> float:
        return self.kept_boxes / self.final_boxes if self.final_boxes else 1.0

    @property
    def no_edit_share(self) -> float:
        return self.no_edit_frames / self.frames if self.frames else 1.0


def summarise(edits: Iterable[FrameEdit]) -> Savings:
    edits = list(edits)
    return Savings(frames=len(edits), final_boxes=sum(e.final for e in edits), kept_boxes=sum(e.kept for e in edits),
                   no_edit_frames=sum(e.no_edit for e in edits), adjusted_boxes=sum(e.found - e.kept for e in edits),
                   drawn_boxes=sum(e.final - e.found for e in edits),
                   deleted_prelabels=sum(e.prelabels - e.found for e in edits))
