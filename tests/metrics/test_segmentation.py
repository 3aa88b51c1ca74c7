"""IoU/Dice from a confusion matrix pooled over the whole set; ignore pixels excluded; absent classes NaN."""

import math

import pytest
import torch

from meddiff.data.labels import IGNORE_INDEX
from meddiff.errors import UserError
from meddiff.metrics.segmentation import SegmentationMeter, per_image_scores, segmentation_scores

X = IGNORE_INDEX
# Two 2x3 masks, 4 classes; class 3 appears in neither prediction nor ground truth.
TARGET = torch.tensor([[[0, 0, 1], [1, X, 2]], [[0, 2, 2], [X, X, 0]]])
PRED = torch.tensor(
    [
        [[0, 1, 1], [1, 2, 2]],  # the ignored pixel is "wrong" on purpose
        [[0, 2, 0], [1, 1, 0]],
    ]
)
# Counted by hand over the 9 labelled pixels (ground truth, prediction):
# image 1: (0,0) (0,1) (1,1) (1,1) (2,2); image 2: (0,0) (2,2) (2,0) (0,0)
# class 0: TP 3, FN 1 (0->1), FP 1 (2->0) -> IoU 3/5, Dice 6/8
# class 1: TP 2, FN 0, FP 1 (0->1)        -> IoU 2/3, Dice 4/5
# class 2: TP 2, FN 1 (2->0), FP 0        -> IoU 2/3, Dice 4/5
IOU = [3 / 5, 2 / 3, 2 / 3]
DICE = [6 / 8, 4 / 5, 4 / 5]


def test_per_class_iou_and_dice_by_hand_with_ignore_pixels_and_an_absent_class():
    scores = segmentation_scores(PRED, TARGET, num_classes=4)
    assert scores.iou[:3].tolist() == pytest.approx(IOU)
    assert scores.dice[:3].tolist() == pytest.approx(DICE)
    assert math.isnan(scores.iou[3]) and math.isnan(scores.dice[3])
    assert scores.confusion.sum() == 9  # ignored pixels are not counted at all


def test_means_skip_absent_classes_and_include_background_by_default():
    scores = segmentation_scores(PRED, TARGET, num_classes=4)
    assert scores.miou == pytest.approx(sum(IOU) / 3)
    assert scores.mean_dice == pytest.approx(sum(DICE) / 3)


def test_means_without_background():
    scores = segmentation_scores(PRED, TARGET, num_classes=4, include_background=False)
    assert scores.miou == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert scores.mean_dice == pytest.approx(4 / 5)
    assert scores.iou[0].item() == pytest.approx(3 / 5)  # still reported per class


def test_a_class_only_predicted_scores_zero_and_counts_in_the_mean():
    pred = PRED.clone()
    pred[1, 1, 2] = 3  # a true background pixel predicted as class 3
    scores = segmentation_scores(pred, TARGET, num_classes=4)
    assert scores.iou[3].item() == 0.0
    # class 0 loses one TP to an FN: TP 2, FN 2, FP 1
    assert scores.iou[0].item() == pytest.approx(2 / 5)
    assert scores.miou == pytest.approx((2 / 5 + 2 / 3 + 2 / 3 + 0) / 4)


def test_streaming_updates_equal_one_shot_on_the_whole_set():
    meter = SegmentationMeter(num_classes=4)
    for p, t in zip(PRED, TARGET, strict=True):
        meter.update(p[None], t[None])
    streamed, one_shot = meter.compute(), segmentation_scores(PRED, TARGET, num_classes=4)
    assert torch.equal(streamed.confusion, one_shot.confusion)
    assert streamed.miou == pytest.approx(one_shot.miou)
    meter.reset()
    meter.update(PRED[:1], TARGET[:1])
    assert meter.compute().confusion.sum() == 5


def test_per_class_dict_uses_class_names():
    table = segmentation_scores(PRED, TARGET, num_classes=4).per_class(["bg", "a", "b", "c"])
    assert table["a"]["dice"] == pytest.approx(4 / 5)
    assert math.isnan(table["c"]["iou"])


def test_invalid_masks_are_user_errors():
    meter = SegmentationMeter(num_classes=3)
    with pytest.raises(UserError, match="'pred'"):
        meter.update(torch.full_like(PRED, 3), TARGET)  # class id 3 with only 3 classes
    with pytest.raises(UserError, match="'target'"):
        meter.update(torch.zeros_like(TARGET), torch.full_like(TARGET, 7))
    with pytest.raises(UserError, match="integer"):
        meter.update(PRED.float(), TARGET)


def test_per_image_scores_by_hand_and_equal_to_scoring_each_image_alone():
    # image 1 alone: class 0 TP 1, FN 1 (0->1) -> Dice 2/3; class 1 TP 2, FP 1 -> 4/5; class 2 TP 1 -> 1;
    # image 2 alone: class 0 TP 2, FP 1 (2->0) -> 4/5; class 1 absent from its ground truth and prediction
    # (the ignored pixels predicted 1 do not count) -> NaN; class 2 TP 1, FN 1 -> 2/3
    scores = per_image_scores(PRED, TARGET, num_classes=4)
    torch.testing.assert_close(scores.dice[0, :3], torch.tensor([2 / 3, 4 / 5, 1.0], dtype=torch.float64))
    assert scores.dice[1, 0] == pytest.approx(4 / 5) and scores.dice[1, 2] == pytest.approx(2 / 3)
    assert math.isnan(scores.dice[1, 1]) and math.isnan(scores.dice[1, 3])
    for k in range(2):
        alone = segmentation_scores(PRED[k : k + 1], TARGET[k : k + 1], num_classes=4)
        torch.testing.assert_close(scores.iou[k], alone.iou, equal_nan=True)
        assert scores.miou[k] == pytest.approx(alone.miou) and scores.mean_dice[k] == pytest.approx(alone.mean_dice)
    foreground = per_image_scores(PRED, TARGET, num_classes=4, include_background=False)
    assert foreground.mean_dice[1] == pytest.approx(2 / 3)  # class 2 only: class 1 is NaN in image 2
    with pytest.raises(UserError, match="class ids outside"):
        per_image_scores(PRED + 3, TARGET, num_classes=4)
