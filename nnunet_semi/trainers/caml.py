"""CAML: Correlation-Aware Mutual Learning (Gao et al., MICCAI 2023), on nnU-Net's networks and data.

Two networks from the same plans learn from each other. Model V is ``self.network``, a plain nnU-Net network and the
one deployed. Model A differs in its decoder (interpolation + convolution instead of transposed convolutions) and
has cross-sample mutual attention (CMA) after one encoder stage, through which the labeled and unlabeled samples of
one batch attend to each other. Each iteration, on the labeled + unlabeled batch:

    L = lambda_s (L_sup(V) + L_sup(A))  +  lambda_c r(t) L_mutual  +  lambda_o r(t) L_omni

- L_sup: nnU-Net's Dice + CE with deep supervision on the labeled samples (``dice_only``: the authors' Dice alone);
- L_mutual: MSE(p_V, sharpen(p_A)) + MSE(p_A, sharpen(p_V)) over all samples, T = 0.1, nothing detached;
- L_omni: labeled voxels that both networks predict correctly are projected (heads in eval mode, V and A averaged)
  into a per-class memory; for each class present in the memory, the most confident unlabeled voxels on which V and A
  agree are embedded by each network (projection + prediction heads), correlated with 256 memory entries per class
  (softmax of dot products / 0.1), and V's correlation is trained towards A's (cross-entropy);
- r(t): the Gaussian ramp-up exp(-5 (1 - t/T_r)^2), full strength at iteration 6000 (the authors' 4-label setting) or
  at 40 % of the run if that comes first.

Settings are attributes (see ``__init__``); the paper's ablations are the variants ``_noCMA``, ``_noOCC`` and
``_MLonly`` (plain mutual learning of the two heterogeneous networks); ``_mutual010`` has lambda_c = 0.1,
``_stockSupervised`` lambda_s = 1 (nnU-Net's weight of its loss under its SGD schedule; the paper's 0.5 comes with
another optimiser);
``_FixMatch`` adds FixMatch's pseudo-label term of model V (trainers/weak_to_strong.py).
docs/caml.md describes where this follows the authors' code, where nnU-Net's conventions replace it, and why.
"""
import torch
from torch import nn

from nnunet_semi.losses.mutual import mutual_consistency, omni_correlation_loss
from nnunet_semi.networks.caml import EmbeddingHead, choose_cma_stage, make_auxiliary_network
from nnunet_semi.networks.memory_bank import LabeledEmbeddingBank
from nnunet_semi.networks.parts import output_of
from nnunet_semi.trainers.base import nnUNetTrainerSemi, unwrap
from nnunet_semi.trainers.ramps import sigmoid_rampup
from nnunet_semi.trainers.variants import add_short_variants, add_variant
from nnunet_semi.trainers.weak_to_strong import add_fixmatch_variant


