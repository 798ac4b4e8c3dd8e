"""The pre-label savings measure (cloud.labeling.savings) on boxes whose answer is known."""

from cloud.labeling.savings import frame_edit, iou, summarise
from cloud.labeling.service import Box


def box(left, top, width=100, height=50, name="scratch"):
    return Box(class_name=name, left=left, top=top, width=width, height=height)


def test_iou_of_known_boxes():
    assert iou(box(0, 0), box(0, 0)) == 1.0
    assert iou(box(0, 0), box(200, 0)) == 0.0
    assert abs(iou(box(0, 0), box(50, 0)) - 50 / 150) < 1e-9


def test_kept_adjusted_drawn_and_deleted_are_told_apart():
    pre = [box(0, 0), box(300, 0), box(600, 0)]
    final = [box(1, 0),  # kept: IoU 0.98
             box(330, 0),  # adjusted: IoU 0.54
             box(0, 200)]  # drawn: nothing near; the pre-label at 600 was deleted
    edit = frame_edit(pre, final)
    assert (edit.kept, edit.found, edit.no_edit) == (1, 2, False)
    total = summarise([edit, frame_edit([box(0, 0)], [box(0, 0)]), frame_edit([], [])])
    assert (total.final_boxes, total.kept_boxes, total.adjusted_boxes, total.drawn_boxes) == (4, 2, 1, 1)
    assert (total.deleted_prelabels, total.no_edit_frames) == (1, 2)
    assert total.kept_share == 0.5 and abs(total.no_edit_share - 2 / 3) < 1e-9


def test_a_box_of_another_class_is_never_kept_and_matching_is_one_to_one():
    assert frame_edit([box(0, 0, name="dent")], [box(0, 0)]).kept == 0
    assert frame_edit([box(0, 0)], [box(0, 0), box(1, 0)]).kept == 1
