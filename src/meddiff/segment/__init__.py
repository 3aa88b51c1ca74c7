"""Few-label segmentation from diffusion features (Baranchuk et al., ICLR 2022), in bounded memory.

- ``features``: noise an image with one fixed noise tensor, run a trained diffusion UNet once per timestep,
  and read its decoder activations bilinearly upsampled at any set of pixels (never a full dense volume).
- ``pixels``: held-out pixels, class-balanced pixel sampling and the pixel-feature stores (fp16 on disk
  through ``np.memmap``, or float32 in memory for the all-pixels reference).
- ``ensemble``: the MLP ensemble, majority vote, per-pixel uncertainty and tile-by-tile prediction.
"""
