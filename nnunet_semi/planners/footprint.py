"""The measured cost of one training step of any trainer, on any plans and configuration.

Nothing is declared by hand: the trainer is built from the plans exactly as ``nnUNetv2_train`` builds it (network,
extra modules, optimizers, loss), fed a synthetic batch of the planned shape (labeled batch, targets at every deep
supervision scale, unlabeled batch) and run for real through its own ``train_step``. Measured per step:

- FLOPs (torch's FlopCounterMode: convolutions, matmuls, attention), forward and backward;
- the peak bytes of the tensors autograd keeps for backward (saved-tensor hooks; any device);
- parameter and buffer bytes of every module the trainer owns, and gradient + optimizer-state bytes;
- on CUDA, the real peak of allocated memory during the step.

``memory_bytes`` is the CUDA peak on CUDA, else activations + parameters + gradients + optimizer state: the same
quantity, estimated. Ratios to stock nnUNetTrainer on the same plans are what the semi planner uses.
"""
import contextlib
import copy
import io
import itertools
import os
import tempfile
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

from nnunet_semi import STOCK
from nnunet_semi.environment import temporary_env


# ---------------------------------------------------------------------------- activations kept for backward
class _Held:
    def __init__(self, tensor, release):
        self.tensor, self._release = tensor, release

    def __del__(self):
        self._release()


class SavedTensorPeak:
    """Peak bytes of the tensors autograd keeps for backward (activations; parameters excluded), counting each
    storage once while any graph holds it. A step that back-propagates several times (alternating optimisation)
    counts the peak of its passes, not their sum. Use as a context manager around the step."""

    def __init__(self):
        self.live, self.peak, self._refs = 0, 0, {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def __enter__(self):
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)

    def _release(self, key):
        count, size = self._refs[key]
        if count == 1:
            del self._refs[key]
            self.live -= size
        else:
            self._refs[key] = (count - 1, size)

    def _pack(self, t):
        if isinstance(t, torch.nn.Parameter) or t.device.type == 'meta':
            return t
        storage = t.untyped_storage()
        key = (t.device, storage.data_ptr())
        count, size = self._refs.get(key, (0, storage.nbytes()))
        if count == 0:
            self.live += size
            self.peak = max(self.peak, self.live)
        self._refs[key] = (count + 1, size)
        return _Held(t, lambda: self._release(key))

    @staticmethod
    def _unpack(held):
        return held.tensor if isinstance(held, _Held) else held


# ---------------------------------------------------------------------------- the trainer, built from plans
@contextlib.contextmanager
def _scratch_results():
    """nnU-Net trainers create their output folder and log on construction: keep them out of nnUNet_results. The
    network is not compiled: compiling takes long and eager memory is the safe side of the estimate."""
    with tempfile.TemporaryDirectory() as tmp, temporary_env(nnUNet_results=tmp, nnUNet_compile='f'):
        yield tmp


def build_trainer(trainer: Union[str, type], plans: dict, configuration: str, dataset_json: dict, device: torch.device,
                  scratch: str, batch_size: Optional[int] = None):
    """(an initialised trainer, its labeled cases): the trainer a class, or a name as for nnUNetv2_train -tr
    (network, extra modules, optimizers, loss), for ``plans``, a dict (candidate plans need not be on disk). No case is
    read; where the plans' data is not preprocessed, an empty stand-in folder takes its place and the one labeled case
    is called 'case'. ``batch_size`` overrides the planned labeled and unlabeled batch size."""
    trainer_class = recursive_find_trainer_class_by_name(trainer) if isinstance(trainer, str) else trainer
    plans = copy.deepcopy(plans)
    plans['continue_training'] = False
    trainer = trainer_class(plans=plans, configuration=configuration, fold=0, dataset_json=dataset_json,
                            device=device)
    folder = trainer.preprocessed_dataset_folder
    has_data = os.path.isdir(folder) and len(os.listdir(folder)) > 0
    if not has_data:  # candidate plans for data not preprocessed (yet): nnU-Net infers its dataset class from files
        trainer.preprocessed_dataset_folder = os.path.join(scratch, 'preprocessed_stand_in')
        os.makedirs(trainer.preprocessed_dataset_folder, exist_ok=True)
        open(os.path.join(trainer.preprocessed_dataset_folder, 'case.b2nd'), 'w').close()
    trainer.initialize()
    if batch_size is not None:
        trainer.batch_size = batch_size
        if _is_semi(trainer):
            trainer.batch_size_unlabeled = batch_size
    return trainer, sorted(trainer.do_split()[0]) if has_data else ['case']


def _is_semi(trainer) -> bool:
    """An nnunet_semi trainer (trainers/base.py): its extra modules, optimizers and unlabeled loader are public."""
    return hasattr(trainer, 'semi_modules')


def synthetic_batch(trainer, cases, seed: int = 0, batch_size: Optional[int] = None) -> dict:
    """A labeled batch of the planned shape from ``cases`` (keys): images, and targets at every deep supervision
    scale as nnU-Net's transforms produce them (label maps, or one binary channel per region)."""
    g = torch.Generator().manual_seed(seed)
    patch = [int(p) for p in trainer.configuration_manager.patch_size]
    b = batch_size or trainer.batch_size
    data = torch.randn((b, trainer.num_input_channels, *patch), generator=g)
    lm = trainer.label_manager
    scales = trainer._get_deep_supervision_scales() or [[1] * len(patch)]

    def target(scale):
        shape = [int(round(p * s)) for p, s in zip(patch, scale)]
        if lm.has_regions:
            return torch.randint(0, 2, (b, len(lm.foreground_regions), *shape), generator=g).float()
        return torch.randint(0, len(lm.all_labels), (b, 1, *shape), generator=g).to(torch.int16)

    targets = [target(s) for s in scales]
    return {'data': data, 'target': targets if trainer.enable_deep_supervision else targets[0],
            'keys': [cases[i % len(cases)] for i in range(b)]}


