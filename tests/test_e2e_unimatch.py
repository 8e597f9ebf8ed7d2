"""nnUNetTrainerUniMatch end to end through nnU-Net's commands on the tiny generated dataset (small plans, CPU):
training (with its EMA teacher) and prediction in 2d; in 3d_fullres interrupted, resumed with the teacher, predicted and
exported to a stock model folder; and one step on a real batch."""
import pytest
import torch

from conftest import (assert_predicts_and_exports_to_stock, assert_restored, interrupt_then_load, predict,
                      preprocess_unlabeled, resume_to_the_end, train, trainer_from_args)

pytestmark = pytest.mark.e2e
UNIMATCH = 'nnUNetTrainerUniMatch_smoke'
TERMS = ('supervised', 'strong_1', 'strong_2', 'feature_perturbed')


def test_unimatch_2d_trains_and_predicts(tiny_dataset, tmp_path):
    ds = tiny_dataset
    log, ckpt = train(ds, '2d', 0, UNIMATCH)
    assert log.count('loss terms: supervised ') == 3 and log.count('training metrics: confident_share ') == 3
    assert all(len(ckpt['logging']['term_' + t]) == 3 for t in TERMS)
    assert set(ckpt['nnunet_semi']['modules']) == {'teacher'}  # the EMA teacher labels the weak views
    predict(ds, '2d', UNIMATCH, tmp_path)


def test_unimatch_3d_resumes_predicts_and_exports_to_stock(tiny_dataset, tmp_path):
    saved, trainer = interrupt_then_load(tiny_dataset, UNIMATCH, 0)
    assert_restored(trainer.network, trainer.optimizer, saved['network_weights'], saved['optimizer_state'])
    teacher = saved['nnunet_semi']['modules']['teacher']
    assert all(torch.equal(trainer.teacher.state_dict()[k], v) for k, v in teacher.items())
    final = resume_to_the_end(tiny_dataset, UNIMATCH, 0, saved, 'feature_perturbed')
    assert all(len(final['logging']['term_' + t]) == 3 for t in TERMS)
    assert_predicts_and_exports_to_stock(tiny_dataset, '3d_fullres', UNIMATCH, tmp_path)


def test_the_streams_and_their_weights_on_a_real_batch(tiny_dataset):
    ds = tiny_dataset
    preprocess_unlabeled(ds, '3d_fullres')
    trainer = trainer_from_args(ds, 'nnUNetTrainerUniMatch', 4, num_epochs=1)
    trainer.on_train_start()
    out = trainer.train_step(next(trainer.dataloader_train))
    assert [out['weight_' + t] for t in TERMS] == [1.0, 0.25, 0.25, 0.5]
    assert out['loss'] == pytest.approx(out['term_supervised'] + 0.25 * (out['term_strong_1'] + out['term_strong_2'])
                                        + 0.5 * out['term_feature_perturbed'], rel=1e-5)
    assert 0.0 <= out['metric_confident_share'] <= 1.0
    trainer.on_train_end()


@pytest.mark.parametrize('name, dice', [('nnUNetTrainerUniMatch', True), ('nnUNetTrainerUniMatch_CE', False),
                                        ('nnUNetTrainerFixMatch', True), ('nnUNetTrainerFixMatch_CE', False)])
def test_the_pseudo_label_loss_adds_the_soft_dice_of_the_confident_voxels_unless_ce(tiny_dataset, name, dice):
    import math
    trainer = trainer_from_args(tiny_dataset, name, 4, num_epochs=1)
    # uniform logits over background and the two labels; half the voxels label 1, none label 2, all confident:
    # CE ln 3 per voxel; soft Dice of label 1 = 2 (n/6) / (n/3 + n/2) = 0.4, of label 2 = 0, so 1 - mean = 0.8
    logits = torch.zeros(2, 3, 4, 4, 4)
    labels = (torch.arange(4)[:, None, None] < 2).long().expand(4, 4, 4).repeat(2, 1, 1, 1)
    scales = [logits] * len(trainer.deep_supervision_weights())  # nnU-Net's weights sum to 1 over the scales
    loss = trainer.pseudo_label_loss(scales, labels, torch.ones_like(labels, dtype=torch.bool))
    assert loss.item() == pytest.approx(math.log(3) + (0.8 if dice else 0.0), abs=1e-4)
