"""Batches through nnU-Net's training transforms, for any loader of nnU-Net's kind: the unlabeled batches of every
semi trainer, PLContrast's pseudo-labeled ones, the siamese task's region patches.

``augmenter(trainer, ...)`` reads from the nnU-Net trainer only what nnU-Net's own ``get_dataloaders`` reads: its
rotation, mirroring and initial patch size, its training transforms, the configuration and label managers, the
device. The workers are nnU-Net's (batchgenerators' NonDetMultiThreadedAugmenter), or none.
"""
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter

from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size

# the intensity transforms of nnU-Net's training augmentation (nnUNetTrainer.get_training_transforms)
INTENSITY_TRANSFORMS = (GaussianNoiseTransform, GaussianBlurTransform, MultiplicativeBrightnessTransform,
                        ContrastTransform, SimulateLowResolutionTransform, GammaTransform)


def without_intensity_transforms(transforms: ComposeTransforms) -> ComposeTransforms:
    """``transforms`` less its intensity transforms (bare or in a RandomTransform): the spatial ones, mirroring and
    the label conversions stay, in their order."""
    def intensity(t):
        return isinstance(t.transform if isinstance(t, RandomTransform) else t, INTENSITY_TRANSFORMS)
    return ComposeTransforms([t for t in transforms.transforms if not intensity(t)])


def augmenter(trainer, loader_class, data, num_processes: int, batch_size: int, patch_size=None,
              augment: bool = True, mirror: bool = True, intensity: bool = True, **loader_kwargs):
    """``loader_class`` (nnUNetDataLoader or a subclass) on ``data`` at ``batch_size``, with ``trainer``'s training
    transforms exactly as nnU-Net applies them to labeled batches, run in ``num_processes`` background workers (in
    this process when 0). ``patch_size``: another patch than the planned one (the augmentation's larger initial patch
    follows it as nnU-Net computes it); ``mirror=False``: the transforms without mirroring; ``intensity=False``: without
    the intensity transforms (noise, blur, brightness, contrast, low resolution, gamma); ``augment=False``: no
    transforms at all (validation batches). The first batch is drawn, so a broken loader fails here."""
    rotation, dummy_2d, initial_patch_size, mirror_axes = \
        trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    if patch_size is None:
        patch_size = trainer.configuration_manager.patch_size
    else:
        initial_patch_size = list(get_patch_size(patch_size, rotation, rotation, rotation, (0.85, 1.25)))
        if dummy_2d:
            initial_patch_size[0] = patch_size[0]
    transforms = None
    if augment:
        lm = trainer.label_manager
        transforms = trainer.get_training_transforms(
            patch_size, rotation, None, mirror_axes if mirror else None, dummy_2d,
            use_mask_for_norm=trainer.configuration_manager.use_mask_for_norm, is_cascaded=False,
            foreground_labels=lm.foreground_labels, regions=lm.foreground_regions if lm.has_regions else None,
            ignore_label=lm.ignore_label)
        if not intensity:
            transforms = without_intensity_transforms(transforms)
    else:
        initial_patch_size = patch_size
    loader = loader_class(data, batch_size, initial_patch_size, patch_size, trainer.label_manager,
                          transforms=transforms, **loader_kwargs)
    if num_processes == 0:
        batches = SingleThreadedAugmenter(loader, None)
    else:
        batches = NonDetMultiThreadedAugmenter(loader, None, num_processes, max(6, num_processes // 2), seeds=None,
                                               pin_memory=trainer.device.type == 'cuda', wait_time=0.002)
    next(batches)
    return batches


def stop_workers(batches) -> None:
    """End an augmenter's background workers, if it has any."""
    if isinstance(batches, NonDetMultiThreadedAugmenter):
        batches._finish()
