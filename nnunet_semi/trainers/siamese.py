"""Self-supervised siamese proxy task that pretrains nnU-Net's encoder, then fine-tuning (Dhere & Sivaswamy; METHODS.md
section 4), with no label read during pretraining.

Pretraining (``nnUNetTrainerSiamesePretrain``). Every image of the fold's training set (labeled cases read as images
only, imagesUnlabeled, hidden labels) gives patches, each from one region of its volume: by default the patient's
left or right half, found from the image geometry (data/proxy.py, which also places the patches so that the task is
not trivial). Two patches form a pair, labeled y = 1 when they come from the same region. Both go through nnU-Net's
planned encoder (one encoder: shared weights); the embedding is its bottleneck, pooled and L2-normalised:

    L = y * d^2 + (1 - y) * max(0, m - d)^2,   d = ||f(a) - f(b)||,   m = 1

over every pair of the batch, and a pair counts as "same region" when d < 0.75. The proxy accuracy is logged for the
training pairs, and validation (the fold's validation cases) measures it instead of segmentation Dice. Only the
encoder is optimised: lr 5e-4 and weight decay 1e-2 as the authors, but decoupled (AdamW): their Adam with L2 decay
shrank the encoder's weights 5-10x on Hippocampus, and a fine-tuning with nnU-Net's SGD then steps 5-10x too far
relative to them. nnU-Net's poly schedule replaces their plateau schedule. The decoder keeps its initial weights.

Transfer. The checkpoint is an ordinary nnU-Net checkpoint of the planned network, so stock
``nnUNetv2_train ID CONFIG FOLD -pretrained_weights .../checkpoint_final.pth`` loads it (encoder pretrained; decoder
as initialised, never trained; segmentation layers are not transferred by nnU-Net).

Fine-tuning (``nnUNetTrainerSiameseFinetune``): nnU-Net's training with the paper's loss schedule, CE (BCE for
regions) share 0.6 and Dice 0.4 at the start, moving linearly to ``ce_weight_end`` (0.2, the weights of the
authors' released code) over the first ``ce_shift_fraction`` (half) of the epochs, then constant. The paper gives no
end point or pace; both are options. The weights sum to 2 (``weight_sum``), as stock nnU-Net's CE 1 + Dice 1, so
that only the balance differs from stock; the paper's sum to 1 (``_paperScale``).

``nnUNetTrainerSiameseFinetune_FixMatch`` and ``_FixMatchEMA``: the fine-tuning with FixMatch's pseudo-label term on
unlabeled batches beside its labeled ones (trainers/weak_to_strong.py).
"""
import copy

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join

from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

from nnunet_semi.data.augmenter import augmenter
from nnunet_semi.data.proxy import LEFT_RIGHT, OCTANTS, ProxyCases, RegionPatchLoader, RegionSplit, proxy_patch_size
from nnunet_semi.data.unlabeled import UnlabeledDataError, collect_unlabeled_cases
from nnunet_semi.losses.siamese import siamese_contrastive_loss
from nnunet_semi.networks.siamese import BottleneckEmbedding
from nnunet_semi.trainers.base import nnUNetTrainerSemi, unwrap
from nnunet_semi.trainers.ramps import linear_rampup
from nnunet_semi.trainers.variants import add_short_variants, add_variant, define_variant
from nnunet_semi.trainers.weak_to_strong import add_fixmatch_variant


