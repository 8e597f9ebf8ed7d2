"""Shared fixtures: nnU-Net folders in a temporary directory, and one prepared tiny dataset per session.

The tiny dataset (the demo's: synthetic, 10 labeled + 8 unlabeled 24x32x32 cases) is planned and preprocessed once
by stock nnU-Net for 2d and 3d_fullres, with nnUNetSmallPlans (8-64 features, batch 2) written beside the stock
plans; its unlabeled images are left for the tests to preprocess.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

BIN = Path(sys.executable).parent
TINY_ID = 990
TINY_NAME = f'Dataset{TINY_ID:03d}_SemiDemo'
SMALL = 'nnUNetSmallPlans'
SHARED_DATA = Path(os.environ.get('NNUNET_SEMI_SHARED_DATA', Path(__file__).resolve().parents[2] / 'shared' / 'data'))


def run(cmd, env, ok=True, timeout=900):
    """Run one of nnU-Net's (or our) console scripts of this environment; return its output."""
    cmd = [str(BIN / cmd[0]) if (BIN / cmd[0]).exists() else cmd[0]] + [str(c) for c in cmd[1:]]
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    if ok and p.returncode != 0:
        raise AssertionError(f'{" ".join(cmd)} failed with exit code {p.returncode}:\n{p.stdout[-6000:]}')
    if not ok and p.returncode == 0:
        raise AssertionError(f'{" ".join(cmd)} was expected to fail:\n{p.stdout[-6000:]}')
    return p.stdout


def pytest_collection_modifyitems(items):
    """Files that run nnU-Net's commands first, the quick ones after them: with two xdist workers taking one file at a
    time (README's ``-n 2 --dist loadfile --no-loadscope-reorder``) the run does not end on one long file alone. The
    order within each file stays."""
    slow = {item.path for item in items if item.get_closest_marker('e2e') or 'tiny_dataset' in item.fixturenames}
    items.sort(key=lambda item: item.path not in slow)


@pytest.fixture(scope='session')
def nnunet_env(tmp_path_factory):
    """nnUNet_raw/preprocessed/results in a temporary folder, set for this process and for subprocesses."""
    root = tmp_path_factory.mktemp('nnunet')
    env = {'nnUNet_raw': root / 'raw', 'nnUNet_preprocessed': root / 'preprocessed', 'nnUNet_results': root / 'results'}
    for v in env.values():
        v.mkdir()
    env = {k: str(v) for k, v in env.items()}
    env.update(nnUNet_n_proc_DA='0', nnUNet_def_n_proc='1', nnUNet_compile='0', PYTHONUNBUFFERED='1')
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield dict(os.environ)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def model_folder(ds, trainer, configuration, fold):
    """A fold folder of the tiny dataset's results, small plans."""
    return ds['results'] / f'{trainer}__{SMALL}__{configuration}' / f'fold_{fold}'


def train_cmd(ds, configuration, fold, trainer, *extra):
    """nnUNetv2_train on the tiny dataset with the small plans, on the CPU."""
    return ['nnUNetv2_train', ds['id'], configuration, fold, '-tr', trainer, '-p', SMALL, '-device', 'cpu', *extra]


def preprocess_unlabeled(ds, configuration):
    """nnUNetv2_semi_preprocess of the tiny dataset's unlabeled images, unless every case is there already (the command
    would skip them all; tests of the command itself run it directly)."""
    from nnunet_semi.data.unlabeled import committed_cases
    cases = list((ds['raw'] / 'imagesUnlabeled').glob('*_0000.nii.gz'))
    if len(committed_cases(str(ds['preprocessed'] / f'nnUNetPlans_{configuration}_unlabeled'))) < len(cases):
        run(['nnUNetv2_semi_preprocess', '-d', ds['id'], '-c', configuration, '-p', SMALL], ds['env'])


