"""Shorter schedules, named as nnU-Net names its own (``nnUNetTrainer_5epochs``): ``<Trainer>_5epochs`` etc., and
``<Trainer>_smoke`` (3 epochs of 4 iterations, 2 validation iterations, a checkpoint every epoch, final validation and
prediction without test-time mirroring) for tests, the demo and trying a set-up in a minute on a CPU."""
import torch

EPOCHS = (1, 5, 10, 20, 50, 100, 250, 500, 750)
SMOKE = dict(num_epochs=3, num_iterations_per_epoch=4, num_val_iterations_per_epoch=2, save_every=1)


class NoTestTimeMirroring:
    """Mixin: training still mirrors as planned; validation and nnUNetv2_predict of the checkpoint do not (in 3d,
    test-time mirroring runs the network 8 times per tile)."""

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        configured = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return configured


def define_variant(base: type, name: str, namespace: dict, mixins: tuple = (), **settings) -> type:
    """A subclass of ``base`` (after ``mixins``) named ``name`` that only changes attributes after ``base.__init__``,
    defined in ``namespace`` (a module's globals(), so that it pickles by name)."""
    module = namespace['__name__']

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        base.__init__(self, plans, configuration, fold, dataset_json, device)
        for key, value in settings.items():
            setattr(self, key, value)

    doc = ', '.join([f'{k}={v}' for k, v in settings.items()] + [m.__name__ for m in mixins])
    cls = type(name, (*mixins, base), {'__init__': __init__, '__module__': module, '__qualname__': name,
                                       '__doc__': f'{base.__name__} with {doc}.'})
    namespace[name] = cls
    return cls


def add_variant(base: type, name: str, namespace: dict, mixins: tuple = (), **settings) -> list:
    """``define_variant`` and the variant's short schedules (``add_short_variants``) in ``namespace``; returns their
    names, the variant's first, for the module's ``__all__``."""
    variant = define_variant(base, name, namespace, mixins, **settings)
    return [name] + add_short_variants(variant, namespace)


def schedule_name(trainer: str, epochs) -> str:
    """The trainer class with that schedule (a number of epochs, or 'smoke'), named as nnU-Net names its own
    (``nnUNetTrainer_20epochs``); nnU-Net's default 1000 epochs is the trainer itself."""
    epochs = str(epochs)
    if epochs == '1000':
        return trainer
    if epochs == 'smoke':
        return f'{trainer}_smoke'
    return f'{trainer}_{epochs}epoch' + ('' if epochs == '1' else 's')


def add_short_variants(base: type, namespace: dict, epochs=EPOCHS, smoke: bool = True) -> list:
    """Define the short variants of ``base`` in ``namespace`` (a module's globals(), so that they pickle by name)
    and return their names."""
    variants = {schedule_name(base.__name__, e): {'num_epochs': e} for e in epochs}
    if smoke:
        variants[schedule_name(base.__name__, 'smoke')] = SMOKE
    for name, settings in variants.items():
        define_variant(base, name, namespace, (NoTestTimeMirroring,) if settings is SMOKE else (), **settings)
    return list(variants)
