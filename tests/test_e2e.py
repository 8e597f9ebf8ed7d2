"""End to end through nnU-Net's own commands on the tiny generated dataset (see conftest.py), small plans, CPU."""
import shutil

import pytest
import torch

from conftest import (assert_restored, interrupt_then_load, model_folder, newest_log, predict,
                      preprocess_unlabeled, resume_to_the_end, run, SMALL, train_cmd)
from nnunet_semi.data.unlabeled import committed_cases

pytestmark = pytest.mark.e2e
MT = 'nnUNetTrainerMeanTeacher_smoke'


@pytest.fixture(scope='module')
def unlabeled_3d(tiny_dataset):
    preprocess_unlabeled(tiny_dataset, '3d_fullres')
    return tiny_dataset['preprocessed'] / 'nnUNetPlans_3d_fullres_unlabeled'


def test_semi_preprocess_output_and_interrupted_rerun(tiny_dataset, unlabeled_3d):
    expected = [f'unl_{i:03d}' for i in range(8)]
    assert committed_cases(str(unlabeled_3d)) == expected
    import blosc2
    image = blosc2.open(str(unlabeled_3d / 'unl_000.b2nd'), mode='r')[:]
    labeled = blosc2.open(str(tiny_dataset['preprocessed'] / 'nnUNetPlans_3d_fullres' / 'case_000.b2nd'), mode='r')[:]
    assert image.shape == labeled.shape == (1, 24, 32, 32)  # same plans, same spacing
    assert abs(float(image.mean())) < 1.0  # z-scored with the labeled dataset's statistics, not raw intensities
    # a run killed between writing a case's image and its properties leaves that case uncommitted
    (unlabeled_3d / 'unl_003.pkl').unlink()
    before = (unlabeled_3d / 'unl_000.b2nd').stat().st_mtime_ns
    out = run(['nnUNetv2_semi_preprocess', '-d', tiny_dataset['id'], '-c', '3d_fullres', '-p', SMALL],
              tiny_dataset['env'])
    assert '7 already preprocessed, 1 to do' in out
    assert committed_cases(str(unlabeled_3d)) == expected
    assert (unlabeled_3d / 'unl_000.b2nd').stat().st_mtime_ns == before  # done cases are not redone