def train(ds, configuration, fold, trainer):
    """Preprocess the unlabeled images, run nnUNetv2_train to the end; checks progress.png was drawn and returns
    (the training log, the final checkpoint)."""
    import torch
    preprocess_unlabeled(ds, configuration)
    run(train_cmd(ds, configuration, fold, trainer), ds['env'])
    folder = model_folder(ds, trainer, configuration, fold)
    assert (folder / 'progress.png').is_file()
    return newest_log(folder), torch.load(folder / 'checkpoint_final.pth', map_location='cpu', weights_only=False)


def trainer_from_args(ds, trainer, fold, configuration='3d_fullres', **settings):
    """A trainer of the tiny dataset built as nnUNetv2_train builds it (CPU), with attributes changed before
    initialize()."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args
    t = get_trainer_from_args(str(ds['id']), configuration, fold, trainer, SMALL, False, device=torch.device('cpu'))
    for k, v in settings.items():
        setattr(t, k, v)
    t.initialize()
    return t


def predict(ds, configuration, trainer, out: Path, cases=('test_000', 'test_001'), workers=False, probabilities=False):
    """nnUNetv2_predict of the tiny dataset's test images with fold 0 of a trained model; checks the segmentations.
    Without ``workers``, -npp 0 -nps 0: preprocessing and export in the command's own process, the same prediction
    without a fresh Python (torch, nnU-Net) started for each of nnU-Net's worker processes. ``probabilities``: also
    nnU-Net's ``--save_probabilities`` (CASE.npz)."""
    images = ds['raw'] / 'imagesTs'
    run(['nnUNetv2_predict', '-i', images, '-o', out, '-d', ds['id'], '-c', configuration, '-tr', trainer, '-p', SMALL,
         '-f', '0', '-device', 'cpu', *([] if workers else ['-npp', '0', '-nps', '0']),
         *(['--save_probabilities'] if probabilities else [])], ds['env'])
    assert_segmentations(out, images, cases)


def assert_predicts_and_exports_to_stock(ds, configuration, trainer, tmp_path: Path, cases=('test_000', 'test_001'),
                                        stock_command=False):
    """nnUNetv2_predict with the plugin (``predict``), then the documented export path: ``nnunet_semi export`` writes
    a stock model folder (trainer nnUNetTrainer, no plugin state) that stock nnU-Net predicts exactly as the plugin
    did: the same probabilities to float rounding, the same label wherever the two most probable classes are not tied
    within that rounding (on the same number of threads the two are equal to the bit; on 2 threads against 1 a 3d
    smoke model's probabilities differed by up to 5e-4, enough to flip a near-tie). The export and stock nnU-Net's
    prediction run in this process (``nnunet_semi.cli.main``; nnUNetPredictor on the exported folder, what
    nnUNetv2_predict_from_modelfolder runs, trainer nnUNetTrainer found in nnunetv2 itself) or, with
    ``stock_command``, as the commands: the prediction with nnU-Net's worker processes, the export as
    ``nnunet_semi export``, nnUNetv2_predict_from_modelfolder with the plugin switched off; then a second export
    refuses to overwrite and names the file."""
    import contextlib
    import io
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunet_semi.cli import main as nnunet_semi_cli
    plugin_prediction = tmp_path / 'plugin'
    predict(ds, configuration, trainer, plugin_prediction, cases, workers=stock_command, probabilities=True)
    exported = tmp_path / 'stock_model'
    export = ['export', '-d', str(ds['id']), '-c', configuration, '-tr', trainer, '-p', SMALL, '-o', str(exported)]
    if stock_command:
        printed = run(['nnunet_semi', *export], ds['env'])
    else:
        with contextlib.redirect_stdout(io.StringIO()) as out:
            nnunet_semi_cli(export)
        printed = out.getvalue()
    assert 'nnUNetv2_predict_from_modelfolder' in printed
    stock_ckpt = torch.load(exported / 'fold_0' / 'checkpoint_final.pth', map_location='cpu', weights_only=False)
    assert stock_ckpt['trainer_name'] == 'nnUNetTrainer' and 'nnunet_semi' not in stock_ckpt
    stock = tmp_path / 'stock'
    if stock_command:
        no_plugin = {k: v for k, v in ds['env'].items() if k != 'nnUNet_extTrainer'}
        no_plugin['NNUNET_SEMI_NO_HOOK'] = '1'
        run(['nnUNetv2_predict_from_modelfolder', '-i', ds['raw'] / 'imagesTs', '-o', stock, '-m', exported, '-f', '0',
             '-device', 'cpu', '--save_probabilities'], no_plugin)
        assert f'{exported / "fold_0" / "checkpoint_final.pth"} exists already' in run(['nnunet_semi', *export],
                                                                                      ds['env'], ok=False)
    else:
        predictor = nnUNetPredictor(perform_everything_on_device=False, device=torch.device('cpu'), allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(exported), (0,), 'checkpoint_final.pth')
        assert type(predictor.network).__module__.startswith('dynamic_network_architectures')  # stock nnU-Net's
        stock.mkdir()
        # the command predicts on nnUNet_def_n_proc threads; this process imported nnU-Net before that was set
        threads = torch.get_num_threads()
        torch.set_num_threads(int(ds['env']['nnUNet_def_n_proc']))
        try:
            predictor.predict_from_files_sequential(str(ds['raw'] / 'imagesTs'), str(stock), save_probabilities=True)
        finally:
            torch.set_num_threads(threads)
    for case in cases:
        a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(f / f'{case}.nii.gz'))) for f in (plugin_prediction, stock))
        p, q = (np.load(f / f'{case}.npz')['probabilities'] for f in (plugin_prediction, stock))
        assert p.shape == q.shape == (p.shape[0], *a.shape) and np.abs(p - q).max() < 2e-3, case
        top_two = np.sort(p, axis=0)[-2:]
        decided = top_two[1] - top_two[0] > 1e-2
        assert decided.mean() > 0.9 and np.array_equal(a[decided], b[decided]), case


