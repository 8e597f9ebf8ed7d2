"""nnUNetv2_semi_benchmark: with N labeled cases, how much better is each semi trainer than plain nnU-Net?

    nnUNetv2_semi_benchmark -d 4 -c 2d -n 1 3 --seeds 0 1 2 --epochs 20 -p nnUNetBench2dPlans \\
        -tr nnUNetTrainerMeanTeacher nnUNetTrainerCAML nnUNetTrainerSiamesePretrain:nnUNetTrainerSiameseFinetune

For each labeled count N and seed, the labels of all but N training cases of the fold are hidden with
``nnUNetv2_semi_split -n N --seed S`` (the seed chooses which cases stay labeled). On that split the stock
nnUNetTrainer (labeled cases only) and each semi trainer are trained; the fully supervised nnUNetTrainer (every
training case labeled) is trained once. Every training is a real ``nnUNetv2_train`` with the same schedule
(``--epochs``: nnU-Net's 250 iterations per epoch), validated by nnU-Net on the fold's unchanged validation cases.
``A:B`` trains A, then B with ``-pretrained_weights`` of A's final checkpoint (both with the schedule).

Each split gets its own folder: ``nnUNet_preprocessed`` (links to the dataset's preprocessed data, its own
splits_final.json, so the dataset's own split is never touched) and ``nnUNet_results``. The command resumes: a
finished run is read, not redone; an interrupted one continues from its latest checkpoint (``--c``); one whose
validation is missing is validated (``--val``). After every run the report is rewritten:

    benchmark.md    Dice (mean +- std over seeds) overall and per class, per method and N; the share of the
                    labeled-only -> fully-supervised gap each method closes; the budget check (has labeled-only
                    plateaued? is fully supervised clearly better?); training time
    benchmark.png   Dice vs number of labeled cases, a line per method, labeled-only and fully supervised as references
    curves.png      nnU-Net's validation pseudo Dice per epoch of every run (not its moving average, which lags)
    results.json    the numbers behind them
"""
import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import matplotlib
import numpy as np

from nnunet_semi import STOCK
from nnunet_semi.curves import read_curves
from nnunet_semi.demo import executable
from nnunet_semi.trainers.variants import EPOCHS, SMOKE, schedule_name

matplotlib.use('agg')
import matplotlib.pyplot as plt  # noqa: E402

FULL = 'full'
# the budget check: labeled-only has plateaued when its mean pseudo Dice over the last fifth of the epochs rose by
# less than PLATEAU_RISE over the fifth before; fully supervised is clearly better when it leads by CLEAR_GAP
PLATEAU_RISE = 0.01
CLEAR_GAP = 0.05
ITERATIONS_PER_EPOCH = 250  # nnU-Net's


def stages(method: str) -> List[str]:
    """The trainings of a method as given to -tr: 'A:B' trains A, then B from A's final checkpoint."""
    return method.split(':')


def shared_folders(methods: List[str]) -> List[str]:
    """Trainers that two entries of -tr would train in one model folder: one trained after a pretraining ('A:B') and
    also on its own or after another pretraining. A shared first stage ('A:B' and 'A:C') is one training, not a
    clash."""
    later = [t for m in methods for t in stages(m)[1:]]
    first = {stages(m)[0] for m in methods}
    return sorted({t for t in later if later.count(t) > 1 or t in first})


def console(cmd: List[str], **kwargs) -> subprocess.CompletedProcess:
    """Run one of this environment's console scripts (nnUNetv2_train, ...), also when its bin folder is not on PATH."""
    return subprocess.run([executable(cmd[0])] + cmd[1:], **kwargs)


def split_name(n: Optional[int], seed: Optional[int]) -> str:
    return FULL if n is None else f'n{n}_seed{seed}'


