"""nnUNetv2_semi_preprocess: nnU-Net's own preprocessor on ``imagesUnlabeled/``, with the labeled dataset's plans.

Same spacing, cropping, normalisation statistics and storage format (blosc2) as the labeled cases; written beside,
never into, the labeled folder: ``nnUNet_preprocessed/DatasetXXX/<data_identifier>_unlabeled/``. Cases already
done are skipped; each case is written atomically (image first, properties last, both renamed into place from
``.partial/``), so an interrupted run leaves no half case and a rerun completes it. Nothing is ever deleted.
"""
import argparse
import multiprocessing
import os
from typing import Dict, List

import blosc2
import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json, maybe_mkdir_p
from tqdm import tqdm

from nnunetv2.configuration import default_num_processes
from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

from nnunet_semi.data.image_check import check_image_file
from nnunet_semi.data.unlabeled import UnlabeledDataError, committed_cases, exit_on_data_error, \
    find_raw_unlabeled_cases, preprocessed_unlabeled_folder, write_case_atomically

DEFAULT_CONFIGURATIONS = ('2d', '3d_fullres', '3d_lowres')


def save_case_atomically(data: np.ndarray, properties: dict, output_folder: str, case: str, patch_size) -> None:
    """Write ``case.b2nd`` (the image, blosc2 chunked for the patch size as nnU-Net does) and ``case.pkl``."""
    data = np.ascontiguousarray(data, dtype=np.float32)
    blocks, chunks = comp_blosc2_params(data.shape, tuple(patch_size), data.itemsize)
    write_case_atomically(output_folder, case, '.b2nd', lambda path: blosc2.asarray(
        data, urlpath=path, chunks=chunks, blocks=blocks, cparams={'codec': blosc2.Codec.LZ4HC, 'clevel': 5,
                                                                   'nthreads': 1}), properties)


_worker = {}


def _init_worker(plans: dict, configuration: str, dataset_json: dict, output_folder: str):
    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(configuration)
    _worker.update(plans_manager=plans_manager, configuration_manager=configuration_manager,
                   preprocessor=configuration_manager.preprocessor_class(verbose=False),
                   dataset_json=dataset_json, output_folder=output_folder)


def _preprocess_case(item):
    """Returns (case, None) on success, (case, error message) when the case could not be read or processed."""
    case, files = item
    w = _worker
    for f in files:  # a truncated .nii.gz reads as zeros without an error
        problem = check_image_file(f)
        if problem is not None:
            return case, problem
    try:
        data, _, properties = w['preprocessor'].run_case(files, None, w['plans_manager'], w['configuration_manager'],
                                                          w['dataset_json'])
    except Exception as e:  # unreadable or inconsistent image: report it, keep going with the other cases
        return case, f'could not preprocess {", ".join(files)}: {type(e).__name__}: {e}'
    save_case_atomically(data, properties, w['output_folder'], case, w['configuration_manager'].patch_size)
    return case, None


