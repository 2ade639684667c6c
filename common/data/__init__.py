"""Loading site data (synthetic, ImageFolder, MedMNIST .npz) and splitting it across sites."""

from common.data.imageset import DataError, ImageSet, LoadReport

__all__ = ["DataError", "ImageSet", "LoadReport"]
