"""Memory-aware planning: the measured footprint of a training step, the footprint-scaled nnU-Net planner, the
nnUNetv2_semi_plan_and_preprocess command and the start-of-training memory check."""
import numpy as np
import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json

from conftest import SMALL, newest_log, run, trainer_from_args
from nnunet_semi.planners import footprint
from nnunet_semi.planners.semi_planner import memory_warning, planner_class
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

MT = 'nnUNetTrainerMeanTeacher_smoke'


class nnUNetTrainerTwice(nnUNetTrainer):
    """Stock training, but every step runs the network on the batch and on its mirror image: twice the work."""

    def train_step(self, batch):
        data = batch['data'].to(self.device)
        target = [t.to(self.device) for t in batch['target']]
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(self.network(data), target) + self.loss(self.network(torch.flip(data, [-1])), target)
        loss.backward()
        self.optimizer.step()
        return {'loss': loss.detach().cpu().numpy()}


@pytest.fixture(scope='module')
def small_2d(tiny_dataset):
    folder = tiny_dataset['preprocessed']
    return load_json(folder / f'{SMALL}.json'), load_json(folder / 'dataset.json')


def test_stock_relative_to_itself_is_one(small_2d):
    plans, dataset_json = small_2d
    a, b = footprint.relative('nnUNetTrainer', plans, '2d', dataset_json)
    assert a.flops == b.flops > 0
    assert a.memory_bytes / b.memory_bytes == pytest.approx(1.0, abs=0.01)
    assert a.parameter_bytes == b.parameter_bytes > 0 and a.optimizer_bytes == b.optimizer_bytes > 0


def test_running_the_network_twice_measures_twice(small_2d):
    plans, dataset_json = small_2d
    twice = footprint.measure(nnUNetTrainerTwice, plans, '2d', dataset_json)
    stock = footprint.measure('nnUNetTrainer', plans, '2d', dataset_json)
    assert twice.flops / stock.flops == pytest.approx(2.0, abs=0.05)
    assert twice.activation_bytes / stock.activation_bytes == pytest.approx(2.0, abs=0.2)
    assert twice.parameter_bytes == stock.parameter_bytes  # the same network


def test_a_semi_trainer_costs_more_and_activations_grow_with_the_batch(small_2d):
    plans, dataset_json = small_2d
    mt, stock = footprint.relative(MT, plans, '2d', dataset_json)
    assert mt.flops / stock.flops > 1.8  # student on two batches, teacher on one
    assert mt.parameter_bytes == pytest.approx(2 * stock.parameter_bytes, rel=0.01)  # student + teacher
    # the estimate at another batch size (what the start-of-training check uses) against a measurement there
    at_4 = footprint.measure(MT, plans, '2d', dataset_json, batch_size=4)
    assert mt.batch_size == 2 and at_4.batch_size == 4
    assert mt.memory_at_batch(4) == pytest.approx(at_4.memory_bytes, rel=0.1)


def _planned(tiny_dataset, factor, name):
    cls = planner_class('ExperimentPlanner')
    cls.memory_factor = {3: factor}
    cls.source_plans = load_json(tiny_dataset['preprocessed'] / 'nnUNetPlans.json')
    plans = cls(tiny_dataset['id'], gpu_memory_target_in_gb=0.05, plans_name=name).plan_experiment()
    c = plans['configurations']['3d_fullres']
    return c['patch_size'], c['batch_size'], c['data_identifier']


def test_a_heavier_trainer_gets_no_larger_patch_or_batch(tiny_dataset):
    sizes = [_planned(tiny_dataset, f, f'test_factor_{f}') for f in (1.0, 2.0, 4.0)]
    volumes = [int(np.prod(patch)) * batch for patch, batch, _ in sizes]
    assert volumes[0] >= volumes[1] >= volumes[2] and volumes[2] < volumes[0], sizes
    for (patch, _, _), (lighter, _, _) in zip(sizes[1:], sizes):
        assert all(p <= q for p, q in zip(patch, lighter)), sizes
    assert {identifier for _, _, identifier in sizes} == {'nnUNetPlans_3d_fullres'}  # same spacing: data reused


@pytest.mark.e2e
def test_semi_plans_from_the_command_train_with_nnunetv2_train(tiny_dataset):
    ds, env = tiny_dataset, tiny_dataset['env']
    out = run(['nnUNetv2_semi_plan_and_preprocess', '-d', ds['id'], '-tr', MT, '-c', '3d_fullres',
               '-gpu_memory_target', '0.05', '-device', 'cpu'], env)
    name = 'nnUNetPlans_MeanTeacher_smoke'
    assert f'Plans written: {name}' in out and '8 unlabeled cases' in out
    plans = load_json(ds['preprocessed'] / f'{name}.json')
    stock = load_json(ds['preprocessed'] / 'nnUNetPlans.json')['configurations']['3d_fullres']
    semi = plans['configurations']['3d_fullres']
    assert set(plans['configurations']) == {'3d_fullres'}  # 2d was not measured, so not planned
    assert semi['data_identifier'] == stock['data_identifier']  # nothing preprocessed twice
    measured = plans['nnunet_semi']
    assert measured['trainer'] == MT and measured['ratio_to_stock']['3d_fullres']['memory'] > 1.3
    assert np.prod(semi['patch_size']) * semi['batch_size'] < np.prod(stock['patch_size']) * stock['batch_size']
    run(['nnUNetv2_train', ds['id'], '3d_fullres', '0', '-tr', MT, '-p', name, '-device', 'cpu'], env)
    folder = ds['results'] / f'{MT}__{name}__3d_fullres' / 'fold_0'
    assert (folder / 'checkpoint_final.pth').is_file()
    assert f"'patch_size': {semi['patch_size']}" in newest_log(folder).replace('(', '[').replace(')', ']')
    missing = run(['nnUNetv2_semi_plan_and_preprocess', '-d', ds['id'], '-tr', MT, '-p', 'NoSuchPlans'], env, ok=False)
    assert 'NoSuchPlans.json not found' in missing and f'nnUNetv2_plan_and_preprocess -d {ds["id"]}' in missing


def test_the_start_check_warns_when_the_estimate_exceeds_the_gpu(tiny_dataset):
    trainer = trainer_from_args(tiny_dataset, MT, 0, '2d')
    need, warning = memory_warning(trainer, available_bytes=10 ** 15)
    assert need > 0 and warning is None
    again, warning = memory_warning(trainer, available_bytes=int(need // 2))
    assert again == pytest.approx(need, rel=0.05)
    assert warning.startswith(f'WARNING: {MT} needs about')
    assert f'nnUNetv2_semi_plan_and_preprocess -d {tiny_dataset["name"]} -tr {MT} -c 2d -p {SMALL}' in warning
    assert f'then train with -p {SMALL}_MeanTeacher_smoke' in warning