@dataclass
class Run:
    """One method on one split: its trainings, in order (each after the one before, with -pretrained_weights)."""
    method: str          # as given to -tr, e.g. nnUNetTrainerSiamesePretrain:nnUNetTrainerSiameseFinetune
    n: Optional[int]     # labeled cases; None: fully supervised
    seed: Optional[int]

    @property
    def split(self) -> str:
        return split_name(self.n, self.seed)

    @property
    def stages(self) -> List[str]:
        return stages(self.method)

    @property
    def label(self) -> str:
        return f'{self.split} {self.method}'


class Benchmark:
    def __init__(self, dataset: str, configuration: str, plans: str, epochs: str, fold: int, output: str,
                 device: str = 'cuda'):
        from nnunetv2.paths import nnUNet_preprocessed
        from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
        self.dataset = maybe_convert_to_dataset_name(dataset)
        self.source = os.path.join(str(nnUNet_preprocessed), self.dataset)
        self.configuration, self.plans, self.epochs, self.fold, self.device = configuration, plans, epochs, fold, device
        self.output = os.path.abspath(output)
        os.makedirs(os.path.join(self.output, 'logs'), exist_ok=True)

    # ---- folders ---------------------------------------------------------------------------------------------------
    def folders(self, split: str) -> Dict[str, str]:
        root = os.path.join(self.output, split)
        return {'nnUNet_preprocessed': os.path.join(root, 'nnUNet_preprocessed'),
                'nnUNet_results': os.path.join(root, 'nnUNet_results')}

    def env(self, split: str) -> dict:
        env = dict(os.environ)
        env.update(self.folders(split))
        env['PYTHONUNBUFFERED'] = '1'
        return env

    def fold_folder(self, split: str, trainer: str) -> str:
        return os.path.join(self.folders(split)['nnUNet_results'], self.dataset,
                            f'{schedule_name(trainer, self.epochs)}__{self.plans}__{self.configuration}',
                            f'fold_{self.fold}')

    def prepare_split(self, n: Optional[int], seed: Optional[int]) -> None:
        """The split's nnUNet_preprocessed: links to every entry of the dataset's preprocessed folder (refreshed, so
        plans or unlabeled data added later are seen) but its own splits_final.json and pseudo-labels."""
        split = split_name(n, seed)
        folders = self.folders(split)
        target = os.path.join(folders['nnUNet_preprocessed'], self.dataset)
        os.makedirs(target, exist_ok=True)
        os.makedirs(folders['nnUNet_results'], exist_ok=True)
        for entry in os.listdir(self.source):
            if entry.startswith('splits_final') or entry.endswith('_pseudolabels'):
                continue
            link = os.path.join(target, entry)
            if not os.path.lexists(link):
                os.symlink(os.path.join(self.source, entry), link)
        splits_file = os.path.join(target, 'splits_final.json')
        if os.path.isfile(splits_file) and self._is_split(splits_file, n, seed):
            return
        if not os.path.isfile(splits_file) and os.path.isfile(os.path.join(self.source, 'splits_final.json')):
            # the dataset's own folds (hidden cases of an earlier semi split are given back by nnUNetv2_semi_split)
            shutil.copyfile(os.path.join(self.source, 'splits_final.json'), splits_file)
        cmd = ['nnUNetv2_semi_split', '-d', self.dataset] + (['--restore'] if n is None else
                                                              ['-n', str(n), '--seed', str(seed)])
        console(cmd, env=self.env(split), check=True, stdout=subprocess.DEVNULL)
        if not self._is_split(splits_file, n, seed):
            raise RuntimeError(f'{splits_file} was not written as expected by {" ".join(cmd)}')

    @staticmethod
    def _is_split(splits_file: str, n: Optional[int], seed: Optional[int]) -> bool:
        with open(splits_file) as f:
            folds = json.load(f)
        if n is None:
            return all('unlabeled' not in f for f in folds)
        return all(f.get('n_labeled') == n and f.get('seed') == seed for f in folds)

    def preprocess_unlabeled(self) -> None:
        """nnUNetv2_semi_preprocess of nnUNet_raw/<dataset>/imagesUnlabeled/ when there is one (cases already done are
        skipped), into the dataset's own preprocessed folder, which every split links to."""
        from nnunetv2.paths import nnUNet_raw
        from nnunet_semi.data.unlabeled import RAW_FOLDER
        if nnUNet_raw.is_set() and os.path.isdir(os.path.join(str(nnUNet_raw), self.dataset, RAW_FOLDER)):
            cmd = ['nnUNetv2_semi_preprocess', '-d', self.dataset, '-c', self.configuration, '-p', self.plans]
            print(f'$ {" ".join(cmd)}', flush=True)
            console(cmd, check=True)

    # ---- training --------------------------------------------------------------------------------------------------
    def state(self, split: str, trainer: str, validated: bool = True) -> str:
        """'done', 'validate' (trained, validation missing), 'continue' (a latest checkpoint) or 'start'."""
        folder = self.fold_folder(split, trainer)
        if os.path.isfile(os.path.join(folder, 'checkpoint_final.pth')):
            if not validated or os.path.isfile(os.path.join(folder, 'validation', 'summary.json')):
                return 'done'
            return 'validate'
        return 'continue' if os.path.isfile(os.path.join(folder, 'checkpoint_latest.pth')) else 'start'

    def stage_states(self, run: Run) -> List[tuple]:
        """(trainer, whether it is the run's last training, its state) for each training of the run; only the last
        one is validated (a pretraining has no segmentation validation)."""
        n = len(run.stages)
        return [(t, i == n - 1, self.state(run.split, t, validated=i == n - 1)) for i, t in enumerate(run.stages)]

    def train(self, run: Run) -> float:
        """Bring every training of the run to 'done'; returns the seconds spent here (0 if nothing was left)."""
        self.prepare_split(run.n, run.seed)
        spent = 0.
        for i, (trainer, last, state) in enumerate(self.stage_states(run)):
            if state == 'done':
                continue
            name = schedule_name(trainer, self.epochs)
            cmd = ['nnUNetv2_train', self.dataset, self.configuration, str(self.fold), '-tr', name, '-p', self.plans,
                   '-device', self.device]
            if state == 'continue':
                cmd.append('--c')
            elif state == 'validate':
                cmd.append('--val')
            elif i > 0:
                cmd += ['-pretrained_weights', os.path.join(self.fold_folder(run.split, run.stages[i - 1]),
                                                            'checkpoint_final.pth')]
            log = os.path.join(self.output, 'logs', f'{run.split}__{name}.log')
            folders = self.folders(run.split)
            print(f'  $ nnUNet_preprocessed={folders["nnUNet_preprocessed"]} nnUNet_results={folders["nnUNet_results"]}'
                  f' {" ".join(cmd)}\n    (output: {log})', flush=True)
            start = time.time()
            with open(log, 'a') as f:
                p = console(cmd, env=self.env(run.split), stdout=f, stderr=subprocess.STDOUT)
            spent += time.time() - start
            if p.returncode != 0 or self.state(run.split, trainer, validated=last) != 'done':
                with open(log) as f:
                    tail = f.read()[-3000:]
                raise RuntimeError(f'{" ".join(cmd)} failed (exit code {p.returncode}); the end of {log}:\n{tail}')
        return spent

    # ---- results ---------------------------------------------------------------------------------------------------
    def result(self, run: Run) -> Optional[dict]:
        """The finished run's validation Dice (overall and per class), its curves and training time, or None."""
        if any(state != 'done' for _, _, state in self.stage_states(run)):
            return None
        folder = self.fold_folder(run.split, run.stages[-1])
        with open(os.path.join(folder, 'validation', 'summary.json')) as f:
            summary = json.load(f)
        logs = [read_curves(self.fold_folder(run.split, trainer)) for trainer in run.stages]
        seconds = sum(float(np.sum(np.subtract(g['epoch_end_timestamps'], g['epoch_start_timestamps']))) for g in logs)
        log = logs[-1]
        return {'dice': summary['foreground_mean']['Dice'],
                'class_dice': {k: v['Dice'] for k, v in summary['mean'].items()},
                'pseudo_dice': [float(x) for x in log['mean_fg_dice']],
                'training_seconds': seconds}


