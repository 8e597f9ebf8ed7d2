"""MASSL: Multi-task Attention-based Semi-Supervised Learning (Chen et al., MICCAI 2019), on nnU-Net's networks.

nnU-Net's planned encoder E is shared by its segmentation decoder D_S (``self.network``, deployed unchanged) and a
reconstruction decoder D_R that starts from the bottleneck and has no skip connections. The soft segmentation p
splits the image into one attended image per class, and D_R reconstructs each of them (``losses/reconstruction.py``):

    L_S = nnU-Net's Dice + CE with deep supervision (labeled batch)
    L_R = sum_k mean(p_k) MSE(r_k, p_k x)       (unlabeled batch; p and r from the same forward pass)

Alternating training (``nnUNetTrainerMASSL``, the paper's best), two steps per iteration with two optimizers:
  1. labeled step: L_S updates E + D_S;
  2. unlabeled step: L_R updates E + D_R while D_S is frozen; its gradient still reaches E through the attention
     maps, which are not detached (as in the authors' code). The reconstruction optimizer's learning rate is a tenth
     of the segmentation one (the authors' 1e-3 vs 1e-2); both follow nnU-Net's poly schedule.
Joint training (``nnUNetTrainerMASSLJoint``): one step on lambda L_S + (1 - lambda) L_R, lambda = 0.9.

Options: ``attention = False`` reconstructs the plain image (the paper's no-attention ablation, ``_noAttention``);
``reconstruct_labeled = True`` also reconstructs the labeled images, attended by their ground truth (the poster).
``detach_attention = True`` (``_detached``) detaches the attention maps, so that L_R trains E only through D_R and
never pulls the segmentation of unlabeled images toward what is easy to reconstruct.
``shared_encoder_state = True`` (``_sharedMomentum``, alternating only): E keeps one optimizer state, nnU-Net's. The
unlabeled step then steps nnU-Net's optimizer (E; D_S gets no gradient and stays) and D_R's own on
``reconstruction_lr_factor`` x L_R, so both learn at a tenth of the rate as before, but E's momentum carries both
tasks' gradients instead of two momenta each pushing E on its own.

``nnUNetTrainerMASSL`` and ``nnUNetTrainerMASSLJoint``, the defaults, add FixMatch's pseudo-label term of the deployed
network (trainers/weak_to_strong.py) to L_S, in the step that trains E + D_S, with pseudo-labels by an EMA teacher of
the deployed network. The paper's forms, ``nnUNetTrainerMASSL_noFixMatch`` and ``nnUNetTrainerMASSLJoint_noFixMatch``,
are not above labeled-only on nnU-Net (docs/massl.md). ``_FixMatch``: the term with the network's own pseudo-labels.
"""
import torch

from nnunet_semi.losses.reconstruction import attention_maps, attention_reconstruction_loss, label_maps
from nnunet_semi.networks.parts import decoder_parameters, frozen
from nnunet_semi.networks.reconstruction import ReconstructionDecoder
from nnunet_semi.trainers.base import nnUNetTrainerSemi, unwrap
from nnunet_semi.trainers.variants import add_short_variants, add_variant
from nnunet_semi.trainers.weak_to_strong import FixMatchTerm


