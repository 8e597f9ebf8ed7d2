"""``nnunet_semi overhead``: what each semi trainer costs relative to stock nnUNetTrainer on the same plans.

    nnunet_semi overhead                                     # a generated tiny dataset, nnUNetSmallPlans, CPU
    nnunet_semi overhead -d 4 -c 2d -p nnUNetPlans -tr nnUNetTrainerCAML -o docs/performance.md   # prepared data

Time: the trainers are built side by side from the real plans and data and their iterations interleaved (rounds of
a few iterations each), so that machine load affects all alike. 'compute' feeds batches loaded beforehand
(forward, backward, optimizer steps, EMA); 'with loading' draws them from nnU-Net's loaders as training does, and
the time spent waiting for the unlabeled batch is reported as a share of those steps. FLOPs and memory: one step
per trainer measured on its own (planners/footprint.py); memory is the CUDA peak on CUDA, else activations kept
for backward + weights + gradients + optimizer state. time ratio / FLOP ratio near 1 means the method adds no cost
beyond its arithmetic.
"""
import argparse
import contextlib
import io
import itertools
import os
import shlex
import statistics
import sys
import tempfile
import time
from datetime import date

import torch

from nnunet_semi import STOCK
from nnunet_semi.planners import footprint

DEFAULT_TRAINERS = ['nnUNetTrainerMeanTeacher', 'nnUNetTrainerCAML', 'nnUNetTrainerSSCL', 'nnUNetTrainerMASSL',
                    'nnUNetTrainerMASSLJoint', 'nnUNetTrainerPLContrast', 'nnUNetTrainerSiamesePretrain',
                    'nnUNetTrainerSiameseFinetune', 'nnUNetTrainerFixMatch', 'nnUNetTrainerUniMatch',
                    'nnUNetTrainerBCP']


def _prepare_tiny(root: str) -> str:
    from nnunet_semi.demo import example_env, prepare_example
    env = example_env(root)
    os.environ.update({k: env[k] for k in ('nnUNet_raw', 'nnUNet_preprocessed', 'nnUNet_results')})
    prepare_example(env, 990, quiet=True)
    return '990'


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class _TimedLoader:
    """An iterator that adds the time spent in next() to ``wait``."""

    def __init__(self, loader):
        self.loader, self.wait = loader, 0.0

    def __iter__(self):
        return self

    def __next__(self):
        start = time.perf_counter()
        batch = next(self.loader)
        self.wait += time.perf_counter() - start
        return batch


def _steps(fn, n):
    times = []
    for _ in range(n):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
    return times


def time_trainers(names, dataset, configuration, plans, device, rounds, iters):
    """{name: (compute step times, with-loading step times, unlabeled wait share, seconds of the work at the start of
    an epoch mid-training)}, interleaved. The trainers write their logs (and pseudo-labels) to a scratch folder."""
    with footprint._scratch_results() as scratch:
        return _time_trainers(names, dataset, configuration, plans, device, rounds, iters, scratch)


def _time_trainers(names, dataset, configuration, plans, device, rounds, iters, scratch):
    from nnunetv2.run.run_training import get_trainer_from_args
    trainers, loaders, epoch_start = {}, {}, {}
    for n in names:
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net's start-up messages
            t = get_trainer_from_args(dataset, configuration, 0, n, plans, False, device=device)
            if hasattr(t, 'pseudo_label_folder'):
                t.pseudo_label_folder = os.path.join(scratch, 'pseudo_labels', n)
            t.on_train_start()
            t.current_epoch = t.num_epochs // 2  # mid-training: every term on (PLContrast: a round begins here)
            start = time.perf_counter()
            t.on_train_epoch_start()
            epoch_start[n] = time.perf_counter() - start
        trainers[n] = t
    try:
        batches = {n: [next(t.dataloader_train) for _ in range(iters)] for n, t in trainers.items()}
        loaders.update({n: t.dataloader_unlabeled for n, t in trainers.items()
                        if getattr(t, 'dataloader_unlabeled', None) is not None})
        preloaded = {n: [next(u) for _ in range(iters)] for n, u in loaders.items()}
        timed = {n: _TimedLoader(u) for n, u in loaders.items()}
        compute, loading = {n: [] for n in names}, {n: [] for n in names}
        for n, t in trainers.items():  # warm-up
            t.train_step(next(t.dataloader_train))
        for r in range(rounds):
            print(f'round {r + 1}/{rounds}: {iters} iterations of each trainer, batches preloaded, then loaded',
                  flush=True)
            for n, t in trainers.items():
                if n in loaders:
                    t.dataloader_unlabeled = itertools.cycle(preloaded[n])
                batch = itertools.cycle(batches[n])
                compute[n] += _steps(lambda: t.train_step(next(batch)), iters)
                if n in loaders:
                    t.dataloader_unlabeled = timed[n]
                loading[n] += _steps(lambda: t.train_step(next(t.dataloader_train)), iters)
        return {n: (compute[n], loading[n], timed[n].wait / sum(loading[n]) if n in timed else None, epoch_start[n])
                for n in names}
    finally:
        for n, t in trainers.items():
            t.dataloader_unlabeled = loaders.get(n, getattr(t, 'dataloader_unlabeled', None))
            for dl in (t.dataloader_train, t.dataloader_val, getattr(t, 'dataloader_unlabeled', None)):
                if hasattr(dl, '_finish'):
                    dl._finish()


