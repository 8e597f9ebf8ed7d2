"""``nnunet_semi curves``: validation pseudo Dice per epoch of several trainings in one plot, and a table.

    nnunet_semi curves FOLD_FOLDER [FOLD_FOLDER ...] [-l LABEL ...] -o curves.png

Each FOLD_FOLDER is a fold folder of nnUNet_results (``.../nnUNetTrainer__nnUNetPlans__2d/fold_0``). The curves are
nnU-Net's own per-epoch validation pseudo Dice (``mean_fg_dice``, dotted) and its moving average (``ema_fg_dice``),
read from the newest checkpoint's log; the table adds the final validation Dice of ``validation/summary.json``
(nnU-Net's sliding-window validation at the end of training) where it exists.
"""
import argparse
import json
import os
from typing import Dict, List, Optional

import matplotlib

matplotlib.use('agg')
import matplotlib.pyplot as plt  # noqa: E402


def read_curves(fold_folder: str) -> Dict[str, list]:
    """nnU-Net's log of a training (checkpoint_final.pth, else checkpoint_latest.pth)."""
    import torch
    for name in ('checkpoint_final.pth', 'checkpoint_latest.pth'):
        path = os.path.join(fold_folder, name)
        if os.path.isfile(path):
            return torch.load(path, map_location='cpu', weights_only=False)['logging']
    raise FileNotFoundError(f'{fold_folder} holds no checkpoint_final.pth or checkpoint_latest.pth: is it a fold '
                            f'folder of nnUNet_results (.../<trainer>__<plans>__<configuration>/fold_N)?')


def final_dice(fold_folder: str) -> Optional[float]:
    path = os.path.join(fold_folder, 'validation', 'summary.json')
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)['foreground_mean']['Dice']


def table(labels: List[str], logs: List[dict], finals: List[Optional[float]]) -> str:
    n = max(len(log['mean_fg_dice']) for log in logs)
    marks = sorted({e for e in (0, 1, 2, 4, n // 4, n // 2, n - 1) if 0 <= e < n})
    lines = ['| training | ' + ' | '.join(f'epoch {e + 1}' for e in marks) + ' | best EMA | final validation Dice |',
             '|---' * (len(marks) + 3) + '|']
    for label, log, final in zip(labels, logs, finals):
        dice = log['mean_fg_dice']
        cells = [f'{dice[e]:.3f}' if e < len(dice) else '' for e in marks]
        lines.append(f'| {label} | ' + ' | '.join(cells) + f' | {max(log["ema_fg_dice"]):.3f} | '
                     f'{"" if final is None else f"{final:.4f}"} |')
    return '\n'.join(lines)


def plot(labels: List[str], logs: List[dict], output: str, title: str = '') -> None:
    fig, ax = plt.subplots(figsize=(10, 6))
    colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for i, (label, log) in enumerate(zip(labels, logs)):
        c = colors[i % len(colors)]
        epochs = range(1, len(log['mean_fg_dice']) + 1)
        ax.plot(epochs, log['mean_fg_dice'], color=c, ls=':', linewidth=1.5)
        ax.plot(epochs, log['ema_fg_dice'], color=c, linewidth=2.5, label=f'{label} (moving average; dotted: epoch)')
    ax.set_xlabel('epoch')
    ax.set_ylabel('validation pseudo Dice (nnU-Net)')
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(output, dpi=100)
    plt.close(fig)


def add_arguments(parser):
    parser.add_argument('folders', nargs='+', help='fold folders of nnUNet_results')
    parser.add_argument('-l', nargs='+', default=None, help='a label per folder (default: the trainer folder name)')
    parser.add_argument('-o', required=True, help='the plot (PNG)')
    parser.add_argument('--title', default='')


def run(args) -> str:
    labels = args.l or [os.path.basename(os.path.dirname(os.path.abspath(f))) for f in args.folders]
    if len(labels) != len(args.folders):
        raise SystemExit(f'-l gives {len(labels)} labels for {len(args.folders)} folders')
    try:
        logs = [read_curves(f) for f in args.folders]
    except FileNotFoundError as e:
        raise SystemExit(f'nnunet_semi curves: {e}')
    plot(labels, logs, args.o, args.title)
    text = table(labels, logs, [final_dice(f) for f in args.folders])
    print(text)
    print(f'plot written to {args.o}')
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(prog='nnunet_semi curves', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    run(parser.parse_args(argv))
