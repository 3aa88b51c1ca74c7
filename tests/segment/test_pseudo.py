"""Pseudo-labels: per class, the teacher's surest pixels are kept and the rest is ignored."""

import pytest
import torch
from torch import nn

from meddiff.data.labels import IGNORE_INDEX
from meddiff.segment.pseudo import confident_labels, network_pseudo_labels


def test_each_class_keeps_its_own_most_confident_share():
    labels = torch.tensor([[[0, 0, 0, 0, 1, 1]]])
    confidence = torch.tensor([[[0.9, 0.8, 0.7, 0.6, 0.2, 0.1]]])  # class 1 is never sure
    kept = confident_labels(labels, confidence, num_classes=3, keep=0.5)
    # a global cut at the median would keep only background; ranking per class keeps class 1's better pixel
    assert kept.masks.tolist() == [[[0, 0, IGNORE_INDEX, IGNORE_INDEX, 1, IGNORE_INDEX]]]
    assert kept.predicted == [4, 2, 0] and kept.kept == [2, 1, 0]


def test_ineligible_pixels_are_never_kept():
    labels = torch.zeros(1, 2, 2, dtype=torch.long)
    eligible = torch.tensor([[[True, False], [True, True]]])
    kept = confident_labels(labels, torch.ones(1, 2, 2), 2, keep=1.0, eligible=eligible)
    assert kept.masks.tolist() == [[[0, IGNORE_INDEX], [0, 0]]] and kept.kept == [3, 0]


def test_keep_must_be_a_share():
    with pytest.raises(ValueError, match="keep"):
        confident_labels(torch.zeros(1, 2, 2, dtype=torch.long), torch.ones(1, 2, 2), 2, keep=0.0)


def test_a_network_teacher_labels_by_arg_max_and_ranks_by_its_probability():
    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, x):  # class 1 wherever the image is positive, surer the larger it is
            return torch.cat([torch.zeros_like(x), x * self.scale], dim=1)

    images = torch.tensor([[[[3.0, 1.0, -1.0, -3.0]]]])
    kept = network_pseudo_labels(Fixed(), images, num_classes=2, keep=0.5)
    assert kept.masks.tolist() == [[[1, IGNORE_INDEX, IGNORE_INDEX, 0]]]
