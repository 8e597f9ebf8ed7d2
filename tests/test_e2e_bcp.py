"""nnUNetTrainerBCP end to end through nnU-Net's commands on the tiny generated dataset (small plans, CPU): training in
2d with prediction; in 3d_fullres interrupted, resumed with its teacher, predicted and exported to a stock model
folder; the two stages on a real batch, with stock nnU-Net's labeled step beside them; and the variants."""
import pytest
import torch

from conftest import (assert_predicts_and_exports_to_stock, interrupt_then_load, predict, preprocess_unlabeled,
                      resume_to_the_end, train, trainer_from_args)
from nnunet_semi.networks.ema import ema_decay_at

pytestmark = pytest.mark.e2e
BCP = 'nnUNetTrainerBCP_smoke'


def test_bcp_2d_trains_and_predicts(tiny_dataset, tmp_path):
    ds = tiny_dataset
    log, ckpt = train(ds, '2d', 0, BCP)
    # 3 epochs: the first (round(0.25 * 3)) pre-trains on labeled copy-paste only, then self-training
    assert log.count('loss terms: ground_truth_part ') == 3 and log.count('supervised ') == 3
    assert log.count('pseudo_label_part 0.0000 (weight 0)') == 1 and log.count('(weight 0.5)') == 2
    assert log.count('training metrics: confident_share ') == 2
    assert set(ckpt['nnunet_semi']['modules']) == {'teacher'}
    predict(ds, '2d', BCP, tmp_path)


def test_bcp_3d_resumes_with_its_teacher_predicts_and_exports_to_stock(tiny_dataset, tmp_path):
    saved, trainer = interrupt_then_load(tiny_dataset, BCP, 0)
    teacher = saved['nnunet_semi']['modules']['teacher']
    assert all(torch.equal(trainer.teacher.state_dict()[k], v) for k, v in teacher.items())
    final = resume_to_the_end(tiny_dataset, BCP, 0, saved, 'pseudo_label_part')
    assert final['logging']['weight_pseudo_label_part'] == [0.0, 0.5, 0.5]  # the warm-up epoch, then self-training
    assert_predicts_and_exports_to_stock(tiny_dataset, '3d_fullres', BCP, tmp_path, stock_command=True)


def stock_loss(trainer, batch) -> float:
    """Stock nnU-Net's loss of the trainer's network on the labeled batch, as it stands (nnU-Net's networks have no
    dropout: the next step's forward pass gives the same)."""
    labeled = trainer.to_device(batch)
    with torch.no_grad():
        return trainer.loss(trainer.network(labeled['data']), labeled['target']).item()


def test_the_two_stages_on_a_real_batch(tiny_dataset):
    ds = tiny_dataset
    preprocess_unlabeled(ds, '3d_fullres')
    trainer = trainer_from_args(ds, 'nnUNetTrainerBCP', 4, num_epochs=4, num_iterations_per_epoch=2)
    trainer.on_train_start()
    assert trainer.warmup_iterations() == 2  # one of four epochs
    batch = next(trainer.dataloader_train)
    expected = stock_loss(trainer, batch)
    out = trainer.train_step(batch)
    assert out['weight_pseudo_label_part'] == 0.0 and 'metric_confident_share' not in out
    # beside BCP's terms, stock nnU-Net's step on the un-mixed labeled batch
    assert out['weight_supervised'] == 1.0 and out['term_supervised'] == pytest.approx(expected, rel=1e-4)
    assert out['loss'] == pytest.approx(out['term_supervised'] + out['term_ground_truth_part'], rel=1e-5)
    trainer.train_step(next(trainer.dataloader_train))
    # the first self-training step starts the teacher again from the network (BCP's), then the EMA moves it
    with torch.no_grad():
        for p in trainer.teacher.parameters():
            p.add_(1.0)
    student_before = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    batch = next(trainer.dataloader_train)
    expected = stock_loss(trainer, batch)
    out = trainer.train_step(batch)
    assert out['weight_pseudo_label_part'] == 0.5 and 0.0 <= out['metric_confident_share'] <= 1.0
    assert out['term_supervised'] == pytest.approx(expected, rel=1e-4)
    assert out['loss'] == pytest.approx(out['term_supervised'] + out['term_ground_truth_part'] +
                                        0.5 * out['term_pseudo_label_part'], rel=1e-5)
    student_after, decay = trainer.network.state_dict(), ema_decay_at(2, 0.99)
    for k, t in trainer.teacher.state_dict().items():  # the EMA of the reset teacher (= the student before the step)
        assert torch.allclose(t, decay * student_before[k] + (1 - decay) * student_after[k], atol=1e-6), k
    trainer.on_train_end()


@pytest.mark.parametrize('name', ['nnUNetTrainerBCP_mixedOnly', 'nnUNetTrainerBCP_noWarmup'])
def test_the_variants_leave_out_the_labeled_term_or_the_warmup(tiny_dataset, name):
    ds = tiny_dataset
    preprocess_unlabeled(ds, '3d_fullres')
    trainer = trainer_from_args(ds, name, 4, num_epochs=4, num_iterations_per_epoch=2)
    trainer.on_train_start()
    out = trainer.train_step(next(trainer.dataloader_train))
    if name.endswith('_mixedOnly'):  # BCP's: the mixed images only
        assert 'term_supervised' not in out and out['weight_pseudo_label_part'] == 0.0
        assert out['loss'] == pytest.approx(out['term_ground_truth_part'], rel=1e-5)
    else:  # self-training from the first step
        assert trainer.warmup_iterations() == 0 and out['weight_pseudo_label_part'] == 0.5
    trainer.on_train_end()
