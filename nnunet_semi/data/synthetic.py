"""A small synthetic nnU-Net dataset (raw format) with unlabeled images, for the demo and the tests.

Each image is noise plus two blobs: a bright ellipsoid (label 1) and a darker cube (label 2) at random positions,
one MRI-like channel, spacing 1 mm. Labeled cases go to imagesTr/labelsTr, unlabeled ones to imagesUnlabeled/,
test images to imagesTs/.
"""
import numpy as np
import SimpleITK as sitk
from batchgenerators.utilities.file_and_folder_operations import join, maybe_mkdir_p, save_json


def _case(rng: np.random.Generator, shape):
    zz, yy, xx = np.meshgrid(*[np.arange(s) for s in shape], indexing='ij')
    seg = np.zeros(shape, dtype=np.uint8)
    c = [rng.uniform(0.3 * s, 0.7 * s) for s in shape]
    r = [rng.uniform(0.15 * s, 0.25 * s) for s in shape]
    seg[((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 <= 1] = 1
    side = [max(2, int(0.2 * s)) for s in shape]
    lo = [int(rng.integers(0, s - d)) for s, d in zip(shape, side)]
    seg[lo[0]:lo[0] + side[0], lo[1]:lo[1] + side[1], lo[2]:lo[2] + side[2]] = 2
    image = rng.normal(100, 10, shape) + 80 * (seg == 1) - 50 * (seg == 2)
    return image.astype(np.float32), seg


def _write(array, path, is_seg=False):
    img = sitk.GetImageFromArray(array.astype(np.uint8) if is_seg else array)
    img.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(img, path)


def make_synthetic_dataset(raw_root: str, dataset_id: int = 990, name: str = 'SemiDemo', n_labeled: int = 10,
                           n_unlabeled: int = 8, n_test: int = 2, shape=(24, 32, 32), seed: int = 0) -> str:
    """Write DatasetXXX_name into raw_root and return its folder."""
    rng = np.random.default_rng(seed)
    folder = join(raw_root, f'Dataset{dataset_id:03d}_{name}')
    for sub in ('imagesTr', 'labelsTr', 'imagesUnlabeled', 'imagesTs'):
        maybe_mkdir_p(join(folder, sub))
    for i in range(n_labeled):
        image, seg = _case(rng, shape)
        _write(image, join(folder, 'imagesTr', f'case_{i:03d}_0000.nii.gz'))
        _write(seg, join(folder, 'labelsTr', f'case_{i:03d}.nii.gz'), is_seg=True)
    for i in range(n_unlabeled):
        _write(_case(rng, shape)[0], join(folder, 'imagesUnlabeled', f'unl_{i:03d}_0000.nii.gz'))
    for i in range(n_test):
        _write(_case(rng, shape)[0], join(folder, 'imagesTs', f'test_{i:03d}_0000.nii.gz'))
    save_json({'channel_names': {'0': 'MRI'}, 'labels': {'background': 0, 'ellipsoid': 1, 'cube': 2},
               'numTraining': n_labeled, 'file_ending': '.nii.gz', 'name': name},
              join(folder, 'dataset.json'), sort_keys=False)
    return folder