def plateau_rise(pseudo_dice: List[float]) -> Optional[float]:
    """Mean pseudo Dice over the last fifth of the epochs minus its mean over the fifth before (None when a run is
    shorter than 10 epochs)."""
    fifth = len(pseudo_dice) // 5
    if fifth < 2:
        return None
    return float(np.mean(pseudo_dice[-fifth:]) - np.mean(pseudo_dice[-2 * fifth:-fifth]))


def gap_closed(method: float, labeled_only: float, full: float) -> str:
    """The share of the labeled-only -> fully-supervised gap that the method closes; undefined (n/a) when fully
    supervised is not better than labeled-only."""
    if full - labeled_only <= 0:
        return 'n/a (no gap)'
    return f'{(method - labeled_only) / (full - labeled_only):.0%}'


def mean_std(values: List[float]) -> str:
    if not values:
        return ''
    if len(values) == 1:
        return f'{values[0]:.3f}'
    return f'{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}'


def class_names(dataset_json: dict) -> Dict[str, str]:
    """summary.json's class keys ('1', or '(1, 2)' for a region) -> the dataset's names for them."""
    return {str(v) if isinstance(v, int) else str(tuple(v)): name for name, v in dataset_json['labels'].items()}


def collect(bench: Benchmark, methods: List[str], ns: List[int], seeds: List[int]) -> dict:
    """The finished runs: 'full' (the fully supervised result or None), 'runs' (each result with its method, n and
    seed), 'table' ((method, n) -> results over the seeds)."""
    full = bench.result(Run(STOCK, None, None))
    runs = [] if full is None else [{'method': STOCK, 'n': None, 'seed': None, **full}]
    table = {}
    for method in [STOCK] + methods:
        for n in ns:
            for seed in seeds:
                r = bench.result(Run(method, n, seed))
                if r is not None:
                    runs.append({'method': method, 'n': n, 'seed': seed, **r})
                    table.setdefault((method, n), []).append(r)
    return {'full': full, 'runs': runs, 'table': table}


