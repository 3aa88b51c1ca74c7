"""Inception-v3 pool features (2048-d) from a local weights file, for FID/KID comparable with the literature.

Why this is hand-written: torchmetrics' built-in Inception (``feature=2048``) comes from torch-fidelity,
and torch-fidelity imports torchvision when it is imported (its dataset helpers), which meddiff cannot
depend on; both also download the weights when no path is given. So the architecture is defined here
with the exact module names of torchvision / torch-fidelity, and weights are only ever read from a path
the user gives. Two kinds of state dict load:

- ``"fid"``: the TensorFlow FID network ported to PyTorch (``pt_inception-2015-12-05-6726825d.pth`` of
  pytorch-fid, ``weights-inception-2015-12-05-6726825d.pth`` of torch-fidelity; 1008-way ``fc``). Its
  blocks pool like TensorFlow (average pools ignore padding, the last block max-pools) and its input is
  resized like TensorFlow 1.x bilinear resizing, as torch-fidelity does. This is the network of published
  FID numbers. The remaining differences to torch-fidelity are float rounding only.
- ``"torchvision"``: a torchvision ``inception_v3`` ImageNet state dict (1000-way ``fc``; ``AuxLogits``
  weights are ignored), with torchvision's pooling and PyTorch bilinear resizing.

Images are quantised to 8 bits first, as both references see 8-bit images; grey is replicated to RGB.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from meddiff.errors import UserError
from meddiff.metrics.features import FeatureNet, match_channels

Variant = Literal["fid", "torchvision"]
INPUT_SIZE = 299


class _Conv(nn.Module):
    """Conv (no bias) + BatchNorm(eps 1e-3) + ReLU; named ``conv``/``bn`` like torchvision's BasicConv2d."""

    def __init__(
        self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1, padding: int | tuple[int, int] = 0
    ):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor, tf_pooling: bool) -> torch.Tensor:
    # TensorFlow's 3x3 average pool divides by the number of non-padding pixels.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=not tf_pooling)


class _InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int, tf_pooling: bool):
        super().__init__()
        self.tf_pooling = tf_pooling
        self.branch1x1 = _Conv(cin, 64, 1)
        self.branch5x5_1 = _Conv(cin, 48, 1)
        self.branch5x5_2 = _Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, padding=1)
        self.branch_pool = _Conv(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_avg_pool(x, self.tf_pooling)),
            ],
            1,
        )


class _InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = _Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch3x3(x),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                F.max_pool2d(x, 3, stride=2),
            ],
            1,
        )


class _InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int, tf_pooling: bool):
        super().__init__()
        self.tf_pooling = tf_pooling
        self.branch1x1 = _Conv(cin, 192, 1)
        self.branch7x7_1 = _Conv(cin, c7, 1)
        self.branch7x7_2 = _Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _Conv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _Conv(cin, c7, 1)
        self.branch7x7dbl_2 = _Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _Conv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dbl = self.branch7x7dbl_3(self.branch7x7dbl_2(self.branch7x7dbl_1(x)))
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
                self.branch7x7dbl_5(self.branch7x7dbl_4(dbl)),
                self.branch_pool(_avg_pool(x, self.tf_pooling)),
            ],
            1,
        )


class _InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = _Conv(cin, 192, 1)
        self.branch3x3_2 = _Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _Conv(cin, 192, 1)
        self.branch7x7x3_2 = _Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _Conv(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class _InceptionE(nn.Module):
    def __init__(self, cin: int, pool: Literal["avg", "avg_tf", "max"]):
        super().__init__()
        self.pool = pool
        self.branch1x1 = _Conv(cin, 320, 1)
        self.branch3x3_1 = _Conv(cin, 384, 1)
        self.branch3x3_2a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _Conv(cin, 448, 1)
        self.branch3x3dbl_2 = _Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        if self.pool == "max":  # the TF graph's last block max-pools (a quirk FID inherits)
            pooled = F.max_pool2d(x, 3, stride=1, padding=1)
        else:
            pooled = _avg_pool(x, self.pool == "avg_tf")
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(b3),
                self.branch3x3_2b(b3),
                self.branch3x3dbl_3a(dbl),
                self.branch3x3dbl_3b(dbl),
                self.branch_pool(pooled),
            ],
            1,
        )


