"""The siamese proxy task end to end through nnU-Net's commands on the tiny generated dataset (small plans, CPU):
nnUNetTrainerSiamesePretrain, then fine-tuning with stock nnUNetv2_train -pretrained_weights (3d_fullres) or
nnUNetTrainerSiameseFinetune (2d), then nnUNetv2_predict; and, in process, what the checkpoint carries over and the
fine-tuning loss schedule."""
import json
import re

import numpy as np
import pytest
import torch

from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

from conftest import model_folder, newest_log, predict, preprocess_unlabeled, run, train, train_cmd, trainer_from_args

pytestmark = pytest.mark.e2e
PRETRAIN = 'nnUNetTrainerSiamesePretrain_smoke'
FINETUNE = 'nnUNetTrainerSiameseFinetune_smoke'


@pytest.mark.parametrize('configuration, finetune', [('3d_fullres', 'nnUNetTrainer_smoke'), ('2d', FINETUNE)])
def test_pretrain_then_finetune_with_pretrained_weights_then_predict(tiny_dataset, tmp_path, configuration, finetune):
    ds = tiny_dataset
    log, ckpt = train(ds, configuration, 0, PRETRAIN)
    assert 'Siamese proxy task: 8 labeled (as images) + 8 unlabeled training cases, 2 validation cases; regions: ' \
           'left_right (2), split along axis [2]' in log  # the demo's images have an identity direction
    logging = ckpt['logging']
    train_accuracy, val_accuracy = logging['metric_proxy_accuracy'], logging['mean_fg_dice']
    assert len(train_accuracy) == len(val_accuracy) == 3
    assert all(0 <= a <= 1 for a in train_accuracy + val_accuracy)
    assert len(re.findall(r'validation proxy accuracy \d', log)) == 3
    assert log.count('training metrics: proxy_accuracy') == 3
    assert 'No segmentation validation after pretraining' in log
    pretrain_folder = model_folder(ds, PRETRAIN, configuration, 0)
    assert not (pretrain_folder / 'validation').exists()

    weights = pretrain_folder / 'checkpoint_final.pth'
    out = run(train_cmd(ds, configuration, 0, finetune, '-pretrained_weights', weights), ds['env'])
    assert f'Loading pretrained weights from file  {weights}' in out
    finetune_log = newest_log(model_folder(ds, finetune, configuration, 0))
    assert 'Mean Validation Dice' in finetune_log
    if finetune == FINETUNE:
        assert 'WARNING: no -pretrained_weights' not in finetune_log
        schedule = torch.load(model_folder(ds, finetune, configuration, 0) / 'checkpoint_final.pth',
                              map_location='cpu', weights_only=False)['logging']
        # CE share 0.6 -> 0.2 over half of the 3 epochs, the Dice the rest, both summing to stock's 1 + 1
        assert np.allclose(schedule['weight_ce'], [1.2, 2 * (0.6 - 0.4 / 1.5), 0.4])
        assert np.allclose(np.add(schedule['weight_ce'], schedule['weight_dice']), 2)
        assert 'loss weights: CE 1.200, Dice 0.800' in finetune_log
        # the curves of both trainings: nnU-Net's per-epoch pseudo Dice, and the fine-tuning's final validation Dice
        folders = [pretrain_folder, model_folder(ds, finetune, configuration, 0)]
        table = run(['nnunet_semi', 'curves', *folders, '-l', 'pretraining', 'fine-tuning', '-o', tmp_path / 'c.png'],
                    ds['env'])
        summary = json.loads((folders[1] / 'validation' / 'summary.json').read_text())['foreground_mean']['Dice']
        row = next(line for line in table.splitlines() if line.startswith('| fine-tuning |'))
        assert row.startswith(f'| fine-tuning | {schedule["mean_fg_dice"][0]:.3f} |') and f'{summary:.4f}' in row
        assert (tmp_path / 'c.png').stat().st_size > 10_000
    predict(ds, configuration, finetune, tmp_path / 'pred')


def test_pretrained_checkpoint_fills_the_encoder_and_leaves_the_decoder(tiny_dataset, tmp_path):
    """Pretraining steps change every encoder tensor and no decoder tensor; nnU-Net's own load_pretrained_weights then
    puts every encoder tensor of the checkpoint into a freshly planned network (its segmentation layers stay its
    own)."""
    ds = tiny_dataset
    preprocess_unlabeled(ds, '3d_fullres')
    pretrain = trainer_from_args(ds, PRETRAIN, 4)
    initial = {k: v.clone() for k, v in pretrain.network.state_dict().items()}
    loader, _ = pretrain.get_dataloaders()
    for _ in range(3):
        pretrain.train_step(next(loader))
    pretrain.save_checkpoint(str(tmp_path / 'pretrained.pth'))
    saved = torch.load(tmp_path / 'pretrained.pth', map_location='cpu', weights_only=False)['network_weights']

    fresh = trainer_from_args(ds, 'nnUNetTrainer', 4).network
    fresh_initial = {k: v.clone() for k, v in fresh.state_dict().items()}
    load_pretrained_weights(fresh, str(tmp_path / 'pretrained.pth'))
    state = fresh.state_dict()
    encoder = [k for k in state if k.startswith(('encoder.', 'decoder.encoder.'))]
    seg_layers = [k for k in state if '.seg_layers.' in k]
    decoder = [k for k in state if k.startswith('decoder.') and k not in encoder and k not in seg_layers]
    assert encoder and decoder and seg_layers
    for k in encoder:
        assert torch.equal(state[k], saved[k]), k
    trained = [k for k in encoder if k.endswith('.weight')]
    assert all(not torch.equal(saved[k], initial[k]) for k in trained), 'pretraining left an encoder weight as it was'
    for k in decoder:
        assert torch.equal(saved[k], initial[k]), f'pretraining changed {k}'
    for k in seg_layers:
        assert torch.equal(state[k], fresh_initial[k]), k


def test_finetune_schedule_and_its_terms_are_nnunets_loss(tiny_dataset):
    ds = tiny_dataset
    t = trainer_from_args(ds, 'nnUNetTrainerSiameseFinetune', 4, num_epochs=100)
    assert [t.ce_weight(e) for e in (0, 25, 50, 99)] == pytest.approx([0.6, 0.4, 0.2, 0.2])
    assert t.loss_weights(25) == pytest.approx((0.8, 1.2))
    paper = trainer_from_args(ds, 'nnUNetTrainerSiameseFinetune_paperScale', 4, num_epochs=100)
    assert paper.loss_weights(25) == pytest.approx((0.4, 0.6))
    loader, _ = t.get_dataloaders()
    batch = next(loader)
    with torch.no_grad():
        output = t.network(batch['data'])
        t.loss.loss.weight_ce, t.loss.loss.weight_dice = 0.3, 0.7
        expected = t.loss(output, batch['target'])
        ce, dice = t.ce_term(output, batch['target']), t.dice_term(output, batch['target'])
    assert ce > 0 and dice < 0  # nnU-Net's Dice term is the negative soft Dice
    assert torch.allclose(0.3 * ce + 0.7 * dice, expected)
