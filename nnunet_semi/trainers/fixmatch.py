"""FixMatch (Sohn et al., NeurIPS 2020), for segmentation on nnU-Net's networks and data.

Each iteration, on the labeled batch and the unlabeled batch u (its weak view: nnU-Net's own augmentation):

    L = L_DC+CE(labeled)  +  lambda_u  L_pl(f(A(u)), y, m)

y, m: the confident pseudo-labels of the weak view, by an EMA teacher of the network (decay 0.99, as BCP's and Mean
Teacher's); A: a strong view (intensity perturbations, then CutMix); L_pl: cross-entropy and a soft Dice on the
confident voxels at every deep-supervision scale, lambda_u = 1 (trainers/weak_to_strong.py has the details and the
settings). Departure: FixMatch's loss is the cross-entropy alone (``_CE``); with one labeled case the Dice term, which
weighs each foreground class alike however few its voxels, gained on every split measured (docs/fixmatch.md).
``class_balanced`` (``_balanced``) weights each confident voxel's cross-entropy by the inverse share of its
pseudo-class among the batch's confident voxels: measured with the cross-entropy alone, on Hippocampus with one
labeled case it amplified the early, wrong foreground pseudo-labels and collapsed the training (docs/fixmatch.md).

Departure: FixMatch labels the weak view with the network itself (``_selfTarget``). On nnU-Net's schedule, with one
or three labeled cases, self-targets left FixMatch behind labeled-only for its first epochs (no confident
foreground, a pseudo-label loss near 1); the EMA teacher kept pace and gained more on five of the six splits
measured (docs/fixmatch.md).

``_spatialWeak``: the weak view gets nnU-Net's spatial transforms and mirroring but not its intensity transforms
(FixMatch's weak view is a flip and a shift only); the strong view then starts from the un-perturbed intensities.

The share of confident voxels is logged beside the terms. The deployed network is nnU-Net's plain network.
"""

import torch

from nnunet_semi.trainers.base import nnUNetTrainerSemi
from nnunet_semi.trainers.variants import add_short_variants, add_variant
from nnunet_semi.trainers.weak_to_strong import WeakToStrong


class nnUNetTrainerFixMatch(WeakToStrong, nnUNetTrainerSemi):
    # settings: WeakToStrong's (trainers/weak_to_strong.py)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.ema_teacher = True  # self.teacher labels the weak views; the base builds, updates and saves it

    def compute_losses(self, labeled, unlabeled):
        return {'supervised': (1.0, self.labeled_loss(labeled)),
                **self.weak_to_strong_terms(unlabeled['data'])}


__all__ = ['nnUNetTrainerFixMatch'] + add_short_variants(nnUNetTrainerFixMatch, globals())
for _suffix, _settings in {'balanced': {'class_balanced': True}, 'selfTarget': {'ema_teacher': False},
                           'CE': {'pseudo_label_dice': False},
                           'spatialWeak': {'unlabeled_intensity_transforms': False}}.items():
    __all__ += add_variant(nnUNetTrainerFixMatch, f'nnUNetTrainerFixMatch_{_suffix}', globals(), **_settings)
