"""UniMatch (Yang et al., CVPR 2023), on nnU-Net's networks and data: FixMatch with a dual strong stream and a
feature-perturbed stream, all supervised by the same confident pseudo-labels of the weak view.

Each iteration, with y, m the weak view's pseudo-labels and confidence mask (as nnUNetTrainerFixMatch):

    L = L_DC+CE(labeled) + 0.25 L_pl(f(A1(u)), y1, m1) + 0.25 L_pl(f(A2(u)), y2, m2) + 0.5 L_pl(g(D(E(u))), y, m)

- A1, A2: two strong views drawn independently (each its own intensity perturbation and CutMix box, whose
  pseudo-labels and mask follow the box);
- the feature-perturbed stream: the weak view through nnU-Net's encoder, channel dropout (p 0.5) on every encoder
  output (skips and bottleneck, as the authors' Dropout2d on all five), then the decoder;
- the weights 0.25, 0.25, 0.5 of the authors' code (whose total also halves the supervised term: here nnU-Net's
  supervised loss keeps its weight 1, as in every trainer of this package), no ramp-up.
L_pl is FixMatch's (losses/pseudo_label.py): cross-entropy and a soft Dice on the confident voxels; the authors'
unlabeled terms are Dice with an ignore mask. ``nnUNetTrainerUniMatch_CE``: the cross-entropy alone.
The weak view's pseudo-labels come from an EMA teacher (decay 0.99), as nnUNetTrainerFixMatch's. Departure: UniMatch
labels with the network itself (``_selfTarget``); with one labeled case the teacher gained +0.085 over that
(docs/unimatch.md).
"""
import torch

from nnunet_semi.data.strong_views import FeatureDropout
from nnunet_semi.trainers.base import unwrap
from nnunet_semi.trainers.fixmatch import nnUNetTrainerFixMatch
from nnunet_semi.trainers.variants import add_short_variants, add_variant


class nnUNetTrainerUniMatch(nnUNetTrainerFixMatch):
    compile_network = False  # the feature-perturbed stream calls the encoder and decoder one by one

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.strong_weight = 0.25  # each of the two strong streams
        self.feature_weight = 0.5  # the feature-perturbed stream
        self.feature_dropout = 0.5

    def compute_losses(self, labeled, unlabeled):
        n, images = labeled['data'].shape[0], unlabeled['data']
        labels, mask = self.weak_pseudo_labels(images)
        views = [self.strong_view(images, labels, mask) for _ in range(2)]
        out_labeled, out_strong = self.split_batch(
            self.network(torch.cat([labeled['data']] + [strong for strong, _, _ in views])), n)
        network = unwrap(self.network)
        out_perturbed = network.decoder(FeatureDropout(self.feature_dropout)(network.encoder(images)))
        terms = {'supervised': (1.0, self.loss(out_labeled, labeled['target']))}
        for i, (_, view_labels, view_mask) in enumerate(views):
            out_view = self.batch_slice(out_strong, i * len(images), (i + 1) * len(images))
            terms[f'strong_{i + 1}'] = (self.strong_weight, self.pseudo_label_loss(out_view, view_labels, view_mask))
        terms['feature_perturbed'] = (self.feature_weight, self.pseudo_label_loss(out_perturbed, labels, mask))
        terms['confident_share'] = (None, mask.float().mean())
        return terms


__all__ = ['nnUNetTrainerUniMatch'] + add_short_variants(nnUNetTrainerUniMatch, globals())
for _suffix, _settings in {'CE': {'pseudo_label_dice': False}, 'selfTarget': {'ema_teacher': False}}.items():
    __all__ += add_variant(nnUNetTrainerUniMatch, f'nnUNetTrainerUniMatch_{_suffix}', globals(), **_settings)
