"""Real data: 40 cases of MSD Hippocampus from ../shared/data (the first by name; all 260 would only make planning
and validation slower), labels of all but 5 training cases per fold hidden with nnUNetv2_semi_split, Mean Teacher
through nnUNetv2_train and nnUNetv2_predict (3d_fullres, small plans, CPU)."""
import json
from pathlib import Path

import pytest
import torch

from conftest import SHARED_DATA, SMALL, assert_segmentations, newest_log, run
from nnunet_semi.demo import planning_env

pytestmark = pytest.mark.e2e
HIPPOCAMPUS = SHARED_DATA / 'Dataset004_Hippocampus'
MT = 'nnUNetTrainerMeanTeacher_smoke'
CASES = 40  # nnU-Net's fold 0: 32 training, 8 validation cases


@pytest.mark.skipif(not HIPPOCAMPUS.is_dir(), reason=f'{HIPPOCAMPUS} is absent (a clone without ../shared/data)')
def test_mean_teacher_on_hippocampus_with_hidden_labels(nnunet_env, tmp_path):
    from nnunet_semi.planners.small_plans import write_small_plans

    raw = tmp_path / 'raw' / 'Dataset004_Hippocampus'
    cases = sorted(f.name[:-len('.nii.gz')] for f in (HIPPOCAMPUS / 'labelsTr').glob('*.nii.gz'))[:CASES]
    for sub, suffix in (('imagesTr', '_0000.nii.gz'), ('labelsTr', '.nii.gz')):  # read-only source: link, never write
        (raw / sub).mkdir(parents=True)
        for c in cases:
            (raw / sub / f'{c}{suffix}').symlink_to(HIPPOCAMPUS / sub / f'{c}{suffix}')
    dataset = json.loads((HIPPOCAMPUS / 'dataset.json').read_text())
    (raw / 'dataset.json').write_text(json.dumps(dict(dataset, numTraining=CASES)))
    env = dict(nnunet_env, nnUNet_raw=str(tmp_path / 'raw'))

    run(['nnUNetv2_plan_and_preprocess', '-d', '4', '-c', '3d_fullres', '-np', '2'], planning_env(env))
    preprocessed = Path(env['nnUNet_preprocessed']) / 'Dataset004_Hippocampus'
    write_small_plans(4)
    run(['nnUNetv2_semi_split', '-d', '4', '-n', '5', '--seed', '0'], env)
    splits = json.loads((preprocessed / 'splits_final.json').read_text())
    fold0 = splits[0]
    assert len(fold0['train']) == 5 and len(fold0['train']) + len(fold0['unlabeled']) == 32 and len(fold0['val']) == 8

    run(['nnUNetv2_train', '4', '3d_fullres', '0', '-tr', MT, '-p', SMALL, '-device', 'cpu'], env)
    folder = Path(env['nnUNet_results']) / 'Dataset004_Hippocampus' / f'{MT}__{SMALL}__3d_fullres' / 'fold_0'
    log = newest_log(folder)
    assert 'This split has 5 training and 8 validation cases' in log
    assert 'Unlabeled cases: 27 (0 preprocessed unlabeled images, 27 with labels hidden by nnUNetv2_semi_split)' in log
    summary = json.loads((folder / 'validation' / 'summary.json').read_text())
    assert len(summary['metric_per_case']) == 8  # nnU-Net validated the untouched validation cases
    checkpoint = torch.load(folder / 'checkpoint_final.pth', map_location='cpu', weights_only=False)
    assert checkpoint['inference_allowed_mirroring_axes'] is None  # smoke: validated and predicted without mirroring

    inputs = tmp_path / 'in'
    inputs.mkdir()
    predicted = fold0['val'][:3]
    for c in predicted:
        (inputs / f'{c}_0000.nii.gz').symlink_to(HIPPOCAMPUS / 'imagesTr' / f'{c}_0000.nii.gz')
    run(['nnUNetv2_predict', '-i', inputs, '-o', tmp_path / 'out', '-d', '4', '-c', '3d_fullres', '-tr', MT, '-p',
         SMALL, '-f', '0', '-device', 'cpu', '-npp', '0', '-nps', '0'], env)
    assert_segmentations(tmp_path / 'out', HIPPOCAMPUS / 'imagesTr', predicted)
