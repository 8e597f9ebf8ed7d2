"""Where unlabeled cases come from (see docs/data.md).

1. ``nnUNet_raw/DatasetXXX/imagesUnlabeled/``: images named like ``imagesTr`` (``CASE_0000.nii.gz``, one file per
   channel), preprocessed by ``nnUNetv2_semi_preprocess`` into
   ``nnUNet_preprocessed/DatasetXXX/<data_identifier>_unlabeled/``.
2. Hidden labels: ``nnUNetv2_semi_split`` lists, per fold, the training cases whose labels a semi trainer must not
   read (key ``unlabeled`` of the fold's entry in ``splits_final.json``). Their images stay in the labeled folder.
"""
import os
import re
import sys
from collections import defaultdict
from contextlib import contextmanager
from typing import Callable, Dict, List, Optional

from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json, maybe_mkdir_p, \
    write_pickle

RAW_FOLDER = 'imagesUnlabeled'
PREPROCESSED_SUFFIX = '_unlabeled'
SPLITS_FILE = 'splits_final.json'
PARTIAL = '.partial'  # where write_case_atomically writes before renaming


class UnlabeledDataError(RuntimeError):
    """Bad or missing unlabeled data. The message names the file or folder and the fix."""


@contextmanager
def exit_on_data_error():
    """For the commands: an UnlabeledDataError ends the program with its message and exit code 1, no traceback."""
    try:
        yield
    except UnlabeledDataError as e:
        print(f'ERROR: {e}', file=sys.stderr)
        sys.exit(1)


def preprocessed_unlabeled_folder(preprocessed_dataset_folder: str, data_identifier: str) -> str:
    return join(preprocessed_dataset_folder, data_identifier + PREPROCESSED_SUFFIX)


def num_channels(dataset_json: dict) -> int:
    return len(dataset_json['channel_names'] if 'channel_names' in dataset_json else dataset_json['modality'])


def find_raw_unlabeled_cases(raw_dataset_folder: str, dataset_json: dict) -> Dict[str, List[str]]:
    """Case identifier -> its channel files (sorted by channel), for every case of ``imagesUnlabeled/``.

    Raises UnlabeledDataError when the folder is missing or empty, when a file does not follow the naming
    ``CASE_XXXX<file_ending>``, or when a case does not have exactly one file per channel of dataset.json."""
    folder = join(raw_dataset_folder, RAW_FOLDER)
    ending = dataset_json['file_ending']
    if not isdir(folder):
        raise UnlabeledDataError(
            f'No unlabeled images: the folder {folder} does not exist. Put your unlabeled images there, named like '
            f'imagesTr (CASE_0000{ending}, one file per channel), or hide labels of training cases with '
            f'nnUNetv2_semi_split -d ID -n N.')
    pattern = re.compile(r'^(.+)_(\d{4})' + re.escape(ending) + '$')
    channels = defaultdict(dict)
    for f in sorted(os.listdir(folder)):
        if f.startswith('.'):
            continue
        m = pattern.match(f)
        if m is None:
            raise UnlabeledDataError(
                f'{join(folder, f)} does not follow nnU-Net\'s naming CASE_XXXX{ending} (XXXX: the 4-digit channel '
                f'index, file ending from dataset.json). Rename it or move it out of {folder}.')
        channels[m.group(1)][int(m.group(2))] = join(folder, f)
    if len(channels) == 0:
        raise UnlabeledDataError(
            f'No unlabeled images: {folder} holds no file ending in {ending}. Put your unlabeled images there, or '
            f'hide labels of training cases with nnUNetv2_semi_split -d ID -n N.')
    n = num_channels(dataset_json)
    cases = {}
    for case, files in channels.items():
        if sorted(files) != list(range(n)):
            expected = ', '.join(f'{case}_{c:04d}{ending}' for c in range(n))
            found = ', '.join(os.path.basename(files[c]) for c in sorted(files))
            raise UnlabeledDataError(
                f'Unlabeled case {case} in {folder} has the wrong channel files: found {found}; dataset.json has '
                f'{n} channel(s), so expected {expected}. Add the missing files or remove the extra ones.')
        cases[case] = [files[c] for c in range(n)]
    return cases


