"""meddiff: diffusion models for medical imaging with few labels."""

__version__ = "0.1.0"
