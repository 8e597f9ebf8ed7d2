"""The unlabeled loader: nnU-Net's patch sampling and augmentation, images only.

A batch is ``{'data': float tensor (B, C, *patch_size), 'keys': [...]}``, plus ``'region'`` (B,) when a subclass's
placement gives each patch a label (data/proxy.py). The loader opens image files only: the
segmentation and the properties file (whose class locations come from the labels) are never read, so cases with
hidden labels stay unlabeled. Patches are placed uniformly at random (no foreground oversampling: there is no
foreground to oversample).
"""
import os
from typing import Dict, Optional, Tuple

import blosc2
import numpy as np
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
from batchgenerators.utilities.file_and_folder_operations import isfile
from threadpoolctl import threadpool_limits

from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader


class UnlabeledImages:
    """Images of unlabeled cases, by key. ``cases``: key -> file path without ending (``.b2nd``, or ``.npz`` for data
    preprocessed by older nnU-Net versions)."""

    def __init__(self, cases: Dict[str, str]):
        self.cases = dict(cases)
        self.identifiers = sorted(self.cases)
        self.mmap_kwargs = {} if os.name == 'nt' else {'mmap_mode': 'r'}

    def __len__(self):
        return len(self.identifiers)

    def load_image(self, key: str):
        path = self.cases[key]
        if isfile(path + '.b2nd'):
            return blosc2.open(urlpath=path + '.b2nd', mode='r', dparams={'nthreads': 1}, **self.mmap_kwargs)
        if isfile(path + '.npy'):
            return np.load(path + '.npy', mmap_mode='r')
        return np.load(path + '.npz')['data']  # npz members load lazily: 'seg' is not read


class UnlabeledDataLoader(nnUNetDataLoader):
    """nnUNetDataLoader's sampling (2d or 3d, padding for the augmentation's larger initial patch) on images only."""

    def __init__(self, data: UnlabeledImages, batch_size: int, patch_size, final_patch_size, label_manager,
                 transforms=None):
        super().__init__(data, batch_size, patch_size, final_patch_size, label_manager,
                         oversample_foreground_percent=0.0, transforms=transforms)
        self.has_ignore = False  # random placement, never the label-derived class locations

    def place_patch(self, key: str, shape) -> Tuple[list, Optional[int]]:
        """The lower corner of the (initial) patch in a volume of ``shape``, and the patch's label for a loader whose
        placement defines one (data/proxy.py: the region), else None. Here uniformly at random, as nnU-Net places
        patches without forced foreground."""
        return self.get_bbox(shape, False, None)[0], None

    def augmented_patch(self, image, bbox_lbs) -> torch.Tensor:
        """The patch at ``bbox_lbs`` (padded with 0 where it leaves the volume), through the transforms."""
        bbox = [[lb, lb + size] for lb, size in zip(bbox_lbs, self.patch_size)]
        patch = torch.from_numpy(crop_and_pad_nd(image, bbox, 0)).float()
        if self.patch_size_was_2d:
            patch = patch[:, 0]
        if self.transforms is not None:
            # nnU-Net's transforms expect a segmentation; an all-background one carries no label
            empty = torch.zeros((1, *patch.shape[1:]), dtype=torch.int16)
            patch = self.transforms(image=patch, segmentation=empty)['image']
        return patch

    def generate_train_batch(self):
        keys = self.get_indices()
        images, labels = [], []
        with torch.no_grad(), threadpool_limits(limits=1, user_api=None):
            for key in keys:
                image = self._data.load_image(key)
                lbs, label = self.place_patch(key, image.shape[1:])
                images.append(self.augmented_patch(image, lbs))
                labels.append(label)
        batch = {'data': torch.stack(images), 'keys': keys}
        if labels[0] is not None:
            batch['region'] = torch.tensor(labels, dtype=torch.long)
        return batch
