"""Data layer: generated worlds, PASCAL VOC, users' folders, joint transforms.

Every dataset returns the sample dict described in ``gainet.data.sample`` and has
``classes``, ``multi_label``, ``mean``, ``std``, ``image_id(index)`` and ``boxes(index)``.
"""

from .errors import DataError
from .factory import DATASET_NAMES, build_dataset, dataset_splits
from .files import FileDataset, Record
from .folder import FolderDataset, load_folder
from .garments import GarmentsBiasWorld, GarmentsWorld
from .sample import SAMPLE_KEYS, check_sample
from .transforms import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD, JointTransform, build_transform
from .voc import VOC_CLASSES, VOCDataset
from .worlds import BiasWorld, PartsWorld, World

__all__ = [
    "BiasWorld",
    "DATASET_NAMES",
    "DataError",
    "FileDataset",
    "FolderDataset",
    "GarmentsBiasWorld",
    "GarmentsWorld",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "JointTransform",
    "PartsWorld",
    "Record",
    "SAMPLE_KEYS",
    "VOCDataset",
    "VOC_CLASSES",
    "World",
    "build_dataset",
    "build_transform",
    "check_sample",
    "dataset_splits",
    "load_folder",
]
