"""Pseudo-labels of unlabeled cases, on disk beside the unlabeled preprocessed data (see docs/pl_contrast.md).

One folder per training run and round::

    nnUNet_preprocessed/DatasetXXX/<data_identifier>_pseudolabels/<trainer>__<plans>__fold_<f>/round_<r>/
        <case>.npy   the pseudo-label (1, *shape) in the preprocessed geometry, label values (int8, int16 if needed)
        <case>.pkl   {'class_locations': ...}, sampled from the pseudo-label as nnU-Net's preprocessor samples them
                     from a ground truth, so nnU-Net's loader can oversample the foreground of unlabeled cases too

Each file is written under a temporary name and renamed into place, and the .pkl after the .npy: a case counts only
once its .pkl exists, so a generation killed at any moment leaves complete cases and nothing that looks complete but
is not. Generating again writes only the cases that are missing.
"""
import os
import pickle
from typing import Callable, Dict, Iterable, List

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_pickle, maybe_mkdir_p

from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

from nnunet_semi.data.loader import UnlabeledImages

SUFFIX = '_pseudolabels'
UNCERTAIN = -2  # a pseudo-label below the confidence threshold (nnU-Net's transforms keep it; -1 they turn into 0)


def run_folder(preprocessed_dataset_folder: str, data_identifier: str, trainer_name: str, plans_name: str,
               fold) -> str:
    """The pseudo-label folder of one training run (all its rounds)."""
    return join(preprocessed_dataset_folder, data_identifier + SUFFIX, f'{trainer_name}__{plans_name}__fold_{fold}')


def round_folder(run: str, round_number: int) -> str:
    return join(run, f'round_{round_number}')


def file_stem(key: str) -> str:
    """File name of a case key (``hidden:<id>`` for cases whose labels nnUNetv2_semi_split hid)."""
    return key.replace(':', '__')


def committed(folder: str, key: str) -> bool:
    stem = join(folder, file_stem(key))
    return isfile(stem + '.pkl') and isfile(stem + '.npy')


def _write_atomically(path: str, write: Callable) -> None:
    partial = path + '.partial'
    with open(partial, 'wb') as f:
        write(f)
    os.replace(partial, path)


def write_pseudo_labels(keys: Iterable[str], folder: str, segment: Callable[[str], np.ndarray],
                        classes_or_regions: List, log: Callable[[str], None] = print) -> int:
    """Write the pseudo-label of every case in ``keys`` that ``folder`` does not hold complete yet.

    segment(key) -> the case's segmentation, (1, *shape) integer labels (UNCERTAIN where excluded); classes_or_regions:
    what nnU-Net's loader oversamples (the label manager's foreground labels or regions). Logs progress about every
    tenth of the cases. Returns the number of cases written."""
    maybe_mkdir_p(folder)
    keys = list(keys)
    todo = [k for k in keys if not committed(folder, k)]
    if len(todo) < len(keys):
        log(f'{len(keys) - len(todo)} of {len(keys)} pseudo-labels exist already in {folder}: kept')
    step = max(1, len(todo) // 10)
    for n, key in enumerate(todo, 1):
        seg = np.asarray(segment(key))
        seg = seg.astype(np.int8 if seg.max() <= 127 else np.int16)
        stem = join(folder, file_stem(key))
        _write_atomically(stem + '.npy', lambda f: np.save(f, seg))
        locations = DefaultPreprocessor._sample_foreground_locations(seg, classes_or_regions)
        _write_atomically(stem + '.pkl', lambda f: pickle.dump({'class_locations': locations}, f))
        if n % step == 0 or n == len(todo):
            log(f'pseudo-labels: {n}/{len(todo)} cases written to {folder}')
    return len(todo)


class PseudoLabeledCases(UnlabeledImages):
    """Unlabeled images with the pseudo-labels of one round, as a dataset for nnU-Net's own nnUNetDataLoader (which
    then crops, oversamples the foreground and augments image and pseudo-label together, as for labeled cases)."""

    def __init__(self, cases: Dict[str, str], folder: str):
        super().__init__(cases)
        self.folder = folder

    def load_case(self, key: str):
        stem = join(self.folder, file_stem(key))
        return self.load_image(key), np.load(stem + '.npy', mmap_mode='r'), None, load_pickle(stem + '.pkl')