def _modules(trainer):
    return [trainer.network] + (list(trainer.semi_modules().values()) if _is_semi(trainer) else [])


def _optimizers(trainer):
    return trainer.optimizers() if _is_semi(trainer) else [trainer.optimizer]


def _unique_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        key = (t.device, t.untyped_storage().data_ptr())
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


# ---------------------------------------------------------------------------- the measurement
@dataclass
class Footprint:
    trainer: str
    configuration: str
    batch_size: int
    patch_size: list
    flops: int
    activation_bytes: int  # peak kept for backward during the step
    parameter_bytes: int  # parameters and buffers of every module the trainer owns
    optimizer_bytes: int  # gradients and optimizer state
    cuda_peak_bytes: Optional[int] = None  # real peak allocated during the step (CUDA only)

    @property
    def memory_bytes(self) -> int:
        if self.cuda_peak_bytes is not None:
            return self.cuda_peak_bytes
        return self.activation_bytes + self.parameter_bytes + self.optimizer_bytes

    @property
    def fixed_bytes(self) -> int:
        """What does not grow with the batch: weights, gradients, optimizer state."""
        return self.parameter_bytes + self.optimizer_bytes

    def memory_at_batch(self, batch_size: int) -> float:
        """Memory at another batch size (labeled and unlabeled alike): activations scale with the batch."""
        return self.fixed_bytes + (self.memory_bytes - self.fixed_bytes) * batch_size / self.batch_size


def measure_trainer(trainer, cases, seed: int = 0, cuda_baseline: int = 0) -> Footprint:
    """Footprint of one training step of an initialised trainer with labeled ``cases`` (see build_trainer). Runs a
    warm-up step first, so optimizer state exists as it does during training; the trainer's weights change (use a
    throw-away trainer). cuda_baseline: bytes allocated before the trainer was built (subtracted from the CUDA
    peak)."""
    batch = synthetic_batch(trainer, cases, seed)
    if _is_semi(trainer):
        # its unlabeled batch (with targets, as pseudo-labeled batches have them), mid-training: ramped-up weights,
        # every term computed
        unlabeled = synthetic_batch(trainer, cases, seed + 1, trainer.batch_size_unlabeled or trainer.batch_size)
        trainer.dataloader_unlabeled = itertools.repeat(unlabeled)
        trainer.current_epoch = trainer.num_epochs // 2
        trainer.iteration = trainer.current_epoch * trainer.num_iterations_per_epoch
    for m in _modules(trainer):
        m.train()
    device = trainer.device
    step = lambda: trainer.train_step(batch)
    step()  # warm-up: optimizer state, lazy buffers
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with FlopCounterMode(display=False) as counter, SavedTensorPeak() as saved:
        step()
    cuda_peak = None
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        cuda_peak = torch.cuda.max_memory_allocated(device) - cuda_baseline
    params = _unique_bytes(t for m in _modules(trainer) for t in itertools.chain(m.parameters(), m.buffers()))
    grads = _unique_bytes(p.grad for opt in _optimizers(trainer) for g in opt.param_groups for p in g['params']
                          if p.grad is not None)
    states = _unique_bytes(v for opt in _optimizers(trainer) for s in opt.state.values() for v in s.values()
                           if torch.is_tensor(v) and v.dim() > 0)
    return Footprint(trainer.__class__.__name__, trainer.configuration_name, trainer.batch_size,
                     [int(p) for p in trainer.configuration_manager.patch_size], counter.get_total_flops(),
                     saved.peak, params, grads + states, cuda_peak)


def measure(trainer: Union[str, type], plans: dict, configuration: str, dataset_json: dict,
            device: torch.device = torch.device('cpu'), batch_size: Optional[int] = None) -> Footprint:
    """Build ``trainer`` (a class or a name) from ``plans`` on ``device`` and measure one training step (see the
    module's doc)."""
    with _scratch_results() as scratch:
        baseline = 0
        if device.type == 'cuda':
            torch.cuda.empty_cache()
            baseline = torch.cuda.memory_allocated(device)
        rng = torch.get_rng_state(), np.random.get_state(), \
            torch.cuda.get_rng_state_all() if device.type == 'cuda' else None
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net's start-up messages, once per trainer built
            built, cases = build_trainer(trainer, plans, configuration, dataset_json, device, scratch, batch_size)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                return measure_trainer(built, cases, cuda_baseline=baseline)
        finally:
            del built
            torch.set_rng_state(rng[0])
            np.random.set_state(rng[1])
            if device.type == 'cuda':
                torch.cuda.set_rng_state_all(rng[2])
                torch.cuda.empty_cache()


def relative(trainer: Union[str, type], plans: dict, configuration: str, dataset_json: dict,
             device: torch.device = torch.device('cpu'), batch_size: Optional[int] = None):
    """(footprint of trainer, footprint of stock nnUNetTrainer) on the same plans, measured one after the
    other on the same device."""
    return (measure(trainer, plans, configuration, dataset_json, device, batch_size),
            measure(STOCK, plans, configuration, dataset_json, device, batch_size))


def estimate_training_memory(trainer) -> float:
    """Bytes a running trainer's step needs at its planned batch size: a throw-away copy of it is measured at batch 2
    (the smallest nnU-Net plans) on the same device, its activations scaled to the planned batch."""
    batch_size = trainer.configuration_manager.batch_size
    measured = measure(type(trainer), trainer.plans_manager.plans, trainer.configuration_name, trainer.dataset_json,
                       trainer.device, batch_size=min(2, batch_size))
    return measured.memory_at_batch(batch_size)
