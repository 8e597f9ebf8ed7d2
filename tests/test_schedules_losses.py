"""Ramp-ups, the EMA update and the consistency loss, against values worked out by hand."""
import math

import pytest
import torch
from torch import nn

from nnunet_semi.losses.consistency import softmax_mse
from nnunet_semi.networks.ema import ema_decay_at, ema_update
from nnunet_semi.trainers.ramps import linear_rampup, sigmoid_rampup, stepped_sigmoid_rampup


def test_sigmoid_rampup_values():
    assert sigmoid_rampup(0, 10) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(5, 10) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(8, 10) == pytest.approx(math.exp(-5 * 0.04))
    assert sigmoid_rampup(10, 10) == 1.0
    assert sigmoid_rampup(25, 10) == 1.0  # stays at full weight
    assert sigmoid_rampup(-3, 10) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(3, 0) == 1.0  # no ramp


def test_stepped_rampup_follows_the_authors_clock():
    # CAML: t = floor(iteration / 150), full weight after 40 steps, i.e. at iteration 6000
    assert stepped_sigmoid_rampup(149, 40, 150) == pytest.approx(math.exp(-5))
    assert stepped_sigmoid_rampup(5999, 40, 150) == pytest.approx(math.exp(-5 * (1 / 40) ** 2))
    assert stepped_sigmoid_rampup(6000, 40, 150) == 1.0


def test_linear_rampup():
    assert linear_rampup(0, 4) == 0.0
    assert linear_rampup(1, 4) == 0.25
    assert linear_rampup(9, 4) == 1.0


def test_ema_decay_warmup():
    assert ema_decay_at(0, 0.99) == 0.0
    assert ema_decay_at(1, 0.99) == 0.5
    assert ema_decay_at(2, 0.99) == pytest.approx(2 / 3)
    assert ema_decay_at(1000, 0.99) == 0.99


def test_ema_update_by_hand():
    teacher, student = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1)), nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    with torch.no_grad():
        teacher[0].weight.fill_(1.0); teacher[0].bias.fill_(-2.0)
        student[0].weight.fill_(3.0); student[0].bias.fill_(2.0)
        student[1].running_mean.fill_(7.0)
    ema_update(teacher, student, 0.75)
    assert torch.allclose(teacher[0].weight, torch.full((1, 2), 0.75 * 1 + 0.25 * 3))  # 1.5
    assert torch.allclose(teacher[0].bias, torch.tensor([0.75 * -2 + 0.25 * 2]))  # -1.0
    assert teacher[1].running_mean.item() == 7.0  # buffers are copied
    assert student[0].weight[0, 0].item() == 3.0  # the source is untouched
    ema_update(teacher, student, 0.0)  # decay 0: the teacher becomes the student
    assert torch.equal(teacher[0].weight, student[0].weight)


def test_softmax_mse_by_hand_and_gradient_only_to_student():
    # student logits (0, 0) -> p = (0.5, 0.5); teacher logits (ln 3, 0) -> p = (0.75, 0.25)
    student = torch.zeros(1, 2, 1, 1, requires_grad=True)
    teacher = torch.tensor([math.log(3.0), 0.0]).view(1, 2, 1, 1).requires_grad_(True)
    loss = softmax_mse(student, teacher)
    assert loss.item() == pytest.approx(0.0625)  # mean of 0.25^2 and 0.25^2
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None
    # regions: independent sigmoids, sigmoid(0) = 0.5 vs sigmoid(ln 3) = 0.75 and 0.5
    assert softmax_mse(torch.zeros(1, 2, 1, 1), teacher.detach(), regions=True).item() == pytest.approx(0.0625 / 2)
    with pytest.raises(ValueError, match='shape mismatch'):
        softmax_mse(torch.zeros(1, 2, 2), torch.zeros(1, 3, 2))


