"""nnUNetTrainerMASSL and nnUNetTrainerMASSLJoint end to end through nnU-Net's commands on the tiny generated dataset
(small plans, CPU): an alternating 3d_fullres run interrupted, resumed with both optimizers, predicted and exported to
a stock model folder; joint training and prediction in 2d; and the alternating steps on a real batch."""
import numpy as np
import pytest
import torch

from conftest import (all_logs, assert_predicts_and_exports_to_stock, assert_restored, interrupt_then_load,
                      model_folder, predict, preprocess_unlabeled, resume_to_the_end, train, trainer_from_args)
from nnunet_semi.networks.parts import decoder_parameters, frozen

pytestmark = pytest.mark.e2e
MASSL = 'nnUNetTrainerMASSL_smoke'


def test_massl_3d_resumes_with_both_optimizers_predicts_and_exports_to_stock(tiny_dataset, tmp_path):
    ds = tiny_dataset
    saved, trainer = interrupt_then_load(ds, MASSL, 0)
    semi = saved['nnunet_semi']
    assert_restored(trainer.reconstruction_decoder, trainer.semi_optimizers['reconstruction'][0],
                    semi['modules']['reconstruction_decoder'], semi['optimizers']['reconstruction'])
    assert_restored(trainer.network, trainer.optimizer, saved['network_weights'], saved['optimizer_state'])
    ckpt = resume_to_the_end(ds, MASSL, 0, saved, 'reconstruction')
    # background + 2 classes, 1 input channel
    log = all_logs(model_folder(ds, MASSL, '3d_fullres', 0))
    assert 'MASSL: alternating training, reconstruction decoder with 3 x 1 outputs, attention' in log
    assert '(weight 1), reconstruction ' in log
    semi = ckpt['nnunet_semi']
    assert set(semi['modules']) == {'reconstruction_decoder'} and set(semi['optimizers']) == {'reconstruction'}
    assert not any(k.startswith('reconstruction') for k in ckpt['network_weights'])  # the deployed net is plain
    assert all(np.isfinite(ckpt['logging']['term_reconstruction']))

    assert_predicts_and_exports_to_stock(ds, '3d_fullres', MASSL, tmp_path)


def test_massl_joint_2d_trains_and_predicts(tiny_dataset, tmp_path):
    trainer = 'nnUNetTrainerMASSLJoint_smoke'
    log, _ = train(tiny_dataset, '2d', 0, trainer)
    assert 'MASSL: joint training, reconstruction decoder with 3 x 1 outputs' in log
    assert log.count('loss terms: segmentation ') == 3 and log.count('(weight 0.9), reconstruction ') == 3
    predict(tiny_dataset, '2d', trainer, tmp_path)


def _snapshot(trainer):
    network = trainer.network
    return {part: [p.detach().clone() for p in parameters] for part, parameters in
            (('encoder', network.encoder.parameters()), ('segmentation', decoder_parameters(network.decoder)),
             ('reconstruction', trainer.reconstruction_decoder.parameters()))}


def _changed(before, after):
    return {part for part in before if any(not torch.equal(a, b) for a, b in zip(before[part], after[part]))}


def test_alternating_steps_update_what_the_paper_says(tiny_dataset):
    """Labeled step: encoder + segmentation decoder; unlabeled step: encoder + reconstruction decoder, the segmentation
    decoder getting no gradient at all (frozen), yet passing the reconstruction's gradient on to the encoder."""
    ds = tiny_dataset
    preprocess_unlabeled(ds, '3d_fullres')
    trainer = trainer_from_args(ds, 'nnUNetTrainerMASSL_noFixMatch', 4, num_epochs=1)
    trainer.on_train_start()
    states, grads = [], []
    step = trainer.optimization_step

    def spy(compute, optimizers):
        states.append(_snapshot(trainer))
        terms = step(compute, optimizers)
        grads.append([None if p.grad is None else p.grad.clone() for p in decoder_parameters(trainer.network.decoder)])
        return terms

    trainer.optimization_step = spy
    out = trainer.train_step(next(trainer.dataloader_train))
    states.append(_snapshot(trainer))
    assert len(states) == 3  # two optimisation steps in one iteration
    assert _changed(states[0], states[1]) == {'encoder', 'segmentation'}
    assert _changed(states[1], states[2]) == {'encoder', 'reconstruction'}
    assert all(torch.equal(a, b) for a, b in zip(grads[0], grads[1]) if a is not None)  # no gradient added to D_S
    assert all(p.requires_grad for p in trainer.network.parameters())  # unfrozen afterwards
    assert out['weight_segmentation'] == out['weight_reconstruction'] == 1.0
    assert out['loss'] == pytest.approx(out['term_segmentation'] + out['term_reconstruction'], rel=1e-5)
    lrs = [g['lr'] for g in trainer.semi_optimizers['reconstruction'][0].param_groups]
    assert lrs == [pytest.approx(trainer.optimizer.param_groups[0]['lr'] / 10)]
    trainer.on_train_end()

    # the reconstruction's gradient reaches the encoder also through the attention maps of the frozen decoder
    batch = next(trainer.dataloader_unlabeled)['data']
    encoder_grads = []
    for detach in (False, True):
        trainer.network.zero_grad(set_to_none=True)
        with frozen(decoder_parameters(trainer.network.decoder)):
            seg, rec = trainer.segment_and_reconstruct(batch)
            logits = trainer.full_resolution(seg)
            trainer.reconstruction_loss(batch, logits.detach() if detach else logits, rec).backward()
        assert all(p.grad is None for p in decoder_parameters(trainer.network.decoder))
        encoder_grads.append(torch.cat([p.grad.flatten() for p in trainer.network.encoder.parameters()]))
    assert not torch.allclose(*encoder_grads)
    # detach_attention: the reconstruction's gradient reaches the encoder as with detached maps, through D_R alone
    trainer.detach_attention = True
    trainer.network.zero_grad(set_to_none=True)
    with frozen(decoder_parameters(trainer.network.decoder)):
        seg, rec = trainer.segment_and_reconstruct(batch)
        trainer.reconstruction_loss(batch, trainer.full_resolution(seg), rec).backward()
    assert torch.allclose(torch.cat([p.grad.flatten() for p in trainer.network.encoder.parameters()]),
                          encoder_grads[1], rtol=1e-4, atol=1e-7)


