"""What the checks of trained models in this folder share (``python docs/results/<check>.py`` puts this folder on
the path): a CPU predictor, a preprocessed case and its labels, and the Dice of two masks."""
from os.path import join

import blosc2
import numpy as np
import torch

from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor


def cpu_predictor(mirroring: bool = False) -> nnUNetPredictor:
    """nnU-Net's sliding-window predictor on the CPU (``mirroring``: nnU-Net's test-time mirroring, its logits averaged
    over the flips the model allows), on one thread: more threads beside a training on the same cores slow it a
    hundredfold (measured)."""
    torch.set_num_threads(1)
    return nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                           perform_everything_on_device=False, device=torch.device('cpu'), allow_tqdm=False)


def load_case(data_folder: str, case: str):
    """(image (C, *spatial) float tensor, labels (*spatial) array) of a preprocessed case."""
    image = torch.from_numpy(np.asarray(blosc2.open(join(data_folder, f'{case}.b2nd'))[:])).float()
    return image, np.asarray(blosc2.open(join(data_folder, f'{case}_seg.b2nd'))[:])[0]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)
