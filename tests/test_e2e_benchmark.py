"""nnUNetv2_semi_benchmark end to end on the tiny generated dataset (2d, small plans, smoke schedule, CPU): one N,
one seed, stock labeled-only, Mean Teacher and fully supervised trained through nnUNetv2_train with small plans the
command writes; the report holds exactly the runs made, the dataset's own split is untouched, and a second call
trains nothing."""
import hashlib
import json

import pytest
from PIL import Image

from conftest import run

PLANS = 'nnUNetPlans_small8-64b2'  # what --small_plans 8 64 2 names the small plans it writes from nnUNetPlans

pytestmark = pytest.mark.e2e


def test_benchmark_trains_reports_and_resumes(tiny_dataset, tmp_path):
    ds = tiny_dataset
    splits = ds['preprocessed'] / 'splits_final.json'
    before = hashlib.sha256(splits.read_bytes()).hexdigest() if splits.is_file() else None
    out = tmp_path / 'bench'
    cmd = ['nnUNetv2_semi_benchmark', '-d', ds['id'], '-c', '2d', '-n', '2', '--seeds', '3', '-tr',
           'nnUNetTrainerMeanTeacher', '--epochs', 'smoke', '--small_plans', '8', '64', '2', '-device', 'cpu', '-o', out]
    first = run(cmd, ds['env'])
    assert first.count(': training') == 3 and 'validation Dice' in first
    small = json.loads((ds['preprocessed'] / f'{PLANS}.json').read_text())['configurations']['2d']
    assert small['batch_size'] == 2 and small['architecture']['arch_kwargs']['features_per_stage'][:4] == [8, 16, 32, 64]

    # each run is a real nnU-Net training on its own split; the dataset's splits_final.json is not touched
    folds = {name: out / split / 'nnUNet_results' / ds['name'] / f'{trainer}_smoke__{PLANS}__2d' / 'fold_0'
             for name, split, trainer in (('full', 'full', 'nnUNetTrainer'), ('stock', 'n2_seed3', 'nnUNetTrainer'),
                                          ('mt', 'n2_seed3', 'nnUNetTrainerMeanTeacher'))}
    dice = {k: json.loads((f / 'validation' / 'summary.json').read_text())['foreground_mean']['Dice']
            for k, f in folds.items()}
    split = json.loads((out / 'n2_seed3' / 'nnUNet_preprocessed' / ds['name'] / 'splits_final.json').read_text())
    assert len(split[0]['train']) == 2 and split[0]['n_labeled'] == 2 and split[0]['seed'] == 3
    full_split = json.loads((out / 'full' / 'nnUNet_preprocessed' / ds['name'] / 'splits_final.json').read_text())
    n_train = len(full_split[0]['train'])
    assert n_train > 2 and 'unlabeled' not in full_split[0]
    mt_log = next(folds['mt'].glob('training_log_*.txt')).read_text()
    hidden = n_train - 2
    assert 'This split has 2 training and' in mt_log
    assert f'Unlabeled cases: {8 + hidden} (8 preprocessed unlabeled images, {hidden} with labels hidden' in mt_log
    assert (hashlib.sha256(splits.read_bytes()).hexdigest() if splits.is_file() else None) == before

    # the report holds these runs: their validation Dice, the gap, the budget check, per-class rows
    report = (out / 'benchmark.md').read_text()
    main_table = report.split('## Dice per class')[0]
    rows = {line.split(' | ')[0]: line for line in main_table.splitlines() if line.startswith('| ')}
    assert rows['| labeled-only (nnUNetTrainer)'].startswith(f'| labeled-only (nnUNetTrainer) | {dice["stock"]:.3f} |')
    gap = 'n/a (no gap)' if dice['full'] <= dice['stock'] else \
        f'{(dice["mt"] - dice["stock"]) / (dice["full"] - dice["stock"]):.0%}'
    assert rows['| nnUNetTrainerMeanTeacher'] == f'| nnUNetTrainerMeanTeacher | {dice["mt"]:.3f} | {gap} | 1 |'
    assert rows[f'| fully supervised ({n_train} labeled)'].startswith(
        f'| fully supervised ({n_train} labeled) | {dice["full"]:.3f} |')
    assert '| N=2, seed 3 |' in report and 'ellipsoid' in report and 'cube' in report
    results = json.loads((out / 'results.json').read_text())
    assert sorted((r['method'], r['n'], r['seed']) for r in results['runs'] if r['n']) == \
        [('nnUNetTrainer', 2, 3), ('nnUNetTrainerMeanTeacher', 2, 3)]
    assert all(len(r['pseudo_dice']) == 3 and r['training_seconds'] > 0 for r in results['runs'])
    for png in ('benchmark.png', 'curves.png'):
        assert Image.open(out / png).size[0] >= 600

    # resumed: finished runs are read, not redone
    stamps = {k: (f / 'checkpoint_final.pth').stat().st_mtime_ns for k, f in folds.items()}
    second = run(cmd, ds['env'])
    assert second.count('finished earlier') == 3 and ': training' not in second
    assert {k: (f / 'checkpoint_final.pth').stat().st_mtime_ns for k, f in folds.items()} == stamps
