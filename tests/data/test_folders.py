import numpy as np
import pytest
import torch

from meddiff.data.classmap import label_spec
from meddiff.data.fit import Fit
from meddiff.data.folders import image_folder, image_mask_folder, paired_folder
from meddiff.errors import UserError

from .makers import grey, label, rgb, write_image
from .makers import image_mask_folder as make_folder


def test_image_mask_folder_reads_and_fits(tmp_path):
    dataset = image_mask_folder(make_folder(tmp_path), label_spec(class_names=["a", "b", "c"]), Fit(16))
    assert len(dataset) == 3 and dataset.in_channels == 3 and dataset.num_classes == 3
    sample = dataset[0]
    assert sample["image"].shape == (3, 16, 16) and sample["mask"].shape == (16, 16)
    assert -1 <= sample["image"].min() and sample["image"].max() <= 1 and sample["name"] == "case0"


def test_class_count_is_inferred_without_names(tmp_path):
    dataset = image_mask_folder(make_folder(tmp_path, classes=4), fit=Fit(16))
    assert dataset.class_names == ["class 0", "class 1", "class 2", "class 3"]


def test_grey_and_colour_images_mix_to_three_channels(tmp_path):
    make_folder(tmp_path, count=2)
    write_image(tmp_path / "images" / "case1.png", grey())
    assert image_mask_folder(tmp_path, fit=Fit(8)).in_channels == 3
    assert image_mask_folder(tmp_path, fit=Fit(8), channels=1).in_channels == 1


def test_image_without_mask(tmp_path):
    make_folder(tmp_path)
    write_image(tmp_path / "images" / "lonely.png", rgb())
    with pytest.raises(UserError, match=r"lonely\.png: image has no mask named 'lonely\.\*'"):
        image_mask_folder(tmp_path)
    assert len(image_mask_folder(tmp_path, unpaired="skip")) == 3


def test_mask_without_image(tmp_path):
    make_folder(tmp_path)
    write_image(tmp_path / "masks" / "orphan.png", label())
    with pytest.raises(UserError, match=r"orphan\.png: mask has no image"):
        image_mask_folder(tmp_path)


def test_empty_images_folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(UserError, match=r"images: no image files found"):
        image_mask_folder(tmp_path)


def test_missing_masks_folder(tmp_path):
    write_image(tmp_path / "images" / "a.png", rgb())
    with pytest.raises(UserError, match=r"masks: masks folder not found"):
        image_mask_folder(tmp_path)


def test_size_mismatch(tmp_path):
    make_folder(tmp_path)
    write_image(tmp_path / "masks" / "case1.png", label(20, 30))
    with pytest.raises(UserError, match=r"masks/case1\.png: size 30x20 \(WxH\) differs from .*images/case1\.png"):
        image_mask_folder(tmp_path)


def test_mask_ids_outside_the_class_map(tmp_path):
    make_folder(tmp_path, classes=3)
    class_map = tmp_path / "classes.yaml"
    class_map.write_text("- {name: bg, id: 0}\n- {name: fg, id: 1}\n")
    with pytest.raises(UserError, match=r"masks/case0\.png: mask contains class id\(s\) 2 that are not in the class"):
        image_mask_folder(tmp_path, label_spec(class_map))


def test_truncated_image_fails_at_construction(tmp_path):
    make_folder(tmp_path)
    path = tmp_path / "images" / "case2.png"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UserError, match=r"images/case2\.png: unreadable image"):
        image_mask_folder(tmp_path)


def test_non_image_file_with_image_extension(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "masks" / "case1.png").write_text("oops")
    with pytest.raises(UserError, match=r"masks/case1\.png: not an image file"):
        image_mask_folder(tmp_path)


def test_transparent_image_is_rejected(tmp_path):
    make_folder(tmp_path)
    rgba = np.dstack([rgb(), np.full((24, 32), 128, np.uint8)])
    write_image(tmp_path / "images" / "case1.png", rgba)
    with pytest.raises(UserError, match=r"images/case1\.png: RGBA image with 768 transparent pixels"):
        image_mask_folder(tmp_path)


def test_16bit_images_load(tmp_path):
    make_folder(tmp_path, count=1)
    write_image(tmp_path / "images" / "case0.png", (grey().astype(np.uint16) * 257))
    dataset = image_mask_folder(tmp_path, fit=Fit(24, "center_crop", short_side=24))
    assert dataset.in_channels == 1
    assert torch.allclose(dataset.images[0, 0], torch.from_numpy(grey()[:, 4:28] / 255.0).float() * 2 - 1, atol=1e-5)


def test_colour_coded_masks_with_class_map(tmp_path):
    coded = np.zeros((24, 32, 3), np.uint8)
    coded[:, 16:] = (255, 0, 0)
    write_image(tmp_path / "images" / "a.png", rgb())
    write_image(tmp_path / "masks" / "a.png", coded)
    class_map = tmp_path / "classes.yaml"
    class_map.write_text("- {name: bg, id: 0, colour: [0, 0, 0]}\n- {name: tool, id: 1, colour: [255, 0, 0]}\n")
    dataset = image_mask_folder(tmp_path, label_spec(class_map), Fit(24, "center_crop", short_side=24))
    assert dataset.class_names == ["bg", "tool"]
    assert dataset.masks[0, :, :12].eq(0).all() and dataset.masks[0, :, 12:].eq(1).all()