def test_semi_logger_pads_new_terms_and_plots(tmp_path):
    from nnunet_semi.trainers.progress import SemiLocalLogger

    log = SemiLocalLogger()
    for epoch in range(2):
        for key in ('mean_fg_dice', 'dice_per_class_or_region', 'train_losses', 'val_losses', 'lrs',
                    'epoch_start_timestamps', 'epoch_end_timestamps'):
            log.log(key, 0.5 if key != 'dice_per_class_or_region' else [0.5], epoch)
        log.log('ema_fg_dice', 0.5, epoch)
        log.log_term('supervised', 1.0 - 0.1 * epoch, 1.0, epoch)
        if epoch == 1:
            log.log_term('consistency', 0.02, 0.1, epoch)  # first seen in epoch 1
    c = log.get_value('term_consistency', None)
    assert len(c) == 2 and math.isnan(c[0]) and c[1] == 0.02
    assert log.get_value('weight_supervised', None) == [1.0, 1.0]
    assert log.term_names() == ['supervised', 'consistency']
    log.plot_progress_png(str(tmp_path))
    assert (tmp_path / 'progress.png').stat().st_size > 10000


def test_symlog_ticks_are_numbers_and_one_legend_holds_both_axes():
    import matplotlib.pyplot as plt
    from nnunet_semi.trainers.progress import legend_above, symlog_with_readable_ticks
    fig, ax = plt.subplots()
    ax.plot([0, 1, 2], [-0.8, -0.3, 0.004], label='supervised')
    twin = ax.twinx()
    twin.plot([0, 1, 2], [0.1, 0.5, 1.0], label='weight')
    symlog_with_readable_ticks(ax)
    legend_above(ax, twin)
    fig.canvas.draw()
    low, high = ax.get_ylim()
    labels = [t.get_text() for t, v in zip(ax.get_yticklabels(), ax.get_yticks()) if low <= v <= high]
    assert {'-0.5', '-0.2', '-0.1', '0'} <= set(labels), labels  # not a lone 10^0
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ['supervised', 'weight']
    assert twin.get_legend() is None
    plt.close(fig)


def test_each_optimizer_is_clipped_as_stock_clips_its_network():
    """Two networks, one loss: the deployed one's gradient is clipped to nnU-Net's norm 12 on its own, as stock nnU-Net
    clips it, not scaled down by the other's much larger gradient; a parameter in two optimizers is clipped once."""
    from types import SimpleNamespace
    from nnunetv2.utilities.helpers import dummy_context
    from nnunet_semi.trainers.base import nnUNetTrainerSemi
    torch.manual_seed(0)
    v, a, shared = torch.nn.Linear(4, 1), torch.nn.Linear(4, 1), torch.nn.Parameter(torch.ones(3))
    x = torch.randn(8, 4)

    def compute():  # d/dw of 10 * sum(w x) and 1000 * sum(w x): norms far above 12
        return {'v': (10.0, v(x).sum() + shared.sum()), 'a': (1000.0, a(x).sum())}
    raw = {}
    for name, module, weight in (('v', v, 10.0), ('a', a, 1000.0)):
        grads = torch.autograd.grad(weight * module(x).sum(), list(module.parameters()))
        raw[name] = torch.cat([g.flatten() for g in grads])
    raw['v'] = torch.cat((raw['v'], torch.full((3,), 10.0)))  # d(10 * sum(shared)) / d shared
    optimizers = [torch.optim.SGD(list(v.parameters()) + [shared], lr=0.0),
                  torch.optim.SGD(list(a.parameters()) + [shared], lr=0.0)]
    fake = SimpleNamespace(grad_scaler=None, autocast=dummy_context,
                           clip_per_optimizer=nnUNetTrainerSemi.clip_per_optimizer)
    nnUNetTrainerSemi.optimization_step(fake, compute, optimizers)
    for name, params in (('v', list(v.parameters()) + [shared]), ('a', list(a.parameters()))):
        clipped = torch.cat([p.grad.flatten() for p in params])
        assert raw[name].norm() > 12 and clipped.norm() == pytest.approx(12.0, rel=1e-4), name
        assert torch.allclose(clipped, raw[name] * 12 / raw[name].norm(), rtol=1e-4), name
