"""Time per training iteration of semi trainers relative to stock nnUNetTrainer, on the same plans, in one run.

    python benchmarks/iteration_time.py                       # generated tiny dataset, nnUNetSmallPlans, CPU
    python benchmarks/iteration_time.py -d 4 -c 3d_fullres -p nnUNetPlans -device cuda   # your own, prepared

The trainers are built side by side and their iterations interleaved (rounds of a few iterations each), so that
machine load affects both alike. Two measurements per trainer: 'compute' feeds batches loaded beforehand (forward,
backward, optimizer step, EMA), 'with loading' also draws the batches from nnU-Net's loaders (in-process when
nnUNet_n_proc_DA=0, as set here by default). Reported: medians, and the ratio to stock; also the FLOPs of one
training step (torch's FlopCounterMode: convolutions, matmuls, attention), the peak of the activations it keeps for
backward (saved-tensor hooks, any device) and, on CUDA, its peak memory.
"""
import argparse
import itertools
import os
import statistics
import tempfile
import time

import torch
from torch.utils.flop_counter import FlopCounterMode


def _prepare_tiny(root: str) -> str:
    from nnunet_semi.demo import example_env, prepare_example
    env = example_env(root)
    os.environ.update({k: env[k] for k in ('nnUNet_raw', 'nnUNet_preprocessed', 'nnUNet_results')})
    prepare_example(env, 990, quiet=True)
    return '990'


def _trainer(name, dataset, configuration, plans, device):
    from nnunetv2.run.run_training import get_trainer_from_args
    t = get_trainer_from_args(dataset, configuration, 0, name, plans, False, device=device)
    t.on_train_start()
    t.on_train_epoch_start()
    return t


def _time(fn, n):
    times = []
    for _ in range(n):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


class _SavedTensorPeak:
    """Peak bytes of the tensors autograd keeps for backward (activations; parameters excluded), counting each storage
    once while any graph holds it. A step that back-propagates several times (alternating optimisation) counts the
    peak of its passes, not their sum."""

    def __init__(self):
        self.live, self.peak, self.refs = 0, 0, {}

    def _release(self, key):
        count, size = self.refs[key]
        if count == 1:
            del self.refs[key]
            self.live -= size
        else:
            self.refs[key] = (count - 1, size)

    def pack(self, t):
        if isinstance(t, torch.nn.Parameter) or t.device.type == 'meta':
            return t
        storage = t.untyped_storage()
        key = (t.device, storage.data_ptr())
        count, size = self.refs.get(key, (0, storage.nbytes()))
        if count == 0:
            self.live += size
            self.peak = max(self.peak, self.live)
        self.refs[key] = (count + 1, size)
        return _Held(t, lambda: self._release(key))

    @staticmethod
    def unpack(held):
        return held.tensor if isinstance(held, _Held) else held


class _Held:
    def __init__(self, tensor, release):
        self.tensor, self._release = tensor, release

    def __del__(self):
        self._release()


def saved_tensor_peak(fn) -> int:
    counter = _SavedTensorPeak()
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
        fn()
    return counter.peak


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-d', default=None, help='prepared dataset (default: generate a tiny one in a temp folder)')
    parser.add_argument('-c', default='3d_fullres')
    parser.add_argument('-p', default='nnUNetSmallPlans')
    parser.add_argument('-tr', nargs='+', default=['nnUNetTrainerMeanTeacher'])
    parser.add_argument('-device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--rounds', type=int, default=8)
    parser.add_argument('--iters', type=int, default=5, help='iterations per trainer per round')
    args = parser.parse_args(argv)
    os.environ.setdefault('nnUNet_n_proc_DA', '0')
    os.environ.setdefault('nnUNet_def_n_proc', '1')
    tmp = tempfile.TemporaryDirectory() if args.d is None else None
    dataset = _prepare_tiny(tmp.name) if args.d is None else args.d
    device = torch.device(args.device)

    names = ['nnUNetTrainer'] + args.tr
    trainers = {n: _trainer(n, dataset, args.c, args.p, device) for n in names}
    # pre-loaded batches for the compute-only measurement
    batches = {n: [next(t.dataloader_train) for _ in range(args.iters)] for n, t in trainers.items()}
    unlabeled = {n: [next(t.dataloader_unlabeled) for _ in range(args.iters)] for n, t in trainers.items()
                 if getattr(t, 'dataloader_unlabeled', None) is not None}
    compute = {n: [] for n in names}
    loading = {n: [] for n in names}
    for n, t in trainers.items():  # warm-up
        t.train_step(next(t.dataloader_train))
    for _ in range(args.rounds):
        for n, t in trainers.items():
            loader_u = getattr(t, 'dataloader_unlabeled', None)
            if n in unlabeled:
                t.dataloader_unlabeled = itertools.cycle(unlabeled[n])
            it = itertools.cycle(batches[n])
            compute[n] += _time(lambda: t.train_step(next(it)), args.iters)
            if n in unlabeled:
                t.dataloader_unlabeled = loader_u
            loading[n] += _time(lambda: t.train_step(next(t.dataloader_train)), args.iters)

    flops, memory, saved = {}, {}, {}
    for n, t in trainers.items():  # FLOPs of one step (forward + backward) and, on CUDA, its peak memory
        if n in unlabeled:
            t.dataloader_unlabeled = itertools.cycle(unlabeled[n])
        if device.type == 'cuda':
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start = torch.cuda.memory_allocated()
        with FlopCounterMode(display=False) as counter:
            t.train_step(batches[n][0])
        flops[n] = counter.get_total_flops()
        memory[n] = torch.cuda.max_memory_allocated() - start if device.type == 'cuda' else None
        saved[n] = saved_tensor_peak(lambda: t.train_step(batches[n][0]))

    base_c, base_l = statistics.median(compute['nnUNetTrainer']), statistics.median(loading['nnUNetTrainer'])
    print(f'\nDataset {dataset}, {args.c}, plans {args.p}, device {device}, {args.rounds} rounds x {args.iters} '
          f'interleaved iterations, nnUNet_n_proc_DA={os.environ["nnUNet_n_proc_DA"]}\n')
    print('| trainer | compute: ratio to stock | with loading: ratio to stock | FLOPs per step: ratio | '
          'activations kept for backward: ratio | peak memory above the weights: ratio (CUDA) |')
    print('|---|---|---|---|---|---|')
    for n in names:
        mem = f'{memory[n] / memory["nnUNetTrainer"]:.2f}' if memory[n] else 'n/a'
        print(f'| {n} | {statistics.median(compute[n]) / base_c:.2f} | {statistics.median(loading[n]) / base_l:.2f} '
              f'| {flops[n] / flops["nnUNetTrainer"]:.2f} | {saved[n] / saved["nnUNetTrainer"]:.2f} | {mem} |')
    for t in trainers.values():
        for dl in (t.dataloader_train, t.dataloader_val, getattr(t, 'dataloader_unlabeled', None)):
            if hasattr(dl, '_finish'):
                dl._finish()


if __name__ == '__main__':
    main()
