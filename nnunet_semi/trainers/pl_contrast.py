"""Pseudo-label self-training with a local contrastive loss (Chaitanya et al., MedIA 2023), on nnU-Net's networks and
data. The authors ran it as separate manual stages; here the stages run by themselves inside one nnUNetv2_train:

1. warm-up: nnU-Net's labeled-only training (the first ``warmup_fraction`` of the epochs; the paper's baseline, 5,000
   of its 20,000 iterations);
2. at the start of each round: pseudo-labels for every unlabeled case, by nnU-Net's own sliding-window prediction on
   the preprocessed unlabeled volumes with the current network (argmax; no CRF), written to disk
   (data/pseudo_labels.py);
3. rounds of joint training (``num_rounds``, equal shares of the remaining epochs). Each iteration, on the labeled
   batch and a batch of unlabeled cases with their pseudo-labels (same loader and augmentation as labeled cases):

    L = L_DC+CE(labeled) + lambda * L_local(labeled with ground truth + unlabeled with pseudo-labels),  lambda = 0.1

   L_local (losses/local_contrastive.py) on the 16-d pixel embeddings of a two-layer 1x1 projection head on the last
   decoder stage, at full resolution: 3 anchors per foreground class per image, tau = 0.1, class-mean prototypes of
   the image and of its paired image as positives, the other classes' prototypes as negatives. The pairs mix
   labeled and unlabeled images, and every other image with a second (brightness and contrast) view of itself.
   Pseudo-labels enter the contrastive term only, as in the authors' code; ``self_training_weight`` (the
   ``_selfTraining`` variant) also trains the unlabeled batch's segmentation on their confident voxels.

After ``-pretrained_weights`` the warm-up is shorter (``pretrained_warmup_fraction``): nnU-Net never transfers the
segmentation layers, so a few labeled epochs must train them before the first pseudo-labels. The deployed network is
nnU-Net's plain network; the projection head is saved under the checkpoint's ``nnunet_semi`` key.

``nnUNetTrainerPLContrast_FixMatch`` and ``_FixMatchEMA``: FixMatch's pseudo-label term on the rounds' unlabeled
batches, beside the contrastive term (trainers/weak_to_strong.py); the warm-up stays labeled-only.
"""
import shutil
from time import time
from typing import List, Sequence, Tuple

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import isdir

from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from nnunet_semi.data import pseudo_labels
from nnunet_semi.data.pseudo_labels import PseudoLabeledCases, PseudoLabeledDataLoader, write_pseudo_labels
from nnunet_semi.data.strong_views import intensity_view
from nnunet_semi.losses.local_contrastive import local_contrastive_loss
from nnunet_semi.networks.parts import output_of
from nnunet_semi.networks.projection import ProjectionHead
from nnunet_semi.trainers.base import nnUNetTrainerSemi, unwrap
from nnunet_semi.trainers.variants import add_short_variants, add_variant
from nnunet_semi.trainers.weak_to_strong import add_fixmatch_variant


def warmup_length(num_epochs: int, fraction: float) -> int:
    """Warm-up epochs: a fraction of the training, at least one, and at least one epoch left for the rounds."""
    if fraction <= 0 or num_epochs < 2:
        return 0
    return min(max(1, int(round(fraction * num_epochs))), num_epochs - 1)


