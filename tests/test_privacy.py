"""Patient privacy end to end: DICOM identifiers never reach anything meddiff writes, a run killed and
resumed included."""

import re
import signal
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
import yaml
from pydicom.data import get_testdata_file
from tests.conftest import REPO, tiny_generate_config

from meddiff.config import to_dict

IDENTITY = {
    "PatientName": "Doe^Jane^Quincy",
    "PatientID": "PID-7731-XK",
    "PatientBirthDate": "19610412",
    "AccessionNumber": "ACC-99812",
    "InstitutionName": "St Elsewhere General",
    "ReferringPhysicianName": "House^Gregory",
    "StudyDate": "20040119",
}


def _series(folder: Path) -> list[str]:
    """Four slices of pydicom's CT_small.dcm carrying a made-up identity; returns every identifying value."""
    folder.mkdir()
    values = [*list(IDENTITY.values()), "Doe", "Elsewhere"]
    for k in range(4):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        for keyword, value in IDENTITY.items():
            setattr(ds, keyword, value)
        ds.ImagePositionPatient = [0.0, 0.0, float(k)]
        ds.InstanceNumber = k + 1
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        values += [ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID]
        ds.save_as(folder / f"{ds.PatientID}_{k}.dcm")
    return values


def meddiff(*args):
    done = subprocess.run(
        [sys.executable, "-m", "meddiff.cli", *map(str, args)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode in (0, 2), done.stderr
    return done


def _searchable_bytes(path: Path, needle_length: int) -> bytes:
    """A file's bytes, minus embedded base64 images when the needle is short enough to occur in them by
    chance (a 3-letter surname turns up in ~1 MB of random base64 about every 260 kB)."""
    data = path.read_bytes()
    if needle_length < 8:
        data = re.sub(rb"base64,[A-Za-z0-9+/=]+", b"base64,", data)
        if path.suffix in (".png", ".safetensors", ".pt"):
            return b""  # compressed / numeric payloads: checked for the full-length identifiers only
    return data


@pytest.mark.slow
def test_no_identifier_reaches_any_output(tmp_path):
    values = _series(tmp_path / "series")
    inspected = meddiff("data", "inspect", tmp_path / "series")
    assert "PatientName" in inspected.stdout  # the warning names the identifying tags ...

    config = to_dict(tiny_generate_config(steps=3, sample_every=1, checkpoint_every=1))
    config["data"] = {"kind": "dicom", "root": str(tmp_path / "series"), "size": 32}
    config["joint_mask"] = False
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"task": "generate", **config}))
    run = tmp_path / "run"
    train = ["train", tmp_path / "config.yaml", "--out", run]
    killed = subprocess.run(  # SIGKILLed once step 2 is logged, before its checkpoint: the logs of a kill
        [sys.executable, "-m", "benchmarks.faults", "--child", "step:2", "--", *map(str, train)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    outputs = [
        inspected,
        killed,
        meddiff("train", tmp_path / "config.yaml", "--out", run, "--resume"),
        meddiff("sample", run, "--n", 2, "--steps", 2, "--out", run / "synthetic"),
        meddiff("report", run),
    ]
    assert "resuming from" in outputs[2].stdout + outputs[2].stderr
    assert (run / "report.html").is_file() and (run / "synthetic" / "images").is_dir()

    written = [p for p in run.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in written) and any(p.suffix == ".png" for p in written)
    for value in values:  # ... but no value does, in any file, file name or console output
        needle = value.encode()
        for path in written:
            assert needle not in _searchable_bytes(path, len(needle)), f"{value!r} found in {path}"
            assert value not in str(path.relative_to(tmp_path))
        for done in outputs:
            assert value not in done.stdout and value not in done.stderr