def committed_cases(folder: str, data_ending: str = '.b2nd') -> List[str]:
    """Identifiers of the cases completely written to ``folder`` by ``write_case_atomically`` (data file and
    properties; the properties file is renamed into place last, so a case interrupted halfway is not listed)."""
    if not isdir(folder):
        return []
    names = set(os.listdir(folder))
    return sorted(f[:-4] for f in names if f.endswith('.pkl') and f[:-4] + data_ending in names)


def write_case_atomically(output_folder: str, case: str, data_ending: str, write_data: Callable[[str], None],
                          properties: dict) -> None:
    """Write ``<case><data_ending>`` (by ``write_data(path)``) and ``<case>.pkl`` into ``output_folder``: each first
    into ``output_folder/.partial/``, then renamed into place, the properties last. A run killed at any moment leaves
    complete cases (``committed_cases``) and nothing that looks complete but is not; writing the case again repairs
    it."""
    partial = join(output_folder, PARTIAL)
    maybe_mkdir_p(partial)
    data_tmp, props_tmp = join(partial, case + data_ending), join(partial, case + '.pkl')
    for f in (data_tmp, props_tmp):
        if isfile(f):
            os.remove(f)
    write_data(data_tmp)
    write_pickle(properties, props_tmp)
    os.replace(data_tmp, join(output_folder, case + data_ending))
    os.replace(props_tmp, join(output_folder, case + '.pkl'))  # last: marks the case as complete


def hidden_label_cases(preprocessed_dataset_folder: str, fold) -> List[str]:
    """Training cases of this fold whose labels nnUNetv2_semi_split hid (empty if none, or for fold 'all')."""
    splits_file = join(preprocessed_dataset_folder, SPLITS_FILE)
    if fold == 'all' or not isfile(splits_file):
        return []
    splits = load_json(splits_file)
    if int(fold) >= len(splits):
        return []
    return list(splits[int(fold)].get('unlabeled', []))


def collect_unlabeled_cases(preprocessed_dataset_folder: str, data_identifier: str, fold,
                            raw_dataset_folder: Optional[str] = None, preprocess_command: str = '') -> Dict[str, str]:
    """Every unlabeled case a semi trainer of this fold may use: key -> file path without ending.

    Keys are ``<identifier>`` for images from imagesUnlabeled and ``hidden:<identifier>`` for hidden labels, so the
    two sources can never collide. Raises UnlabeledDataError when there is none: naming ``preprocess_command`` when
    ``raw_dataset_folder``'s imagesUnlabeled/ holds images that were never preprocessed, else both sources and their
    fix."""
    labeled_folder = join(preprocessed_dataset_folder, data_identifier)
    unlabeled_folder = preprocessed_unlabeled_folder(preprocessed_dataset_folder, data_identifier)
    cases = {c: join(unlabeled_folder, c) for c in committed_cases(unlabeled_folder)}
    cases.update({'hidden:' + c: join(labeled_folder, c) for c in hidden_label_cases(preprocessed_dataset_folder, fold)})
    if len(cases) > 0:
        return cases
    raw = join(raw_dataset_folder, RAW_FOLDER) if raw_dataset_folder else None
    raw_images = [f for f in os.listdir(raw) if not f.startswith('.')] if raw and isdir(raw) else []
    if raw_images:
        raise UnlabeledDataError(
            f'The {len(raw_images)} file(s) in {raw} were never preprocessed for this training ({unlabeled_folder} '
            f'holds no case). Run {preprocess_command or "nnUNetv2_semi_preprocess -d ID -c CONFIG -p PLANS"}, '
            f'then train again.')
    raise UnlabeledDataError(
        f'No unlabeled data for this training: {unlabeled_folder} holds no preprocessed case and '
        f'{join(preprocessed_dataset_folder, SPLITS_FILE)} hides no labels for fold {fold}. Either put unlabeled '
        f'images into nnUNet_raw/<dataset>/{RAW_FOLDER}/ and run nnUNetv2_semi_preprocess -d ID -c '
        f'{data_identifier.split("_", 1)[-1]} (with -p if you train with other plans), or hide labels with '
        f'nnUNetv2_semi_split -d ID -n N.')
