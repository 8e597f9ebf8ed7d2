"""nnUNetTrainerPLContrast end to end through nnU-Net's commands on the tiny generated dataset (small plans, CPU): a
warm-up and two pseudo-label rounds in 3d_fullres and 2d, prediction (and export to stock nnU-Net), a run killed while
it writes pseudo-labels and resumed with --c, and the shorter warm-up after -pretrained_weights."""
import blosc2
import numpy as np
import pytest
import torch

from conftest import (assert_predicts_and_exports_to_stock, kill_when, model_folder, newest_log, predict,
                      preprocess_unlabeled, run, SMALL, train, train_cmd, trainer_from_args)
from nnunet_semi.data.unlabeled import committed_cases

pytestmark = pytest.mark.e2e
PL = 'nnUNetTrainerPLContrast_smoke'
N_UNLABELED = 8  # the tiny dataset's imagesUnlabeled


def pseudo_label_folder(ds, configuration, fold, round_number, trainer=PL):
    data_identifier = f'nnUNetPlans_{configuration}'  # the small plans keep nnU-Net's preprocessed data
    return (ds['preprocessed'] / f'{data_identifier}_pseudolabels' / f'{trainer}__{SMALL}__fold_{fold}' /
            f'round_{round_number}')


def committed(folder):
    return committed_cases(str(folder), '.npy')


@pytest.mark.parametrize('configuration', ['3d_fullres', '2d'])
def test_plcontrast_rounds_train_and_predict(tiny_dataset, tmp_path, configuration):
    ds = tiny_dataset
    log, ckpt = train(ds, configuration, 0, PL)
    assert 'PLContrast: 1 labeled-only warm-up epoch(s), then 2 round(s) starting at epochs [1, 2]' in log
    for r in (1, 2):
        assert f'Round {r}: {N_UNLABELED} pseudo-labels written' in log
        folder = pseudo_label_folder(ds, configuration, 0, r)
        assert committed(folder) == [f'unl_{i:03d}' for i in range(N_UNLABELED)]
        label = np.load(folder / 'unl_000.npy')  # in the geometry of the preprocessed image
        image = blosc2.open(str(ds['preprocessed'] / f'nnUNetPlans_{configuration}_unlabeled' / 'unl_000.b2nd'))
        assert label.shape == (1, *image.shape[1:]) and set(np.unique(label)) <= {0, 1, 2}
    assert log.index('Round 1:') < log.index('Epoch 1 \n') < log.index('Round 2:') < log.index('Epoch 2 \n')
    weights, contrastive = ckpt['logging']['weight_contrastive'], ckpt['logging']['term_contrastive']
    assert weights == [0.0, 0.1, 0.1]  # off in the warm-up, lambda in the rounds
    assert contrastive[0] == 0.0 and all(np.isfinite(contrastive[1:])) and min(contrastive[1:]) > 0
    assert set(ckpt['nnunet_semi']['modules']) == {'projection_head'}
    assert not any('projection' in k for k in ckpt['network_weights'])  # the deployed net is nnU-Net's plain one
    if configuration == '3d_fullres':
        assert_predicts_and_exports_to_stock(ds, configuration, PL, tmp_path)
    else:
        predict(ds, configuration, PL, tmp_path / 'pred')


def test_plcontrast_killed_while_writing_pseudo_labels_resumes(tiny_dataset):
    ds = tiny_dataset
    preprocess_unlabeled(ds, '3d_fullres')
    round_1 = pseudo_label_folder(ds, '3d_fullres', 1, 1)
    kill_when(train_cmd(ds, '3d_fullres', 1, PL), ds['env'], lambda: len(committed(round_1)) > 0,
              'the first pseudo-label of round 1')
    kept = {c: (round_1 / f'{c}.npy').stat().st_mtime_ns for c in committed(round_1)}

    run(train_cmd(ds, '3d_fullres', 1, PL, '--c'), ds['env'])
    folder = model_folder(ds, PL, '3d_fullres', 1)
    log = newest_log(folder)
    assert 'Epoch 1 \n' in log and 'Epoch 0 \n' not in log  # resumed after the warm-up epoch
    if len(kept) < N_UNLABELED:
        assert f'{len(kept)} of {N_UNLABELED} pseudo-labels exist already' in log
        assert f'Round 1: {N_UNLABELED - len(kept)} pseudo-labels written' in log
    assert len(committed(round_1)) == N_UNLABELED and not list((round_1 / '.partial').iterdir())
    assert {c: (round_1 / f'{c}.npy').stat().st_mtime_ns for c in kept} == kept  # not regenerated
    assert len(committed(pseudo_label_folder(ds, '3d_fullres', 1, 2))) == N_UNLABELED
    final = torch.load(folder / 'checkpoint_final.pth', map_location='cpu', weights_only=False)
    assert final['current_epoch'] == 3 and final['nnunet_semi']['state'] == {'warmup_epochs': 1}
    assert len(final['logging']['term_contrastive']) == 3


