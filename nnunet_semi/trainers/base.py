"""nnUNetTrainerSemi: what every semi-supervised trainer shares.

A method subclasses it and writes only its own parts:

- ``build_semi_modules()``: the extra modules (teacher, second network, heads), created once ``self.network``
  exists; ``semi_modules()`` names them, so the base moves, saves and restores them;
- ``compute_losses(data, target, unlabeled)``: the forward pass and the loss terms of one iteration, as
  ``{name: (weight, loss)}``;
- optionally ``train_iteration`` for a method that takes several optimisation steps per iteration (each through
  ``optimization_step``), ``after_optimizer_step()`` (e.g. an EMA update), ``on_semi_train_start(resumed)``,
  ``semi_state_dict()`` / ``load_semi_state_dict()`` for state that is not a module (a memory bank), extra
  optimizers through ``register_optimizer``, ``next_unlabeled()`` for unlabeled batches that carry more than
  images (pseudo-labels), and ``self.metrics`` for values that are not losses (an accuracy), logged like the terms.
  A method that needs no unlabeled loader sets ``uses_unlabeled_data = False``.

The base does the rest once: a second loader of unlabeled batches, moving both batches to the device, autocast on
CUDA, the weighted sum, gradient clipping over every trained parameter, stepping every optimizer that received
gradients, logging each term (training log and progress.png), and saving everything beyond ``self.network`` under
the ``nnunet_semi`` key of nnU-Net's own checkpoint files. ``self.network`` stays exactly the deployable network, so stock
``nnUNetv2_predict`` loads the result.
"""
import os
import random
from typing import Callable, Dict, List, Tuple, Union

import numpy as np
import torch
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from torch import autocast, nn
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2.utilities.helpers import dummy_context

import nnunet_semi
from nnunet_semi.environment import temporary_env
from nnunet_semi.data.loader import UnlabeledDataLoader, UnlabeledImages
from nnunet_semi.data.unlabeled import collect_unlabeled_cases
from nnunet_semi.trainers.progress import SemiLocalLogger