def table(names, timing, footprints, device) -> str:
    base_c = statistics.median(timing[STOCK][0])
    base_l = statistics.median(timing[STOCK][1])
    stock = footprints[STOCK]
    mem = 'peak memory ratio (CUDA)' if device.type == 'cuda' else 'memory ratio (estimated: activations + weights ' \
                                                                   '+ gradients + optimizer state)'
    lines = [f'| trainer | time ratio | time ratio with loading | FLOP ratio | time ratio / FLOP ratio | {mem} | '
             f'activations kept for backward: ratio | unlabeled loader wait, share of the step |',
             '|---|---|---|---|---|---|---|---|']
    for n in names:
        f = footprints[n]
        t_ratio = statistics.median(timing[n][0]) / base_c
        wait = timing[n][2]
        measured = ['n/a'] * 4 if f is None else [  # a proxy task's batches are not segmentation batches
            f'{f.flops / stock.flops:.2f}', f'{t_ratio / (f.flops / stock.flops):.2f}',
            f'{f.memory_bytes / stock.memory_bytes:.2f}', f'{f.activation_bytes / stock.activation_bytes:.2f}']
        lines.append(f'| {n} | {t_ratio:.2f} | {statistics.median(timing[n][1]) / base_l:.2f} | '
                     f'{" | ".join(measured)} | {"n/a" if wait is None else f"{100 * wait:.2f} %"} |')
    lines.append('')
    for n in names:  # work done once per epoch or round, beyond the steps (PLContrast's pseudo-labels)
        if timing[n][3] > 5 * base_l:
            lines.append(f'{n}: the start of an epoch mid-training (a pseudo-label round, every unlabeled case '
                         f'predicted) took as long as {timing[n][3] / base_l:.0f} stock iterations.')
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog='nnunet_semi overhead', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    run(parser.parse_args(argv))


def add_arguments(parser):
    parser.add_argument('-d', default=None, help='prepared dataset (default: generate a tiny one in a temp folder)')
    parser.add_argument('-c', default='3d_fullres', help='configuration (default 3d_fullres)')
    parser.add_argument('-p', default='nnUNetSmallPlans', help='plans (default nnUNetSmallPlans)')
    parser.add_argument('-tr', nargs='+', default=DEFAULT_TRAINERS, help='semi trainers (default: every method)')
    parser.add_argument('-device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--rounds', type=int, default=6)
    parser.add_argument('--iters', type=int, default=5, help='iterations per trainer per round')
    parser.add_argument('-o', default=None, help='also write the table (markdown) to this file')


def run(args):
    os.environ.setdefault('nnUNet_n_proc_DA', str(os.cpu_count() or 1))
    os.environ.setdefault('nnUNet_def_n_proc', '1')
    tmp = tempfile.TemporaryDirectory() if args.d is None else None
    dataset = _prepare_tiny(tmp.name) if args.d is None else args.d
    device = torch.device(args.device)
    names = [STOCK] + [n for n in args.tr if n != STOCK]
    start = time.time()
    print(f'Timing {", ".join(names)} side by side ({args.c}, {args.p}, {device})', flush=True)
    timing = time_trainers(names, dataset, args.c, args.p, device, args.rounds, args.iters)
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    folder = join(nnUNet_preprocessed, maybe_convert_to_dataset_name(dataset))
    plans, dataset_json = load_json(join(folder, args.p + '.json')), load_json(join(folder, 'dataset.json'))
    print('FLOPs and memory: one step of each trainer, measured on its own', flush=True)
    footprints = {n: footprint.measure(n, plans, args.c, dataset_json, device)
                  if getattr(recursive_find_trainer_class_by_name(n), 'segmentation_batches', True) else None
                  for n in names}
    configuration = plans['configurations'][args.c]
    cores = '' if device.type == 'cuda' else f' ({os.cpu_count()} cores)'
    header = (f'Dataset {dataset}, {args.c}, plans {args.p} (patch {configuration["patch_size"]}, batch '
              f'{configuration["batch_size"]}), device {device}{cores}, {args.rounds} rounds x {args.iters} '
              f'interleaved iterations per trainer, nnUNet_n_proc_DA={os.environ["nnUNet_n_proc_DA"]}; measured '
              f'{date.today()} in {time.time() - start:.0f} s.')
    text = f'{header}\n\n{table(names, timing, footprints, device)}\n'
    print('\n' + text)
    if args.o:
        command = 'nnunet_semi overhead ' + ' '.join(shlex.quote(a) for a in sys.argv[2:])
        with open(args.o, 'w') as f:
            f.write(PAGE.format(command=command, text=text))
        print(f'written to {args.o}')
    if tmp is not None:
        tmp.cleanup()


PAGE = """# What each method costs

Relative to stock `nnUNetTrainer` on the same plans, measured side by side in one run by

    {command}

{text}
Columns: time ratio = median time of a training step (batches loaded beforehand) over stock's; with loading = the
same with nnU-Net's loaders running as in training; FLOP ratio = FLOPs of one step (forward + backward, torch's
FLOP counter); time ratio / FLOP ratio: near 1 when the method costs no more than its arithmetic; memory ratio =
peak CUDA memory of a step on CUDA, else activations kept for backward + weights + gradients + optimizer state;
unlabeled loader wait = time spent waiting for the unlabeled batch, as a share of the step.

To size patch and batch for a method's footprint, plan with `nnUNetv2_semi_plan_and_preprocess` (see
[planning.md](planning.md)).
"""

if __name__ == '__main__':
    main()
