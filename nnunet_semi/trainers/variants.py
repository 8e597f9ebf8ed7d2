"""Shorter schedules, named as nnU-Net names its own (``nnUNetTrainer_5epochs``): ``<Trainer>_5epochs`` etc., and
``<Trainer>_smoke`` (3 epochs of 8 iterations, 4 validation iterations, a checkpoint every epoch) for tests, the demo
and trying a set-up in a minute on a CPU."""
import torch

EPOCHS = (1, 5, 10, 20, 50, 100, 250)
SMOKE = dict(num_epochs=3, num_iterations_per_epoch=8, num_val_iterations_per_epoch=4, save_every=1)


def _variant(base: type, name: str, module: str, settings: dict) -> type:
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        base.__init__(self, plans, configuration, fold, dataset_json, device)
        for key, value in settings.items():
            setattr(self, key, value)

    doc = ', '.join(f'{k}={v}' for k, v in settings.items())
    return type(name, (base,), {'__init__': __init__, '__module__': module, '__qualname__': name,
                                '__doc__': f'{base.__name__} with {doc}.'})


def add_short_variants(base: type, namespace: dict, epochs=EPOCHS, smoke: bool = True) -> list:
    """Define the short variants of ``base`` in ``namespace`` (a module's globals(), so that they pickle by name)
    and return their names."""
    module = namespace['__name__']
    variants = {f'{base.__name__}_{e}epoch{"s" if e > 1 else ""}': {'num_epochs': e} for e in epochs}
    if smoke:
        variants[f'{base.__name__}_smoke'] = SMOKE
    for name, settings in variants.items():
        namespace[name] = _variant(base, name, module, settings)
    return list(variants)