def preprocess_unlabeled(dataset_name_or_id, configurations=None, plans_identifier: str = 'nnUNetPlans',
                         num_processes: int = default_num_processes, progress: bool = True) -> Dict[str, List[str]]:
    """Preprocess imagesUnlabeled/ for each configuration. Returns {configuration: cases preprocessed now}.

    Everything is checked before anything is written (plans, configurations, file names, channels, identifiers
    that clash with labeled cases). Unreadable images are reported together at the end, after every other case
    was written; the error names each file."""
    dataset_name = maybe_convert_to_dataset_name(dataset_name_or_id)
    preprocessed_folder = join(nnUNet_preprocessed, dataset_name)
    plans_file = join(preprocessed_folder, plans_identifier + '.json')
    if not isfile(plans_file):
        raise UnlabeledDataError(
            f'Plans file {plans_file} not found. The unlabeled images are preprocessed with the labeled dataset\'s '
            f'plans: run stock nnU-Net first, nnUNetv2_plan_and_preprocess -d {dataset_name_or_id}'
            + ('' if plans_identifier == 'nnUNetPlans' else f' (and create the plans {plans_identifier})') + '.')
    plans = load_json(plans_file)
    dataset_json = load_json(join(preprocessed_folder, 'dataset.json'))
    plans_manager = PlansManager(plans)

    available = plans_manager.available_configurations
    if configurations is None:
        configurations = [c for c in DEFAULT_CONFIGURATIONS if c in available and
                          isdir(join(preprocessed_folder, plans_manager.get_configuration(c).data_identifier))]
        if len(configurations) == 0:
            raise UnlabeledDataError(
                f'No configuration of {plans_file} has preprocessed labeled data in {preprocessed_folder}. Run '
                f'nnUNetv2_plan_and_preprocess -d {dataset_name_or_id} first (or name configurations with -c).')
    for c in configurations:
        if c not in available:
            raise UnlabeledDataError(f'Configuration {c} is not in {plans_file}; it has: {", ".join(available)}.')
        if plans_manager.get_configuration(c).previous_stage_name is not None:
            raise UnlabeledDataError(f'{c} is a cascade stage; semi-supervised training supports 2d and 3d '
                                     f'configurations without a previous stage (use 3d_fullres or 3d_lowres).')

    raw_folder = join(nnUNet_raw, dataset_name)
    cases = find_raw_unlabeled_cases(raw_folder, dataset_json)
    labeled = set(get_filenames_of_train_images_and_targets(raw_folder, dataset_json).keys())
    clashes = sorted(labeled & set(cases))
    if clashes:
        raise UnlabeledDataError(
            f'Unlabeled case identifier(s) {", ".join(clashes[:10])}{" ..." if len(clashes) > 10 else ""} in '
            f'{join(raw_folder, "imagesUnlabeled")} clash with labeled cases of imagesTr. Rename the unlabeled '
            f'files (e.g. prefix them with unl_) so every case identifier is unique.')

    done_now, failures = {}, []
    for c in configurations:
        configuration_manager = plans_manager.get_configuration(c)
        output_folder = preprocessed_unlabeled_folder(preprocessed_folder, configuration_manager.data_identifier)
        maybe_mkdir_p(output_folder)
        done = set(committed_cases(output_folder))
        todo = [(case, files) for case, files in sorted(cases.items()) if case not in done]
        print(f'{c}: {len(cases)} unlabeled cases, {len(done & set(cases))} already preprocessed, {len(todo)} to do '
              f'-> {output_folder}')
        done_now[c] = []
        if not todo:
            continue
        init_args = (plans, c, dataset_json, output_folder)
        n_proc = max(1, min(num_processes, len(todo), os.cpu_count() or 1))
        with tqdm(total=len(todo), desc=f'Preprocessing unlabeled ({c})', disable=not progress) as bar:
            if n_proc == 1:
                _init_worker(*init_args)
                results = map(_preprocess_case, todo)
                pool = None
            else:
                pool = multiprocessing.get_context('spawn').Pool(n_proc, _init_worker, init_args)
                results = pool.imap_unordered(_preprocess_case, todo)
            try:
                for case, error in results:
                    if error is None:
                        done_now[c].append(case)
                    else:
                        failures.append(f'{c}: {error}')
                    bar.update()
            finally:
                if pool is not None:
                    pool.terminate()
    if failures:
        raise UnlabeledDataError(
            f'{len(failures)} unlabeled case(s) failed (the others were preprocessed and are kept):\n  '
            + '\n  '.join(failures) + '\nFix or remove these files and run nnUNetv2_semi_preprocess again; cases '
            'already done are skipped.')
    return done_now


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='nnUNetv2_semi_preprocess',
        description='Preprocess nnUNet_raw/DatasetXXX/imagesUnlabeled/ with the plans of the labeled dataset (run '
                    'nnUNetv2_plan_and_preprocess first). Output: nnUNet_preprocessed/DatasetXXX/'
                    '<data_identifier>_unlabeled/. Cases already done are skipped.')
    parser.add_argument('-d', required=True, help='dataset name or id')
    parser.add_argument('-c', nargs='+', default=None,
                        help='configurations (default: every one of 2d, 3d_fullres, 3d_lowres whose labeled data '
                             'is preprocessed)')
    parser.add_argument('-p', default='nnUNetPlans', help='plans identifier (default: nnUNetPlans)')
    parser.add_argument('-np', type=int, default=default_num_processes,
                        help=f'number of worker processes (default: {default_num_processes})')
    parser.add_argument('--no_pbar', action='store_true', help='no progress bar')
    args = parser.parse_args(argv)
    with exit_on_data_error():
        preprocess_unlabeled(args.d, args.c, args.p, args.np, progress=not args.no_pbar)


if __name__ == '__main__':
    main()