class nnUNetTrainerCAML(nnUNetTrainerSemi):
    single_gpu = True  # the method's extra networks and state are not synchronised across DDP ranks
    compile_network = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.label_manager.has_regions:
            raise RuntimeError(f'{self.__class__.__name__} needs mutually exclusive classes (its memory bank is per '
                               f'class); dataset.json of this dataset defines overlapping regions. Train with labels '
                               f'instead of regions, or use nnUNetTrainerMeanTeacher.')
        self.supervised_weight = 0.5  # lambda_s, on each network's supervised loss
        self.dice_only = False  # True: the authors' soft Dice without CE
        self.mutual_weight = 1.0  # lambda_c at full strength
        self.sharpen_temperature = 0.1
        self.detach_targets = False  # the authors' code lets gradients through the sharpened targets
        self.use_cma = True
        self.cma_stage = None  # None: choose_cma_stage(patch size, strides, cma_max_tokens)
        self.cma_max_tokens = 2048  # about the authors' 1960 (1/8 of 112x112x80)
        self.use_occ = True
        self.occ_weight = 0.05  # lambda_o at full strength
        self.embedding_dim = 32
        self.memory_per_class = 256  # labeled embeddings sampled per class each iteration
        self.unlabeled_per_class = 12800  # most confident agreeing unlabeled voxels kept per class
        self.correlation_temperature = 0.1
        self.normalize_embeddings = False  # True: cosine similarity (the paper's wording) instead of dot products
        self.memory_cap_per_class = 65536  # stored embeddings per class, over all labeled cases
        self.rampup_iterations = 6000
        self.rampup_fraction = 0.4

    def _build_loss(self):
        loss = super()._build_loss()
        if self.dice_only:
            getattr(loss, 'loss', loss).weight_ce = 0  # inside nnU-Net's deep supervision wrapper
        return loss

    # ------------------------------------------------------------------ modules
    def build_semi_modules(self):
        self.model_a = self.build_network_architecture(
            self.plans_manager, self.configuration_manager, self.num_input_channels,
            self.label_manager.num_segmentation_heads, self.enable_deep_supervision)
        encoder = self.model_a.encoder
        stage = None
        if self.use_cma:
            stage = self.cma_stage if self.cma_stage is not None else choose_cma_stage(
                self.configuration_manager.patch_size, encoder.strides, self.cma_max_tokens)
        make_auxiliary_network(self.model_a, stage)
        self.print_to_log_file(
            'CAML model A: interpolating decoder, ' + ('no CMA' if stage is None else
                                                       f'CMA after encoder stage {stage} '
                                                       f'({encoder.output_channels[stage]} channels)'))
        d, features = self.embedding_dim, encoder.output_channels[0]
        self.heads = nn.ModuleDict({'proj_V': EmbeddingHead(features, d, d), 'pred_V': EmbeddingHead(d, d, d),
                                    'proj_A': EmbeddingHead(features, d, d), 'pred_A': EmbeddingHead(d, d, d)})
        self.memory = LabeledEmbeddingBank(self.label_manager.num_segmentation_heads, self.do_split()[0], d,
                                           self.memory_cap_per_class)
        self.register_optimizer('model_a', list(self.model_a.parameters()) + list(self.heads.parameters()))

    def semi_modules(self):
        return {'model_a': self.model_a, 'heads': self.heads, 'memory': self.memory}

    # ------------------------------------------------------------------ one iteration
    def unsupervised_ramp(self) -> float:
        total = self.num_epochs * self.num_iterations_per_epoch
        return sigmoid_rampup(self.iteration, min(self.rampup_iterations, self.rampup_fraction * total))

    def compute_losses(self, labeled, unlabeled):
        n, target = labeled['data'].shape[0], labeled['target']
        x = torch.cat((labeled['data'], unlabeled['data']))  # labeled and unlabeled share one batch: CMA attends across
        model_v = unwrap(self.network)
        with output_of(model_v.decoder.stages[-1]) as features_v:
            out_v = model_v(x)
        with output_of(self.model_a.decoder.stages[-1]) as features_a:
            out_a = self.model_a(x)
        logits_v, logits_a = self.full_resolution(out_v), self.full_resolution(out_a)
        ramp = self.unsupervised_ramp()
        terms = {
            'supervised_V': (self.supervised_weight, self.loss(self.split_batch(out_v, n)[0], target)),
            'supervised_A': (self.supervised_weight, self.loss(self.split_batch(out_a, n)[0], target)),
            'mutual': (self.mutual_weight * ramp, mutual_consistency(logits_v, logits_a, self.sharpen_temperature,
                                                                     self.detach_targets)),
        }
        if self.use_occ:
            labels = self.full_resolution(target)[:, 0].long()
            terms['omni_correlation'] = (self.occ_weight * ramp, self.omni_correlation(
                features_v.value, features_a.value, logits_v, logits_a, labels, labeled['keys']))
        return terms

    def omni_correlation(self, features_v, features_a, logits_v, logits_a, labels, keys):
        """Memory update from the labeled samples (the first len(labels), cases ``keys``), then the correlation loss on
        the unlabeled ones; 0 (no gradient) when the memory or the agreeing unlabeled voxels lack every class."""
        n = labels.shape[0]
        with torch.no_grad():
            pred_v, pred_a = logits_v.argmax(1), logits_a.argmax(1)
            self.update_memory(features_v[:n], features_a[:n], pred_v[:n], pred_a[:n], labels, keys)
            memory, voxels = [], []
            pred_u = pred_v[n:].flatten()
            agree = pred_u == pred_a[n:].flatten()
            confidence = torch.softmax(logits_v[n:].float(), 1).amax(1).flatten()
            for c in range(self.label_manager.num_segmentation_heads):
                bank = self.memory.sample(c, self.memory_per_class)
                idx = torch.nonzero(agree & (pred_u == c)).flatten()
                if bank is None or idx.numel() <= 1:
                    continue
                if idx.numel() > self.unlabeled_per_class:
                    idx = idx[confidence[idx].topk(self.unlabeled_per_class).indices]
                memory.append(bank)
                voxels.append(idx)
        if not voxels:
            return torch.zeros((), device=logits_v.device)
        idx = torch.cat(voxels)
        z_v = self.heads['pred_V'](self.heads['proj_V'](voxel_rows(features_v[n:])[idx]))
        z_a = self.heads['pred_A'](self.heads['proj_A'](voxel_rows(features_a[n:])[idx]))
        return omni_correlation_loss(z_a, z_v, torch.cat(memory), self.correlation_temperature,
                                     self.normalize_embeddings)

    @torch.no_grad()
    def update_memory(self, features_v, features_a, pred_v, pred_a, labels, keys):
        """Each labeled case of the batch (``keys``) overwrites its slots with the embeddings of its voxels that both
        networks predict correctly (projection heads in eval mode, V and A averaged); a case drawn several times into
        the batch pools its crops."""
        proj_v, proj_a = self.heads['proj_V'], self.heads['proj_A']
        proj_v.eval(), proj_a.eval()
        correct = (pred_v == labels) & (pred_a == labels)  # the ignore label is no output class: never correct
        for case, samples in self.memory.samples_by_case(list(keys)).items():
            rows_v, rows_a = voxel_rows(features_v[samples]), voxel_rows(features_a[samples])
            for c in range(self.label_manager.num_segmentation_heads):
                idx = torch.nonzero((correct[samples] & (labels[samples] == c)).flatten()).flatten()
                idx = idx[torch.randperm(idx.numel(), device=idx.device)[:self.memory.per_case]]
                embedding = (proj_v(rows_v[idx].float()) + proj_a(rows_a[idx].float())) / 2 if idx.numel() else \
                    rows_v.new_zeros((0, self.embedding_dim))
                self.memory.write(case, c, embedding)
        proj_v.train(), proj_a.train()

    def on_train_epoch_end(self, train_outputs):
        super().on_train_epoch_end(train_outputs)
        if self.use_occ:
            sizes = [self.memory.size(c) for c in range(self.label_manager.num_segmentation_heads)]
            self.print_to_log_file(f'memory bank: {sizes} embeddings per class')


def voxel_rows(features: torch.Tensor) -> torch.Tensor:
    """(B, C, *spatial) -> (B * prod(spatial), C): one row per voxel, in flatten order of (B, *spatial)."""
    return features.movedim(1, -1).reshape(-1, features.shape[1])


ABLATIONS = {'noCMA': {'use_cma': False}, 'noOCC': {'use_occ': False},
             'MLonly': {'use_cma': False, 'use_occ': False},
             'mutual010': {'mutual_weight': 0.1},  # not the paper's: lambda_c 0.1 instead of 1.0 (docs/caml.md)
             'stockSupervised': {'supervised_weight': 1.0}}  # not the paper's: nnU-Net's weight 1 on V's and A's loss

__all__ = ['nnUNetTrainerCAML'] + add_short_variants(nnUNetTrainerCAML, globals())
for _suffix, _settings in ABLATIONS.items():
    __all__ += add_variant(nnUNetTrainerCAML, f'nnUNetTrainerCAML_{_suffix}', globals(), **_settings)
__all__ += add_fixmatch_variant(nnUNetTrainerCAML, globals())