def resize_like_tf1(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize as TensorFlow 1.x ``resize_bilinear(align_corners=False)``: source coordinate
    ``i * in / out`` (no half-pixel offset), which the FID reference network was evaluated with."""
    for dim in (2, 3):
        n_in = x.shape[dim]
        src = torch.arange(size, dtype=torch.float64) * (n_in / size)
        lo = src.floor().long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        shape = [1, 1, 1, 1]
        shape[dim] = size
        w = (src - lo).to(x.dtype).view(shape)
        a, b = x.index_select(dim, lo), x.index_select(dim, hi)
        x = a + (b - a) * w
    return x


class InceptionV3Features(FeatureNet):
    """Inception-v3 up to the 2048-d global average pool. Build it with ``load_inception``; constructing
    it directly gives random weights (useful only for tests)."""

    def __init__(self, variant: Variant = "fid", name: str | None = None):
        super().__init__()
        if variant not in ("fid", "torchvision"):
            raise UserError(f"'variant' must be 'fid' or 'torchvision', got {variant!r}")
        tf = variant == "fid"
        self.variant = variant
        self.name = name or f"inception-v3-{variant}-random-init"
        self.num_features = 2048
        self.Conv2d_1a_3x3 = _Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = _Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = _Conv(80, 192, 3)
        self.Mixed_5b = _InceptionA(192, 32, tf)
        self.Mixed_5c = _InceptionA(256, 64, tf)
        self.Mixed_5d = _InceptionA(288, 64, tf)
        self.Mixed_6a = _InceptionB(288)
        self.Mixed_6b = _InceptionC(768, 128, tf)
        self.Mixed_6c = _InceptionC(768, 160, tf)
        self.Mixed_6d = _InceptionC(768, 160, tf)
        self.Mixed_6e = _InceptionC(768, 192, tf)
        self.Mixed_7a = _InceptionD(768)
        self.Mixed_7b = _InceptionE(1280, "avg_tf" if tf else "avg")
        self.Mixed_7c = _InceptionE(2048, "max" if tf else "avg")
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = match_channels(images.float(), 3)
        x = ((x + 1) * 127.5).round().clamp(0, 255)
        if self.variant == "fid":
            x = (resize_like_tf1(x, INPUT_SIZE) - 128) / 128
        else:
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False) / 127.5 - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (
            self.Mixed_5b,
            self.Mixed_5c,
            self.Mixed_5d,
            self.Mixed_6a,
            self.Mixed_6b,
            self.Mixed_6c,
            self.Mixed_6d,
            self.Mixed_6e,
            self.Mixed_7a,
            self.Mixed_7b,
            self.Mixed_7c,
        ):
            x = block(x)
        return x.mean(dim=(2, 3))


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise TypeError("not a dict of tensors")
    return state


def load_inception(path: str | Path, variant: Variant | None = None) -> InceptionV3Features:
    """Inception-v3 feature network with the weights in the local file ``path`` (a PyTorch state dict,
    ``.pth``/``.pt``, or ``.safetensors``); nothing is downloaded.

    ``variant`` is detected from the classifier size when not given (1008 classes: "fid", 1000:
    "torchvision"). The network's name carries the variant and a hash of the file, e.g.
    ``inception-v3-fid-6726825d``.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"{path}: Inception-v3 weights file not found (meddiff never downloads weights; "
            "pass the path of a local pt_inception-2015-12-05 or torchvision inception_v3 file)"
        )
    try:
        state = _read_state_dict(path)
    except Exception as exc:  # torch.load / safetensors raise many types for a corrupt or foreign file
        raise UserError(f"{path}: could not be read as an Inception-v3 state dict ({exc})") from None
    fc = state.get("fc.weight")
    if variant is None:
        if fc is None or fc.shape[0] not in (1000, 1008):
            raise UserError(
                f"{path}: cannot tell which Inception-v3 this is from its 'fc' layer; "
                "pass variant='fid' or variant='torchvision'"
            )
        variant = "fid" if fc.shape[0] == 1008 else "torchvision"
    with path.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()[:8]
    net = InceptionV3Features(variant, name=f"inception-v3-{variant}-{digest}")
    # The classifier and torchvision's auxiliary head are not needed for pool features.
    wanted = {k: v for k, v in state.items() if not k.startswith(("fc.", "AuxLogits."))}
    try:
        missing, unexpected = net.load_state_dict(wanted, strict=False)
    except RuntimeError as exc:  # tensor shapes that do not fit
        raise UserError(f"{path}: not an Inception-v3 state dict ({str(exc).splitlines()[-1].strip()})") from None
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise UserError(
            f"{path}: not an Inception-v3 state dict ({len(missing)} missing and "
            f"{len(unexpected)} unexpected keys, e.g. '{first}')"
        )
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()
