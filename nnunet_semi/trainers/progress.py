"""nnU-Net's local logger with the loss terms of a semi-supervised method: one value per epoch each, and a fourth
panel in progress.png that draws every term (solid, left axis) and its weight (dashed, right axis). Metrics that are
not losses (an accuracy in [0, 1]) are drawn dash-dotted beside the pseudo Dice of the first panel."""
import math

import matplotlib

matplotlib.use('agg')
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullLocator, SymmetricalLogLocator  # noqa: E402
from batchgenerators.utilities.file_and_folder_operations import join  # noqa: E402

from nnunetv2.training.logging.nnunet_logger import LocalLogger  # noqa: E402

TERM_PREFIX = 'term_'
WEIGHT_PREFIX = 'weight_'
METRIC_PREFIX = 'metric_'


def legend_above(*axes) -> None:
    """One legend above the panel for the curves of all its axes (a twin axis's own legend would cover them)."""
    handles, labels = [], []
    for ax in axes:
        h, l = ax.get_legend_handles_labels()
        handles += h
        labels += l
    axes[0].legend(handles, labels, loc='lower left', bbox_to_anchor=(0, 1.01), ncol=3, frameon=False)


def symlog_with_readable_ticks(ax, linthresh: float = 1e-3) -> None:
    """A symmetric log scale whose ticks carry numbers (1, 2 and 5 per decade, as decimals), not only powers of ten
    that the data may never reach."""
    ax.set_yscale('symlog', linthresh=linthresh)
    ax.yaxis.set_major_locator(SymmetricalLogLocator(base=10, linthresh=linthresh, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f'{v:g}'))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.grid(True, which='major', axis='y')


class SemiLocalLogger(LocalLogger):
    dice_label = 'pseudo dice'  # what nnU-Net's mean_fg_dice holds (a pretraining logs its proxy accuracy there)

    @classmethod
    def take_over(cls, old: LocalLogger) -> 'SemiLocalLogger':
        new = cls(old.verbose)
        new.my_fantastic_logging = old.my_fantastic_logging
        return new

    def _log_new(self, key: str, value: float, epoch: int):
        if key not in self.my_fantastic_logging:
            # a curve first seen now (e.g. after resuming with a newer version): earlier epochs are unknown
            self.my_fantastic_logging[key] = [math.nan] * epoch
        self.log(key, float(value), epoch)

    def log_term(self, name: str, value: float, weight: float, epoch: int):
        self._log_new(TERM_PREFIX + name, value, epoch)
        self._log_new(WEIGHT_PREFIX + name, weight, epoch)

    def log_metric(self, name: str, value: float, epoch: int):
        self._log_new(METRIC_PREFIX + name, value, epoch)

    def _names(self, prefix: str):
        return [k[len(prefix):] for k in self.my_fantastic_logging if k.startswith(prefix)]

    def term_names(self):
        return self._names(TERM_PREFIX)

    def plot_progress_png(self, output_folder):
        log = self.my_fantastic_logging
        epoch = min(len(v) for v in log.values()) - 1
        x = list(range(epoch + 1))
        fig, axes = plt.subplots(4, 1, figsize=(30, 72))
        sns.set(font_scale=2.5)

        ax = axes[0]
        ax.plot(x, log['train_losses'][:epoch + 1], color='b', label='loss_tr (weighted sum)', linewidth=4)
        ax.plot(x, log['val_losses'][:epoch + 1], color='r', label='loss_val', linewidth=4)
        ax2 = ax.twinx()
        ax2.plot(x, log['mean_fg_dice'][:epoch + 1], color='g', ls='dotted', label=self.dice_label, linewidth=3)
        ax2.plot(x, log['ema_fg_dice'][:epoch + 1], color='g', label=f'{self.dice_label} (mov. avg.)', linewidth=4)
        for name, color in zip(self._names(METRIC_PREFIX), ('m', 'c', 'y', 'k')):
            ax2.plot(x, log[METRIC_PREFIX + name][:epoch + 1], color=color, ls='-.', label=f'{name} (training)',
                     linewidth=3)
        ax.set_xlabel('epoch'); ax.set_ylabel('loss'); ax2.set_ylabel(self.dice_label)
        legend_above(ax, ax2)

        ax = axes[1]
        durations = [e - s for e, s in zip(log['epoch_end_timestamps'][:epoch + 1], log['epoch_start_timestamps'])]
        ax.plot(x, durations, color='b', label='epoch duration', linewidth=4)
        ax.set_ylim(bottom=0); ax.set_xlabel('epoch'); ax.set_ylabel('time [s]'); ax.legend(loc=(0, 1))

        ax = axes[2]
        ax.plot(x, log['lrs'][:epoch + 1], color='b', label='learning rate', linewidth=4)
        ax.set_xlabel('epoch'); ax.set_ylabel('learning rate'); ax.legend(loc=(0, 1))

        ax = axes[3]
        ax2 = ax.twinx()
        colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
        for i, name in enumerate(self.term_names()):
            c = colors[i % len(colors)]
            ax.plot(x, log[TERM_PREFIX + name][:epoch + 1], color=c, label=name, linewidth=4)
            ax2.plot(x, log[WEIGHT_PREFIX + name][:epoch + 1], color=c, ls='--', label=f'weight {name}', linewidth=3)
        symlog_with_readable_ticks(ax)  # Dice terms are negative, consistency terms 1e-4 of them
        ax.set_xlabel('epoch'); ax.set_ylabel('loss term (unweighted, symmetric log scale)'); ax2.set_ylabel('weight')
        legend_above(ax, ax2)

        plt.tight_layout()
        fig.savefig(join(output_folder, 'progress.png'))
        plt.close(fig)