def test_joint_step_and_options_on_a_real_batch(tiny_dataset):
    ds = tiny_dataset
    preprocess_unlabeled(ds, '3d_fullres')
    for name, settings, outputs in (('nnUNetTrainerMASSLJoint', {}, 3),
                                    ('nnUNetTrainerMASSLJoint_noAttention', {}, 1),
                                    ('nnUNetTrainerMASSL', {'reconstruct_labeled': True}, 3)):
        trainer = trainer_from_args(ds, name, 4, num_epochs=1, **settings)
        assert trainer.reconstruction_decoder.output.out_channels == outputs, name
        trainer.on_train_start()
        before = _snapshot(trainer)
        out = trainer.train_step(next(trainer.dataloader_train))
        assert _changed(before, _snapshot(trainer)) == {'encoder', 'segmentation', 'reconstruction'}, name
        assert np.isfinite(out['term_reconstruction']) and out['term_reconstruction'] > 0, name
        if 'Joint' in name:
            assert (out['weight_segmentation'], out['weight_reconstruction']) == (0.9, pytest.approx(0.1))
            # one optimizer step for everything: D_R at nnU-Net's learning rate
            assert trainer.semi_optimizers['reconstruction'][0].param_groups[0]['lr'] == \
                trainer.optimizer.param_groups[0]['lr']
        trainer.on_train_end()


def test_shared_momentum_keeps_one_encoder_state(tiny_dataset):
    """``_sharedMomentum``: the encoder is in nnU-Net's optimizer alone, which steps it in both steps of an iteration,
    so its momentum buffer holds both gradients (SGD by hand: b = 0.99 (g1 + wd p0) + (g2 + wd p1)); the
    reconstruction optimizer holds D_R alone, and L_R carries the tenth."""
    ds = tiny_dataset
    preprocess_unlabeled(ds, '3d_fullres')
    trainer = trainer_from_args(ds, 'nnUNetTrainerMASSL', 4, num_epochs=1, shared_encoder_state=True)
    reconstruction_optimizer = trainer.semi_optimizers['reconstruction'][0]
    held = {id(p) for group in reconstruction_optimizer.param_groups for p in group['params']}
    assert held == {id(p) for p in trainer.reconstruction_decoder.parameters()}
    assert reconstruction_optimizer.param_groups[0]['lr'] == trainer.optimizer.param_groups[0]['lr']
    trainer.on_train_start()
    p = next(trainer.network.encoder.parameters())
    seen, clip = [], trainer.clip_per_optimizer

    def spy(optimizers, max_norm=12):
        clip(optimizers, max_norm)
        seen.append((p.detach().clone(), p.grad.clone(), trainer.optimizer in optimizers))

    trainer.clip_per_optimizer = spy
    out = trainer.train_step(next(trainer.dataloader_train))
    assert [stepped for _, _, stepped in seen] == [True, True]
    (p0, g1, _), (p1, g2, _) = seen
    wd = trainer.optimizer.param_groups[0]['weight_decay']
    expected = 0.99 * (g1 + wd * p0) + (g2 + wd * p1)
    assert torch.allclose(trainer.optimizer.state[p]['momentum_buffer'], expected, rtol=1e-5, atol=1e-8)
    assert p not in reconstruction_optimizer.state
    assert out['weight_reconstruction'] == pytest.approx(0.1)
    trainer.on_train_end()
