"""nnUNetTrainerFixMatch end to end through nnU-Net's commands on the tiny generated dataset (small plans, CPU):
the self-target variant's training and prediction in 2d; the default, with its EMA teacher, in 3d_fullres interrupted,
resumed, predicted and exported to a stock model folder; the spatial-only weak view; one step on a real batch; and a
checkpoint without the teacher resuming."""
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import (assert_predicts_and_exports_to_stock, interrupt_then_load, predict, predict_one_class,
                      preprocess_unlabeled, resume_to_the_end, train, trainer_from_args)

pytestmark = pytest.mark.e2e


def test_fixmatch_with_self_targets_2d_trains_and_predicts(tiny_dataset, tmp_path):
    ds, name = tiny_dataset, 'nnUNetTrainerFixMatch_selfTarget_smoke'
    log, ckpt = train(ds, '2d', 0, name)
    assert log.count('loss terms: supervised ') == 3 and log.count('(weight 1), pseudo_label ') == 3
    assert log.count('training metrics: confident_share ') == 3
    share = ckpt['logging']['metric_confident_share']
    assert len(share) == 3 and all(0.0 <= s <= 1.0 for s in share)
    assert all(np.isfinite(ckpt['logging']['term_pseudo_label']))
    assert set(ckpt['nnunet_semi']['modules']) == set()  # no teacher: the network labels its own weak views
    predict(ds, '2d', name, tmp_path)


def test_fixmatch_3d_with_its_ema_teacher_resumes_with_it_predicts_and_exports_to_stock(tiny_dataset, tmp_path):
    name = 'nnUNetTrainerFixMatch_smoke'
    saved, trainer = interrupt_then_load(tiny_dataset, name, 0)
    teacher = saved['nnunet_semi']['modules']['teacher']
    assert all(torch.equal(trainer.teacher.state_dict()[k], v) for k, v in teacher.items())
    assert any(not torch.equal(saved['network_weights'][k], v) for k, v in teacher.items())  # an average, not a copy
    final = resume_to_the_end(tiny_dataset, name, 0, saved, 'pseudo_label')
    assert all(0.0 <= s <= 1.0 for s in final['logging']['metric_confident_share'])
    assert_predicts_and_exports_to_stock(tiny_dataset, '3d_fullres', name, tmp_path)


def test_spatial_weak_view_drops_only_the_intensity_transforms(tiny_dataset):
    from batchgeneratorsv2.transforms.utils.random import RandomTransform
    from nnunet_semi.data.augmenter import INTENSITY_TRANSFORMS, stop_workers
    preprocess_unlabeled(tiny_dataset, '3d_fullres')

    def transforms(name):
        trainer = trainer_from_args(tiny_dataset, name, 0)
        batches = trainer.get_unlabeled_dataloader(0)
        stop_workers(batches)
        steps = batches.data_loader.transforms.transforms
        return [type(t.transform if isinstance(t, RandomTransform) else t) for t in steps]
    default, weak = transforms('nnUNetTrainerFixMatch'), transforms('nnUNetTrainerFixMatch_spatialWeak')
    assert set(INTENSITY_TRANSFORMS) <= set(default)  # nnU-Net's list has them all: the filter names real classes
    assert weak == [t for t in default if t not in INTENSITY_TRANSFORMS]
    assert 'SpatialTransform' in [t.__name__ for t in weak]


def test_one_step_on_a_real_batch(tiny_dataset):
    ds = tiny_dataset
    preprocess_unlabeled(ds, '3d_fullres')
    trainer = trainer_from_args(ds, 'nnUNetTrainerFixMatch', 4, num_epochs=1)
    trainer.on_train_start()
    unlabeled = trainer.next_unlabeled_batch()
    images = unlabeled['data']
    # the weak view's pseudo-labels come from the EMA teacher: the network says background everywhere, the teacher
    # label 1, each with a probability of 0.9999
    predict_one_class(trainer.network, 0)
    predict_one_class(trainer.teacher, 1)
    labels, mask = trainer.weak_pseudo_labels(images)
    assert (labels == 1).all() and mask.all()
    # the strong view's box carries the other sample's pseudo-labels and mask along with its image
    labels = torch.arange(images.shape[0])[:, None, None, None].expand(-1, *images.shape[2:]).clone()
    mask = labels % 2 == 0
    torch.manual_seed(0)
    strong, mixed_labels, mixed_mask = trainer.strong_view(images, labels, mask)
    assert strong.shape == images.shape and not torch.equal(strong, images)
    moved = mixed_labels != labels  # inside the box: labels of the previous sample (torch.roll by one)
    assert moved.any() and torch.equal(mixed_labels[moved], ((labels - 1) % images.shape[0])[moved])
    assert torch.equal(mixed_mask, mixed_labels % 2 == 0)
    out = trainer.train_step(next(trainer.dataloader_train))
    assert {'term_supervised', 'term_pseudo_label', 'metric_confident_share'} <= set(out)
    assert out['loss'] == pytest.approx(out['term_supervised'] + out['term_pseudo_label'], rel=1e-5)
    trainer.on_train_end()


def test_a_checkpoint_without_the_teacher_resumes_with_one_from_its_network(tiny_dataset, tmp_path):
    # a FixMatch checkpoint written before the EMA teacher was its default has no teacher in its nnunet_semi state
    old = trainer_from_args(tiny_dataset, 'nnUNetTrainerFixMatch_selfTarget', 0)
    with torch.no_grad():
        for p in old.network.parameters():
            p.add_(1.0)
    old.save_checkpoint(str(tmp_path / 'checkpoint_latest.pth'))
    assert old.semi_modules() == {}
    trainer = trainer_from_args(tiny_dataset, 'nnUNetTrainerFixMatch', 0)
    trainer.load_checkpoint(str(tmp_path / 'checkpoint_latest.pth'))
    network = trainer.network.state_dict()
    assert all(torch.equal(network[k], v) for k, v in old.network.state_dict().items())
    assert all(torch.equal(network[k], v) for k, v in trainer.teacher.state_dict().items())
    assert 'checkpoint_latest.pth has no state of teacher' in Path(trainer.log_file).read_text()