def round_starts(num_epochs: int, warmup_epochs: int, num_rounds: int) -> List[int]:
    """The epochs at which rounds 1, 2, ... begin: equal shares of the epochs after the warm-up (one round per epoch
    when there are fewer epochs than rounds)."""
    span = num_epochs - warmup_epochs
    rounds = max(1, min(num_rounds, span))
    return [warmup_epochs + (k * span) // rounds for k in range(rounds)]


def viewed_images(n_labeled: int, n_unlabeled: int) -> List[int]:
    """The images of the batch [labeled..., unlabeled...] that get a second intensity view, each paired with itself:
    every other image of each group (4 of the paper's 10 pairs per batch are one slice under two augmentations)."""
    return list(range(0, n_labeled, 2)) + list(range(n_labeled, n_labeled + n_unlabeled, 2))


def contrastive_pairs(n_labeled: int, n_unlabeled: int, viewed: Sequence[int] = ()) -> List[Tuple[int, int]]:
    """Pairs of images of the batch [labeled..., unlabeled..., second views of ``viewed``...]: labeled i with
    unlabeled i, within each group each image with the next (cyclically), and each viewed image with its second view,
    so the batch mixes labeled-unlabeled, labeled-labeled, unlabeled-unlabeled and same-image pairs, as the paper's
    does."""
    pairs = [(i, n_labeled + i) for i in range(min(n_labeled, n_unlabeled))]
    for start, count in ((0, n_labeled), (n_labeled, n_unlabeled)):
        if count == 2:
            pairs.append((start, start + 1))
        elif count > 2:
            pairs += [(start + i, start + (i + 1) % count) for i in range(count)]
    return pairs + [(i, n_labeled + n_unlabeled + k) for k, i in enumerate(viewed)]


class nnUNetTrainerPLContrast(nnUNetTrainerSemi):
    single_gpu = True  # pseudo-labels are predicted by one process
    compile_network = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.contrastive_weight = 0.1  # lambda
        self.temperature = 0.1  # tau
        self.anchors_per_class = 3  # anchor pixels per foreground class per image
        self.projection_dim = 16
        self.warmup_fraction = 0.25  # labeled-only epochs before the first pseudo-labels (paper: 5,000 of 20,000)
        self.pretrained_warmup_fraction = 0.05  # the same after -pretrained_weights
        self.num_rounds = 3  # pseudo-labels are regenerated at the start of each
        # e.g. 0.9: the rounds' pseudo-label pixels of lower probability are left out of L_local (its own name: the
        # _FixMatch variants' term has its confidence_threshold)
        self.round_confidence_threshold = None
        self.same_image_pairs = True  # second intensity views of every other image, paired with their originals
        self.self_training_weight = 0.0  # > 0: the pseudo-labels also supervise the segmentation (_selfTraining)
        self.pseudo_label_mirroring = False  # nnU-Net's test-time mirroring for pseudo-labels (2^axes times slower)
        self.warmup_epochs = None  # decided at the start of training, kept in the checkpoint
        self.round = 0  # 0: warm-up
        self.unlabeled_cases = {}
        self.pseudo_label_folder = pseudo_labels.run_folder(  # this run's rounds (data/pseudo_labels.py)
            self.preprocessed_dataset_folder_base, self.configuration_manager.data_identifier,
            self.__class__.__name__, self.plans_manager.plans_name, fold)

    # ------------------------------------------------------------------ modules
    def build_semi_modules(self):
        if self.round_confidence_threshold is not None and self.label_manager.has_regions:
            raise RuntimeError(f'{self.__class__.__name__}: round_confidence_threshold needs plain labels; '
                               f'dataset.json defines regions. Set round_confidence_threshold = None for this dataset.')
        encoder = unwrap(self.network).encoder
        self.projection_head = ProjectionHead(encoder.output_channels[0], encoder.conv_op, self.projection_dim)
        self.register_optimizer('projection_head', self.projection_head.parameters())

    def semi_modules(self):
        return {'projection_head': self.projection_head}

    def semi_state_dict(self):
        return {'warmup_epochs': self.warmup_epochs}

    def load_semi_state_dict(self, state):
        self.warmup_epochs = state['warmup_epochs']

    @property
    def num_contrastive_classes(self) -> int:
        """Background plus the foreground labels (or regions)."""
        lm = self.label_manager
        return 1 + len(lm.foreground_regions if lm.has_regions else lm.foreground_labels)

    # ------------------------------------------------------------------ stages
    def get_unlabeled_dataloader(self, num_processes: int):
        self.unlabeled_cases = self.find_unlabeled_cases(num_processes)
        return None  # no unlabeled batches in the warm-up; each round starts a loader over its own pseudo-labels

    def on_semi_train_start(self, resumed: bool):
        if not resumed:
            pretrained = self.started_from_pretrained_weights()
            fraction = self.pretrained_warmup_fraction if pretrained else self.warmup_fraction
            self.warmup_epochs = warmup_length(self.num_epochs, fraction)
            if isdir(self.pseudo_label_folder):  # a fresh run: pseudo-labels of an earlier run are not ours
                shutil.rmtree(self.pseudo_label_folder)
        starts = round_starts(self.num_epochs, self.warmup_epochs, self.num_rounds)
        self.print_to_log_file(
            f'PLContrast: {self.warmup_epochs} labeled-only warm-up epoch(s), then {len(starts)} round(s) starting at '
            f'epochs {starts}, each with fresh pseudo-labels of {len(self.unlabeled_cases)} unlabeled cases in '
            f'{self.pseudo_label_folder}; lambda {self.contrastive_weight}, tau {self.temperature}, '
            f'{self.anchors_per_class} anchors per class')

    def round_of(self, epoch: int) -> int:
        return sum(epoch >= s for s in round_starts(self.num_epochs, self.warmup_epochs, self.num_rounds))

    def on_train_epoch_start(self):
        r = self.round_of(self.current_epoch)
        if r != self.round:  # a new round, or a resumed run inside one
            self.start_round(r)
        super().on_train_epoch_start()

    def start_round(self, r: int):
        folder = pseudo_labels.round_folder(self.pseudo_label_folder, r)
        self.print_to_log_file(f'Round {r}: pseudo-labels of {len(self.unlabeled_cases)} unlabeled cases from the '
                               f'current network')
        start = time()
        self.set_deep_supervision_enabled(False)
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=self.pseudo_label_mirroring,
                                    perform_everything_on_device=self.device.type == 'cuda', device=self.device,
                                    verbose=False, allow_tqdm=False)
        predictor.manual_initialization(self.network, self.plans_manager, self.configuration_manager, None,
                                        self.dataset_json, self.__class__.__name__,
                                        self.inference_allowed_mirroring_axes)
        cases = PseudoLabeledCases(self.unlabeled_cases, folder)
        lm = self.label_manager
        written = write_pseudo_labels(
            cases.identifiers, folder, lambda key: self.pseudo_label(predictor, cases.load_image(key)),
            lm.foreground_regions if lm.has_regions else lm.foreground_labels, self.print_to_log_file)
        self.set_deep_supervision_enabled(self.enable_deep_supervision)
        self.print_to_log_file(f'Round {r}: {written} pseudo-labels written in {time() - start:.1f} s')

        self.replace_unlabeled_dataloader(self.unlabeled_augmenter(
            PseudoLabeledDataLoader, cases, self.num_unlabeled_processes,
            oversample_foreground_percent=self.oversample_foreground_percent,
            probabilistic_oversampling=self.probabilistic_oversampling))
        self.round = r

    @torch.no_grad()
    def pseudo_label(self, predictor: nnUNetPredictor, image) -> np.ndarray:
        """The segmentation of one preprocessed volume (C, *shape) by sliding-window prediction: (1, *shape) labels,
        UNCERTAIN where the predicted probability is below the confidence threshold."""
        logits = predictor.predict_sliding_window_return_logits(torch.from_numpy(np.asarray(image[:])).float())
        logits = logits.cpu()  # nnU-Net's label manager converts tensors through numpy
        segmentation = self.label_manager.convert_logits_to_segmentation(logits)
        if self.round_confidence_threshold is not None:
            confidence = self.label_manager.apply_inference_nonlin(logits).max(0).values
            segmentation = torch.where(confidence < self.round_confidence_threshold, pseudo_labels.UNCERTAIN,
                                       segmentation)
        return segmentation.numpy()[None]

    # ------------------------------------------------------------------ one iteration
    def contrastive_classes(self, target: torch.Tensor) -> torch.Tensor:
        """(B, *spatial) classes for L_local from a full-resolution target: 0 background, c for label (or region) c,
        -1 excluded (the ignore label, uncertain pseudo-labels). A pixel in several regions takes the last."""
        if self.label_manager.has_regions:
            classes = torch.zeros_like(target[:, 0], dtype=torch.long)
            for i in range(self.num_contrastive_classes - 1):
                classes[target[:, i] > 0.5] = i + 1
            return classes
        classes = target[:, 0].long()
        return classes.masked_fill((classes < 0) | (classes >= self.num_contrastive_classes), -1)

    def compute_losses(self, labeled, unlabeled):
        if unlabeled is None:  # warm-up: labeled cases only
            return {'supervised': (1.0, self.labeled_loss(labeled)),
                    'contrastive': (0.0, torch.zeros((), device=self.device))}
        images, target = torch.cat((labeled['data'], unlabeled['data'])), labeled['target']
        n, u = labeled['data'].shape[0], unlabeled['data'].shape[0]
        classes = torch.cat((self.contrastive_classes(self.full_resolution(target)),
                             self.contrastive_classes(self.full_resolution(unlabeled['target']))))  # pseudo-labels
        viewed = viewed_images(n, u) if self.same_image_pairs else []
        if viewed:  # the paper's second view: brightness and contrast (nnU-Net's augmentation made the first)
            views = intensity_view(images[viewed], p=1.0, gamma=(1.0, 1.0), noise_std=(0.0, 0.0), p_blur=0.0)
            images, classes = torch.cat((images, views)), torch.cat((classes, classes[viewed]))
        with output_of(unwrap(self.network).decoder.stages[-1]) as features:
            output = self.network(images)
        contrastive = local_contrastive_loss(self.projection_head(features.value), classes,
                                             self.num_contrastive_classes, contrastive_pairs(n, u, viewed),
                                             self.anchors_per_class, self.temperature)
        terms = {'supervised': (1.0, self.loss(self.batch_slice(output, 0, n), target)),
                 'contrastive': (self.contrastive_weight, contrastive)}
        if self.self_training_weight:
            terms.update(self.self_training_terms(self.batch_slice(output, n, n + u), unlabeled['target']))
        return terms

    def self_training_terms(self, output, pseudo_target):
        """The unlabeled batch's segmentation against its pseudo-labels (augmented with it by nnU-Net's loader): CE +
        soft Dice on the voxels not stored as uncertain, at every deep-supervision scale; and the share of those
        voxels (logged)."""
        pseudo_target = self.full_resolution(pseudo_target)
        regions = self.label_manager.has_regions
        labels = pseudo_target if regions else pseudo_target[:, 0]
        mask = torch.ones_like(labels, dtype=torch.bool) if regions else labels >= 0
        # named apart from FixMatch's term and share, which a _FixMatch variant logs beside them
        return {'self_training': (self.self_training_weight, self.masked_loss(output, labels.clamp_min(0), mask)),
                'self_training_confident_share': (None, mask.float().mean())}


__all__ = ['nnUNetTrainerPLContrast'] + add_short_variants(nnUNetTrainerPLContrast, globals()) + \
    add_variant(nnUNetTrainerPLContrast, 'nnUNetTrainerPLContrast_differentImagePairs', globals(),
                same_image_pairs=False) + \
    add_variant(nnUNetTrainerPLContrast, 'nnUNetTrainerPLContrast_selfTraining', globals(), self_training_weight=1.0,
                round_confidence_threshold=0.95) + \
    add_fixmatch_variant(nnUNetTrainerPLContrast, globals())
