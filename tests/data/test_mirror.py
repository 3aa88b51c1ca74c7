"""Left-right flips of sided label maps swap the paired classes, everywhere meddiff flips a mask; sided
classes without pairs refuse the flip; unsided maps flip as before."""

from pathlib import Path

import numpy as np
import pytest
import torch
from tests.data.makers import rgb, write_image

from meddiff.config import from_dict
from meddiff.data.arrays import ArrayDataset
from meddiff.data.build import DataConfig, build_dataset
from meddiff.data.inspect import format_report, inspect_path
from meddiff.data.mask_sources import MaskAugment, MaskSet, augment_masks
from meddiff.data.mirror import Mirror, flip_mask, resolve_pairs, sided_classes
from meddiff.errors import UserError
from meddiff.segment.pipeline import flip_views

CHEST = ["background", "right lung", "left lung", "heart"]
LUNGS = Mirror(left_right=((1, 2),))


def chest_mask(h: int = 8, w: int = 12) -> torch.Tensor:
    """The patient's right lung on the image's left (radiological view), the left lung on its right, the
    heart off-centre towards the image's right, an ignored corner."""
    mask = torch.zeros(h, w, dtype=torch.uint8)
    mask[1:7, 1:5], mask[1:7, 7:11], mask[4:7, 6:9] = 1, 2, 3
    mask[0, 0] = 255
    return mask


def test_a_left_right_flip_swaps_the_paired_classes_and_keeps_the_others():
    mask = chest_mask()
    flipped = flip_mask(mask, -1, LUNGS)
    assert torch.equal(flipped == 1, mask.flip(-1) == 2) and torch.equal(flipped == 2, mask.flip(-1) == 1)
    assert torch.equal(flipped == 3, mask.flip(-1) == 3)  # the heart moves but keeps its id
    assert flipped[0, -1] == 255 and flipped.dtype == mask.dtype
    # the lung on the image's left is the right lung before and after
    assert set(flipped[:, :6].unique().tolist()) <= {0, 1, 3}


def test_a_top_bottom_flip_keeps_ids_unless_a_vertical_pair_says_otherwise():
    mask = chest_mask()
    assert torch.equal(flip_mask(mask, -2, LUNGS), mask.flip(-2))
    upper_lower = Mirror(top_bottom=((1, 2),))
    assert torch.equal(flip_mask(mask, -2, upper_lower) == 2, mask.flip(-2) == 1)


def test_sided_names_are_found_by_side_word_or_letter_but_not_inside_words():
    names = ["background", "right lung", "LeftKidney", "Hippocampus_L", "R-clavicle", "bright spot", "lr", "heart"]
    assert sided_classes(names) == ["right lung", "LeftKidney", "Hippocampus_L", "R-clavicle"]


def test_pairs_resolve_names_or_ids_and_reject_unknown_or_repeated_classes():
    assert resolve_pairs([["right lung", "left lung"]], CHEST, "p") == ((1, 2),)
    assert resolve_pairs([[2, 1]], CHEST, "p") == ((2, 1),)
    with pytest.raises(UserError, match="'right kidney' is not a class"):
        resolve_pairs([["right kidney", "left lung"]], CHEST, "p")
    with pytest.raises(UserError, match="one pair only"):
        resolve_pairs([[1, 2], [2, 3]], CHEST, "p")


def test_every_flipped_training_sample_keeps_its_labels_true():
    mask = chest_mask()
    image = (mask.float() / 3)[None]  # the image shows the classes, so a flip is visible in it
    data = ArrayDataset(image[None], mask[None], ["case0"], CHEST, hflip=True, mirror=LUNGS)
    torch.manual_seed(0)
    seen_flipped = False
    for _ in range(16):
        sample = data[0]
        seen_flipped |= not torch.equal(sample["image"], image)
        assert set(sample["mask"][:, :6].unique().tolist()) <= {0, 1, 3, 255}  # right lung stays image-left
    assert seen_flipped


def test_flipped_views_of_segment_fit_swap_the_pairs_and_keep_held_out_pixels_aligned():
    mask = chest_mask()[None].long()
    held = torch.zeros_like(mask, dtype=torch.bool)
    held[0, 2, 2] = True
    images, masks, held_views = flip_views(mask[:, None].float(), mask, held, True, False, LUNGS)
    assert torch.equal(masks[1], flip_mask(mask[0], -1, LUNGS))
    assert torch.equal(images[1], mask[:, None].float()[0].flip(-1))  # images flip without any id swap
    assert held_views[1, 2, -3]


def _chest_folder(root, hflip: bool = True, **data) -> DataConfig:
    """Two chest cases in ``root``; the data config names the classes unless a class map is given."""
    for i in range(2):
        write_image(root / "images" / f"case{i}.png", rgb(8, 12, i))
        write_image(root / "masks" / f"case{i}.png", chest_mask().numpy())
    names = {} if "class_map" in data else {"class_names": CHEST}
    base = {"kind": "image_mask_folder", "root": str(root), "size": 8, "fit": "pad", "hflip": hflip}
    return from_dict(DataConfig, {**base, **names, **data})


