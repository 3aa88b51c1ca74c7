"""Classifier-free guidance's null conditioning and batching of conditioning."""

import torch

from meddiff.diffusion.conditioning import Conditioning


def _cond(**extra):
    return Conditioning(
        cond_image=torch.ones(3, 1, 4, 4),
        label_map=torch.ones(3, 2, 4, 4),
        context=torch.ones(3, 5, 6),
        class_labels=torch.tensor([0, 1, 2]),
        null_context=torch.full((1, 5, 6), 7.0),
        null_class=9,
        **extra,
    )


def test_null_drops_guided_parts_and_keeps_concatenated_input():
    null = _cond().null()
    assert torch.equal(null.label_map, torch.zeros(3, 2, 4, 4))
    assert torch.equal(null.context, torch.full((3, 5, 6), 7.0))
    assert null.class_labels.tolist() == [9, 9, 9]
    assert torch.equal(null.cond_image, torch.ones(3, 1, 4, 4))
    assert torch.equal(_cond(guide_cond_image=True).null().cond_image, torch.zeros(3, 1, 4, 4))


def test_drop_is_per_sample():
    dropped = _cond().drop(torch.tensor([True, False, True]))
    assert dropped.label_map[:, 0, 0, 0].tolist() == [1.0, 0.0, 1.0]
    assert dropped.class_labels.tolist() == [0, 9, 2]
    assert dropped.context[:, 0, 0].tolist() == [1.0, 7.0, 1.0]


def test_cat_stacks_batches_and_keeps_settings():
    both = _cond().cat(_cond().null())
    assert len(both) == 6 and both.null_class == 9
    assert both.class_labels.tolist() == [0, 1, 2, 9, 9, 9]
    assert set(both.model_kwargs()) == {"cond_image", "label_map", "context", "class_labels"}


def test_only_structural_input_is_not_guidable():
    assert not Conditioning(cond_image=torch.ones(1, 1, 2, 2)).is_guidable
    assert Conditioning(cond_image=torch.ones(1, 1, 2, 2), guide_cond_image=True).is_guidable
    assert Conditioning(label_map=torch.ones(1, 1, 2, 2)).is_guidable
