import pytest
import torch

from meddiff.data.fit import Fit, stack_common
from meddiff.data.labels import IGNORE_INDEX


def _pair(h: int = 30, w: int = 60):
    return torch.rand(3, h, w), torch.randint(0, 3, (h, w), dtype=torch.uint8)


@pytest.mark.parametrize(
    "mode, shape", [("resize", (16, 16)), ("pad", (16, 16)), ("center_crop", (16, 16)), ("random_crop", (16, 32))]
)
def test_fitted_shapes(mode, shape):
    image, mask = _pair()
    fit = Fit(16, mode)
    assert fit.image(image).shape == (3, *shape) and fit.mask(mask).shape == shape
    assert fit.mask(mask).dtype == torch.uint8
    assert fit.crop == (16 if mode == "random_crop" else None)


def test_pad_marks_padding_as_ignore_and_black():
    image, mask = _pair(20, 40)
    fit = Fit(40, "pad")
    assert (fit.mask(mask)[:10] == IGNORE_INDEX).all() and (fit.image(image)[:, :10] == 0).all()


def test_center_crop_at_native_resolution_keeps_pixels():
    image, mask = _pair(30, 60)
    fit = Fit(20, "center_crop", short_side=30)
    assert torch.equal(fit.mask(mask), mask[5:25, 20:40])
    assert torch.equal(fit.image(image), image[:, 5:25, 20:40])


def test_masks_keep_only_existing_ids_when_resized():
    _, mask = _pair(31, 47)
    assert set(Fit(13).mask(mask).unique().tolist()) <= set(mask.unique().tolist())


def test_stack_common_crops_to_the_shared_canvas():
    stacked = stack_common([torch.zeros(1, 16, 20), torch.zeros(1, 18, 16)])
    assert stacked.shape == (2, 1, 16, 16)


def test_short_side_must_cover_the_crop():
    with pytest.raises(ValueError, match="short_side"):
        Fit(32, "random_crop", short_side=16)
