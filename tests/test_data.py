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


def test_raw_images_never_preprocessed_name_the_command(tmp_path):
    (tmp_path / 'preprocessed' / 'nnUNetPlans_2d').mkdir(parents=True)
    raw = tmp_path / 'raw' / 'imagesUnlabeled'
    raw.mkdir(parents=True)
    for i in range(3):
        (raw / f'u{i}_0000.nii.gz').write_bytes(b'')
    with pytest.raises(UnlabeledDataError, match=r'The 3 file\(s\) in .*imagesUnlabeled were never preprocessed for '
                                                 r'this training .*nnUNetPlans_2d_unlabeled holds no case\)\. Run '
                                                 r'nnUNetv2_semi_preprocess -d D -c 2d -p P, then train again'):
        collect_unlabeled_cases(str(tmp_path / 'preprocessed'), 'nnUNetPlans_2d', 0, str(tmp_path / 'raw'),
                                'nnUNetv2_semi_preprocess -d D -c 2d -p P')


def _nifti(path, shape=(6, 8, 10)):
    image = sitk.GetImageFromArray(np.arange(np.prod(shape), dtype=np.float32).reshape(shape))
    sitk.WriteImage(image, str(path))
    return path


def test_a_cut_off_nifti_file_is_found(tmp_path):
    from nnunet_semi.data.image_check import check_image_file
    whole_gz, whole = _nifti(tmp_path / 'a_0000.nii.gz'), _nifti(tmp_path / 'b_0000.nii')
    assert check_image_file(str(whole_gz)) is None and check_image_file(str(whole)) is None
    cut_gz = tmp_path / 'c_0000.nii.gz'
    cut_gz.write_bytes(whole_gz.read_bytes()[:len(whole_gz.read_bytes()) // 2])
    # SimpleITK reads it without a word, the missing half as zeros: the reason for the check
    read = sitk.GetArrayFromImage(sitk.ReadImage(str(cut_gz)))
    assert read.shape == (6, 8, 10) and (read == 0).mean() > 0.4
    assert check_image_file(str(cut_gz)) == (f'{cut_gz} is truncated or corrupt: its gzip stream ends early '
                                             f'(Compressed file ended before the end-of-stream marker was reached). '
                                             f'Copy or export it again.')
    cut = tmp_path / 'd_0000.nii'
    cut.write_bytes(whole.read_bytes()[:-100])  # 480 float32 voxels after a 352-byte header: 2272 bytes
    assert whole.stat().st_size == 352 + 480 * 4
    assert check_image_file(str(cut)) == (f'{cut} is truncated: it holds 2172 bytes, its header (shape (10, 8, 6), '
                                          f'float32) needs 2272. Copy or export it again.')
    assert check_image_file(str(tmp_path / 'other.png')) is None  # other formats: nnU-Net's reader alone
