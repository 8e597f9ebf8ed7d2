"""nnUNetv2_semi_split: N labeled cases per fold, validation unchanged, seeded, recorded, backed up, restorable."""
import json
from pathlib import Path

import pytest

from conftest import run
from nnunet_semi.data.split import hide_labels, restore_labels
from nnunet_semi.data.unlabeled import UnlabeledDataError, hidden_label_cases

ORIGINAL = [{'train': [f'c{i:02d}' for i in range(20) if i % 4 != k], 'val': [f'c{i:02d}' for i in range(20) if i % 4 == k]}
            for k in range(4)]


@pytest.fixture
def split_dataset(nnunet_env):
    folder = Path(nnunet_env['nnUNet_preprocessed']) / 'Dataset991_Split'
    folder.mkdir(exist_ok=True)
    for f in folder.iterdir():
        f.unlink()
    (folder / 'dataset.json').write_text(json.dumps({'channel_names': {'0': 'x'}, 'labels': {'background': 0, 'a': 1},
                                                     'numTraining': 20, 'file_ending': '.nii.gz'}))
    (folder / 'splits_final.json').write_text(json.dumps(ORIGINAL))
    return folder


def test_split_keeps_n_per_fold_and_validation(split_dataset):
    splits = hide_labels(991, 3, seed=7)
    assert len(splits) == 4
    for fold, orig in zip(splits, ORIGINAL):
        assert len(fold['train']) == 3
        assert fold['val'] == orig['val']
        assert sorted(fold['train'] + fold['unlabeled']) == orig['train']
        assert not set(fold['train']) & set(fold['unlabeled'])
        assert fold['n_labeled'] == 3 and fold['seed'] == 7
    on_disk = json.loads((split_dataset / 'splits_final.json').read_text())
    assert on_disk == splits
    assert hidden_label_cases(str(split_dataset), 2) == splits[2]['unlabeled']
    backups = list(split_dataset.glob('splits_final.backup_*.json'))
    assert len(backups) == 1 and json.loads(backups[0].read_text()) == ORIGINAL


def test_split_is_seeded_and_a_split_of_a_split_starts_from_the_full_lists(split_dataset):
    a = hide_labels(991, 5, seed=1)
    b = hide_labels(991, 5, seed=1)
    assert a == b  # same seed, same choice, although the second started from the first's file
    c = hide_labels(991, 2, seed=2)
    for fold, orig in zip(c, ORIGINAL):
        assert sorted(fold['train'] + fold['unlabeled']) == orig['train']
    assert len(list(split_dataset.glob('splits_final.backup_*.json'))) == 3  # every replaced file was kept
    restored = restore_labels(991)
    assert [f['train'] for f in restored] == [o['train'] for o in ORIGINAL]
    assert all('unlabeled' not in f for f in restored)


def test_split_errors(split_dataset, nnunet_env):
    with pytest.raises(UnlabeledDataError, match='has only 15 training cases; cannot keep 16'):
        hide_labels(991, 16)
    out = run(['nnUNetv2_semi_split', '-d', '991', '-n', '0'], nnunet_env, ok=False)
    assert '-n must be at least 1' in out
    assert json.loads((split_dataset / 'splits_final.json').read_text()) == ORIGINAL  # untouched by the errors
