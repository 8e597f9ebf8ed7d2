"""SSCL's pass 1 against its pass 2 on the validation cases of a trained SSCL model (docs/sscl.md).

Pass 1 is the segmentation decoder D_S on the raw encoder features, which no loss trains directly; its foreground is
what pass 2 blanks out. This prints, per validation case of the fold and on the mean, the Dice of pass 1 and of the
deployed pass 2 against the ground truth (both in the preprocessed geometry, sliding-window prediction without
mirroring), and the share of the pass-2 foreground that pass 1 blanked.

    python docs/results/sscl_coarse_pass.py MODEL_FOLDER PREPROCESSED_DATASET_FOLDER [FOLD]

MODEL_FOLDER: nnU-Net's trainer folder (holds fold_F/checkpoint_final.pth and splits are read from the
preprocessed folder's splits_final.json); the data of the model's configuration is read from PREPROCESSED_DATASET_FOLDER.
"""
import json
import sys
from os.path import join

import numpy as np
from torch import nn

from checks import cpu_predictor, dice, load_case


class PassOne(nn.Module):
    """D_S on the raw encoder features of an SSCL network: its pass 1."""

    def __init__(self, sscl):
        super().__init__()
        self.sscl = sscl

    def forward(self, x):
        out = self.sscl.decoder(self.sscl.encoder(x))
        return out[0] if isinstance(out, (list, tuple)) else out


def main(model_folder: str, preprocessed: str, fold: int = 0):
    predictor = cpu_predictor()
    predictor.initialize_from_trained_model_folder(model_folder, (fold,))
    sscl = predictor.network
    sscl.load_state_dict(predictor.list_of_parameters[0])
    sscl.eval()
    deployed, pass_one = sscl, PassOne(sscl).eval()
    data_folder = join(preprocessed, predictor.configuration_manager.data_identifier)
    cases = json.load(open(join(preprocessed, 'splits_final.json')))[fold]['val']
    labels = predictor.label_manager.foreground_labels
    rows = []
    for case in cases:
        image, truth = load_case(data_folder, case)
        segmentations = []
        for network in (pass_one, deployed):
            predictor.network = network
            logits = predictor.predict_sliding_window_return_logits(image)
            segmentations.append(logits.argmax(0).numpy())
        one, two = segmentations
        row = [np.mean([dice(s == k, truth == k) for k in labels]) for s in (one, two)]
        blanked = np.logical_and(one > 0, two > 0).sum() / max((two > 0).sum(), 1)
        rows.append(row + [blanked])
        print(f'{case}: pass 1 Dice {row[0]:.3f}, pass 2 Dice {row[1]:.3f}, pass-2 foreground blanked by pass 1 '
              f'{blanked:.2f}', flush=True)
    mean = np.mean(rows, 0)
    print(f'mean over {len(rows)} validation cases: pass 1 Dice {mean[0]:.3f}, pass 2 (deployed) Dice {mean[1]:.3f}, '
          f'pass-2 foreground blanked by pass 1 {mean[2]:.2f}')


if __name__ == '__main__':
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0)
