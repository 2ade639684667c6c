"""Loading site data (synthetic, and the on-disk formats of `formats.py`: ImageFolder, MedMNIST .npz) and splitting it across sites."""

from common.data.imageset import DataError, ImageSet, LoadReport

__all__ = ["DataError", "ImageSet", "LoadReport"]