def kill_when(cmd, env, condition, what: str, timeout=600):
    """Start a training command, SIGKILL it as soon as ``condition()`` holds: an interruption with no chance to clean
    up. ``what`` names the condition in the failure message."""
    proc = subprocess.Popen([str(BIN / cmd[0])] + [str(c) for c in cmd[1:]], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + timeout
        while not condition() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert condition(), f'{what} never happened before the command ended'
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def kill_after_first_checkpoint(cmd, env, latest: Path, timeout=600):
    """Start a training command, SIGKILL it as soon as ``latest`` (checkpoint_latest.pth) exists."""
    kill_when(cmd, env, latest.is_file, f'{latest.name} written after the first epoch', timeout)


def interrupt_then_load(ds, trainer, fold):
    """Train in 3d_fullres, SIGKILL after the first checkpoint_latest.pth, and load it into a fresh trainer as --c
    would. Returns (the saved checkpoint, the restored trainer)."""
    import torch
    preprocess_unlabeled(ds, '3d_fullres')
    folder = model_folder(ds, trainer, '3d_fullres', fold)
    latest = folder / 'checkpoint_latest.pth'
    kill_after_first_checkpoint(train_cmd(ds, '3d_fullres', fold, trainer), ds['env'], latest)
    saved = torch.load(latest, map_location='cpu', weights_only=False)
    assert 1 <= saved['current_epoch'] < 3 and not (folder / 'checkpoint_final.pth').exists()
    restored = trainer_from_args(ds, trainer, fold)
    restored.load_checkpoint(str(latest))
    assert restored.semi_restored and restored.current_epoch == saved['current_epoch']
    return saved, restored


def assert_restored(module, optimizer, saved_module: dict, saved_optimizer: dict):
    """A module's weights and an SGD optimizer's momentum buffers equal those saved."""
    import torch
    for k, v in saved_module.items():
        assert torch.equal(module.state_dict()[k], v), k
    restored = optimizer.state_dict()
    assert len(saved_optimizer['state']) > 0 and restored['param_groups'] == saved_optimizer['param_groups']
    for i, state in saved_optimizer['state'].items():
        assert torch.equal(restored['state'][i]['momentum_buffer'], state['momentum_buffer'])


def resume_to_the_end(ds, trainer, fold, saved: dict, term: str):
    """nnUNetv2_train --c after interrupt_then_load: it goes on from the saved epoch (not from 0) to the end, with the
    loss term logged for every epoch. Returns the final checkpoint."""
    import torch
    run(train_cmd(ds, '3d_fullres', fold, trainer, '--c'), ds['env'])
    folder = model_folder(ds, trainer, '3d_fullres', fold)
    log = newest_log(folder)
    assert f'Epoch {saved["current_epoch"]}' in log and 'Epoch 0 \n' not in log
    final = torch.load(folder / 'checkpoint_final.pth', map_location='cpu', weights_only=False)
    assert final['current_epoch'] == 3 and len(final['logging']['term_' + term]) == 3
    return final


def newest_log(model_folder: Path) -> str:
    """The text of nnU-Net's newest training log in a fold folder."""
    return sorted(model_folder.glob('training_log_*.txt'))[-1].read_text()


def all_logs(model_folder: Path) -> str:
    """The text of every training log in a fold folder (an interrupted run and its resumption), oldest first."""
    return ''.join(f.read_text() for f in sorted(model_folder.glob('training_log_*.txt')))


def predict_one_class(network, label: int, logit: float = 10.0) -> None:
    """The network's full-resolution head outputs ``logit`` for class ``label`` and 0 for the others at every voxel
    (with 3 classes and logit 10: probability 0.9999)."""
    import torch
    head = network.decoder.seg_layers[-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(logit * torch.eye(head.bias.numel())[label])


def assert_segmentations(prediction_folder: Path, image_folder: Path, cases, labels=(0, 1, 2)):
    """Each case was predicted with its image's shape and only the dataset's labels."""
    for case in cases:
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(prediction_folder / f'{case}.nii.gz')))
        img = sitk.GetArrayFromImage(sitk.ReadImage(str(image_folder / f'{case}_0000.nii.gz')))
        assert seg.shape == img.shape and set(np.unique(seg).tolist()) <= set(labels), case


