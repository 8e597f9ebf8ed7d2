"""CAML's model V (deployed), model A and their average on the validation cases of a trained CAML model
(docs/caml.md).

    python docs/results/caml_networks.py DATASET CONFIGURATION TRAINER PLANS [FOLD]

Run it in the nnU-Net environment the model was trained in (nnUNet_preprocessed holding the split it was trained on,
nnUNet_results the trained model; the benchmark's log prints both for each run). The trainer is built as
nnUNetv2_train builds it and restores fold FOLD's checkpoint_final.pth, so model A has the run's settings. This prints,
per validation case and on the mean, the foreground Dice of V, of A and of the average of their softmax outputs against
the ground truth, in the preprocessed geometry (sliding-window prediction without mirroring; in eval mode A's
cross-sample attention is the identity, as at the authors' test time).
"""
import sys
from os.path import join

import numpy as np
import torch
from torch import nn

from checks import cpu_predictor, dice, load_case
from nnunetv2.run.run_training import get_trainer_from_args


class Average(nn.Module):
    """The mean of two networks' softmax outputs (the predictor sums it over tiles; argmax picks the class)."""

    def __init__(self, first: nn.Module, second: nn.Module):
        super().__init__()
        self.first, self.second = first, second

    def forward(self, x):
        return (torch.softmax(self.first(x), 1) + torch.softmax(self.second(x), 1)) / 2


def main(dataset: str, configuration: str, trainer_name: str, plans: str, fold: int = 0):
    trainer = get_trainer_from_args(dataset, configuration, fold, trainer_name, plans, device=torch.device('cpu'))
    trainer.initialize()
    trainer.load_checkpoint(join(trainer.output_folder, 'checkpoint_final.pth'))
    trainer.set_deep_supervision_enabled(False)
    trainer.model_a.decoder.deep_supervision = False
    networks = {'V (deployed)': trainer.network, 'A': trainer.model_a,
                'average': Average(trainer.network, trainer.model_a)}
    for network in networks.values():
        network.eval()
    predictor = cpu_predictor()
    predictor.manual_initialization(trainer.network, trainer.plans_manager, trainer.configuration_manager, None,
                                    trainer.dataset_json, trainer_name, None)
    labels = trainer.label_manager.foreground_labels
    rows = []
    for case in trainer.do_split()[1]:
        image, truth = load_case(trainer.preprocessed_dataset_folder, case)
        row = []
        for network in networks.values():
            predictor.network = network
            with torch.no_grad():
                segmentation = predictor.predict_sliding_window_return_logits(image).argmax(0).numpy()
            row.append(np.mean([dice(segmentation == k, truth == k) for k in labels]))
        rows.append(row)
        print(f'{case}: ' + ', '.join(f'{name} Dice {d:.3f}' for name, d in zip(networks, row)), flush=True)
    mean = np.mean(rows, 0)
    print(f'mean over {len(rows)} validation cases: ' + ', '.join(f'{name} Dice {d:.3f}'
                                                                   for name, d in zip(networks, mean)))


if __name__ == '__main__':
    main(*sys.argv[1:5], *(int(f) for f in sys.argv[5:6]))
