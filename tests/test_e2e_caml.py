"""nnUNetTrainerCAML end to end through nnU-Net's commands on the tiny generated dataset (small plans, CPU): training in
3d_fullres and 2d, prediction, export to a stock model folder, an interrupted run resumed with its memory bank, and
the trainer's memory update and ablations on real batches."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import SMALL, assert_segmentations, kill_after_first_checkpoint, newest_log, run

pytestmark = pytest.mark.e2e
CAML = 'nnUNetTrainerCAML_smoke'
TERMS = ('supervised_V', 'supervised_A', 'mutual', 'omni_correlation')


def model_folder(ds, trainer, configuration, fold):
    return ds['results'] / f'{trainer}__{SMALL}__{configuration}' / f'fold_{fold}'


def train_cmd(ds, configuration, fold, trainer=CAML, *extra):
    return ['nnUNetv2_train', ds['id'], configuration, fold, '-tr', trainer, '-p', SMALL, '-device', 'cpu', *extra]


def unlabeled(ds, configuration):
    """Preprocess the unlabeled images for a configuration (cases already done are skipped)."""
    run(['nnUNetv2_semi_preprocess', '-d', ds['id'], '-c', configuration, '-p', SMALL], ds['env'])


def trainer_from_args(ds, trainer, fold, **settings):
    from nnunetv2.run.run_training import get_trainer_from_args
    t = get_trainer_from_args(str(ds['id']), '3d_fullres', fold, trainer, SMALL, False, device=torch.device('cpu'))
    for k, v in settings.items():
        setattr(t, k, v)
    t.initialize()
    return t


def test_caml_3d_trains_predicts_and_exports_to_stock_nnunet(tiny_dataset, tmp_path):
    ds = tiny_dataset
    unlabeled(ds, '3d_fullres')
    run(train_cmd(ds, '3d_fullres', 0), ds['env'])
    folder = model_folder(ds, CAML, '3d_fullres', 0)
    log = newest_log(folder)
    # 24x32x32 patch: 3072 tokens at stage 1, 384 at stage 2 (<= 2048)
    assert 'CAML model A: interpolating decoder, CMA after encoder stage 2 (32 channels)' in log
    assert log.count('loss terms: ') == 3 and log.count('memory bank: [') == 3
    assert all(f'{t} ' in log for t in TERMS)
    assert (folder / 'progress.png').is_file()

    ckpt = torch.load(folder / 'checkpoint_final.pth', map_location='cpu', weights_only=False)
    semi = ckpt['nnunet_semi']
    assert set(semi['modules']) == {'model_a', 'heads', 'memory'} and set(semi['optimizers']) == {'model_a'}
    assert semi['modules']['memory']['counts'][0].sum() > 0  # background voxels both networks got right
    logged = ckpt['logging']
    assert all(len(logged['term_' + t]) == 3 for t in TERMS)
    assert logged['weight_mutual'][0] < logged['weight_mutual'][2] == pytest.approx(1.0)  # ramped to full strength
    assert logged['weight_omni_correlation'][2] == pytest.approx(0.05)

    images = ds['raw'] / 'imagesTs'
    cases = ('test_000', 'test_001')
    plugin = tmp_path / 'plugin'
    run(['nnUNetv2_predict', '-i', images, '-o', plugin, '-d', ds['id'], '-c', '3d_fullres', '-tr', CAML, '-p', SMALL,
         '-f', '0', '-device', 'cpu'], ds['env'])
    assert_segmentations(plugin, images, cases)

    # the documented export path: a stock model folder, predicted by nnU-Net with the plugin switched off
    exported = tmp_path / 'stock_model'
    out = run(['nnunet_semi', 'export', '-d', ds['id'], '-c', '3d_fullres', '-tr', CAML, '-p', SMALL, '-o', exported],
              ds['env'])
    assert 'nnUNetv2_predict_from_modelfolder' in out
    stock_ckpt = torch.load(exported / 'fold_0' / 'checkpoint_final.pth', map_location='cpu', weights_only=False)
    assert stock_ckpt['trainer_name'] == 'nnUNetTrainer' and 'nnunet_semi' not in stock_ckpt
    no_plugin = {k: v for k, v in ds['env'].items() if k != 'nnUNet_extTrainer'}
    no_plugin['NNUNET_SEMI_NO_HOOK'] = '1'
    stock = tmp_path / 'stock'
    run(['nnUNetv2_predict_from_modelfolder', '-i', images, '-o', stock, '-m', exported, '-f', '0', '-device', 'cpu'],
        no_plugin)
    for case in cases:
        a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(f / f'{case}.nii.gz'))) for f in (plugin, stock))
        assert np.array_equal(a, b), case
    out = run(['nnunet_semi', 'export', '-d', ds['id'], '-c', '3d_fullres', '-tr', CAML, '-p', SMALL, '-o', exported],
              ds['env'], ok=False)
    assert f'{exported / "fold_0" / "checkpoint_final.pth"} exists already' in out


def test_caml_interrupted_run_resumes_with_memory_bank_and_model_a(tiny_dataset):
    ds = tiny_dataset
    unlabeled(ds, '3d_fullres')
    folder = model_folder(ds, CAML, '3d_fullres', 1)
    latest = folder / 'checkpoint_latest.pth'
    kill_after_first_checkpoint(train_cmd(ds, '3d_fullres', 1), ds['env'], latest)
    saved = torch.load(latest, map_location='cpu', weights_only=False)
    assert 1 <= saved['current_epoch'] < 3 and not (folder / 'checkpoint_final.pth').exists()

    trainer = trainer_from_args(ds, CAML, 1)
    trainer.load_checkpoint(str(latest))
    memory = saved['nnunet_semi']['modules']['memory']
    assert memory['counts'].sum() > 0
    assert torch.equal(trainer.memory.counts, memory['counts'])
    assert torch.equal(trainer.memory.embeddings, memory['embeddings'])
    for k, v in saved['nnunet_semi']['modules']['model_a'].items():
        assert torch.equal(trainer.model_a.state_dict()[k], v), k
    opt = trainer.semi_optimizers['model_a'][0].state_dict()
    for i, state in saved['nnunet_semi']['optimizers']['model_a']['state'].items():
        assert torch.equal(opt['state'][i]['momentum_buffer'], state['momentum_buffer'])

    run(train_cmd(ds, '3d_fullres', 1, CAML, '--c'), ds['env'])
    log = newest_log(folder)
    assert f'Epoch {saved["current_epoch"]}' in log and 'Epoch 0\n' not in log
    final = torch.load(folder / 'checkpoint_final.pth', map_location='cpu', weights_only=False)
    assert final['current_epoch'] == 3 and len(final['logging']['term_omni_correlation']) == 3


def test_caml_2d_trains_and_predicts(tiny_dataset, tmp_path):
    ds = tiny_dataset
    unlabeled(ds, '2d')
    run(train_cmd(ds, '2d', 0), ds['env'])
    log = newest_log(model_folder(ds, CAML, '2d', 0))
    assert 'CMA after encoder stage 1' in log and 'omni_correlation ' in log  # 32x32 patch: 16x16 = 256 tokens
    run(['nnUNetv2_predict', '-i', ds['raw'] / 'imagesTs', '-o', tmp_path, '-d', ds['id'], '-c', '2d', '-tr', CAML,
         '-p', SMALL, '-f', '0', '-device', 'cpu'], ds['env'])
    assert_segmentations(tmp_path, ds['raw'] / 'imagesTs', ('test_000', 'test_001'))


def test_memory_update_keeps_correct_voxels_within_the_cap(tiny_dataset):
    ds = tiny_dataset
    unlabeled(ds, '3d_fullres')
    trainer = trainer_from_args(ds, 'nnUNetTrainerCAML', 4, memory_cap_per_class=8 * 300)
    cases = sorted(trainer.case_index)
    assert len(cases) == 8 and trainer.memory.per_case == 300
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (3, 4, 8, 8))
    pred_v, pred_a = labels.clone(), labels.clone()
    pred_v[:, :2] = (labels[:, :2] + 1) % 3  # V is wrong in the first two slices
    pred_a[:, :, :4] = (labels[:, :, :4] + 2) % 3  # A is wrong in the first half of each slice
    features = torch.randn(3, trainer.model_a.encoder.output_channels[0], 4, 8, 8)
    trainer.labeled_keys = [cases[0], cases[1], cases[0]]  # case 0 drawn twice: its two crops are pooled
    trainer.update_memory(features, features, pred_v, pred_a, labels)
    correct = (pred_v == labels) & (pred_a == labels)  # slices 2-3, second half: 2 * 4 * 8 = 64 voxels per sample
    for c in range(3):
        for case, samples in ((cases[0], [0, 2]), (cases[1], [1])):
            expected = int((correct[samples] & (labels[samples] == c)).sum())
            assert trainer.memory.counts[c, trainer.case_index[case]] == expected
    assert trainer.memory.counts[:, 2:].sum() == 0
    # a crop with more correct voxels than a slot holds keeps only per_case of them
    trainer.labeled_keys = [cases[5]]
    big = torch.zeros(1, 8, 16, 16, dtype=torch.long)
    big_features = torch.randn(1, features.shape[1], 8, 16, 16)
    trainer.update_memory(big_features, big_features, big, big, big)
    assert trainer.memory.counts[0, trainer.case_index[cases[5]]] == 300
    assert trainer.heads['proj_V'].training  # the heads are back in training mode


def test_ablations_and_options_on_a_real_batch(tiny_dataset):
    from nnunet_semi.networks.caml import CrossSampleMutualAttention
    ds = tiny_dataset
    unlabeled(ds, '3d_fullres')
    for name, has_cma, terms in (('nnUNetTrainerCAML', True, TERMS),
                                 ('nnUNetTrainerCAML_noOCC', True, TERMS[:3]),
                                 ('nnUNetTrainerCAML_MLonly', False, TERMS[:3])):
        trainer = trainer_from_args(ds, name, 4, num_epochs=1)
        assert any(isinstance(m, CrossSampleMutualAttention) for m in trainer.model_a.modules()) == has_cma, name
        trainer.on_train_start()
        out = trainer.train_step(next(trainer.dataloader_train))
        assert tuple(k[len('term_'):] for k in out if k.startswith('term_')) == terms, name
        assert all(np.isfinite(out['term_' + t]) for t in terms)
        trainer.on_train_end()
    dice_only = trainer_from_args(ds, 'nnUNetTrainerCAML', 4, dice_only=True)
    assert dice_only.loss.loss.weight_ce == 0 and trainer.loss.loss.weight_ce == 1
