"""Datasets for meddiff: every loader yields ``Sample`` dicts and is built from a ``DataConfig``.

``build_dataset(DataConfig(...))`` loads any supported layout; ``inspect_path(path)`` reports what a folder
or volume holds and every problem with it (``format_report`` renders it for the terminal).
"""

from meddiff.data.arrays import ArrayDataset, Sample
from meddiff.data.build import DataConfig, build_dataset
from meddiff.data.inspect import InspectReport, format_report, inspect_path
from meddiff.data.volumes import identifying_tags

__all__ = [
    "ArrayDataset",
    "DataConfig",
    "InspectReport",
    "Sample",
    "build_dataset",
    "format_report",
    "identifying_tags",
    "inspect_path",
]