def report(bench: Benchmark, methods: List[str], ns: List[int], seeds: List[int], command: str) -> dict:
    """Write benchmark.md, benchmark.png, curves.png and results.json from the runs finished so far."""
    done = collect(bench, methods, ns, seeds)
    results = {'command': command, 'dataset': bench.dataset, 'configuration': bench.configuration,
               'plans': bench.plans, 'epochs': bench.epochs, 'fold': bench.fold, 'runs': done['runs']}
    with open(os.path.join(bench.output, 'results.json'), 'w') as f:
        json.dump(results, f, indent=1)
    n_train = _n_training_cases(bench)
    lines = [f'# Low-label benchmark: {bench.dataset}, {bench.configuration}, {bench.plans}',
             '', f'    {command}', '',
             f'Fold {bench.fold}: validation Dice (nnU-Net\'s validation/summary.json, foreground mean) after '
             f'{_budget(bench.epochs)}; mean ± std over the seeds finished (column "seeds"). Labeled-only is stock '
             f'nnUNetTrainer on the N labeled cases; fully supervised is nnUNetTrainer with all {n_train} training '
             f'cases labeled. "Gap closed" is (method − labeled-only) / (fully supervised − labeled-only), on the '
             f'means.', '']
    lines += _dice_tables(bench, [STOCK] + methods, ns, done, n_train)
    lines += _budget_check(done)
    lines += _time_table([STOCK] + methods, ns, done)
    lines += ['', '![Dice vs labeled cases](benchmark.png)', '', '![validation pseudo Dice per epoch](curves.png)', '']
    with open(os.path.join(bench.output, 'benchmark.md'), 'w') as f:
        f.write('\n'.join(lines))
    _plot(bench, methods, ns, done['table'], done['full'], n_train)
    _plot_curves(os.path.join(bench.output, 'curves.png'), methods, ns, done['runs'])
    return results


