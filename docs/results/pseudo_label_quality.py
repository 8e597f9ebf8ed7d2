"""How good a trained model's pseudo-labels are on the unlabeled cases of its split, whose labels
nnUNetv2_semi_split hid (docs/benchmarks.md).

    python docs/results/pseudo_label_quality.py MODEL_FOLDER PREPROCESSED_DATASET_FOLDER [-f FOLD] [--mirroring]

MODEL_FOLDER: nnU-Net's trainer folder (fold_F/checkpoint_final.pth); PREPROCESSED_DATASET_FOLDER: the split's
preprocessed dataset folder (its splits_final.json lists the fold's ``unlabeled`` cases; their hidden labels are read
from the preprocessed data). Each unlabeled case is predicted whole (sliding window; without mirroring, or with
nnU-Net's test-time mirroring: ``--mirroring``) in the preprocessed geometry; a voxel's pseudo-label is the argmax and its confidence the softmax maximum, as FixMatch's weak view has
them. For each confidence threshold this prints, over all unlabeled voxels:

- confident: the share of voxels at or above the threshold (FixMatch's ``confident_share``);
- accuracy: the share of confident voxels whose pseudo-label is right;
- foreground: the share of confident voxels with a foreground pseudo-label;
- fg found: the share of the true foreground voxels that are confident and right (what the term can teach);
- errors kept: the share of all wrong pseudo-labels that are confident (what the term teaches back).

and the pseudo-labels' Dice per foreground class over the cases (the argmax, every voxel).
"""
import argparse
import json
from os.path import join

import numpy as np
import torch

from checks import cpu_predictor, dice, load_case

THRESHOLDS = (0.0, 0.5, 0.8, 0.95, 0.99)


def main(model_folder: str, preprocessed: str, fold: int = 0, mirroring: bool = False):
    predictor = cpu_predictor(mirroring)
    predictor.initialize_from_trained_model_folder(model_folder, (fold,))
    if predictor.label_manager.has_regions:
        raise SystemExit('this check reads softmax pseudo-labels; the model was trained on regions')
    predictor.network.load_state_dict(predictor.list_of_parameters[0])
    predictor.network.eval()
    data_folder = join(preprocessed, predictor.configuration_manager.data_identifier)
    cases = json.load(open(join(preprocessed, 'splits_final.json')))[fold]['unlabeled']
    labels = predictor.label_manager.foreground_labels
    counts = {t: np.zeros(5) for t in THRESHOLDS}  # confident, right, foreground, fg found, errors kept
    total = truth_fg = errors = 0
    dices = []
    for i, case in enumerate(cases):
        image, truth = load_case(data_folder, case)
        with torch.no_grad():
            probabilities = torch.softmax(predictor.predict_sliding_window_return_logits(image).float(), 0)
        confidence, pseudo = (v.numpy() for v in probabilities.max(0))
        right, foreground = pseudo == truth, pseudo > 0
        total, truth_fg, errors = total + truth.size, truth_fg + (truth > 0).sum(), errors + (~right).sum()
        for t in THRESHOLDS:
            confident = confidence >= t
            counts[t] += [confident.sum(), (confident & right).sum(), (confident & foreground).sum(),
                          (confident & right & (truth > 0)).sum(), (confident & ~right).sum()]
        dices.append([dice(pseudo == k, truth == k) for k in labels])
        if (i + 1) % 25 == 0:
            print(f'{i + 1} of {len(cases)} cases', flush=True)
    print(f'{len(cases)} unlabeled cases, {total} voxels, {truth_fg / total:.2%} true foreground, '
          f'{errors / total:.2%} wrong pseudo-labels; pseudo-label Dice per class '
          + ', '.join(f'{k}: {d:.3f}' for k, d in zip(labels, np.mean(dices, 0))))
    print('threshold | confident | accuracy | foreground | fg found | errors kept')
    for t, (confident, right, foreground, found, kept) in counts.items():
        print(f'{t:.2f} | {confident / total:.2%} | {right / max(confident, 1):.2%} | '
              f'{foreground / max(confident, 1):.2%} | {found / truth_fg:.2%} | {kept / max(errors, 1):.2%}')


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('model_folder')
    parser.add_argument('preprocessed')
    parser.add_argument('-f', '--fold', type=int, default=0)
    parser.add_argument('--mirroring', action='store_true')
    args = parser.parse_args()
    main(args.model_folder, args.preprocessed, args.fold, args.mirroring)
