"""Checkpoints written before the batch-as-one-object interface (nnunet_semi 0.1.0 at commit b0efe1a) still resume.

The fixtures are real ``checkpoint_latest.pth`` files of that code, gzipped: ``nnUNetv2_train 990 2d 0 -tr
<trainer>_smoke -p nnUNetSmallPlans -device cpu`` on the tiny dataset of conftest.py (the demo's synthetic data,
unlabeled images preprocessed with ``nnUNetv2_semi_preprocess``), killed once the first epoch's checkpoint was
written. PLContrast's was written at the end of its warm-up, so resuming starts its first pseudo-label round."""
import gzip
import shutil
from pathlib import Path

import pytest
import torch

from conftest import model_folder, newest_log, preprocess_unlabeled, run, train_cmd, trainer_from_args

pytestmark = pytest.mark.e2e
FIXTURES = Path(__file__).parent / 'fixtures'
FOLD = 2  # a fold no other test trains in 2d: the copied checkpoint is the only one in its folder


@pytest.mark.parametrize('trainer, term', [('nnUNetTrainerMeanTeacher_smoke', 'consistency'),
                                           ('nnUNetTrainerCAML_smoke', 'omni_correlation'),
                                           ('nnUNetTrainerPLContrast_smoke', 'contrastive')])
def test_a_checkpoint_of_the_previous_interface_resumes(tiny_dataset, trainer, term):
    ds = tiny_dataset
    preprocess_unlabeled(ds, '2d')
    folder = model_folder(ds, trainer, '2d', FOLD)
    folder.mkdir(parents=True)
    latest = folder / 'checkpoint_latest.pth'
    with gzip.open(FIXTURES / f'{trainer}_2d_epoch1_b0efe1a.pth.gz') as src, open(latest, 'wb') as dst:
        shutil.copyfileobj(src, dst)
    saved = torch.load(latest, map_location='cpu', weights_only=False)
    assert saved['current_epoch'] == 1

    # every module and optimizer of the old state loads into today's trainer
    restored = trainer_from_args(ds, trainer, FOLD, '2d')
    restored.load_checkpoint(str(latest))
    assert restored.semi_restored
    for name, module in restored.semi_modules().items():
        for k, v in saved['nnunet_semi']['modules'][name].items():
            assert torch.equal(module.state_dict()[k], v), (name, k)
    assert set(restored.semi_optimizers) == set(saved['nnunet_semi']['optimizers'])

    # and nnUNetv2_train --c goes on from epoch 1 to the end
    run(train_cmd(ds, '2d', FOLD, trainer, '--c'), ds['env'])
    log = newest_log(folder)
    assert 'Epoch 1' in log and 'Epoch 0 \n' not in log and 'has no nnunet_semi state' not in log
    final = torch.load(folder / 'checkpoint_final.pth', map_location='cpu', weights_only=False)
    assert final['current_epoch'] == 3 and len(final['logging']['term_' + term]) == 3
    if 'PLContrast' in trainer:
        assert 'Round 1: pseudo-labels of 8 unlabeled cases' in log
