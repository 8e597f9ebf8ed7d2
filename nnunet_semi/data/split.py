"""nnUNetv2_semi_split: hide the labels of all but N training cases of each fold.

Each fold of ``splits_final.json`` keeps N of its training cases (drawn with the seed), lists the others under
``unlabeled`` (a semi trainer reads their images, never their labels; stock nnUNetTrainer simply trains on the N)
and keeps its validation cases unchanged. ``n_labeled`` and ``seed`` are recorded in each fold. The file replaced
is first copied to ``splits_final.backup_<time>.json``; a split of a split starts again from the full training
lists, and ``--restore`` brings those back.
"""
import argparse
import shutil
import time
from typing import List

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json, save_json

from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
from nnunetv2.utilities.crossval_split import generate_crossval_split
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

from nnunet_semi.data.unlabeled import SPLITS_FILE, UnlabeledDataError, exit_on_data_error


def _full_splits(preprocessed_folder: str, dataset_name: str) -> List[dict]:
    """The current splits with every fold's full training list (hidden cases given back), or, if there is no
    splits_final.json yet, the 5-fold split nnU-Net itself would create (same seed, same sorted cases)."""
    splits_file = join(preprocessed_folder, SPLITS_FILE)
    if isfile(splits_file):
        return [{'train': sorted(f['train'] + f.get('unlabeled', [])), 'val': f['val']} for f in load_json(splits_file)]
    raw_folder = join(nnUNet_raw, dataset_name) if nnUNet_raw.is_set() else None
    if raw_folder is None or not isdir(raw_folder):
        raise UnlabeledDataError(f'{splits_file} does not exist and nnUNet_raw/{dataset_name} was not found to '
                                 f'create it. Run nnUNetv2_plan_and_preprocess first (or train once).')
    dataset_json = load_json(join(preprocessed_folder, 'dataset.json'))
    cases = sorted(get_filenames_of_train_images_and_targets(raw_folder, dataset_json).keys())
    return generate_crossval_split(cases, seed=12345, n_splits=5)


def _backup(splits_file: str) -> str:
    if not isfile(splits_file):
        return None
    backup = splits_file[:-len('.json')] + time.strftime('.backup_%Y%m%d_%H%M%S.json')
    i = 1
    while isfile(backup):
        backup = splits_file[:-len('.json')] + time.strftime('.backup_%Y%m%d_%H%M%S') + f'_{i}.json'
        i += 1
    shutil.copyfile(splits_file, backup)
    return backup


def hide_labels(dataset_name_or_id, n_labeled: int, seed: int = 12345) -> List[dict]:
    """Write the semi split (see the module doc) and return it."""
    dataset_name = maybe_convert_to_dataset_name(dataset_name_or_id)
    preprocessed_folder = join(nnUNet_preprocessed, dataset_name)
    splits = _full_splits(preprocessed_folder, dataset_name)
    if n_labeled < 1:
        raise UnlabeledDataError(f'-n must be at least 1 (got {n_labeled}).')
    rng = np.random.default_rng(seed)
    new = []
    for i, fold in enumerate(splits):
        if n_labeled > len(fold['train']):
            raise UnlabeledDataError(f'Fold {i} of {join(preprocessed_folder, SPLITS_FILE)} has only '
                                     f'{len(fold["train"])} training cases; cannot keep {n_labeled} labeled.')
        keep = set(rng.choice(fold['train'], n_labeled, replace=False).tolist())
        new.append({'train': sorted(keep), 'val': fold['val'],
                    'unlabeled': sorted(c for c in fold['train'] if c not in keep),
                    'n_labeled': n_labeled, 'seed': seed})
    splits_file = join(preprocessed_folder, SPLITS_FILE)
    backup = _backup(splits_file)
    save_json(new, splits_file, sort_keys=False)
    print(f'{splits_file}: {n_labeled} labeled training case(s) per fold (seed {seed}), the others unlabeled'
          + (f'; previous file kept as {backup}' if backup else ''))
    return new


def restore_labels(dataset_name_or_id) -> List[dict]:
    """Give every fold its full training list back (the previous file is backed up as well)."""
    dataset_name = maybe_convert_to_dataset_name(dataset_name_or_id)
    preprocessed_folder = join(nnUNet_preprocessed, dataset_name)
    splits = _full_splits(preprocessed_folder, dataset_name)
    splits_file = join(preprocessed_folder, SPLITS_FILE)
    backup = _backup(splits_file)
    save_json(splits, splits_file, sort_keys=False)
    print(f'{splits_file}: all training cases labeled again' + (f'; previous file kept as {backup}' if backup else ''))
    return splits


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='nnUNetv2_semi_split',
        description='Keep N labeled training cases per fold in splits_final.json; the fold\'s other training cases '
                    'become unlabeled for semi trainers. Validation cases are unchanged; the previous file is '
                    'backed up.')
    parser.add_argument('-d', required=True, help='dataset name or id')
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument('-n', type=int, help='labeled training cases to keep per fold')
    group.add_argument('--restore', action='store_true', help='make every training case labeled again')
    parser.add_argument('--seed', type=int, default=12345, help='seed for choosing the labeled cases')
    args = parser.parse_args(argv)
    with exit_on_data_error():
        if args.restore:
            restore_labels(args.d)
        else:
            hide_labels(args.d, args.n, args.seed)


if __name__ == '__main__':
    main()
