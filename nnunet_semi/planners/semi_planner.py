"""nnUNetv2_semi_plan_and_preprocess: nnU-Net's planning, sized for a semi-supervised trainer's real footprint.

nnU-Net chooses patch and batch size so that one U-Net's estimated memory (feature map sizes, calibrated to a GPU
memory target, 8 GB by default) fits. A semi trainer runs more per step (a second batch, a second network, extra
decoders, a second pass). Here nnU-Net's own ExperimentPlanner runs with that estimate multiplied by the trainer's
measured memory ratio to stock nnUNetTrainer on the same plans (``footprint.py``): its while-loop shrinks the patch
and its batch-size rule shrinks the batch exactly as they would for a bigger network. The ratio is measured on the
stock plans, planning is redone with it, and measured again on the result until it settles (it changes a little
with the patch).

The plans are written under their own name with the labeled data's ``data_identifier`` wherever the spacing is
unchanged (always for 2d and 3d_fullres), so nothing is preprocessed twice; then the unlabeled images are
preprocessed for them. Train with ``nnUNetv2_train ID CONFIG FOLD -tr TRAINER -p <plans>``.
"""
import argparse
import contextlib
import io
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json, save_json

import nnunetv2
from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
from nnunetv2.utilities.json_export import recursive_fix_for_json_export

from nnunet_semi.data.unlabeled import UnlabeledDataError, exit_on_data_error
from nnunet_semi.environment import temporary_env
from nnunet_semi.planners import footprint

DEFAULT_CONFIGURATIONS = ('2d', '3d_fullres')
SETTLED = 0.05  # the measured ratio may move this much between rounds


class FootprintScaledPlanner:
    """Mixed into an nnU-Net planner class: the memory estimate of every candidate patch is multiplied by
    ``memory_factor[number of spatial dims]``, and configurations whose spacing matches ``source_plans`` keep its
    data_identifier."""
    memory_factor: Dict[int, float] = {}
    source_plans: Optional[dict] = None

    def static_estimate_VRAM_usage(self, patch_size, *args, **kwargs):
        # nnU-Net sets torch threads to nnUNet_n_proc_DA here, which crashes with 0
        with temporary_env(nnUNet_n_proc_DA=max(1, get_allowed_n_proc_DA())):
            estimate = super().static_estimate_VRAM_usage(patch_size, *args, **kwargs)
        return estimate * self.memory_factor.get(len(patch_size), 1.0)

    def save_plans(self, plans):
        recursive_fix_for_json_export(plans)
        for name, configuration in plans['configurations'].items():
            source = (self.source_plans or {}).get('configurations', {}).get(name, {})
            if 'spacing' in configuration and 'spacing' in source and \
                    np.allclose(configuration['spacing'], source['spacing']):
                configuration['data_identifier'] = source['data_identifier']
        super().save_plans(plans)


def planner_class(base_name: str = 'ExperimentPlanner') -> type:
    """nnU-Net's planner class of that name (as nnUNetv2_plan_experiment -pl finds it), footprint-scaled."""
    base = recursive_find_python_class(join(nnunetv2.__path__[0], 'experiment_planning'), base_name,
                                       current_module='nnunetv2.experiment_planning')
    if base is None:
        raise UnlabeledDataError(f'Planner class {base_name} not found in nnunetv2.experiment_planning.')
    return type(f'FootprintScaled{base.__name__}', (FootprintScaledPlanner, base), {})


def default_plans_name(source_plans: str, trainer: str) -> str:
    return f'{source_plans}_{trainer.removeprefix("nnUNetTrainer") or "stock"}'


def memory_warning(trainer, available_bytes: int) -> Tuple[float, Optional[str]]:
    """(bytes a training step of ``trainer`` needs at its plans, a warning that names the plans to make instead, or
    None when that fits in ``available_bytes``). A throw-away copy of the trainer is measured on its device at batch
    2 (footprint.estimate_training_memory)."""
    try:
        need = footprint.estimate_training_memory(trainer)
    except torch.cuda.OutOfMemoryError:
        need = float('inf')
    if need <= available_bytes:
        return need, None
    name, plans = trainer.__class__.__name__, trainer.plans_manager.plans_name
    cm = trainer.configuration_manager
    amount = 'more than the GPU holds even at batch 2' if need == float('inf') else \
        f'about {need / 2 ** 30:.1f} GiB per step'
    return need, (
        f'WARNING: {name} needs {amount} with the plans {plans} ({trainer.configuration_name}: patch '
        f'{list(cm.patch_size)}, batch {cm.batch_size}), more than the {available_bytes / 2 ** 30:.1f} GiB available. '
        f'Plans sized for this trainer: nnUNetv2_semi_plan_and_preprocess -d {trainer.plans_manager.dataset_name} '
        f'-tr {name} -c {trainer.configuration_name} -p {plans} -gpu_memory_target '
        f'{max(1, int(available_bytes / 1e9 * 0.9))}, then train with -p {default_plans_name(plans, name)}.')


