import pytest
import torch

from meddiff.data.arrays import ArrayDataset


def _dataset(**kwargs) -> ArrayDataset:
    images = torch.linspace(-1, 1, 2 * 1 * 6 * 8).reshape(2, 1, 6, 8)
    masks = torch.arange(2 * 6 * 8).reshape(2, 6, 8).remainder(4).to(torch.uint8)
    return ArrayDataset(images, masks, ["a", "b"], ["c0", "c1", "c2", "c3"], **kwargs)


def test_sample_has_int64_mask_even_when_stored_as_uint8():
    sample = _dataset()[1]
    assert sample["name"] == "b" and sample["mask"].dtype == torch.int64
    assert sample["image"].shape == (1, 6, 8) and sample["image"].dtype == torch.float32


def test_random_crop_takes_the_same_window_from_every_tensor():
    images_b = torch.arange(2 * 3 * 6 * 8, dtype=torch.float32).reshape(2, 3, 6, 8)
    dataset = ArrayDataset(images_b[:, :1], images_b[:, 0].long(), ["a", "b"], ["x"], images_b=images_b, crop=4)
    torch.manual_seed(0)
    sample = dataset[0]
    assert sample["image"].shape == (1, 4, 4) and sample["image_b"].shape == (3, 4, 4)
    assert torch.equal(sample["image"][0], sample["image_b"][0])
    assert torch.equal(sample["mask"], sample["image"][0].long())
    assert dataset.in_channels == 1 and dataset.in_channels_b == 3


def test_augmentation_replays_under_the_same_seed():
    dataset = _dataset(hflip=True, vflip=True, crop=4)
    torch.manual_seed(3)
    first = [dataset[i % 2]["image"] for i in range(8)]
    torch.manual_seed(3)
    again = [dataset[i % 2]["image"] for i in range(8)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert len({tuple(x.flatten().tolist()) for x in first}) > 2  # crops and flips really vary


def test_flips_move_image_and_mask_together():
    dataset = _dataset(vflip=True)
    seen = set()
    for seed in range(10):
        torch.manual_seed(seed)
        sample = dataset[0]
        flipped = not torch.equal(sample["image"], dataset.images[0])
        assert torch.equal(sample["mask"], (dataset.masks[0].flip(-2) if flipped else dataset.masks[0]).long())
        seen.add(flipped)
    assert seen == {True, False}


def test_masks_only_dataset():
    dataset = ArrayDataset(None, torch.zeros(3, 4, 4, dtype=torch.uint8), ["a", "b", "c"], ["bg"])
    assert dataset.in_channels == 0 and dataset.num_classes == 1 and len(dataset) == 3
    assert set(dataset[0]) == {"mask", "name"}


def test_counts_must_agree():
    with pytest.raises(ValueError):
        ArrayDataset(torch.zeros(2, 1, 4, 4), torch.zeros(3, 4, 4), ["a", "b"])
    with pytest.raises(ValueError):
        ArrayDataset(torch.zeros(2, 1, 4, 4), None, ["a"])
