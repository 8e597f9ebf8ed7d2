"""Unlabeled data: discovery and its errors, atomic case writing, label hiding, the unlabeled loader."""
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_semi.data.loader import UnlabeledDataLoader, UnlabeledImages
from nnunet_semi.data.preprocess import save_case_atomically
from nnunet_semi.data.unlabeled import UnlabeledDataError, collect_unlabeled_cases, committed_cases, \
    find_raw_unlabeled_cases
from nnunetv2.utilities.label_handling.label_handling import LabelManager

DATASET_JSON = {'channel_names': {'0': 'T1', '1': 'T2'}, 'labels': {'background': 0, 'a': 1}, 'numTraining': 0,
                'file_ending': '.nii.gz'}


def _touch_image(path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 4, 4), np.float32)), str(path))


def test_raw_discovery_groups_channels(tmp_path):
    folder = tmp_path / 'imagesUnlabeled'
    folder.mkdir()
    for case in ('u1', 'u2'):
        for c in (1, 0):
            _touch_image(folder / f'{case}_{c:04d}.nii.gz')
    cases = find_raw_unlabeled_cases(str(tmp_path), DATASET_JSON)
    assert list(cases) == ['u1', 'u2']
    assert [p.split('/')[-1] for p in cases['u1']] == ['u1_0000.nii.gz', 'u1_0001.nii.gz']


def test_raw_discovery_errors_name_the_problem(tmp_path):
    with pytest.raises(UnlabeledDataError, match=r'imagesUnlabeled does not exist.*nnUNetv2_semi_split'):
        find_raw_unlabeled_cases(str(tmp_path), DATASET_JSON)
    folder = tmp_path / 'imagesUnlabeled'
    folder.mkdir()
    with pytest.raises(UnlabeledDataError, match='holds no file ending in .nii.gz'):
        find_raw_unlabeled_cases(str(tmp_path), DATASET_JSON)
    _touch_image(folder / 'u1_0000.nii.gz')  # channel 0001 missing
    with pytest.raises(UnlabeledDataError, match=r'u1 .*found u1_0000.nii.gz.*expected u1_0000.nii.gz, u1_0001.nii.gz'):
        find_raw_unlabeled_cases(str(tmp_path), DATASET_JSON)
    _touch_image(folder / 'u1_0001.nii.gz')
    _touch_image(folder / 'scan.nii.gz')
    with pytest.raises(UnlabeledDataError, match=r'scan.nii.gz does not follow nnU-Net\'s naming'):
        find_raw_unlabeled_cases(str(tmp_path), DATASET_JSON)


def test_atomic_case_writing_and_committed_cases(tmp_path):
    data = np.random.rand(1, 6, 8, 8).astype(np.float32)
    save_case_atomically(data, {'spacing': [1, 1, 1]}, str(tmp_path), 'u1', (4, 8, 8))
    (tmp_path / 'u2.b2nd').write_bytes(b'half written')  # an interrupted case: image without properties
    assert committed_cases(str(tmp_path)) == ['u1']
    assert not list((tmp_path / '.partial').iterdir())  # nothing left behind
    loaded = UnlabeledImages({'u1': str(tmp_path / 'u1')}).load_image('u1')
    np.testing.assert_array_equal(np.asarray(loaded[:]), data)


def test_no_unlabeled_data_names_both_sources(tmp_path):
    (tmp_path / 'nnUNetPlans_3d_fullres').mkdir()
    with pytest.raises(UnlabeledDataError, match=r'nnUNetPlans_3d_fullres_unlabeled holds no preprocessed case.*'
                                                 r'splits_final.json hides no labels for fold 0.*imagesUnlabeled.*'
                                                 r'nnUNetv2_semi_preprocess.*nnUNetv2_semi_split'):
        collect_unlabeled_cases(str(tmp_path), 'nnUNetPlans_3d_fullres', 0)


def _loader_folders(tmp_path):
    """An unlabeled folder with 2 cases and a labeled folder whose 'hidden' case has an unreadable label and
    properties file: the loader must not touch them."""
    labeled, unlabeled = tmp_path / 'nnUNetPlans_3d_fullres', tmp_path / 'nnUNetPlans_3d_fullres_unlabeled'
    labeled.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        save_case_atomically(rng.random((2, 10, 20, 20), dtype=np.float32), {}, str(unlabeled), f'u{i}', (8, 16, 16))
    save_case_atomically(rng.random((2, 5, 12, 12), dtype=np.float32), {}, str(labeled), 'h0', (8, 16, 16))
    (labeled / 'h0_seg.b2nd').write_bytes(b'not a label file')
    (labeled / 'h0.pkl').write_bytes(b'not a pickle')
    (tmp_path / 'splits_final.json').write_text(json.dumps([{'train': [], 'val': [], 'unlabeled': ['h0']}]))
    return collect_unlabeled_cases(str(tmp_path), 'nnUNetPlans_3d_fullres', 0)


def test_unlabeled_loader_patch_shape_and_never_reads_labels(tmp_path):
    cases = _loader_folders(tmp_path)
    assert sorted(cases) == ['hidden:h0', 'u0', 'u1']
    lm = LabelManager({'background': 0, 'a': 1}, None)
    dl = UnlabeledDataLoader(UnlabeledImages(cases), 3, (8, 16, 16), (8, 16, 16), lm)
    seen = set()
    for _ in range(6):
        batch = dl.generate_train_batch()
        assert set(batch) == {'data', 'keys'}  # no target
        assert batch['data'].shape == (3, 2, 8, 16, 16) and batch['data'].dtype == torch.float32
        seen.update(batch['keys'])
    assert 'hidden:h0' in seen  # the case whose label and properties files are unreadable was loaded


def test_unlabeled_loader_2d_patches(tmp_path):
    cases = _loader_folders(tmp_path)
    lm = LabelManager({'background': 0, 'a': 1}, None)
    dl = UnlabeledDataLoader(UnlabeledImages(cases), 4, (24, 24), (16, 16), lm)
    assert dl.generate_train_batch()['data'].shape == (4, 2, 24, 24)
