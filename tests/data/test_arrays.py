import pytest
import torch

from meddiff.data.arrays import ArrayDataset, rotate_sample
from meddiff.data.labels import IGNORE_INDEX


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


def test_a_quarter_turn_moves_image_and_mask_together_and_loses_nothing():
    image = torch.linspace(-1, 1, 36).reshape(1, 6, 6)
    mask = torch.arange(36).reshape(6, 6).remainder(4).to(torch.uint8)
    turned = rotate_sample({"image": image, "mask": mask}, 90.0)
    k = 1 if torch.equal(turned["mask"], mask.rot90(1, dims=(-2, -1))) else -1
    assert torch.equal(turned["mask"], mask.rot90(k, dims=(-2, -1)))
    assert torch.allclose(turned["image"], image.rot90(k, dims=(-2, -1)), atol=1e-5)


def test_what_a_rotation_brings_into_the_frame_is_black_and_ignored():
    image, mask = torch.ones(1, 16, 16), torch.ones(16, 16, dtype=torch.uint8)
    turned = rotate_sample({"image": image, "mask": mask}, 45.0)
    corner = (slice(0, 2), slice(0, 2))
    assert (turned["image"][0][corner] == -1).all() and (turned["mask"][corner] == IGNORE_INDEX).all()
    assert turned["mask"][8, 8] == 1 and turned["image"][0, 8, 8] == pytest.approx(1.0)
    assert set(turned["mask"].unique().tolist()) <= {1, IGNORE_INDEX}  # nearest: no blended class ids


def test_rotations_vary_within_the_set_angle_and_replay_under_the_same_seed():
    dataset = _dataset(rotate=30.0)
    torch.manual_seed(1)
    first = [dataset[0]["image"] for _ in range(4)]
    torch.manual_seed(1)
    assert all(torch.equal(a, dataset[0]["image"]) for a in first)
    assert len({tuple(x.flatten().tolist()) for x in first}) == 4