def _dice_tables(bench: Benchmark, methods: List[str], ns: List[int], done: dict, n_train) -> List[str]:
    table, full = done['table'], done['full']
    header = '| method | ' + ' | '.join(f'N={n}: Dice | N={n}: gap closed | N={n}: seeds' for n in ns) + ' |'
    lines = [header, '|---' * (1 + 3 * len(ns)) + '|']
    for method in methods:
        cells = []
        for n in ns:
            rs, base = table.get((method, n), []), table.get((STOCK, n), [])
            gap = ''
            if rs and base and full is not None and method != STOCK:
                gap = gap_closed(np.mean([r['dice'] for r in rs]), np.mean([r['dice'] for r in base]), full['dice'])
            cells += [mean_std([r['dice'] for r in rs]), gap, str(len(rs))]
        lines.append(f'| {_method_label(method)} | ' + ' | '.join(cells) + ' |')
    lines.append(f'| fully supervised ({n_train} labeled) | ' +
                 ' | '.join([f'{full["dice"]:.3f}' if full else '', '', '1' if full else '0'] * len(ns)) + ' |')

    with open(os.path.join(bench.source, 'dataset.json')) as f:
        names = class_names(json.load(f))
    classes = sorted({k for r in done['runs'] for k in r['class_dice']}, key=str)
    lines += ['', '## Dice per class', '',
              '| method | N | ' + ' | '.join(names.get(c, c) for c in classes) + ' |',
              '|---' * (2 + len(classes)) + '|']
    for method in methods:
        for n in ns:
            rs = table.get((method, n), [])
            if rs:
                lines.append(f'| {_method_label(method)} | {n} | ' +
                             ' | '.join(mean_std([r['class_dice'][c] for r in rs if c in r['class_dice']])
                                        for c in classes) + ' |')
    if full:
        lines.append(f'| fully supervised | {n_train} | ' +
                     ' | '.join(f'{full["class_dice"][c]:.3f}' for c in classes) + ' |')
    return lines


def _budget_check(done: dict) -> List[str]:
    full = done['full']
    lines = ['', '## Budget check', '',
             f'The budget is fair when labeled-only has plateaued (its validation pseudo Dice over the last fifth of '
             f'the epochs rose by less than {PLATEAU_RISE} over the fifth before) and fully supervised is clearly '
             f'better (by more than {CLEAR_GAP}). The curves are in curves.png.', '',
             '| labeled-only run | final Dice | pseudo Dice: last fifth − fifth before | plateaued | '
             'fully supervised − labeled-only | clearly better |', '|---|---|---|---|---|---|']
    for r in done['runs']:
        if r['method'] != STOCK or r['n'] is None:
            continue
        rise = plateau_rise(r['pseudo_dice'])
        lead = full['dice'] - r['dice'] if full else None
        lines.append(f'| N={r["n"]}, seed {r["seed"]} | {r["dice"]:.3f} | ' +
                     ('n/a (under 10 epochs)' if rise is None else f'{rise:+.3f}') + ' | ' +
                     ('' if rise is None else ('yes' if rise < PLATEAU_RISE else '**no**')) + ' | ' +
                     ('' if lead is None else f'{lead:+.3f}') + ' | ' +
                     ('' if lead is None else ('yes' if lead > CLEAR_GAP else '**no**')) + ' |')
    return lines


