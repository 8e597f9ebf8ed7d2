"""Whether an image file holds all the data its header promises.

SimpleITK, nnU-Net's default reader, reads a ``.nii.gz`` whose compressed stream was cut off (an interrupted copy or
download) without complaint: the missing part comes back as zeros, and the case is preprocessed cropped to what is
left. NIfTI files (``.nii``, ``.nii.gz``) are checked here: the whole gzip stream must decompress, and it must hold
the header's data offset plus shape x data type bytes. Other formats are read by nnU-Net's reader alone.

``nnunet_semi check-images -d ID`` checks a raw dataset's image folders (imagesTr, labelsTr, imagesTs,
imagesUnlabeled); ``nnUNetv2_semi_preprocess`` checks each unlabeled image before it preprocesses it.
"""
import argparse
import gzip
import multiprocessing
import os
import zlib
from typing import Optional

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isdir, join, load_json
from tqdm import tqdm

NIFTI_ENDINGS = ('.nii', '.nii.gz')
FOLDERS = ('imagesTr', 'labelsTr', 'imagesTs', 'imagesUnlabeled')


def _stored_bytes(path: str) -> int:
    """The file's data bytes (decompressed for .gz); raises EOFError, gzip.BadGzipFile or zlib.error when the gzip
    stream is broken."""
    if not path.endswith('.gz'):
        return os.path.getsize(path)
    total = 0
    with gzip.open(path, 'rb') as f:
        while True:
            chunk = f.read(1 << 24)
            if not chunk:
                return total
            total += len(chunk)


def check_image_file(path: str) -> Optional[str]:
    """None if ``path`` is whole (or not a NIfTI file), else what is wrong with it, in a sentence that names it."""
    if not path.endswith(NIFTI_ENDINGS):
        return None
    import nibabel
    try:
        image = nibabel.load(path)
        header = image.header
        needed = int(image.dataobj.offset) + int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
        stored = _stored_bytes(path)
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        return f'{path} is truncated or corrupt: its gzip stream ends early ({e}). Copy or export it again.'
    except Exception as e:  # not readable as NIfTI at all: nnU-Net's reader reports it with its own words
        return f'{path} could not be read as NIfTI: {type(e).__name__}: {e}'
    if stored < needed:
        return (f'{path} is truncated: it holds {stored} bytes, its header (shape {tuple(header.get_data_shape())}, '
                f'{header.get_data_dtype()}) needs {needed}. Copy or export it again.')
    return None


def check_folders(raw_dataset_folder: str, folders=FOLDERS, num_processes: int = 2, progress: bool = True):
    """Every problem found (a sentence per bad file) in the image files of ``folders`` of a raw dataset folder."""
    dataset_json = load_json(join(raw_dataset_folder, 'dataset.json'))
    files = [join(raw_dataset_folder, d, f) for d in folders if isdir(join(raw_dataset_folder, d))
             for f in sorted(os.listdir(join(raw_dataset_folder, d))) if f.endswith(dataset_json['file_ending'])]
    with multiprocessing.get_context('spawn').Pool(max(1, num_processes)) as pool:
        results = list(tqdm(pool.imap(check_image_file, files, chunksize=4), total=len(files),
                            desc='Checking image files', disable=not progress))
    return len(files), [r for r in results if r is not None]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('-d', required=True, help='dataset name or id')
    parser.add_argument('--folders', nargs='+', default=list(FOLDERS), help=f'default: {" ".join(FOLDERS)}')
    parser.add_argument('-np', type=int, default=2, help='worker processes (default 2)')
    parser.add_argument('--no_pbar', action='store_true', help='no progress bar')


def run(args) -> None:
    """Exit code 1, every bad file named, when any is bad."""
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    folder = join(nnUNet_raw, maybe_convert_to_dataset_name(args.d))
    n, problems = check_folders(folder, args.folders, args.np, not args.no_pbar)
    if problems:
        print(f'ERROR: {len(problems)} of {n} image files are bad:\n  ' + '\n  '.join(problems))
        raise SystemExit(1)
    print(f'{n} image files in {", ".join(args.folders)} of {folder}: all whole')