class nnUNetTrainerSiamesePretrain(nnUNetTrainerSemi):
    single_gpu = True
    uses_unlabeled_data = False  # it builds its own loaders: every image is a proxy sample
    segmentation_batches = False  # the encoder alone on patches no larger than planned: less than stock needs

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.proxy_regions = LEFT_RIGHT  # or 'halves' along proxy_axis, or 'octants' (data/proxy.py)
        self.proxy_axis = None  # 'halves': the axis of the preprocessed volume (default: the last)
        self.pooled_embedding = True  # False: the flattened bottleneck (the authors')
        self.normalize_embedding = True
        self.margin = 1.0
        self.same_distance = 0.75  # a pair closer than this is predicted "same region"
        self.initial_lr = 5e-4
        self.weight_decay = 1e-2
        self.decoupled_weight_decay = True  # AdamW; False: the authors' Adam with L2 decay (see docs/siamese.md)
        self.proxy_patch_size = None  # decided from the plans and the data when the loaders start
        self.logger.local_logger.dice_label = 'proxy accuracy (validation)'

    def configure_optimizers(self):
        adam = torch.optim.AdamW if self.decoupled_weight_decay else torch.optim.Adam
        optimizer = adam(unwrap(self.network).encoder.parameters(), self.initial_lr, weight_decay=self.weight_decay)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def build_semi_modules(self):
        self.embedding = BottleneckEmbedding(unwrap(self.network).encoder, self.pooled_embedding,
                                             self.normalize_embedding)

    # ------------------------------------------------------------------ data
    def get_dataloaders(self):
        train_keys, val_keys = self.do_split()
        folder = self.preprocessed_dataset_folder
        cases = {k: join(folder, k) for k in train_keys}  # labeled cases, read as images only
        try:
            unlabeled = collect_unlabeled_cases(self.preprocessed_dataset_folder_base,
                                                self.configuration_manager.data_identifier, self.fold)
        except UnlabeledDataError:
            unlabeled = {}
        cases.update(unlabeled)
        train = ProxyCases(cases)
        val = ProxyCases({k: join(folder, k) for k in val_keys})
        train_split, val_split = (self.region_split(c) for c in (train, val))

        cm = self.configuration_manager
        strides = np.prod(cm.network_arch_init_kwargs['strides'], axis=0)
        axes = train_split.dataset_axes()
        self.proxy_patch_size = proxy_patch_size(cm.patch_size, axes, cm.median_image_size_in_voxels, strides)
        self.print_to_log_file(
            f'Siamese proxy task: {len(train_keys)} labeled (as images) + {len(unlabeled)} unlabeled training cases, '
            f'{len(val_keys)} validation cases; regions: {self.proxy_regions} ({train_split.num_regions}), split '
            f'along axis {axes} of the preprocessed volume; patch {self.proxy_patch_size} (planned '
            f'{list(cm.patch_size)}); batch {self.batch_size} ({self.batch_size * (self.batch_size - 1) // 2} pairs)')
        if train_split.without_orientation:
            self.print_to_log_file(f'WARNING: {len(train_split.without_orientation)} case(s) have no 3d orientation '
                                   f'(e.g. {train_split.without_orientation[0]}): halves along axis '
                                   f'{train_split.axis} instead of left/right')

        n_proc = get_allowed_n_proc_DA()
        train_loader = augmenter(self, RegionPatchLoader, train, n_proc, self.batch_size, self.proxy_patch_size,
                                 mirror=False, split=train_split)  # mirroring would swap sides
        val_loader = augmenter(self, RegionPatchLoader, val, max(1, n_proc // 2) if n_proc else 0, self.batch_size,
                               self.proxy_patch_size, augment=False, split=val_split)
        return train_loader, val_loader

    def region_split(self, cases: ProxyCases) -> RegionSplit:
        return RegionSplit(self.proxy_regions, cases, self.plans_manager.transpose_forward, self.proxy_axis)

    # ------------------------------------------------------------------ the proxy task
    def proxy_loss(self, images: torch.Tensor, regions: torch.Tensor):
        """(contrastive loss, pair accuracy) over every pair of the batch."""
        return siamese_contrastive_loss(self.embedding(images), regions, self.margin, self.same_distance)

    def compute_losses(self, labeled, unlabeled):  # labeled: image patches, labeled by their region
        loss, accuracy = self.proxy_loss(labeled['data'], labeled['region'])
        return {'contrastive': (1.0, loss), 'proxy_accuracy': (None, accuracy)}

    def validation_step(self, batch: dict) -> dict:
        data = batch['data'].to(self.device, non_blocking=True)
        with self.autocast():
            loss, accuracy = self.proxy_loss(data, batch['region'].to(self.device))
        return {'loss': loss.item(), 'accuracy': accuracy.item()}

    def on_validation_epoch_end(self, val_outputs):
        outputs = collate_outputs(val_outputs)
        loss, accuracy = float(np.mean(outputs['loss'])), float(np.mean(outputs['accuracy']))
        # nnU-Net's pseudo-Dice curves (and its best checkpoint) follow the validation proxy accuracy
        self.logger.log('mean_fg_dice', accuracy, self.current_epoch)
        self.logger.log('dice_per_class_or_region', [accuracy], self.current_epoch)
        self.logger.log('val_losses', loss, self.current_epoch)
        self.print_to_log_file(f'validation proxy accuracy {accuracy:.4f}, contrastive loss {loss:.4f} (the '
                               f'"Pseudo dice" below is this accuracy)')

    def perform_actual_validation(self, save_probabilities: bool = False):
        checkpoint = join(self.output_folder, 'checkpoint_final.pth')
        self.print_to_log_file(
            f'No segmentation validation after pretraining: the decoder was not trained. The validation proxy accuracy '
            f'is in this log and in progress.png. Fine-tune with: nnUNetv2_train '
            f'{self.plans_manager.dataset_name} {self.configuration_name} {self.fold} -tr '
            f'nnUNetTrainerSiameseFinetune -p {self.plans_manager.plans_name} -pretrained_weights {checkpoint}')


def with_weights(loss, weight_ce: float, weight_dice: float):
    """nnU-Net's compound loss (DC_and_CE_loss or DC_and_BCE_loss, optionally deep-supervision wrapped) with other
    weights, sharing its Dice and CE modules: weight 0 skips that part."""
    if isinstance(loss, DeepSupervisionWrapper):
        return DeepSupervisionWrapper(with_weights(loss.loss, weight_ce, weight_dice), loss.weight_factors)
    view = copy.copy(loss)
    view.weight_ce, view.weight_dice = weight_ce, weight_dice
    return view


class nnUNetTrainerSiameseFinetune(nnUNetTrainerSemi):
    uses_unlabeled_data = False  # labeled training, from the pretrained encoder

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.ce_weight_start = 0.6  # the paper: 0.6 CE + 0.4 Dice at the start
        self.ce_weight_end = 0.2  # the authors' released code: 0.2 BCE + 0.8 Dice
        self.ce_shift_fraction = 0.5  # the CE weight moves linearly over this share of the epochs, then stays
        # the two weights sum to stock nnU-Net's CE 1 + Dice 1, so the step is as large as stock's; the paper's sum
        # to 1 (_paperScale), which under nnU-Net's fixed SGD schedule halves every step
        self.weight_sum = 2.0

    def ce_weight(self, epoch: int) -> float:
        """The CE share of the loss weights at ``epoch`` (the paper's 0.6 -> 0.2); the Dice has the rest."""
        t = linear_rampup(epoch, self.ce_shift_fraction * self.num_epochs)
        return self.ce_weight_start + (self.ce_weight_end - self.ce_weight_start) * t

    def loss_weights(self, epoch: int):
        """(CE weight, Dice weight) at ``epoch``, summing to ``weight_sum``."""
        w = self.ce_weight(epoch)
        return self.weight_sum * w, self.weight_sum * (1 - w)

    def _build_loss(self):
        loss = super()._build_loss()
        self.ce_term, self.dice_term = with_weights(loss, 1, 0), with_weights(loss, 0, 1)
        return loss

    def on_semi_train_start(self, resumed: bool):
        if not resumed and not self.started_from_pretrained_weights():
            self.print_to_log_file('WARNING: no -pretrained_weights: fine-tuning starts from random weights. Pass the '
                                   'checkpoint_final.pth of nnUNetTrainerSiamesePretrain with -pretrained_weights.')

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        ce, dice = self.loss_weights(self.current_epoch)
        self.loss = with_weights(self.loss, ce, dice)  # nnU-Net's validation loss follows the schedule too
        self.print_to_log_file(f'loss weights: CE {ce:.3f}, Dice {dice:.3f}')

    def compute_losses(self, labeled, unlabeled):
        output, target = self.network(labeled['data']), labeled['target']
        ce, dice = self.loss_weights(self.current_epoch)
        return {'ce': (ce, self.ce_term(output, target)), 'dice': (dice, self.dice_term(output, target))}


__all__ = ['nnUNetTrainerSiamesePretrain', 'nnUNetTrainerSiameseFinetune']
# the generic regions, for anatomy without a left/right pair (or to override the geometry): halves along one axis of
# the preprocessed volume, or octants
__all__ += [define_variant(nnUNetTrainerSiamesePretrain, f'nnUNetTrainerSiamesePretrain_halves{a}', globals(),
                           proxy_regions='halves', proxy_axis=a).__name__ for a in range(3)]
__all__.append(define_variant(nnUNetTrainerSiamesePretrain, 'nnUNetTrainerSiamesePretrain_octants', globals(),
                              proxy_regions=OCTANTS).__name__)
__all__ += add_short_variants(nnUNetTrainerSiamesePretrain, globals())
__all__ += add_short_variants(nnUNetTrainerSiameseFinetune, globals())
__all__ += add_variant(nnUNetTrainerSiameseFinetune, 'nnUNetTrainerSiameseFinetune_paperScale', globals(),
                       weight_sum=1.0)
# the same training under its own name, for the benchmark's from-scratch control beside the pretrained chain (one
# trainer name is one model folder per split)
__all__ += add_variant(nnUNetTrainerSiameseFinetune, 'nnUNetTrainerSiameseFinetune_fromScratch', globals())
__all__ += add_fixmatch_variant(nnUNetTrainerSiameseFinetune, globals())