def test_split_file_selects_names(tmp_path):
    make_folder(tmp_path, count=4)
    split = tmp_path / "split.csv"
    split.write_text("name,split\ncase0,train\ncase1,test\ncase2,train\ncase3,val\n")
    dataset = image_mask_folder(tmp_path, fit=Fit(8), split_file=split, split="train")
    assert dataset.names == ["case0", "case2"]
    with pytest.raises(UserError, match=r"split\.csv: no row has split = 'dev' \(values found: test, train, val\)"):
        image_mask_folder(tmp_path, split_file=split, split="dev")
    split.write_text("name,split\ncase0,train\ncase9,train\n")
    with pytest.raises(UserError, match=r"split\.csv: 'case9' .* has no image\+mask pair"):
        image_mask_folder(tmp_path, split_file=split, split="train")


def test_image_folder_is_recursive(tmp_path):
    write_image(tmp_path / "a" / "x.png", rgb())
    write_image(tmp_path / "b" / "deep" / "y.jpg", rgb())
    write_image(tmp_path / "z.bmp", rgb())
    dataset = image_folder(tmp_path, Fit(16))
    assert dataset.names == ["a/x", "b/deep/y", "z"] and dataset.num_classes == 0 and dataset.class_names is None
    assert set(dataset[0]) == {"image", "name"}


def test_paired_folder_keeps_channels_per_modality(tmp_path):
    for i in range(2):
        write_image(tmp_path / "CT" / f"{i}.png", np.repeat(grey(seed=i)[..., None], 3, 2))
        write_image(tmp_path / "PET" / f"{i}.png", rgb(seed=i))
    dataset = paired_folder(tmp_path, Fit(16))
    assert dataset.in_channels == 1 and dataset.in_channels_b == 3 and dataset.names == ["0", "1"]
    assert set(dataset[1]) == {"image", "image_b", "name"}


def test_paired_folder_errors(tmp_path):
    write_image(tmp_path / "A" / "0.png", grey())
    write_image(tmp_path / "B" / "0.png", grey(20, 20))
    with pytest.raises(UserError, match=r"B/0\.png: size 20x20 \(WxH\) differs"):
        paired_folder(tmp_path)
    write_image(tmp_path / "A" / "1.png", grey())
    with pytest.raises(UserError, match=r"A/1\.png: A image has no B image"):
        paired_folder(tmp_path)
    write_image(tmp_path / "C" / "0.png", grey())
    with pytest.raises(UserError, match="expected exactly two modality sub-folders, found 3"):
        paired_folder(tmp_path)


# --- the real data beside the repository ---


def test_cataract1k_instrument_masks(shared_data):
    spec = label_spec(class_names=["background", "instrument"])
    dataset = image_mask_folder(shared_data / "cataract1k_samples", spec, Fit(32), masks_dir="masks_L")
    rgb_masks = image_mask_folder(shared_data / "cataract1k_samples", spec, Fit(32))  # RGB files with equal channels
    assert len(dataset) == 15 and dataset.in_channels == 3
    assert torch.equal(dataset.masks, rgb_masks.masks) and set(dataset.masks.unique().tolist()) == {0, 1}


def test_catinstseg(shared_data):
    dataset = image_mask_folder(shared_data / "catinstseg_samples", fit=Fit(32))
    assert len(dataset) == 5 and dataset.class_names == ["class 0", "class 1"]


def test_cadis_samples_mt_has_one_lone_image_and_one_lone_mask(shared_data):
    with pytest.raises(UserError, match=r"test_Video3_frame002820\.png: image has no mask .*\(1 more problem"):
        image_mask_folder(shared_data / "cadis_samples_mt")
    assert len(image_mask_folder(shared_data / "cadis_samples_mt", fit=Fit(16), unpaired="skip")) == 4


def test_isbi_membranes_remapped(shared_data):
    spec = label_spec(remap={0: [255], 1: [0]}, class_names=["cell interior", "membrane"])
    dataset = image_mask_folder(shared_data / "isbi2012_em_membrane", spec, Fit(64, "random_crop", short_side=512))
    assert dataset.masks.shape == (30, 512, 512) and dataset[0]["mask"].shape == (64, 64)
    membrane = dataset.masks.float().mean().item()
    assert 0.2 < membrane < 0.24  # 0 (membrane) is 22% of the stored pixels


def test_acdc_patient_wise_split(shared_data):
    spec = label_spec(class_names=["background", "RV", "myocardium", "LV"])
    dataset = image_mask_folder(
        shared_data / "acdc", spec, Fit(32, "pad"), split_file=shared_data / "acdc" / "split.csv", split="val"
    )
    assert len(dataset) == 210 and dataset.in_channels == 1
    assert len({name.split("_")[0] for name in dataset.names}) == 10
    assert set(dataset.masks.unique().tolist()) == {0, 1, 2, 3, 255}  # 255 = square padding


def test_harvard_mri_pet_pairs(shared_data):
    dataset = paired_folder(shared_data / "harvard_fusion" / "MRI_PET", Fit(32), modalities=["MRI", "PET"])
    assert len(dataset) == 42 and dataset.in_channels == 1 and dataset.in_channels_b == 3


def test_unlabelled_isbi_test_images(shared_data):
    dataset = image_folder(shared_data / "isbi2012_em_membrane" / "test_images", Fit(32))
    assert len(dataset) == 30 and dataset.in_channels == 1 and dataset.masks is None
