"""Training captions: the documented template on label maps, and captions files."""

import pytest
import torch

from meddiff.errors import UserError
from meddiff.text.captions import CaptionConfig, Captioner, read_captions_file, size_word, template_captions

CLASSES = ["background", "instrument", "pupil"]


def _mask(top: int, left: int, side: int, cls: int = 1, size: int = 30) -> torch.Tensor:
    mask = torch.zeros(1, size, size, dtype=torch.long)
    mask[0, top : top + side, left : left + side] = cls
    return mask


def test_template_names_size_and_position_of_each_class_and_absent_ones():
    [caption] = template_captions(_mask(0, 0, 5), CLASSES, "cataract surgery frame")
    assert caption == "cataract surgery frame, small instrument at top left, no pupil"


def test_positions_follow_a_flip_of_the_mask():
    mask = _mask(12, 0, 5)
    assert "instrument at left" in template_captions(mask, CLASSES, "x")[0]
    assert "instrument at right" in template_captions(mask.flip(-1), CLASSES, "x")[0]


def test_attribute_and_options():
    [caption] = template_captions(_mask(10, 10, 10), CLASSES, "x", attributes=["axial level 2/8"], positions=False)
    assert caption == "x, axial level 2/8, medium instrument, no pupil"
    [everything] = template_captions(_mask(10, 10, 10), CLASSES, "x", background=None)
    assert everything.startswith("x, very large background at centre")


def test_size_words_follow_the_documented_thresholds():
    assert [size_word(f) for f in (0.005, 0.01, 0.049, 0.1, 0.2, 0.5)] == [
        "tiny",
        "small",
        "small",
        "medium",
        "large",
        "very large",
    ]


def test_ignored_pixels_do_not_count_towards_sizes():
    mask = _mask(0, 0, 5)
    mask[0, 10:] = 255  # two thirds ignored: the instrument's share of the labelled pixels grows
    assert "medium instrument" in template_captions(mask, CLASSES, "x")[0]


def test_captions_file_gives_every_sample_its_caption(tmp_path):
    path = tmp_path / "captions.csv"
    path.write_text("name,caption\ncase0,bright frame\ncase1, dark frame \nother,unused\n")
    assert read_captions_file(path, ["case1", "case0"]) == {"case1": "dark frame", "case0": "bright frame"}
    captioner = Captioner(CaptionConfig(source="file", file=path), ["case0", "case1"], None, None, "image_folder")
    assert captioner({"name": ["case1", "case0"]}) == ["dark frame", "bright frame"]


@pytest.mark.parametrize(
    "content, message",
    [
        ("name,caption\ncase0,bright\n", "no caption for sample 'case1'"),
        ("name,text\ncase0,bright\n", "no column 'caption'"),
    ],
)
def test_captions_file_problems_name_the_file(tmp_path, content, message):
    path = tmp_path / "captions.csv"
    path.write_text(content)
    with pytest.raises(UserError, match=message) as error:
        read_captions_file(path, ["case0", "case1"])
    assert str(path) in str(error.value)


def test_template_needs_something_to_describe():
    with pytest.raises(UserError, match="captions file"):
        Captioner(CaptionConfig(), ["a"], None, None, "image_folder")


def test_captioner_uses_the_brain_prefix_and_attribute_names():
    captioner = Captioner(CaptionConfig(), ["s"], CLASSES, ["level 1", "level 2"], "brain_mri")
    [caption] = captioner({"mask": _mask(0, 0, 5), "attribute": torch.tensor([1]), "name": ["s"]})
    assert caption.startswith("T1-weighted brain MRI, axial slice, level 2, small instrument")