def _shape(plans: dict, configuration: str) -> tuple:
    c = plans['configurations'][configuration]
    return tuple(c['patch_size']), c['batch_size'], c['architecture']['arch_kwargs']['n_stages']


def _keep_measured(plans: dict, memory_factor: dict) -> None:
    """Drop the configurations planned without a measured ratio (another dimensionality): not sized for the trainer."""
    configurations = plans['configurations']
    drop = {c for c, v in configurations.items() if 'patch_size' in v and len(v['patch_size']) not in memory_factor}
    drop |= {c for c, v in configurations.items() if v.get('inherits_from') in drop or v.get('previous_stage') in drop}
    for c in drop:
        del configurations[c]
    for v in configurations.values():
        if v.get('next_stage') in drop:
            del v['next_stage']


def semi_plan(dataset_name_or_id, trainer: str, gpu_memory_target_in_gb: float = 8,
              configurations=DEFAULT_CONFIGURATIONS, source_plans: str = 'nnUNetPlans',
              planner: str = 'ExperimentPlanner', plans_name: Optional[str] = None,
              device: torch.device = torch.device('cpu'), max_rounds: int = 3, log=print) -> dict:
    """Write the semi plans and return them (the returned dict carries ``nnunet_semi`` with what was measured)."""
    dataset_name = maybe_convert_to_dataset_name(dataset_name_or_id)
    folder = join(nnUNet_preprocessed, dataset_name)
    source_file = join(folder, source_plans + '.json')
    if not isfile(source_file):
        raise UnlabeledDataError(f'{source_file} not found: plan and preprocess the labeled data with stock nnU-Net '
                                 f'first: nnUNetv2_plan_and_preprocess -d {dataset_name_or_id} -c '
                                 f'{" ".join(configurations)}')
    source = load_json(source_file)
    dataset_json = load_json(join(folder, 'dataset.json'))
    for c in configurations:
        if c not in source['configurations']:
            raise UnlabeledDataError(f'Configuration {c} is not in {source_file}.')
        if 'patch_size' not in source['configurations'][c] or source['configurations'][c].get('previous_stage'):
            raise UnlabeledDataError(f'{c} is a cascade stage or inherits its settings; semi trainers train 2d, '
                                     f'3d_fullres or 3d_lowres.')
        if not isdir(join(folder, source['configurations'][c].get('data_identifier', ''))):
            raise UnlabeledDataError(f'The labeled data of {c} is not preprocessed ({source_file}): run '
                                     f'nnUNetv2_plan_and_preprocess -d {dataset_name_or_id} -c {c} first.')
    dims = {c: len(source['configurations'][c]['patch_size']) for c in configurations}
    if len(set(dims.values())) != len(dims):
        raise UnlabeledDataError(f'Give at most one configuration per dimensionality (got {configurations}): the '
                                 f'measured ratio is per 2d / 3d network.')
    plans_name = plans_name or default_plans_name(source_plans, trainer)

    def ratios(plans):
        out = {}
        for c in configurations:
            semi, stock = footprint.relative(trainer, plans, c, dataset_json, device)
            out[c] = {'memory': semi.memory_bytes / stock.memory_bytes, 'flops': semi.flops / stock.flops}
            log(f'  {c}: patch {semi.patch_size}, batch {semi.batch_size}: {trainer} needs '
                f'{out[c]["memory"]:.2f}x the memory of nnUNetTrainer ({semi.memory_bytes / 2 ** 20:.0f} vs '
                f'{stock.memory_bytes / 2 ** 20:.0f} MiB{"" if semi.cuda_peak_bytes else ", estimated on CPU"}) and '
                f'{out[c]["flops"]:.2f}x its FLOPs per step')
        return out

    log(f'Measuring {trainer} against nnUNetTrainer on {source_plans} ({device}) ...')
    measured = ratios(source)
    history = []
    cls = planner_class(planner)
    for round_ in range(max_rounds):
        cls.memory_factor = {dims[c]: measured[c]['memory'] for c in configurations}
        cls.source_plans = source
        log(f'Planning {plans_name} with nnU-Net\'s {planner}, memory estimate x '
            + ', '.join(f'{m["memory"]:.2f} ({c})' for c, m in measured.items())
            + f', target {gpu_memory_target_in_gb:g} GB ...')
        p = cls(dataset_name, gpu_memory_target_in_gb=gpu_memory_target_in_gb, plans_name=plans_name,
                preprocessor_name=source['configurations'][configurations[0]].get('preprocessor_name',
                                                                                  'DefaultPreprocessor'))
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net prints every configuration; the summary follows
            plans = p.plan_experiment()
        _keep_measured(plans, cls.memory_factor)
        history.append({c: dict(measured[c], patch_size=list(_shape(plans, c)[0]), batch_size=_shape(plans, c)[1])
                        for c in configurations})
        if all(_shape(plans, c) == _shape(source, c) for c in configurations) and round_ == 0:
            break  # nothing changed: the ratio measured on the source plans is the ratio of these
        log(f'Measuring {trainer} on the new plans ...')
        new = ratios(plans)
        settled = all(abs(new[c]['memory'] / measured[c]['memory'] - 1) < SETTLED for c in configurations)
        measured = new
        if settled:
            break
    plans['nnunet_semi'] = {'trainer': trainer, 'source_plans': source_plans, 'planner': planner,
                            'gpu_memory_target_in_gb': gpu_memory_target_in_gb, 'device': str(device),
                            'ratio_to_stock': measured, 'rounds': history}
    save_json(plans, join(folder, plans_name + '.json'), sort_keys=False)
    for c in configurations:
        (patch, batch, _), (spatch, sbatch, _) = _shape(plans, c), _shape(source, c)
        log(f'{c}: patch {list(spatch)} batch {sbatch} ({source_plans}) -> patch {list(patch)} batch {batch} '
            f'({plans_name})')
    return plans


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='nnUNetv2_semi_plan_and_preprocess',
        description='Plans sized for a semi-supervised trainer: nnU-Net\'s planner with its memory estimate scaled '
                    'by the trainer\'s measured footprint (relative to nnUNetTrainer), then the unlabeled images '
                    'preprocessed for them. Needs the labeled data planned and preprocessed by stock nnU-Net first '
                    '(nnUNetv2_plan_and_preprocess); reuses that data. Train with -p <the plans written>.')
    parser.add_argument('-d', nargs='+', required=True, help='dataset name(s) or id(s)')
    parser.add_argument('-tr', required=True, help='trainer to plan for, e.g. nnUNetTrainerCAML')
    parser.add_argument('-gpu_memory_target', type=float, default=8,
                        help='GPU memory target in GB, as for nnU-Net\'s planners (default 8)')
    parser.add_argument('-c', nargs='+', default=list(DEFAULT_CONFIGURATIONS),
                        help='configurations (default: 2d 3d_fullres); the labeled data must be preprocessed')
    parser.add_argument('-p', default='nnUNetPlans', help='source plans made by stock nnU-Net (default nnUNetPlans)')
    parser.add_argument('-pl', default='ExperimentPlanner',
                        help='nnU-Net planner class the source plans were made with (default ExperimentPlanner)')
    parser.add_argument('-overwrite_plans_name', default=None,
                        help='name of the plans written (default: <source plans>_<trainer without nnUNetTrainer>)')
    parser.add_argument('-device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='where the footprint is measured (default: cuda if available); on CPU memory is '
                             'estimated from activations, weights and optimizer state')
    parser.add_argument('-np', type=int, default=None, help='processes for preprocessing the unlabeled images')
    parser.add_argument('--no_unlabeled', action='store_true', help='plan only; do not preprocess unlabeled images')
    args = parser.parse_args(argv)

    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess_dataset
    from nnunet_semi.data.preprocess import default_num_processes, preprocess_unlabeled
    from nnunet_semi.data.unlabeled import RAW_FOLDER
    with exit_on_data_error():
        for d in args.d:
            dataset_name = maybe_convert_to_dataset_name(d)
            plans = semi_plan(d, args.tr, args.gpu_memory_target, args.c, args.p, args.pl, args.overwrite_plans_name,
                              torch.device(args.device))
            name = plans['plans_name']
            source = load_json(join(nnUNet_preprocessed, dataset_name, args.p + '.json'))
            new_data = [c for c in args.c if plans['configurations'][c]['data_identifier'] !=
                        source['configurations'][c]['data_identifier']]
            n = args.np or default_num_processes
            if new_data:  # a spacing the source plans lack (not for 2d, 3d_fullres): nnU-Net preprocesses it
                preprocess_dataset(int(dataset_name[7:10]), name, new_data, [n] * len(new_data))
            if args.no_unlabeled:
                pass
            elif isdir(join(nnUNet_raw, dataset_name, RAW_FOLDER)):
                # same data_identifier, same <data_identifier>_unlabeled folder: cases done for the source plans
                # are skipped
                preprocess_unlabeled(d, args.c, name, n)
            else:
                print(f'No {RAW_FOLDER}/ in {join(nnUNet_raw, dataset_name)}: only hidden labels '
                      f'(nnUNetv2_semi_split) will serve as unlabeled data.')
            print(f'\nPlans written: {name}. Train with: nnUNetv2_train {d} {args.c[0]} FOLD -tr {args.tr} -p {name}')

if __name__ == '__main__':
    main()