def _time_table(methods: List[str], ns: List[int], done: dict) -> List[str]:
    table = done['table']
    lines = ['', '## Training time', '',
             'Seconds of training (nnU-Net\'s epoch timestamps, summed over the run\'s trainings; validation not '
             'included), mean over the seeds, and its ratio to labeled-only nnUNetTrainer at the same N. These are '
             'wall-clock times under whatever else the machine ran; `nnunet_semi overhead` measures the cost of a '
             'step alone.', '',
             '| method | ' + ' | '.join(f'N={n}: s | N={n}: × labeled-only' for n in ns) + ' |',
             '|---' * (1 + 2 * len(ns)) + '|']
    for method in methods:
        cells = []
        for n in ns:
            rs, base = table.get((method, n), []), table.get((STOCK, n), [])
            t = np.mean([r['training_seconds'] for r in rs]) if rs else None
            tb = np.mean([r['training_seconds'] for r in base]) if base else None
            cells += ['' if t is None else f'{t:.0f}', '' if t is None or not tb else f'{t / tb:.2f}']
        lines.append(f'| {_method_label(method)} | ' + ' | '.join(cells) + ' |')
    total = sum(r['training_seconds'] for r in done['runs'])
    lines += ['', f'All {len(done["runs"])} finished runs together: {total / 3600:.2f} h of training.']
    return lines


def _method_label(method: str) -> str:
    if method == STOCK:
        return 'labeled-only (nnUNetTrainer)'
    trainings = stages(method)
    return trainings[-1] + (f' (after {" → ".join(trainings[:-1])})' if len(trainings) > 1 else '')


def _budget(epochs: str) -> str:
    if epochs == 'smoke':
        return f'the smoke schedule ({SMOKE["num_epochs"]} epochs of {SMOKE["num_iterations_per_epoch"]} iterations)'
    return (f'{epochs} epochs of {ITERATIONS_PER_EPOCH} iterations ({int(epochs) * ITERATIONS_PER_EPOCH:,} '
            f'iterations) per training')


def _n_training_cases(bench: Benchmark) -> Optional[int]:
    splits_file = os.path.join(bench.folders(FULL)['nnUNet_preprocessed'], bench.dataset, 'splits_final.json')
    if not os.path.isfile(splits_file):
        return None
    with open(splits_file) as f:
        return len(json.load(f)[bench.fold]['train'])


def _colors(methods: List[str]) -> Dict[str, str]:
    cycle = plt.rcParams['axes.prop_cycle'].by_key()['color']
    return {STOCK: 'black', **{m: cycle[i % len(cycle)] for i, m in enumerate(methods)}}


def _legend(ax, fontsize: int) -> None:
    """A legend, where there is a line to name (a report written before any run finished has none)."""
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=fontsize)


def _plot(bench, methods, ns, table, full, n_train) -> None:
    fig, ax = plt.subplots(figsize=(8, 5.5))
    color = _colors(methods)
    for method in [STOCK] + methods:
        points = [(n, table[(method, n)]) for n in ns if (method, n) in table]
        if not points:
            continue
        x = [n for n, _ in points]
        y = [np.mean([r['dice'] for r in rs]) for _, rs in points]
        err = [np.std([r['dice'] for r in rs], ddof=1) if len(rs) > 1 else 0 for _, rs in points]
        style = dict(ls='--', lw=2.5) if method == STOCK else dict(lw=1.8)
        ax.errorbar(x, y, yerr=err, marker='o', capsize=4, color=color[method], label=_method_label(method), **style)
    if full:
        ax.axhline(full['dice'], color='gray', lw=2, label=f'fully supervised ({n_train} labeled)')
    if len(ns) > 1 and max(ns) / min(ns) >= 10:
        ax.set_xscale('log')
    ax.set_xticks(ns)
    ax.set_xticklabels([str(n) for n in ns])
    ax.set_xlabel('labeled training cases (N)')
    ax.set_ylabel('validation Dice (foreground mean)')
    ax.set_title(f'{bench.dataset} {bench.configuration}, {bench.plans}, {_budget(bench.epochs).split(" (")[0]}; '
                 f'mean ± std over seeds', fontsize=9)
    _legend(ax, fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(bench.output, 'benchmark.png'), dpi=100)
    plt.close(fig)


