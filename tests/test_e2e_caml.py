"""nnUNetTrainerCAML end to end through nnU-Net's commands on the tiny generated dataset (small plans, CPU): a
3d_fullres run interrupted, resumed with its memory bank, predicted and exported to a stock model folder; 2d training
and prediction; and the trainer's memory update and ablations on real batches."""
import numpy as np
import pytest
import torch

from conftest import (all_logs, assert_predicts_and_exports_to_stock, assert_restored, interrupt_then_load,
                      model_folder, predict, preprocess_unlabeled, resume_to_the_end, train, trainer_from_args)

pytestmark = pytest.mark.e2e
CAML = 'nnUNetTrainerCAML_smoke'
TERMS = ('supervised_V', 'supervised_A', 'mutual', 'omni_correlation')


def test_caml_3d_resumes_with_memory_bank_and_model_a_predicts_and_exports_to_stock(tiny_dataset, tmp_path):
    ds = tiny_dataset
    saved, trainer = interrupt_then_load(ds, CAML, 0)
    semi = saved['nnunet_semi']
    memory = semi['modules']['memory']
    assert memory['counts'].sum() > 0
    assert torch.equal(trainer.memory.counts, memory['counts'])
    assert torch.equal(trainer.memory.embeddings, memory['embeddings'])
    assert_restored(trainer.model_a, trainer.semi_optimizers['model_a'][0], semi['modules']['model_a'],
                    semi['optimizers']['model_a'])
    ckpt = resume_to_the_end(ds, CAML, 0, saved, 'omni_correlation')
    # 24x32x32 patch: 3072 tokens at stage 1, 384 at stage 2 (<= 2048)
    log = all_logs(model_folder(ds, CAML, '3d_fullres', 0))
    assert 'CAML model A: interpolating decoder, CMA after encoder stage 2 (32 channels)' in log
    assert 'memory bank: [' in log and all(f'{t} ' in log for t in TERMS)
    semi = ckpt['nnunet_semi']
    assert set(semi['modules']) == {'model_a', 'heads', 'memory'} and set(semi['optimizers']) == {'model_a'}
    assert semi['modules']['memory']['counts'][0].sum() > 0  # background voxels both networks got right
    logged = ckpt['logging']
    assert all(len(logged['term_' + t]) == 3 for t in TERMS)
    assert logged['weight_mutual'][0] < logged['weight_mutual'][2] == pytest.approx(1.0)  # ramped to full strength
    assert logged['weight_omni_correlation'][2] == pytest.approx(0.05)

    assert_predicts_and_exports_to_stock(ds, '3d_fullres', CAML, tmp_path)


def test_caml_2d_trains_and_predicts(tiny_dataset, tmp_path):
    ds = tiny_dataset
    log, _ = train(ds, '2d', 0, CAML)
    assert 'CMA after encoder stage 1' in log and 'omni_correlation ' in log  # 32x32 patch: 16x16 = 256 tokens
    predict(ds, '2d', CAML, tmp_path)


def test_memory_update_keeps_correct_voxels_within_the_cap(tiny_dataset):
    ds = tiny_dataset
    preprocess_unlabeled(ds, '3d_fullres')
    trainer = trainer_from_args(ds, 'nnUNetTrainerCAML', 4, memory_cap_per_class=8 * 300)
    cases = sorted(trainer.memory.slots)
    assert len(cases) == 8 and trainer.memory.per_case == 300
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (3, 4, 8, 8))
    pred_v, pred_a = labels.clone(), labels.clone()
    pred_v[:, :2] = (labels[:, :2] + 1) % 3  # V is wrong in the first two slices
    pred_a[:, :, :4] = (labels[:, :, :4] + 2) % 3  # A is wrong in the first half of each slice
    features = torch.randn(3, trainer.model_a.encoder.output_channels[0], 4, 8, 8)
    keys = [cases[0], cases[1], cases[0]]  # case 0 drawn twice: its two crops are pooled
    trainer.update_memory(features, features, pred_v, pred_a, labels, keys)
    correct = (pred_v == labels) & (pred_a == labels)  # slices 2-3, second half: 2 * 4 * 8 = 64 voxels per sample
    for c in range(3):
        for case, samples in ((cases[0], [0, 2]), (cases[1], [1])):
            expected = int((correct[samples] & (labels[samples] == c)).sum())
            assert trainer.memory.count(c, case) == expected
    assert trainer.memory.counts[:, 2:].sum() == 0
    # a crop with more correct voxels than a slot holds keeps only per_case of them
    big = torch.zeros(1, 8, 16, 16, dtype=torch.long)
    big_features = torch.randn(1, features.shape[1], 8, 16, 16)
    trainer.update_memory(big_features, big_features, big, big, big, [cases[5]])
    assert trainer.memory.count(0, cases[5]) == 300
    assert trainer.heads['proj_V'].training  # the heads are back in training mode


def test_ablations_and_options_on_a_real_batch(tiny_dataset):
    from nnunet_semi.networks.caml import CrossSampleMutualAttention
    ds = tiny_dataset
    preprocess_unlabeled(ds, '3d_fullres')
    # both weights ramp alike: with OCC, mutual / omni-correlation is lambda_c / lambda_o = 1.0 (0.1) / 0.05
    for name, has_cma, terms, ratio in (('nnUNetTrainerCAML', True, TERMS, 20),
                                        ('nnUNetTrainerCAML_mutual010', True, TERMS, 2),
                                        ('nnUNetTrainerCAML_noOCC', True, TERMS[:3], None),
                                        ('nnUNetTrainerCAML_MLonly', False, TERMS[:3], None)):
        trainer = trainer_from_args(ds, name, 4, num_epochs=1)
        assert any(isinstance(m, CrossSampleMutualAttention) for m in trainer.model_a.modules()) == has_cma, name
        trainer.on_train_start()
        out = trainer.train_step(next(trainer.dataloader_train))
        assert tuple(k[len('term_'):] for k in out if k.startswith('term_')) == terms, name
        assert all(np.isfinite(out['term_' + t]) for t in terms)
        if ratio:
            assert out['weight_mutual'] / out['weight_omni_correlation'] == pytest.approx(ratio), name
        trainer.on_train_end()
    dice_only = trainer_from_args(ds, 'nnUNetTrainerCAML', 4, dice_only=True)
    assert dice_only.loss.loss.weight_ce == 0 and trainer.loss.loss.weight_ce == 1