def test_semi_preprocess_errors_name_the_file_and_lose_nothing(tiny_dataset, unlabeled_3d, nnunet_env):
    from nnunet_semi.data.synthetic import make_synthetic_dataset
    env, d = tiny_dataset['env'], str(tiny_dataset['id'])
    make_synthetic_dataset(nnunet_env['nnUNet_raw'], 992, 'NoPlans', n_labeled=2, n_unlabeled=1, n_test=0)
    out = run(['nnUNetv2_semi_preprocess', '-d', '992'], env, ok=False)
    assert 'Dataset992_NoPlans/nnUNetPlans.json not found' in out and 'nnUNetv2_plan_and_preprocess -d 992' in out

    unlabeled_raw = tiny_dataset['raw'] / 'imagesUnlabeled'
    clash = unlabeled_raw / 'case_000_0000.nii.gz'
    bad = unlabeled_raw / 'unl_bad_0000.nii.gz'
    cut = unlabeled_raw / 'unl_cut_0000.nii.gz'
    try:
        clash.write_bytes((tiny_dataset['raw'] / 'imagesTr' / 'case_000_0000.nii.gz').read_bytes())
        out = run(['nnUNetv2_semi_preprocess', '-d', d, '-c', '3d_fullres', '-p', SMALL], env, ok=False)
        assert 'case_000' in out and 'clash with labeled cases' in out
        clash.unlink()
        bad.write_bytes(b'this is not a NIfTI file')
        whole = (unlabeled_raw / 'unl_000_0000.nii.gz').read_bytes()
        cut.write_bytes(whole[:len(whole) // 2])  # an interrupted copy: SimpleITK would read half zeros
        out = run(['nnUNetv2_semi_preprocess', '-d', d, '-c', '3d_fullres', '-p', SMALL], env, ok=False)
        assert '2 unlabeled case(s) failed' in out and 'Fix or remove these files' in out
        assert f'{bad} could not be read as NIfTI' in out
        assert f'{cut} is truncated or corrupt: its gzip stream ends early' in out
        checked = run(['nnunet_semi', 'check-images', '-d', d, '--no_pbar'], env, ok=False)
        assert 'ERROR: 2 of 32 image files are bad' in checked and f'{cut} is truncated' in checked
    finally:
        for f in (clash, bad, cut):
            f.unlink(missing_ok=True)
    assert len(committed_cases(str(unlabeled_3d))) == 8  # nothing already preprocessed was lost
    assert 'unl_cut' not in ' '.join(committed_cases(str(unlabeled_3d)))
    assert '30 image files in imagesTr, labelsTr, imagesTs, imagesUnlabeled' in \
        run(['nnunet_semi', 'check-images', '-d', d, '--no_pbar'], env)


def test_mean_teacher_3d_resumes_with_teacher_and_optimizer_and_stock_predict_uses_it(tiny_dataset, unlabeled_3d,
                                                                                        tmp_path):
    ds = tiny_dataset
    saved, trainer = interrupt_then_load(ds, MT, 0)
    assert_restored(trainer.teacher, trainer.optimizer, saved['nnunet_semi']['modules']['teacher'],
                    saved['optimizer_state'])
    ckpt = resume_to_the_end(ds, MT, 0, saved, 'consistency')
    folder = model_folder(ds, MT, '3d_fullres', 0)
    log = newest_log(folder)
    assert 'Unlabeled cases: 8 (8 preprocessed unlabeled images, 0 with labels hidden' in log and 'consistency' in log
    assert (folder / 'progress.png').is_file() and (folder / 'validation' / 'summary.json').is_file()

    teacher = ckpt['nnunet_semi']['modules']['teacher']
    assert teacher.keys() == ckpt['network_weights'].keys()
    assert any(not torch.equal(teacher[k], ckpt['network_weights'][k]) for k in teacher)  # an EMA, not a copy
    logged = ckpt['logging']
    assert logged['weight_consistency'][0] < logged['weight_consistency'][2]

    predict(ds, '3d_fullres', MT, tmp_path / 'pred')


def test_pretrained_weights_from_a_stock_model(tiny_dataset, unlabeled_3d):
    ds = tiny_dataset
    run(train_cmd(ds, '3d_fullres', 2, 'nnUNetTrainer_smoke'), ds['env'])
    stock = model_folder(ds, 'nnUNetTrainer_smoke', '3d_fullres', 2) / 'checkpoint_final.pth'
    # with background augmentation workers: the budget of 2 is shared, one for each loader
    out = run(train_cmd(ds, '3d_fullres', 2, MT, '-pretrained_weights', stock), dict(ds['env'], nnUNet_n_proc_DA='2'))
    assert 'Loading pretrained weights from file' in out
    assert 'unlabeled batch size 2; 1 augmentation worker(s) for them' in out

    # the teacher starts from the pretrained student, not from the random initialisation
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    from nnunetv2.run.run_training import get_trainer_from_args
    trainer = get_trainer_from_args(str(ds['id']), '3d_fullres', 3, MT, SMALL, False, device=torch.device('cpu'))
    trainer.initialize()
    load_pretrained_weights(trainer.network, str(stock))
    trainer.on_train_start()
    unlabeled = trainer.next_unlabeled_batch()['data']  # the planned patch, images only
    assert unlabeled.shape == (trainer.batch_size, 1, *trainer.configuration_manager.patch_size)
    pretrained = torch.load(stock, map_location='cpu', weights_only=False)['network_weights']
    for k, v in trainer.teacher.state_dict().items():
        assert torch.equal(v, trainer.network.state_dict()[k])
        if '.seg_layers.' not in k:  # nnU-Net does not transfer the segmentation heads
            assert torch.equal(v, pretrained[k]), k
    trainer.on_train_end()


def test_2d_needs_unlabeled_data_then_trains_and_predicts(tiny_dataset, tmp_path):
    ds = tiny_dataset
    shutil.rmtree(ds['preprocessed'] / 'nnUNetPlans_2d_unlabeled', ignore_errors=True)  # whatever ran before
    # with augmentation workers, as a user trains: the error naming the fix is the last thing printed
    out = run(train_cmd(ds, '2d', 0, MT), {**ds['env'], 'nnUNet_n_proc_DA': '2'}, ok=False)
    assert out.strip().splitlines()[-1] == (
        f'nnunet_semi.data.unlabeled.UnlabeledDataError: The 8 file(s) in {ds["raw"] / "imagesUnlabeled"} were never '
        f'preprocessed for this training ({ds["preprocessed"] / "nnUNetPlans_2d_unlabeled"} holds no case). Run '
        f'nnUNetv2_semi_preprocess -d {ds["name"]} -c 2d -p {SMALL}, then train again.')
    out = run(['nnUNetv2_semi_preprocess', '-d', ds['id'], '-c', '2d', '-p', SMALL, '-np', '2'], ds['env'])
    assert '8 to do' in out  # through the pool of worker processes
    assert len(committed_cases(str(ds['preprocessed'] / 'nnUNetPlans_2d_unlabeled'))) == 8
    run(train_cmd(ds, '2d', 0, MT), ds['env'])
    assert 'loss terms: supervised' in newest_log(model_folder(ds, MT, '2d', 0))
    predict(ds, '2d', MT, tmp_path)