def _plot_curves(output: str, methods, ns, runs) -> None:
    fig, axes = plt.subplots(1, len(ns), figsize=(6 * len(ns), 5), squeeze=False)
    color = _colors(methods)
    for ax, n in zip(axes[0], ns):
        for r in runs:
            if r['n'] is None or r['n'] == n:
                c = 'gray' if r['n'] is None else color[r['method']]
                label = 'fully supervised' if r['n'] is None else _method_label(r['method'])
                ax.plot(range(1, len(r['pseudo_dice']) + 1), r['pseudo_dice'], color=c, lw=1.2, marker='.',
                        label=label if label not in ax.get_legend_handles_labels()[1] else None)
        ax.set_title(f'N={n} (a line per seed)', fontsize=10)
        ax.set_xlabel('epoch')
        ax.set_ylabel("nnU-Net's validation pseudo Dice per epoch")
        _legend(ax, fontsize=7)
    fig.tight_layout()
    fig.savefig(output, dpi=100)
    plt.close(fig)


def check_plans(preprocessed_folder: str, plans: str, configuration: str) -> None:
    """The plans exist and hold the configuration (before hours of training start)."""
    plans_file = os.path.join(preprocessed_folder, plans + '.json')
    if not os.path.isfile(plans_file):
        raise SystemExit(f'nnUNetv2_semi_benchmark: {plans_file} not found. Plan and preprocess the dataset first '
                         f'(nnUNetv2_plan_and_preprocess -d ID -c CONFIG), or name existing plans with -p.')
    with open(plans_file) as f:
        configurations = json.load(f)['configurations']
    if configuration not in configurations:
        raise SystemExit(f'nnUNetv2_semi_benchmark: {plans_file} has no configuration {configuration} (it has '
                         f'{", ".join(configurations)}).')