def test_shorter_warmup_after_pretrained_weights(tiny_dataset, tmp_path):
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    ds = tiny_dataset
    preprocess_unlabeled(ds, '3d_fullres')
    fresh = trainer_from_args(ds, 'nnUNetTrainerPLContrast', 2, num_epochs=100)
    fresh.on_semi_train_start(False)
    assert fresh.warmup_epochs == 25  # a quarter of the training
    weights = tmp_path / 'pretrained.pth'
    torch.save({'network_weights': fresh.network.state_dict()}, weights)
    pretrained = trainer_from_args(ds, 'nnUNetTrainerPLContrast', 2, num_epochs=100)
    load_pretrained_weights(pretrained.network, str(weights))  # what nnUNetv2_train -pretrained_weights does
    pretrained.on_semi_train_start(False)
    assert pretrained.warmup_epochs == 5  # the segmentation layers still need a few labeled epochs


def test_warmup_and_round_steps_with_a_grad_scaler(tiny_dataset):
    """With nnU-Net's grad scaler (CUDA's path, here on the CPU): the warm-up leaves the projection head without
    gradients, and its optimizer must not be stepped (the scaler refuses); in a round the head trains. With a
    confidence threshold, uncertain pseudo-label pixels are stored as such and excluded from the contrastive term and
    from the self-training term (``_selfTraining``'s settings)."""
    ds = tiny_dataset
    preprocess_unlabeled(ds, '3d_fullres')
    t = trainer_from_args(ds, 'nnUNetTrainerPLContrast', 3, num_epochs=3, round_confidence_threshold=0.9,
                          self_training_weight=1.0)
    t.grad_scaler = torch.amp.GradScaler('cpu')
    t.on_train_start()
    head = [p.detach().clone() for p in t.projection_head.parameters()]
    t.on_train_epoch_start()  # epoch 0: warm-up
    out = t.train_step(next(t.dataloader_train))
    assert out['weight_contrastive'] == 0.0 and t.dataloader_unlabeled is None and 'term_self_training' not in out
    assert all(torch.equal(a, b) for a, b in zip(head, t.projection_head.parameters()))
    t.current_epoch = 1
    t.on_train_epoch_start()  # round 1: pseudo-labels of every unlabeled case, then joint steps
    folder = pseudo_label_folder(ds, '3d_fullres', 3, 1, 'nnUNetTrainerPLContrast')
    assert t.round == 1 and len(committed(folder)) == N_UNLABELED
    # after one warm-up step the network is unsure almost everywhere: those pixels are stored as uncertain (-2)
    # and left out of the contrastive term (class -1)
    labels = np.load(folder / 'unl_000.npy')
    assert (labels == -2).mean() > 0.5 and set(np.unique(labels)) <= {-2, 0, 1, 2}
    assert t.contrastive_classes(torch.from_numpy(labels).long()[None]).min() == -1
    out = t.train_step(next(t.dataloader_train))
    assert out['weight_contrastive'] == 0.1 and out['term_contrastive'] > 0
    assert out['weight_self_training'] == 1.0 and np.isfinite(out['term_self_training'])
    assert 0 <= out['metric_self_training_confident_share'] < 0.5
    assert any(not torch.equal(a, b) for a, b in zip(head, t.projection_head.parameters()))
    t.on_train_end()

    # the self-training term: what the network predicts at an uncertain voxel changes nothing; at a certain one it does
    target = torch.tensor([[[[[0, 1, -2, 2]]]]])  # (B=1, 1, 1, 1, 4): one uncertain voxel
    logits = torch.randn(1, 3, 1, 1, 4)
    loss = t.self_training_terms(logits, target)['self_training'][1]
    changed = logits.clone()
    changed[..., 2] += torch.tensor([5.0, -3.0, 1.0])[:, None, None]
    assert torch.allclose(t.self_training_terms(changed, target)['self_training'][1], loss)
    changed[..., 1] += torch.tensor([5.0, -3.0, 1.0])[:, None, None]
    assert not torch.allclose(t.self_training_terms(changed, target)['self_training'][1], loss)
    assert t.self_training_terms(logits, target)['self_training_confident_share'][1] == 0.75