def test_training_data_with_sided_classes_and_no_pairs_refuses_the_flip(tmp_path):
    with pytest.raises(UserError) as refusal:
        build_dataset(_chest_folder(tmp_path))
    message = str(refusal.value)
    assert "'right lung', 'left lung'" in message and "data.mirror_pairs" in message and "hflip: false" in message
    assert build_dataset(_chest_folder(tmp_path, hflip=False)).mirror == Mirror()


def test_declared_pairs_reach_the_dataset(tmp_path):
    dataset = build_dataset(_chest_folder(tmp_path, mirror_pairs=[["left lung", "right lung"]]))
    assert dataset.mirror.left_right == ((2, 1),)


def test_a_class_map_mirror_key_declares_the_pair(tmp_path):
    class_map = tmp_path / "classes.yaml"
    class_map.write_text(
        "- {name: background, id: 0}\n- {name: right lung, id: 1, mirror: left lung}\n"
        "- {name: left lung, id: 2, mirror: right lung}\n- {name: heart, id: 3}\n"
    )
    config = _chest_folder(tmp_path / "set", class_map=str(class_map))
    assert build_dataset(config).mirror.left_right == ((1, 2),)
    text = format_report(inspect_path(config.root, class_map=class_map))
    assert "mirror pairs (swapped by left-right flips): left lung <-> right lung" in text and "sided" not in text


def test_inspect_reports_sided_classes_without_pairs(tmp_path):
    config = _chest_folder(tmp_path / "set")
    (tmp_path / "classes.yaml").write_text("".join(f"- {{name: {n}, id: {i}}}\n" for i, n in enumerate(CHEST)))
    text = format_report(inspect_path(config.root, class_map=tmp_path / "classes.yaml"))
    assert "'right lung', 'left lung' are sided" in text


def test_an_unsided_map_flips_as_before(tmp_path):
    write_image(tmp_path / "images" / "a.png", rgb(8, 8, 0))
    write_image(tmp_path / "masks" / "a.png", np.eye(8, dtype=np.uint8))
    data = {"kind": "image_mask_folder", "root": str(tmp_path), "size": 8, "hflip": True}
    dataset = build_dataset(from_dict(DataConfig, {**data, "class_names": ["background", "vessel"]}))
    assert dataset.mirror == Mirror()
    assert torch.equal(flip_mask(dataset.masks[0], -1, dataset.mirror), dataset.masks[0].flip(-1))


def test_synthesis_mask_flips_swap_the_pairs_and_refuse_without_them():
    masks = MaskSet(chest_mask()[None].repeat(8, 1, 1), [f"m{i}" for i in range(8)], ["m"] * 8, tuple(CHEST))
    flipped, records = augment_masks(masks, list(range(8)), MaskAugment(hflip=True), seed=0, mirror=LUNGS)
    assert any(r.get("hflip") for r in records) and not all(r.get("hflip") for r in records)
    for out, record in zip(flipped, records, strict=True):
        expected = flip_mask(chest_mask(), -1, LUNGS) if record.get("hflip") else chest_mask()
        assert torch.equal(out, expected)
    with pytest.raises(UserError, match="--mirror-pair"):
        augment_masks(masks, [0], MaskAugment(hflip=True), seed=0)


def test_the_example_chest_class_map_declares_both_pairs(tmp_path):
    example = Path(__file__).resolve().parents[2] / "configs" / "data" / "classmaps" / "chest_xray.yaml"
    write_image(tmp_path / "images" / "a.png", rgb(8, 12, 0))
    write_image(tmp_path / "masks" / "a.png", np.arange(96, dtype=np.uint8).reshape(8, 12) % 6)
    data = {"kind": "image_mask_folder", "root": str(tmp_path), "size": 8, "fit": "pad", "hflip": True}
    dataset = build_dataset(from_dict(DataConfig, {**data, "class_map": str(example)}))
    assert dataset.mirror.left_right == ((1, 2), (4, 5))


def test_a_class_paired_with_itself_keeps_its_id_when_flipped(tmp_path):
    acdc = ["background", "right ventricle", "LV myocardium", "LV cavity"]
    mask = chest_mask()
    assert torch.equal(flip_mask(mask, -1, Mirror(left_right=((1, 1),))), mask.flip(-1))
    write_image(tmp_path / "images" / "a.png", rgb(8, 12, 0))
    write_image(tmp_path / "masks" / "a.png", mask.numpy())
    data = {"kind": "image_mask_folder", "root": str(tmp_path), "size": 8, "fit": "pad", "hflip": True}
    with pytest.raises(UserError, match="'right ventricle' are sided"):
        build_dataset(from_dict(DataConfig, {**data, "class_names": acdc}))
    kept = {**data, "class_names": acdc, "mirror_pairs": [["right ventricle", "right ventricle"]]}
    assert build_dataset(from_dict(DataConfig, kept)).mirror.left_right == ((1, 1),)