def check_trainers(names: List[str]) -> None:
    """Every trainer class the benchmark will train exists (before hours of training start)."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    missing = []
    for name in names:
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                recursive_find_trainer_class_by_name(name)
            except RuntimeError:
                missing.append(name)
    if missing:
        raise SystemExit(f'nnUNetv2_semi_benchmark: no trainer class {", ".join(missing)}. --epochs picks the '
                         f'schedule variant <trainer>_<E>epochs: nnunet_semi defines E = '
                         f'{", ".join(map(str, EPOCHS))} and smoke for its trainers, nnU-Net its own for '
                         f'nnUNetTrainer; 1000 is the trainer itself.')


def train_all(bench: Benchmark, runs: List[Run], on_finished) -> List[str]:
    """Train every run not finished yet, calling ``on_finished()`` after each; returns the labels of those that
    failed (the others still run)."""
    failed = []
    for i, run in enumerate(runs):
        done = bench.result(run) is not None
        print(f'[{i + 1}/{len(runs)}] {run.label}: ' + ('finished earlier' if done else 'training'), flush=True)
        if done:
            continue
        try:
            seconds = bench.train(run)
        except (RuntimeError, subprocess.CalledProcessError) as e:
            print(f'  FAILED: {e}', flush=True)
            failed.append(run.label)
            continue
        print(f'  validation Dice {bench.result(run)["dice"]:.4f} ({seconds / 60:.1f} min)', flush=True)
        on_finished()
    return failed


def main(argv=None):
    parser = argparse.ArgumentParser(prog='nnUNetv2_semi_benchmark', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-d', required=True, help='dataset name or id')
    parser.add_argument('-c', required=True, help='configuration, e.g. 2d or 3d_fullres')
    parser.add_argument('-n', type=int, nargs='+', required=True, help='labeled training cases to keep')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0], help='seeds choosing the labeled cases')
    parser.add_argument('-tr', nargs='+', required=True,
                        help='semi trainers (the labeled-only and fully supervised nnUNetTrainer are always run); '
                             'A:B trains B from A\'s final checkpoint (-pretrained_weights)')
    parser.add_argument('--epochs', default='1000',
                        help='schedule of every training: E epochs of 250 iterations (default 1000, nnU-Net\'s), or '
                             'smoke (3 epochs of 4 iterations) to try the set-up')
    parser.add_argument('-p', default='nnUNetPlans', help='plans (default nnUNetPlans)')
    parser.add_argument('--small_plans', type=int, nargs=3, metavar=('BASE', 'MAX', 'BATCH'), default=None,
                        help='train with small plans written from -p: features BASE * 2^stage capped at MAX, batch '
                             'BATCH (e.g. 16 128 8). For CPU runs: such figures compare methods, they are not '
                             'nnU-Net\'s accuracy')
    parser.add_argument('-f', type=int, default=0, help='fold (default 0)')
    parser.add_argument('-o', default=None, help='output folder (default: nnUNet_results/<dataset>/'
                                                 'nnunet_semi_benchmark__<plans>__<configuration>__<epochs>__fold<f>)')
    parser.add_argument('-device', default='cuda', help='cuda or cpu (default cuda), passed to nnUNetv2_train')
    parser.add_argument('--report_only', action='store_true', help='rewrite the report from the finished runs; '
                                                                   'train nothing')
    args = parser.parse_args(argv)
    command = 'nnUNetv2_semi_benchmark ' + ' '.join(a for a in (argv if argv is not None else sys.argv[1:])
                                                    if a != '--report_only')

    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_results
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    epochs = args.epochs
    clashes = shared_folders(args.tr)
    if clashes:
        raise SystemExit(f'nnUNetv2_semi_benchmark: {", ".join(clashes)} would be trained after a pretraining and '
                         f'again in -tr, in one model folder of each split, and the second would read the first\'s '
                         f'result. Benchmark the other one in its own output folder (-o), or under a subclass\'s name.')
    if epochs != 'smoke' and not epochs.isdigit():
        raise SystemExit(f'nnUNetv2_semi_benchmark: --epochs {epochs}: give a number of epochs or smoke')
    dataset = maybe_convert_to_dataset_name(args.d)
    check_plans(os.path.join(str(nnUNet_preprocessed), dataset), args.p, args.c)
    plans = args.p
    if args.small_plans:
        from nnunet_semi.planners.small_plans import write_small_plans
        base, cap, batch = args.small_plans
        plans = f'{args.p}_small{base}-{cap}b{batch}'
        write_small_plans(dataset, args.p, plans, base, cap, batch)
    output = args.o or os.path.join(str(nnUNet_results), dataset,
                                    f'nnunet_semi_benchmark__{plans}__{args.c}__{epochs}epochs__fold{args.f}')
    bench = Benchmark(dataset, args.c, plans, epochs, args.f, output, args.device)
    runs = [Run(STOCK, None, None)] + [Run(m, n, s) for s in args.seeds for n in args.n for m in [STOCK] + args.tr]
    failed = []
    if not args.report_only:
        check_trainers(sorted({schedule_name(t, epochs) for m in [STOCK] + args.tr for t in stages(m)}))
        bench.preprocess_unlabeled()
    report(bench, args.tr, args.n, args.seeds, command)  # earlier calls' runs (all that --report_only does)
    if not args.report_only:
        failed = train_all(bench, runs, lambda: report(bench, args.tr, args.n, args.seeds, command))
    print(f'\nReport: {os.path.join(output, "benchmark.md")}, benchmark.png, curves.png, results.json')
    if failed:
        print(f'{len(failed)} run(s) failed: {", ".join(failed)}; run the same command again to retry them.')
        sys.exit(1)

if __name__ == '__main__':
    main()
