"""Evaluation metrics, one module per job (imported from their modules, so ``import meddiff.metrics``
stays cheap):

- ``image``: PSNR and SSIM of images in [-1, 1], scored on [0, 1] with data_range=1.
- ``segmentation``: per-class IoU / Dice, mIoU and mean Dice from a streamed confusion matrix, and the
  same scores image by image (``per_image_scores``).
- ``volumes``: per-case 3D Dice and HD95 of label volumes (the ACDC protocol's per-case scores).
- ``features``: the feature-network interface (``FeatureNet``, ``extract_features``).
- ``inception``: Inception-v3 pool features from a local weights file (never downloaded).
- ``domain_net``: a small CNN trained self-supervised on the real images, saved as safetensors + JSON.
- ``generative``: FID and KID (torchmetrics) with any feature network, named in every result.
- ``memorization``: nearest-training-image distances of generated images and likely-copy flags.
"""
