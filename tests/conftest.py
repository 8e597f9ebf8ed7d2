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


def kill_after_first_checkpoint(cmd, env, latest: Path, timeout=600):
    """Start a training command, SIGKILL it as soon as ``latest`` (checkpoint_latest.pth) exists: an interruption
    with no chance to clean up."""
    proc = subprocess.Popen([str(BIN / cmd[0])] + [str(c) for c in cmd[1:]], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + timeout
        while not latest.is_file() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert latest.is_file(), f'no {latest.name} was written after the first epoch'
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def newest_log(model_folder: Path) -> str:
    """The text of nnU-Net's newest training log in a fold folder."""
    return sorted(model_folder.glob('training_log_*.txt'))[-1].read_text()


def assert_segmentations(prediction_folder: Path, image_folder: Path, cases, labels=(0, 1, 2)):
    """Each case was predicted with its image's shape and only the dataset's labels."""
    for case in cases:
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(prediction_folder / f'{case}.nii.gz')))
        img = sitk.GetArrayFromImage(sitk.ReadImage(str(image_folder / f'{case}_0000.nii.gz')))
        assert seg.shape == img.shape and set(np.unique(seg).tolist()) <= set(labels), case


@pytest.fixture(scope='session')
def tiny_dataset(nnunet_env):
    from nnunet_semi.demo import prepare_example

    raw = prepare_example(nnunet_env, TINY_ID, ('2d', '3d_fullres'), unlabeled=False, quiet=True)
    return {'id': TINY_ID, 'name': TINY_NAME, 'raw': Path(raw),
            'preprocessed': Path(nnunet_env['nnUNet_preprocessed']) / TINY_NAME,
            'results': Path(nnunet_env['nnUNet_results']) / TINY_NAME, 'env': nnunet_env}
