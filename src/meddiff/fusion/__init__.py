"""Image fusion without a diffusion model: colour handling, classic fusion rules, the fusion prior and
paired source folders (the diffusion model itself is ``meddiff.tasks.fuse``).

- ``colour``: BT.601 YCbCr; a colour modality is fused through its Y and gets its Cb/Cr back.
- ``rules``: average, pixel max, Haar DWT (3 levels), Laplacian pyramid (4 levels).
- ``prior``: per pair, the best rule under 2 SSIM + VIF + 3 Qabf (the training targets of the model).
- ``folders``: matching, checking and reading two folders of registered sources, writing fused PNGs.
"""
