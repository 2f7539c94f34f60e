"""Data: datasets of every kind the miner accepts (ImageFolder directories, uint8 arrays,
the embedded Animal-Shape set, torch Datasets, stroke sequences) and the one preprocessing
rule that turns their pixels into model inputs.
"""
from sketchmine.data.arrays import ArrayDataset, animal_shape, embedded_path
from sketchmine.data.dataset import MinerDataset, collate, first_readable, shapes_differ
from sketchmine.data.folder import (
    IMAGE_EXTENSIONS,
    OTHER_IMAGE_EXTENSIONS,
    READ_ERRORS,
    ImageFolderDataset,
    cache_dir,
    content_hashes,
)
from sketchmine.data.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LUMA,
    Preprocessing,
    as_size,
    chw,
    convert_channels,
    parse_size,
    preset,
)
from sketchmine.data.resolve import as_miner_dataset, compute_mean_std, export_image_folder
from sketchmine.data.torchdata import TorchDataset

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_EXTENSIONS", "LUMA", "OTHER_IMAGE_EXTENSIONS", "READ_ERRORS",
           "ArrayDataset", "ImageFolderDataset", "MinerDataset", "Preprocessing", "TorchDataset", "animal_shape",
           "as_miner_dataset", "as_size", "cache_dir", "chw", "collate", "compute_mean_std", "content_hashes",
           "convert_channels", "embedded_path", "export_image_folder", "first_readable", "parse_size", "preset",
           "shapes_differ"]