class nnUNetTrainerMASSL_noFixMatch(nnUNetTrainerSemi):
    """MASSL as its paper and the authors' code have it."""
    single_gpu = True  # the reconstruction decoder and its optimizer are not wrapped in DDP
    compile_network = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.alternating = True  # False: joint training on one weighted sum (nnUNetTrainerMASSLJoint)
        self.reconstruction_lr_factor = 0.1  # alternating: the reconstruction optimizer's lr / nnU-Net's initial_lr
        self.segmentation_weight = 0.9  # joint: lambda, and 1 - lambda on the reconstruction
        self.attention = True  # False: reconstruct the plain image (no-attention ablation)
        self.reconstruct_labeled = False  # True: labeled images are reconstructed too, attended by ground truth
        self.detach_attention = False  # True: L_R does not move the segmentation through its attention maps
        self.shared_encoder_state = False  # True: E stays in nnU-Net's optimizer alone (alternating training)

    # ------------------------------------------------------------------ modules
    def build_semi_modules(self):
        if self.reconstruct_labeled and (self.label_manager.has_regions or self.label_manager.has_ignore_label):
            raise RuntimeError(f'{self.__class__.__name__}: reconstruct_labeled needs plain labels (no regions, no '
                               f'ignore label) in dataset.json; set reconstruct_labeled = False for this dataset.')
        network = unwrap(self.network)
        heads = self.label_manager.num_segmentation_heads
        n_maps = (heads + 1 if self.label_manager.has_regions else heads) if self.attention else 1
        n_conv = self.configuration_manager.network_arch_init_kwargs.get('n_conv_per_stage_decoder', 2)
        self.reconstruction_decoder = ReconstructionDecoder(network.encoder, n_maps * self.num_input_channels, n_conv)
        if self.alternating and not self.shared_encoder_state:  # E + D_R, at a tenth of the segmentation rate
            params = list(network.encoder.parameters()) + list(self.reconstruction_decoder.parameters())
            lr = self.initial_lr * self.reconstruction_lr_factor
        else:  # D_R next to nnU-Net's optimizer of E (+ D_S); alternating, the loss carries the factor
            params, lr = list(self.reconstruction_decoder.parameters()), self.initial_lr
        self.register_optimizer('reconstruction', params, lr)
        self.print_to_log_file(f'MASSL: {"alternating" if self.alternating else "joint"} training, reconstruction '
                               f'decoder with {n_maps} x {self.num_input_channels} outputs, '
                               f'{"attention" if self.attention else "no attention"}')

    def semi_modules(self):
        return {'reconstruction_decoder': self.reconstruction_decoder}

    # ------------------------------------------------------------------ the method
    def segment_and_reconstruct(self, x, first: int = 0):
        """One pass of E; D_S on it (deep supervision outputs, as nnU-Net's network) and D_R on the bottleneck of
        the samples x[first:]."""
        network = unwrap(self.network)
        skips = network.encoder(x)
        return network.decoder(skips), self.reconstruction_decoder(skips[-1][first:])

    def reconstruction_loss(self, images, logits, reconstruction, labels=None):
        """L_R of ``images`` (B, C, *spatial). The attention maps come from ``logits`` (B, K, *spatial), the
        segmentation of the same pass, or for the first len(labels) images from their ground truth (B_l, 1, ...)."""
        if not self.attention:
            maps = images.new_ones((images.shape[0], 1, *images.shape[2:]))
        else:
            maps = attention_maps(logits.detach() if self.detach_attention else logits, self.label_manager.has_regions)
            if labels is not None:
                maps = torch.cat((label_maps(labels, maps.shape[1]), maps[labels.shape[0]:]))
        return attention_reconstruction_loss(reconstruction, images, maps)

    def labels_to_reconstruct(self, target):
        return self.full_resolution(target) if self.reconstruct_labeled else None

    def train_iteration(self, labeled, unlabeled):
        if not self.alternating:
            return super().train_iteration(labeled, unlabeled)
        data, target = labeled['data'], labeled['target']
        # 1. labeled step: E + D_S learn to segment
        terms = self.optimization_step(lambda: self.compute_losses(labeled, unlabeled), [self.optimizer])
        # 2. unlabeled step: E + D_R learn to reconstruct the attended images, D_S stays as it is
        images = torch.cat((data, unlabeled['data'])) if self.reconstruct_labeled else unlabeled['data']

        # with one optimizer state for E, nnU-Net's optimizer steps E here too, and the loss carries the tenth
        weight, optimizers = 1.0, [self.semi_optimizers['reconstruction'][0]]
        if self.shared_encoder_state:
            weight, optimizers = self.reconstruction_lr_factor, [self.optimizer] + optimizers

        def reconstruction():
            segmentation, reconstruction = self.segment_and_reconstruct(images)
            return {'reconstruction': (weight, self.reconstruction_loss(
                images, self.full_resolution(segmentation), reconstruction, self.labels_to_reconstruct(target)))}

        with frozen(decoder_parameters(unwrap(self.network).decoder)):
            terms.update(self.optimization_step(reconstruction, optimizers))
        return terms

    def compute_losses(self, labeled, unlabeled):
        """The terms of the step that trains E + D_S: alternating, L_S of the labeled batch; joint, one pass over both
        batches for L_S and L_R."""
        if self.alternating:
            return {'segmentation': (1.0, self.labeled_loss(labeled))}
        n, target = labeled['data'].shape[0], labeled['target']
        x = torch.cat((labeled['data'], unlabeled['data']))
        first = 0 if self.reconstruct_labeled else n  # the images to reconstruct are x[first:]
        segmentation, reconstruction = self.segment_and_reconstruct(x, first)
        return {'segmentation': (self.segmentation_weight, self.loss(self.split_batch(segmentation, n)[0], target)),
                'reconstruction': (1 - self.segmentation_weight, self.reconstruction_loss(
                    x[first:], self.full_resolution(segmentation)[first:], reconstruction,
                    self.labels_to_reconstruct(target)))}


class nnUNetTrainerMASSL(FixMatchTerm, nnUNetTrainerMASSL_noFixMatch):
    """MASSL with FixMatch's term, pseudo-labels by an EMA teacher (the default: measured above labeled-only where the
    paper's form is not, docs/massl.md)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.ema_teacher = True


__all__ = []
for _base in (nnUNetTrainerMASSL_noFixMatch, nnUNetTrainerMASSL):  # and joint training, the poster's "MASSL (0.9)"
    __all__ += [_base.__name__] + add_short_variants(_base, globals()) + \
        add_variant(_base, _base.__name__.replace('MASSL', 'MASSLJoint'), globals(), alternating=False)
for _base in (nnUNetTrainerMASSL, nnUNetTrainerMASSLJoint):  # noqa: F821 (defined just above)
    __all__ += add_variant(_base, f'{_base.__name__}_noAttention', globals(), attention=False) + \
        add_variant(_base, f'{_base.__name__}_detached', globals(), detach_attention=True) + \
        add_variant(_base, f'{_base.__name__}_FixMatch', globals(), ema_teacher=False) + \
        add_variant(_base, f'{_base.__name__}_FixMatchEMA', globals())  # the default's earlier name
__all__ += add_variant(nnUNetTrainerMASSL, 'nnUNetTrainerMASSL_sharedMomentum', globals(), shared_encoder_state=True)
