"""SSCL: Self-Supervised Correction Learning (Zhang et al., MICCAI 2021), on nnU-Net's networks and data.

The network (``networks/sscl.py``) segments in two passes: pass 1 segments the image; its predicted foreground (the
union of the foreground classes, a hard mask without gradient) is blanked out of the image; pass 2 encodes the image
and the blanked image with the same encoder, fuses them level by level with gated feature fusion (GFF) and decodes
the segmentation and, from the same fused features, an inpainting of the image. Each iteration, on the labeled +
unlabeled batch:

    L = 2 L_seg(labeled) + 1 L_inp(unlabeled)

- L_seg: nnU-Net's Dice + CE with deep supervision on the pass-2 segmentation;
- L_inp: L1 between the inpainting and the image inside the pass-2 predicted foreground (detached) at every deep
  supervision scale, with nnU-Net's deep supervision weights; 0 where the mask is empty. To fill the hole, the
  network must understand what the lesion looks like from its context: the self-supervised correction signal.

The deployed network (``self.network``) is the whole two-pass model; nnU-Net builds it from this class at
prediction time, so ``nnUNetv2_predict`` with nnunet_semi installed predicts with it. Options: ``inpaint_labeled``
(the labeled images get the inpainting loss too; the authors' code: no) and the paper's fusion ablations as
trainers, ``nnUNetTrainerSSCL_add`` and ``nnUNetTrainerSSCL_concat``. ``nnUNetTrainerSSCL_fuseBelowFullRes``: no
fusion at the full-resolution skip, where D_S reads the image's features and D_I the blanked image's, so that D_I
cannot copy the hole's voxels from the image's full-resolution features (GFF passes (1 - s) e_seg through).
``nnUNetTrainerSSCL_FixMatch``: FixMatch's pseudo-label term of the two-pass network (trainers/weak_to_strong.py)
beside L_seg and L_inp.
``nnUNetTrainerSSCL_stockSupervised``: lambda_1 = 1, nnU-Net's weight of its supervised loss under its SGD schedule
(the paper's 2 comes with another optimiser).
"""
import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_semi.losses.inpainting import inpainting_loss
from nnunet_semi.networks.sscl import SSCLNetwork, foreground
from nnunet_semi.trainers.base import nnUNetTrainerSemi, unwrap
from nnunet_semi.trainers.variants import add_short_variants, add_variant
from nnunet_semi.trainers.weak_to_strong import add_fixmatch_variant


class nnUNetTrainerSSCL(nnUNetTrainerSemi):
    single_gpu = True  # its two-pass forward bypasses the DDP wrapper
    compile_network = False
    fusion = 'gff'  # class attributes: nnU-Net's predictor builds the network from the class
    fuse_full_resolution = True

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.segmentation_weight = 2.0  # lambda_1
        self.inpainting_weight = 1.0  # lambda_2
        self.inpaint_labeled = False  # True: the labeled images get the inpainting loss too

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        unet = nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                        num_output_channels, enable_deep_supervision)
        return SSCLNetwork(unet, num_input_channels, cls.fusion, cls.fuse_full_resolution)

    def build_semi_modules(self):
        unwrap(self.network).regions.fill_(self.label_manager.has_regions)
        self.print_to_log_file(f'SSCL: two-pass network, {self.fusion} fusion on {len(unwrap(self.network).fusions)} '
                               f'encoder levels, inpainting of {self.num_input_channels} channel(s)')

    def compute_losses(self, labeled, unlabeled):
        n = labeled['data'].shape[0]
        x = torch.cat((labeled['data'], unlabeled['data']))
        network = unwrap(self.network)
        segmentation, features = network.segment(x)
        first = 0 if self.inpaint_labeled else n  # the images to inpaint are x[first:]
        inpaintings = network.inpaint([f[first:] for f in features])
        scales = segmentation if isinstance(segmentation, (list, tuple)) else [segmentation]
        masks = [foreground(s[first:].detach(), network.regions) for s in scales]
        supervised = self.loss(self.split_batch(segmentation, n)[0], labeled['target'])
        return {'segmentation': (self.segmentation_weight, supervised),
                'inpainting': (self.inpainting_weight, inpainting_loss(
                    inpaintings, x[first:], masks, self.deep_supervision_weights()))}


class nnUNetTrainerSSCL_add(nnUNetTrainerSSCL):
    """SSCL with the fusion by addition instead of GFF (the paper's ablation)."""
    fusion = 'add'


class nnUNetTrainerSSCL_concat(nnUNetTrainerSSCL):
    """SSCL with the fusion by concatenation and a 1x1 convolution instead of GFF (the paper's ablation)."""
    fusion = 'concat'


class nnUNetTrainerSSCL_fuseBelowFullRes(nnUNetTrainerSSCL):
    """SSCL without the fusion of the full-resolution skip: D_S reads the image's features there, D_I the blanked
    image's (not the paper's; docs/sscl.md)."""
    fuse_full_resolution = False


__all__ = []
for _trainer in (nnUNetTrainerSSCL, nnUNetTrainerSSCL_add, nnUNetTrainerSSCL_concat,
                 nnUNetTrainerSSCL_fuseBelowFullRes):
    __all__ += [_trainer.__name__] + add_short_variants(_trainer, globals())
__all__ += add_fixmatch_variant(nnUNetTrainerSSCL, globals())
__all__ += add_variant(nnUNetTrainerSSCL, 'nnUNetTrainerSSCL_stockSupervised', globals(), segmentation_weight=1.0)
