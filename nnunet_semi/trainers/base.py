"""nnUNetTrainerSemi: what every semi-supervised trainer shares.

A batch travels as one object: each loader's whole batch (a dict: ``'data'`` the images (B, C, *patch), and whatever
else the loader yields, e.g. ``'target'`` the segmentation, a list over deep-supervision scales, ``'keys'`` the case
identifiers, pseudo-labels) is moved to the device by the base and handed to the method, which reads what it needs.

A method subclasses the base and writes only its own parts:

- ``build_semi_modules()``: the extra modules (second network, heads), created once ``self.network`` exists;
  ``semi_modules()`` names them, so the base moves, saves and restores them; ``register_optimizer`` adds nnU-Net's
  SGD for parameters that ``self.optimizer`` does not train; ``self.ema_teacher = True`` in ``__init__`` gives the
  method ``self.teacher``, an exponential moving average of ``self.network`` that the base builds, starts from the
  network's weights (pretrained ones included), updates after every iteration (decay ``self.ema_decay``, 0.99, with
  Tarvainen & Valpola's warm-up), saves and restores; ``self.deploy_teacher = True`` makes the teacher's weights the
  deployed network's at the end of training (checkpoint_final.pth, nnU-Net's final validation);
- ``compute_losses(labeled, unlabeled)``: the forward pass and the loss terms of one iteration, as
  ``{name: (weight, loss)}``; a value that is not a loss (an accuracy) has weight None: it is logged, not trained;
  ``unlabeled`` is None where the method has no unlabeled stream, or none yet (a warm-up);
- optionally ``train_iteration(labeled, unlabeled)`` for a method that takes several optimisation steps per iteration
  (each through ``optimization_step``), ``after_optimizer_step()`` (e.g. an EMA update),
  ``on_semi_train_start(resumed)``, ``semi_state_dict()`` / ``load_semi_state_dict()`` for state that is not a module,
  and ``get_unlabeled_dataloader(num_processes)`` for unlabeled batches of another loader (pseudo-labels; None: no
  unlabeled batches until the method calls ``replace_unlabeled_dataloader``).

Class attributes: ``uses_unlabeled_data = False`` (no unlabeled loader), ``single_gpu = True`` (refuse DDP),
``segmentation_batches = False`` (training batches that are not nnU-Net's, so no memory footprint to check),
``compile_network = False`` (see there).

The base does the rest once: a second loader of unlabeled batches, moving both batches to the device, autocast on
CUDA, the weighted sum, gradient clipping per optimizer (as stock nnU-Net clips its network's), stepping every
optimizer that received gradients, logging each term (training log and progress.png), and saving everything beyond
``self.network`` under the ``nnunet_semi`` key of nnU-Net's own checkpoint files. ``self.network`` stays exactly the
deployable network, so stock ``nnUNetv2_predict`` loads the result.
"""
import os
import random
from copy import deepcopy
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join
from torch import autocast, nn
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunetv2.paths import nnUNet_raw
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.helpers import dummy_context

import nnunet_semi
from nnunet_semi.data.augmenter import augmenter, stop_workers
from nnunet_semi.data.loader import UnlabeledDataLoader, UnlabeledImages
from nnunet_semi.data.unlabeled import collect_unlabeled_cases
from nnunet_semi.environment import temporary_env
from nnunet_semi.losses.pseudo_label import masked_pseudo_label_loss
from nnunet_semi.networks.ema import ema_decay_at, ema_update
from nnunet_semi.trainers.progress import SemiLocalLogger

