"""Small plans for CPU runs: nnU-Net's plans with fewer features per stage and a small batch.

Everything else (spacing, patch size, network depth, normalisation, data_identifier) stays as nnU-Net planned, so
the preprocessed data is shared with the source plans. Figures from small plans are for comparing methods or
checking a set-up, not for absolute accuracy.
"""
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json, save_json

from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

SMALL_PLANS = 'nnUNetSmallPlans'


def write_small_plans(dataset_name_or_id, source: str = 'nnUNetPlans', target: str = SMALL_PLANS,
                      base_features: int = 8, max_features: int = 64, batch_size: int = 2) -> str:
    """Write ``target.json`` beside ``source.json`` and return its path."""
    folder = join(nnUNet_preprocessed, maybe_convert_to_dataset_name(dataset_name_or_id))
    source_file = join(folder, source + '.json')
    if not isfile(source_file):
        raise FileNotFoundError(f'{source_file} not found: run nnUNetv2_plan_and_preprocess -d {dataset_name_or_id} '
                                f'first.')
    plans = load_json(source_file)
    plans['plans_name'] = target
    for configuration in plans['configurations'].values():
        kwargs = configuration.get('architecture', {}).get('arch_kwargs', {})
        if 'features_per_stage' in kwargs:
            kwargs['features_per_stage'] = [min(base_features * 2 ** i, max_features)
                                            for i in range(len(kwargs['features_per_stage']))]
        if 'batch_size' in configuration:
            configuration['batch_size'] = batch_size
    target_file = join(folder, target + '.json')
    save_json(plans, target_file, sort_keys=False)
    return target_file
