from pathlib import Path

import numpy as np
import pytest

from meddiff.data.classmap import label_spec, load_class_map, remap_lut
from meddiff.errors import UserError

MAP = """\
- {name: background, id: 0, colour: [0, 0, 0]}
- {name: tool, id: 1, colour: [255, 0, 0]}
- {name: tissue, id: 2, colour: [0, 255, 0]}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "classes.yaml"
    path.write_text(text)
    return path


def test_class_map_names_colours_and_ids(tmp_path):
    spec = label_spec(_write(tmp_path, MAP))
    assert spec.class_names == ("background", "tool", "tissue")
    assert spec.colours == {(0, 0, 0): 0, (255, 0, 0): 1, (0, 255, 0): 2}
    stored = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    assert np.array_equal(spec.apply(stored, Path("m.png")), stored)


def test_ids_outside_the_class_map_name_the_mask(tmp_path):
    spec = label_spec(_write(tmp_path, MAP))
    with pytest.raises(UserError, match=r"case7\.png: mask contains class id\(s\) 4, 9 that are not in the class map"):
        spec.apply(np.array([[0, 4], [9, 1]], dtype=np.uint8), Path("case7.png"))


@pytest.mark.parametrize(
    "text, message",
    [
        ("- {name: a, id: 0}\n- {name: b, id: 0}\n", "class id 0 is listed twice"),
        ("- {name: a, id: 0, colour: [1, 2]}\n", r"'\[0\].colour' must be three values"),
        ("- {name: a, ident: 0}\n", r"unknown key '\[0\].ident'"),
        ("name: a\n", "must be a non-empty list"),
        ("- {name: a, id: 0}\n- {name: b, id: 2}\n", "without gaps"),
    ],
)
def test_bad_class_maps_name_the_file(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(UserError, match=message) as info:
        label_spec(path)
    assert str(path) in str(info.value)


def test_remap_merges_and_ignores():
    lut = remap_lut({0: [0], 1: [3, 4], 255: [2]})
    assert lut[[0, 1, 2, 3, 4, 5, 255]].tolist() == [0, 255, 255, 1, 1, 255, 255]


@pytest.mark.parametrize(
    "remap, message",
    [
        ({0: [0], 2: [1]}, "without gaps, but 1 is missing"),
        ({0: [0, 1], 1: [1]}, "stored id 1 is listed twice"),
        ({300: [1]}, "new class id 300"),
    ],
)
def test_bad_remaps(remap, message):
    with pytest.raises(UserError, match=message):
        remap_lut(remap)


def test_binary_0_255_masks_need_a_remap():
    stored = np.array([[0, 255], [255, 0]], dtype=np.uint8)
    plain = label_spec()
    assert np.array_equal(plain.apply(stored, Path("m.png")), stored)  # 255 stays "ignore"
    membrane = label_spec(remap={0: [255], 1: [0]}, class_names=["cell", "membrane"])
    assert membrane.apply(stored, Path("m.png")).tolist() == [[1, 0], [0, 1]]


def test_remap_names_come_from_the_class_map(tmp_path):
    spec = label_spec(_write(tmp_path, MAP), remap={0: [0, 2], 1: [1]})
    assert spec.class_names == ("background+tissue", "tool")


def test_class_names_bound_the_ids():
    spec = label_spec(class_names=["a", "b"])
    with pytest.raises(UserError, match=r"x\.png: mask contains class id\(s\) 2 but only 2 classes"):
        spec.apply(np.array([[0, 2]], dtype=np.uint8), Path("x.png"))
    with pytest.raises(UserError, match=r"'data\.class_names' has 3 names but 'data\.remap' makes 2"):
        label_spec(remap={0: [0], 1: [1]}, class_names=["a", "b", "c"])


def test_large_stored_ids_need_a_remap():
    stored = np.array([[0, 1000]], dtype=np.uint16)
    with pytest.raises(UserError, match=r"m\.png: mask contains class id 1000 > 255"):
        label_spec().apply(stored, Path("m.png"))
    assert label_spec(remap={0: [0], 1: [1000]}).apply(stored, Path("m.png")).tolist() == [[0, 1]]


def test_load_class_map_entries(tmp_path):
    entries = load_class_map(_write(tmp_path, MAP))
    assert [(e.name, e.id, e.colour) for e in entries][1] == ("tool", 1, (255, 0, 0))