CHECKPOINT_KEY = 'nnunet_semi'
Batch = Dict[str, object]  # a loader's batch: 'data', and 'target', 'keys', ... as the loader yields them
LossTerms = Dict[str, Tuple[Optional[float], torch.Tensor]]  # {name: (weight, loss)}; weight None: logged only


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module behind DDP and torch.compile wrappers."""
    if isinstance(module, DDP):
        module = module.module
    if isinstance(module, OptimizedModule):
        module = module._orig_mod
    return module


class nnUNetTrainerSemi(nnUNetTrainer):
    single_gpu = False  # True: the method refuses multi-GPU (DDP) training with a clear error
    uses_unlabeled_data = True  # False: no unlabeled loader (unlabeled batches are None)
    segmentation_batches = True  # False: training batches are not nnU-Net's (a proxy task): no footprint to measure
    # False: the method calls the network's parts one by one or reads its features through forward hooks, which a
    # torch.compile'd network would bypass, so nnU-Net's torch.compile stays off
    compile_network = True

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_cascaded:
            raise RuntimeError(f'{self.__class__.__name__} does not support cascaded configurations '
                               f'({configuration}): unlabeled cases have no previous-stage segmentation. Train '
                               f'3d_fullres or 2d instead.')
        self.batch_size_unlabeled = None  # None: the planned batch size
        # False: the unlabeled batches get nnU-Net's spatial transforms and mirroring but not its intensity ones
        self.unlabeled_intensity_transforms = True
        self.save_every = 1  # a semi epoch costs more than a stock one: never lose more than one
        self.dataloader_unlabeled = None
        self.num_unlabeled_processes = 0  # augmentation workers of the unlabeled loader
        self.num_unlabeled_cases = 0
        self.iteration = 0  # global training iteration, the clock of ramp-ups and EMA
        self.ema_teacher = False  # True: self.teacher, an EMA of self.network (see the module's docstring)
        self.ema_decay = 0.99
        self.deploy_teacher = False  # True: at the end of training the EMA teacher's weights become self.network's
        self.teacher = None
        self.semi_optimizers: Dict[str, Tuple[torch.optim.Optimizer, PolyLRScheduler]] = {}
        self.semi_restored = False  # True once load_checkpoint restored the nnunet_semi state
        self._initial_weights = None  # the network's first weights after initialize()
        self.logger.local_logger = SemiLocalLogger.take_over(self.logger.local_logger)

    # ------------------------------------------------------------------ what a method provides
    def build_semi_modules(self) -> None:
        """Create the method's extra modules and optimizers. Called once, right after self.network is built."""

    def semi_modules(self) -> Dict[str, nn.Module]:
        """The method's extra modules by name: moved to the device, saved and restored with the checkpoint. By
        default the EMA teacher, where the method has one."""
        return {} if self.teacher is None else {'teacher': self.teacher}

    def compute_losses(self, labeled: Batch, unlabeled: Optional[Batch]) -> LossTerms:
        """One iteration's forward pass and loss terms: {name: (weight, unweighted scalar loss)}, and values that are
        not losses as {name: (None, value)}.

        labeled: nnU-Net's training batch, 'data' (B, C, *patch), 'target' (a list over deep supervision scales when
        deep supervision is on), 'keys'; unlabeled: the unlabeled loader's batch, 'data' (B_u, C, *patch), 'keys' and
        whatever else it yields, or None. Tensors on self.device."""
        raise NotImplementedError

    def after_optimizer_step(self) -> None:
        """Called after every optimizer step (e.g. an EMA update)."""

    def on_semi_train_start(self, resumed: bool) -> None:
        """Called at the start of training, after dataloaders exist. ``resumed``: the nnunet_semi state came from a
        checkpoint (--c); otherwise self.network may hold -pretrained_weights that extra modules should follow."""

    def semi_state_dict(self) -> dict:
        """State that is not a module (a memory bank, counters), saved with the checkpoint."""
        return {}

    def load_semi_state_dict(self, state: dict) -> None:
        pass

    # ------------------------------------------------------------------ helpers for methods
    def register_optimizer(self, name: str, parameters, lr: Optional[float] = None) -> torch.optim.Optimizer:
        """nnU-Net's SGD (its weight decay, momentum 0.99, Nesterov) for ``parameters`` besides self.optimizer, from
        ``lr`` (default nnU-Net's initial_lr) on nnU-Net's poly schedule: stepped every iteration, clipped with the
        rest, saved and restored."""
        lr = self.initial_lr if lr is None else lr
        optimizer = torch.optim.SGD(parameters, lr, weight_decay=self.weight_decay, momentum=0.99, nesterov=True)
        self.semi_optimizers[name] = (optimizer, PolyLRScheduler(optimizer, lr, self.num_epochs))
        return optimizer

    @staticmethod
    def batch_slice(output, start: int, stop: Optional[int] = None):
        """Samples start:stop of network output (a tensor, or a list over deep supervision scales)."""
        if isinstance(output, (list, tuple)):
            return [o[start:stop] for o in output]
        return output[start:stop]

    def split_batch(self, output, n: int):
        """Split network output (a tensor, or a list over deep supervision scales) into the first n samples and
        the rest."""
        return self.batch_slice(output, 0, n), self.batch_slice(output, n)

    def deep_supervision_weights(self) -> List[float]:
        """nnU-Net's weight of each deep-supervision scale in its loss (one 1.0 without deep supervision)."""
        return list(getattr(self.loss, 'weight_factors', [1.0]))

    def masked_loss(self, output, labels: torch.Tensor, mask: torch.Tensor, dice: bool = True,
                    class_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Cross-entropy (+ soft Dice) of a network output against full-resolution (pseudo-)labels on the voxels of
        ``mask`` (losses/pseudo_label.py), for this dataset's labels or regions, at every deep-supervision scale with
        nnU-Net's weights."""
        return masked_pseudo_label_loss(output, labels, mask, self.label_manager.has_regions,
                                        self.deep_supervision_weights(), dice=dice, class_weights=class_weights)

    def labeled_loss(self, labeled: Batch) -> torch.Tensor:
        """Stock nnU-Net's loss of the network on the labeled batch, as nnUNetTrainer.train_step computes it."""
        return self.loss(self.network(labeled['data']), labeled['target'])

    @staticmethod
    def full_resolution(output) -> torch.Tensor:
        """The full-resolution output of a network with or without deep supervision."""
        return output[0] if isinstance(output, (list, tuple)) else output

    # ------------------------------------------------------------------ set-up
    def _do_i_compile(self):
        return self.compile_network and super()._do_i_compile()

    def initialize(self):
        super().initialize()
        if self.single_gpu and self.is_ddp:
            raise RuntimeError(f'{self.__class__.__name__} trains on one GPU; multi-GPU (DDP) training is not '
                               f'supported. Train without -num_gpus.')
        # a copy of the first weights, to tell at the start of training whether -pretrained_weights replaced them
        self._initial_weights = next(unwrap(self.network).parameters()).detach().clone()
        if self.ema_teacher:
            self.teacher = deepcopy(unwrap(self.network)).requires_grad_(False)
        self.build_semi_modules()
        for module in self.semi_modules().values():
            module.to(self.device)

    def reset_teacher(self) -> None:
        """The EMA teacher becomes a copy of the network's current weights."""
        self.teacher.load_state_dict(unwrap(self.network).state_dict())

    def started_from_pretrained_weights(self) -> bool:
        """Whether nnU-Net's -pretrained_weights replaced the network's weights after initialize()."""
        return not torch.equal(self._initial_weights, next(unwrap(self.network).parameters()).detach())

    def get_dataloaders(self):
        if not self.uses_unlabeled_data:
            return super().get_dataloaders()
        # the unlabeled loader's workers come out of the same nnUNet_n_proc_DA budget as the labeled ones
        budget = get_allowed_n_proc_DA()
        self.num_unlabeled_processes = budget // 2
        # first: missing unlabeled data stops training before nnU-Net starts workers that would outlive the error
        self.dataloader_unlabeled = self.get_unlabeled_dataloader(self.num_unlabeled_processes)
        with temporary_env(nnUNet_n_proc_DA=budget - self.num_unlabeled_processes):  # read when nnU-Net starts them
            return super().get_dataloaders()

    def get_unlabeled_dataloader(self, num_processes: int):
        """The augmenter of unlabeled batches: nnU-Net's patch sampling and training transforms on images only (without
        the intensity transforms if not ``unlabeled_intensity_transforms``)."""
        cases = self.find_unlabeled_cases(num_processes)
        return self.unlabeled_augmenter(UnlabeledDataLoader, UnlabeledImages(cases), num_processes,
                                        intensity=self.unlabeled_intensity_transforms)

    def unlabeled_augmenter(self, loader_class, data, num_processes: int, **kwargs):
        """``loader_class`` on ``data`` at the unlabeled batch size through nnU-Net's training transforms
        (data/augmenter.py)."""
        return augmenter(self, loader_class, data, num_processes, self.batch_size_unlabeled or self.batch_size,
                         **kwargs)

    def replace_unlabeled_dataloader(self, batches) -> None:
        """From now on the unlabeled batches come from ``batches`` (e.g. a round's pseudo-labels); the previous
        loader's workers are stopped."""
        stop_workers(self.dataloader_unlabeled)
        self.dataloader_unlabeled = batches

    def find_unlabeled_cases(self, num_processes: int) -> Dict[str, str]:
        """Every unlabeled case of this fold (key -> file path without ending, see data/unlabeled.py), logged."""
        pm = self.plans_manager
        cases = collect_unlabeled_cases(
            self.preprocessed_dataset_folder_base, self.configuration_manager.data_identifier, self.fold,
            join(nnUNet_raw, pm.dataset_name) if nnUNet_raw else None,
            f'nnUNetv2_semi_preprocess -d {pm.dataset_name} -c {self.configuration_name} -p {pm.plans_name}')
        self.num_unlabeled_cases = len(cases)
        n_hidden = sum(k.startswith('hidden:') for k in cases)
        self.print_to_log_file(f'Unlabeled cases: {len(cases)} ({len(cases) - n_hidden} preprocessed unlabeled '
                               f'images, {n_hidden} with labels hidden by nnUNetv2_semi_split); unlabeled batch size '
                               f'{self.batch_size_unlabeled or self.batch_size}; {num_processes} augmentation '
                               f'worker(s) for them')
        return cases

    def on_train_start(self):
        super().on_train_start()
        if self.device.type == 'cuda' and self.local_rank == 0 and self.segmentation_batches:
            from nnunet_semi.planners.semi_planner import memory_warning  # the planner measures trainers like this one
            warning = memory_warning(self, torch.cuda.get_device_properties(self.device).total_memory)[1]
            if warning:
                self.print_to_log_file(warning)
        if self.teacher is not None and not self.semi_restored:  # the network's weights, maybe -pretrained_weights
            self.reset_teacher()
        self.on_semi_train_start(self.semi_restored)

    def on_train_end(self):
        if self.deploy_teacher and self.teacher is not None:  # before nnU-Net writes checkpoint_final and validates
            unwrap(self.network).load_state_dict(self.teacher.state_dict())
            self.print_to_log_file('The EMA teacher is the deployed network: checkpoint_final.pth and the final '
                                   'validation hold its weights')
        super().on_train_end()
        stop_workers(self.dataloader_unlabeled)

    # ------------------------------------------------------------------ training
    def optimizers(self) -> List[torch.optim.Optimizer]:
        """nnU-Net's optimizer and every registered one."""
        return [self.optimizer] + [opt for opt, _ in self.semi_optimizers.values()]

    @staticmethod
    def clip_per_optimizer(optimizers: List[torch.optim.Optimizer], max_norm: float = 12) -> None:
        """nnU-Net's gradient clipping (norm 12) of each optimizer's parameters on their own, as stock nnU-Net clips its
        network's: a second network's or a head's large gradient does not shrink the deployed network's step. A
        parameter two optimizers share is clipped with the first."""
        seen = set()
        for opt in optimizers:
            params = [p for group in opt.param_groups for p in group['params'] if id(p) not in seen]
            seen.update(id(p) for p in params)
            torch.nn.utils.clip_grad_norm_(params, max_norm)

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        for _, scheduler in self.semi_optimizers.values():
            scheduler.step(self.current_epoch)
        for module in self.semi_modules().values():
            module.train()
        self.iteration = self.current_epoch * self.num_iterations_per_epoch

    def to_device(self, batch: Batch) -> Batch:
        """The batch with every tensor (and every list of tensors: deep supervision targets) on self.device."""
        def move(value):
            if torch.is_tensor(value):
                return value.to(self.device, non_blocking=True)
            if isinstance(value, list) and value and all(torch.is_tensor(v) for v in value):
                return [v.to(self.device, non_blocking=True) for v in value]
            return value
        return {key: move(value) for key, value in batch.items()}

    def next_unlabeled_batch(self) -> Optional[Batch]:
        """The unlabeled loader's next batch on the device; None without one."""
        if self.dataloader_unlabeled is None:
            return None
        return self.to_device(next(self.dataloader_unlabeled))

    def train_step(self, batch: dict) -> dict:
        terms = self.train_iteration(self.to_device(batch), self.next_unlabeled_batch())
        if self.teacher is not None:
            ema_update(self.teacher, unwrap(self.network), ema_decay_at(self.iteration, self.ema_decay))
        self.after_optimizer_step()
        self.iteration += 1

        values = torch.stack([torch.as_tensor(loss, device=self.device).detach().float()
                              for _, loss in terms.values()]).cpu().numpy()  # one sync for every term
        out = {'loss': sum(weight * value for (weight, _), value in zip(terms.values(), values) if weight is not None)}
        for (name, (weight, _)), value in zip(terms.items(), values):
            if weight is None:
                out['metric_' + name] = value
            else:
                out['term_' + name] = value
                out['weight_' + name] = float(weight)
        return out

    def train_iteration(self, labeled: Batch, unlabeled: Optional[Batch]) -> LossTerms:
        """One iteration's optimisation; returns every loss term it computed. By default one step of every optimizer
        on the weighted sum of ``compute_losses``. A method that optimises in several steps per iteration (MASSL's
        alternation) overrides this and calls ``optimization_step`` once per step."""
        return self.optimization_step(lambda: self.compute_losses(labeled, unlabeled), self.optimizers())

    def autocast(self):
        """Mixed precision on CUDA, as nnU-Net trains; nothing on other devices."""
        return autocast(self.device.type, enabled=True) if self.device.type == 'cuda' else dummy_context()

    def optimization_step(self, compute: Callable[[], LossTerms],
                          optimizers: List[torch.optim.Optimizer]) -> LossTerms:
        """Zero the gradients of ``optimizers``, run ``compute`` (the forward pass and loss terms, under autocast on
        CUDA), back-propagate the weighted sum, clip the gradients of each optimizer's parameters and step them (with
        nnU-Net's grad scaler on CUDA). Returns the terms."""
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        with self.autocast():
            terms = compute()
            total = sum(weight * loss for weight, loss in terms.values() if weight is not None)
        scaler = self.grad_scaler
        (total if scaler is None else scaler.scale(total)).backward()
        # an optimizer none of whose parameters took part (a head unused in this stage) is not stepped: the grad
        # scaler refuses to step one that has no gradients
        optimizers = [opt for opt in optimizers
                      if any(p.grad is not None for group in opt.param_groups for p in group['params'])]
        if scaler is not None:
            for opt in optimizers:
                scaler.unscale_(opt)
        self.clip_per_optimizer(optimizers)
        for opt in optimizers:
            if scaler is None:
                opt.step()
            else:
                scaler.step(opt)
        if scaler is not None:
            scaler.update()
        return terms

    def on_train_epoch_end(self, train_outputs: List[dict]):
        super().on_train_epoch_end(train_outputs)
        outputs = collate_outputs(train_outputs)
        names = [k[len('term_'):] for k in outputs if k.startswith('term_')]
        for name in names:
            self.logger.local_logger.log_term(name, np.mean(outputs['term_' + name]),
                                              np.mean(outputs['weight_' + name]), self.current_epoch)
        self.print_to_log_file('loss terms: ' + ', '.join(
            f'{name} {np.mean(outputs["term_" + name]):.4f} (weight {np.mean(outputs["weight_" + name]):.4g})'
            for name in names))
        metrics = {k[len('metric_'):]: np.mean(v) for k, v in outputs.items() if k.startswith('metric_')}
        for name, value in metrics.items():
            self.logger.local_logger.log_metric(name, value, self.current_epoch)
        if metrics:
            self.print_to_log_file('training metrics: ' + ', '.join(f'{k} {v:.4f}' for k, v in metrics.items()))

    # ------------------------------------------------------------------ checkpoints
    def _semi_checkpoint(self) -> dict:
        return {
            'version': nnunet_semi.__version__,
            'modules': {name: unwrap(m).state_dict() for name, m in self.semi_modules().items()},
            'optimizers': {name: opt.state_dict() for name, (opt, _) in self.semi_optimizers.items()},
            'state': self.semi_state_dict(),
            'rng': {'torch': torch.get_rng_state(), 'numpy': np.random.get_state(), 'python': random.getstate(),
                    'cuda': torch.cuda.get_rng_state_all() if self.device.type == 'cuda' else None},
        }

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint plus the nnunet_semi key, written atomically (an interruption while writing leaves
        the previous file intact)."""
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file('No checkpoint written, checkpointing is disabled')
            return
        checkpoint = {
            'network_weights': unwrap(self.network).state_dict(),
            'optimizer_state': self.optimizer.state_dict(),
            'grad_scaler_state': self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            'logging': self.logger.get_checkpoint(),
            '_best_ema': self._best_ema,
            'current_epoch': self.current_epoch + 1,
            'init_args': self.my_init_kwargs,
            'trainer_name': self.__class__.__name__,
            'inference_allowed_mirroring_axes': self.inference_allowed_mirroring_axes,
            CHECKPOINT_KEY: self._semi_checkpoint(),
        }
        partial = filename + '.partial'
        torch.save(checkpoint, partial)
        os.replace(partial, filename)

    def load_checkpoint(self, filename: str) -> None:
        """nnU-Net's restore (a filename: nnunetv2 2.8.1 cannot take a dict here), then the nnunet_semi state."""
        super().load_checkpoint(filename)
        checkpoint = torch.load(filename, map_location=self.device, weights_only=False)
        semi = checkpoint.get(CHECKPOINT_KEY)
        if semi is None:
            self.print_to_log_file(f'WARNING: the checkpoint has no {CHECKPOINT_KEY} state (written by another '
                                   f'trainer?): the extra modules of {self.__class__.__name__} start afresh.')
            return
        missing = [name for name in self.semi_modules() if name not in semi['modules']]
        if missing:  # e.g. FixMatch's EMA teacher, in a checkpoint written before it was FixMatch's default
            self.print_to_log_file(f'WARNING: {filename} has no state of {", ".join(missing)} (written by another '
                                   f'version of {self.__class__.__name__}?): it starts afresh (an EMA teacher as a '
                                   f'copy of the restored network).')
        for name, module in self.semi_modules().items():
            if name not in missing:
                unwrap(module).load_state_dict(semi['modules'][name])
        if 'teacher' in missing:
            self.reset_teacher()
        for name, (opt, _) in self.semi_optimizers.items():
            opt.load_state_dict(semi['optimizers'][name])
        self.load_semi_state_dict(semi['state'])
        rng = semi['rng']
        torch.set_rng_state(rng['torch'].cpu())
        np.random.set_state(rng['numpy'])
        random.setstate(rng['python'])
        if rng['cuda'] is not None and self.device.type == 'cuda':
            torch.cuda.set_rng_state_all([s.cpu() for s in rng['cuda']])
        self.semi_restored = True


__all__ = ['nnUNetTrainerSemi']
