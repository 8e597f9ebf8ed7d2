"""Pseudo-labels of unlabeled cases, on disk beside the unlabeled preprocessed data (see docs/pl_contrast.md).

One folder per training run and round::

    nnUNet_preprocessed/DatasetXXX/<data_identifier>_pseudolabels/<trainer>__<plans>__fold_<f>/round_<r>/
        <case>.npy   the pseudo-label (1, *shape) in the preprocessed geometry, label values (int8, int16 if needed)
        <case>.pkl   {'class_locations': ...}, sampled from the pseudo-label as nnU-Net's preprocessor samples them
                     from a ground truth, so nnU-Net's loader can oversample the foreground of unlabeled cases too

Each case is written as nnUNetv2_semi_preprocess writes unlabeled images (``write_case_atomically``: the .pkl is
renamed into place last), so a generation killed at any moment leaves complete cases and nothing that looks complete
but is not. Generating again writes only the cases that are missing.
"""
from typing import Callable, Dict, Iterable, List

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import join, load_pickle, maybe_mkdir_p

from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

from nnunet_semi.data.loader import UnlabeledImages
from nnunet_semi.data.unlabeled import committed_cases, write_case_atomically

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


def write_pseudo_labels(keys: Iterable[str], folder: str, segment: Callable[[str], np.ndarray],
                        classes_or_regions: List, log: Callable[[str], None] = print) -> int:
    """Write the pseudo-label of every case in ``keys`` that ``folder`` does not hold complete yet.

    segment(key) -> the case's segmentation, (1, *shape) integer labels (UNCERTAIN where excluded); classes_or_regions:
    what nnU-Net's loader oversamples (the label manager's foreground labels or regions). Logs progress about every
    tenth of the cases. Returns the number of cases written."""
    maybe_mkdir_p(folder)
    keys, done = list(keys), set(committed_cases(folder, '.npy'))
    todo = [k for k in keys if file_stem(k) not in done]
    if len(todo) < len(keys):
        log(f'{len(keys) - len(todo)} of {len(keys)} pseudo-labels exist already in {folder}: kept')
    step = max(1, len(todo) // 10)
    for n, key in enumerate(todo, 1):
        seg = np.asarray(segment(key))
        seg = seg.astype(np.int8 if seg.max() <= 127 else np.int16)
        locations = DefaultPreprocessor._sample_foreground_locations(seg, classes_or_regions)
        write_case_atomically(folder, file_stem(key), '.npy', lambda path: np.save(path, seg),
                              {'class_locations': locations})
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


class PseudoLabeledDataLoader(nnUNetDataLoader):
    """nnU-Net's loader on PseudoLabeledCases. Pseudo-labels have no ignore label: patches follow their foreground
    (oversampling) or are placed at random."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.has_ignore = False