CHECKPOINT_KEY = 'nnunet_semi'
LossTerms = Dict[str, Tuple[float, torch.Tensor]]


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

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_cascaded:
            raise RuntimeError(f'{self.__class__.__name__} does not support cascaded configurations '
                               f'({configuration}): unlabeled cases have no previous-stage segmentation. Train '
                               f'3d_fullres or 2d instead.')
        self.batch_size_unlabeled = None  # None: the planned batch size
        self.save_every = 1  # a semi epoch costs more than a stock one: never lose more than one
        self.dataloader_unlabeled = None
        self.num_unlabeled_processes = 0  # augmentation workers of the unlabeled loader
        self.num_unlabeled_cases = 0
        self.iteration = 0  # global training iteration, the clock of ramp-ups and EMA
        self.semi_optimizers: Dict[str, Tuple[torch.optim.Optimizer, PolyLRScheduler]] = {}
        self.semi_restored = False  # True once load_checkpoint restored the nnunet_semi state
        self.labeled_keys = []  # case identifiers of the current labeled batch
        self.metrics: Dict[str, torch.Tensor] = {}  # values compute_losses reports besides its losses (no gradient)
        self._initial_weights = None  # the network's first weights after initialize()
        self.logger.local_logger = SemiLocalLogger.take_over(self.logger.local_logger)

    # ------------------------------------------------------------------ what a method provides
    def build_semi_modules(self) -> None:
        """Create the method's extra modules and optimizers. Called once, right after self.network is built."""

    def semi_modules(self) -> Dict[str, nn.Module]:
        """The method's extra modules by name: moved to the device, saved and restored with the checkpoint."""
        return {}

    def compute_losses(self, data: torch.Tensor, target: Union[torch.Tensor, List[torch.Tensor]],
                       unlabeled: torch.Tensor) -> LossTerms:
        """One iteration's forward pass and loss terms: {name: (weight, unweighted scalar loss)}.

        data: the labeled batch (B, C, *patch); target: its segmentation (a list over deep supervision scales when
        deep supervision is on); unlabeled: the unlabeled batch (B_u, C, *patch). All on self.device."""
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
    def register_optimizer(self, name: str, optimizer: torch.optim.Optimizer, initial_lr: float) -> None:
        """An optimizer besides self.optimizer: stepped every iteration, clipped with the rest, on nnU-Net's poly
        schedule, saved and restored."""
        self.semi_optimizers[name] = (optimizer, PolyLRScheduler(optimizer, initial_lr, self.num_epochs))

    @staticmethod
    def split_batch(output, n: int):
        """Split network output (a tensor, or a list over deep supervision scales) into the first n samples and
        the rest."""
        if isinstance(output, (list, tuple)):
            return [o[:n] for o in output], [o[n:] for o in output]
        return output[:n], output[n:]

    @staticmethod
    def full_resolution(output) -> torch.Tensor:
        """The full-resolution output of a network with or without deep supervision."""
        return output[0] if isinstance(output, (list, tuple)) else output

    # ------------------------------------------------------------------ set-up
    def initialize(self):
        super().initialize()
        if self.single_gpu and self.is_ddp:
            raise RuntimeError(f'{self.__class__.__name__} trains on one GPU; multi-GPU (DDP) training is not '
                               f'supported. Train without -num_gpus.')
        # a copy of the first weights, to tell at the start of training whether -pretrained_weights replaced them
        self._initial_weights = next(unwrap(self.network).parameters()).detach().clone()
        self.build_semi_modules()
        for module in self.semi_modules().values():
            module.to(self.device)

    def started_from_pretrained_weights(self) -> bool:
        """Whether nnU-Net's -pretrained_weights replaced the network's weights after initialize()."""
        return not torch.equal(self._initial_weights, next(unwrap(self.network).parameters()).detach())

    def get_dataloaders(self):
        if not self.uses_unlabeled_data:
            return super().get_dataloaders()
        # the unlabeled loader's workers come out of the same nnUNet_n_proc_DA budget as the labeled ones
        budget = get_allowed_n_proc_DA()
        self.num_unlabeled_processes = budget // 2
        with temporary_env(nnUNet_n_proc_DA=budget - self.num_unlabeled_processes):  # read when nnU-Net starts them
            dataloader_train, dataloader_val = super().get_dataloaders()
        self.dataloader_unlabeled = self.get_unlabeled_dataloader(self.num_unlabeled_processes)
        return dataloader_train, dataloader_val

    def get_unlabeled_dataloader(self, num_processes: int):
        """The augmenter of unlabeled batches: nnU-Net's patch sampling and training transforms on images only."""
        cases = self.find_unlabeled_cases(num_processes)
        return self.unlabeled_augmenter(UnlabeledDataLoader, UnlabeledImages(cases), num_processes)

    def find_unlabeled_cases(self, num_processes: int) -> Dict[str, str]:
        """Every unlabeled case of this fold (key -> file path without ending, see data/unlabeled.py), logged."""
        cases = collect_unlabeled_cases(self.preprocessed_dataset_folder_base,
                                        self.configuration_manager.data_identifier, self.fold)
        self.num_unlabeled_cases = len(cases)
        n_hidden = sum(k.startswith('hidden:') for k in cases)
        self.print_to_log_file(f'Unlabeled cases: {len(cases)} ({len(cases) - n_hidden} from imagesUnlabeled, '
                               f'{n_hidden} with labels hidden by nnUNetv2_semi_split); unlabeled batch size '
                               f'{self.batch_size_unlabeled or self.batch_size}; {num_processes} augmentation '
                               f'worker(s) for them')
        return cases

    def unlabeled_augmenter(self, loader_class, data, num_processes: int, patch_size=None, augment: bool = True,
                            mirror: bool = True, **loader_kwargs):
        """``loader_class`` (nnUNetDataLoader or a subclass) on ``data`` at the unlabeled batch size, with nnU-Net's
        training transforms exactly as for labeled batches, run in ``num_processes`` background workers (in this
        process when 0) as nnU-Net runs its own. ``patch_size``: another patch than the planned one (the
        augmentation's larger initial patch follows it as nnU-Net computes it); ``mirror=False``: the transforms
        without mirroring; ``augment=False``: no transforms at all (validation batches)."""
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        if patch_size is None:
            patch_size = self.configuration_manager.patch_size
        else:
            initial_patch_size = list(get_patch_size(patch_size, rotation, rotation, rotation, (0.85, 1.25)))
            if dummy_2d:
                initial_patch_size[0] = patch_size[0]
        transforms = None
        if augment:
            transforms = self.get_training_transforms(
                patch_size, rotation, None, mirror_axes if mirror else None, dummy_2d,
                use_mask_for_norm=self.configuration_manager.use_mask_for_norm, is_cascaded=False,
                foreground_labels=self.label_manager.foreground_labels,
                regions=self.label_manager.foreground_regions if self.label_manager.has_regions else None,
                ignore_label=self.label_manager.ignore_label)
        else:
            initial_patch_size = patch_size
        loader = loader_class(data, self.batch_size_unlabeled or self.batch_size, initial_patch_size, patch_size,
                              self.label_manager, transforms=transforms, **loader_kwargs)
        if num_processes == 0:
            augmenter = SingleThreadedAugmenter(loader, None)
        else:
            augmenter = NonDetMultiThreadedAugmenter(loader, None, num_processes, max(6, num_processes // 2),
                                                     seeds=None, pin_memory=self.device.type == 'cuda',
                                                     wait_time=0.002)
        next(augmenter)
        return augmenter

    def stop_unlabeled_loader(self):
        """End the unlabeled augmenter's background workers, if any."""
        if isinstance(self.dataloader_unlabeled, NonDetMultiThreadedAugmenter):
            self.dataloader_unlabeled._finish()

    def on_train_start(self):
        super().on_train_start()
        if self.device.type == 'cuda' and self.local_rank == 0:
            self.check_gpu_memory(torch.cuda.get_device_properties(self.device).total_memory)
        self.on_semi_train_start(self.semi_restored)

    def check_gpu_memory(self, available_bytes: int) -> float:
        """Estimate what this trainer needs at its plans (a throw-away copy measured on the same device, see
        planners/footprint.py) and warn in the log when it exceeds ``available_bytes``. Returns the estimate."""
        from nnunet_semi.planners.footprint import estimate_training_memory
        from nnunet_semi.planners.semi_planner import default_plans_name
        if not self.segmentation_batches:
            return 0.0
        try:
            need = estimate_training_memory(self)
        except torch.cuda.OutOfMemoryError:
            need = float('inf')
        if need > available_bytes:
            name, plans = self.__class__.__name__, self.plans_manager.plans_name
            amount = 'more than the GPU holds even at batch 2' if need == float('inf') else \
                f'about {need / 2 ** 30:.1f} GiB per step'
            self.print_to_log_file(
                f'WARNING: {name} needs {amount} with the plans {plans} '
                f'({self.configuration_name}: patch {list(self.configuration_manager.patch_size)}, batch '
                f'{self.configuration_manager.batch_size}), more than the {available_bytes / 2 ** 30:.1f} GiB '
                f'available. Plans sized for this trainer: nnUNetv2_semi_plan_and_preprocess -d '
                f'{self.plans_manager.dataset_name} -tr {name} -c {self.configuration_name} -p {plans} '
                f'-gpu_memory_target {max(1, int(available_bytes / 1e9 * 0.9))}, then train with -p '
                f'{default_plans_name(plans, name)}.')
        return need

    def on_train_end(self):
        super().on_train_end()
        self.stop_unlabeled_loader()

    # ------------------------------------------------------------------ training
    def _optimizers(self) -> List[torch.optim.Optimizer]:
        return [self.optimizer] + [opt for opt, _ in self.semi_optimizers.values()]

    @staticmethod
    def _trained_parameters(optimizers: List[torch.optim.Optimizer]) -> List[torch.nn.Parameter]:
        seen, params = set(), []
        for opt in optimizers:
            for group in opt.param_groups:
                for p in group['params']:
                    if id(p) not in seen:
                        seen.add(id(p))
                        params.append(p)
        return params

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        for _, scheduler in self.semi_optimizers.values():
            scheduler.step(self.current_epoch)
        for module in self.semi_modules().values():
            module.train()
        self.iteration = self.current_epoch * self.num_iterations_per_epoch

    def train_step(self, batch: dict) -> dict:
        data = batch['data'].to(self.device, non_blocking=True)
        target = batch['target']
        if isinstance(target, list):
            target = [t.to(self.device, non_blocking=True) for t in target]
        else:
            target = target.to(self.device, non_blocking=True)
        unlabeled = self.next_unlabeled() if self.uses_unlabeled_data else None
        self.labeled_keys = list(batch['keys'])  # the labeled batch's case identifiers, for methods that need them

        terms = self.train_iteration(data, target, unlabeled)
        self.after_optimizer_step()
        self.iteration += 1

        values = torch.stack([torch.as_tensor(v, device=self.device).detach().float() for v in
                              [loss for _, loss in terms.values()] + list(self.metrics.values())]).cpu().numpy()
        out = {'loss': sum(weight * value for (weight, _), value in zip(terms.values(), values))}  # one sync above
        for (name, (weight, _)), value in zip(terms.items(), values):
            out['term_' + name] = value
            out['weight_' + name] = float(weight)
        for name, value in zip(self.metrics, values[len(terms):]):
            out['metric_' + name] = value
        return out

    def next_unlabeled(self) -> torch.Tensor:
        """The next unlabeled batch's images (B_u, C, *patch) on the device."""
        return next(self.dataloader_unlabeled)['data'].to(self.device, non_blocking=True)

    def train_iteration(self, data: torch.Tensor, target, unlabeled: torch.Tensor) -> LossTerms:
        """One iteration's optimisation; returns every loss term it computed. By default one step of every optimizer
        on the weighted sum of ``compute_losses``. A method that optimises in several steps per iteration (MASSL's
        alternation) overrides this and calls ``optimization_step`` once per step."""
        return self.optimization_step(lambda: self.compute_losses(data, target, unlabeled), self._optimizers())

    def autocast(self):
        """Mixed precision on CUDA, as nnU-Net trains; nothing on other devices."""
        return autocast(self.device.type, enabled=True) if self.device.type == 'cuda' else dummy_context()

    def optimization_step(self, compute: Callable[[], LossTerms],
                          optimizers: List[torch.optim.Optimizer]) -> LossTerms:
        """Zero the gradients of ``optimizers``, run ``compute`` (the forward pass and loss terms, under autocast on
        CUDA), back-propagate the weighted sum, clip the gradients of these optimizers' parameters and step them (with
        nnU-Net's grad scaler on CUDA). Returns the terms."""
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        with self.autocast():
            terms = compute()
            total = sum(weight * loss for weight, loss in terms.values())
        scaler = self.grad_scaler
        (total if scaler is None else scaler.scale(total)).backward()
        # an optimizer none of whose parameters took part (a head unused in this stage) is not stepped: the grad
        # scaler refuses to step one that has no gradients
        optimizers = [opt for opt in optimizers
                      if any(p.grad is not None for group in opt.param_groups for p in group['params'])]
        if scaler is not None:
            for opt in optimizers:
                scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(self._trained_parameters(optimizers), 12)
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
        for name, module in self.semi_modules().items():
            unwrap(module).load_state_dict(semi['modules'][name])
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