@pytest.fixture(scope='session')
def tiny_dataset(nnunet_env, tmp_path_factory):
    """Prepared once per run: under pytest-xdist the first worker to need it prepares it in the run's shared temporary
    folder (a file lock keeps the other waiting) and each worker copies it into its own nnU-Net folders."""
    import shutil
    from filelock import FileLock
    from nnunet_semi.demo import prepare_example

    def prepare(env):
        for k in folders + ('nnUNet_results',):
            Path(env[k]).mkdir(parents=True, exist_ok=True)
        prepare_example(env, TINY_ID, ('2d', '3d_fullres'), unlabeled=False, quiet=True)

    folders = ('nnUNet_raw', 'nnUNet_preprocessed')
    if os.environ.get('PYTEST_XDIST_WORKER'):
        shared = tmp_path_factory.getbasetemp().parent / 'tiny_dataset'
        with FileLock(f'{shared}.lock'):
            if not (shared / 'prepared').is_file():
                try:
                    prepare({**nnunet_env, **{k: str(shared / k) for k in folders + ('nnUNet_results',)}})
                except BaseException:
                    shutil.rmtree(shared, ignore_errors=True)
                    raise
                (shared / 'prepared').touch()
        for k in folders:
            shutil.copytree(shared / k / TINY_NAME, Path(nnunet_env[k]) / TINY_NAME)
    else:
        prepare(nnunet_env)
    return {'id': TINY_ID, 'name': TINY_NAME, 'raw': Path(nnunet_env['nnUNet_raw']) / TINY_NAME,
            'preprocessed': Path(nnunet_env['nnUNet_preprocessed']) / TINY_NAME,
            'results': Path(nnunet_env['nnUNet_results']) / TINY_NAME, 'env': nnunet_env}
