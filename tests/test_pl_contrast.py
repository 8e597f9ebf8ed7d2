"""PLContrast's parts: the local contrastive loss on tiny embeddings against values worked out by hand (an image that
lacks a class included), the round schedule, and pseudo-label files that are complete after a generation killed
halfway and rerun."""
import math
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from nnunet_semi.data.pseudo_labels import file_stem, write_pseudo_labels
from nnunet_semi.data.unlabeled import committed_cases
from nnunet_semi.losses.local_contrastive import local_contrastive_loss
from nnunet_semi.trainers.pl_contrast import contrastive_pairs, round_starts, viewed_images

R = 1 / math.sqrt(2)


def _images():
    """Two 1x3 images, 2-d embeddings, classes 0 (background), 1 and 2. Image a: class 1 at (1, 0), class 2 at
    (0, 1), background. Image b: class 1 twice, at (1, 0) and (0, 1) (prototype (R, R)), background; no class 2."""
    embeddings = torch.tensor([[[[1.0, 0.0, 5.0]], [[0.0, 1.0, 5.0]]],  # image a: (N=2, D=2, 1, 3)
                               [[[2.0, 0.0, -3.0]], [[0.0, 3.0, 1.0]]]])  # image b
    classes = torch.tensor([[[1, 2, 0]], [[1, 1, 0]]])
    return embeddings, classes


def test_local_contrastive_loss_against_values_by_hand():
    embeddings, classes = _images()
    for tau in (1.0, 0.1):
        e = lambda s: math.exp(s / tau)
        # anchors of a: keys mu_a1 = (1,0), mu_a2 = (0,1), mu_b1 = (R,R)
        d = e(1) + e(0) + e(R)  # the same denominator for both anchors of a (by symmetry of the cosines)
        a1 = -math.log(e(1) / d) - math.log(e(R) / d)  # class 1 is in b: intra + cross term
        a2 = -math.log(e(1) / d)  # class 2 is absent from b: intra term only
        # anchors of b: keys mu_b1 = (R,R), mu_a1 = (1,0), mu_a2 = (0,1); class 2 of a joins the denominator
        d = e(R) + e(1) + e(0)
        b1 = -math.log(e(R) / d) - math.log(e(1) / d)  # anchor (1,0): cos to mu_a1 = 1
        b2 = -math.log(e(R) / d) - math.log(e(0) / d)  # anchor (0,1): cos to mu_a1 = 0
        expected = (a1 + a2 + b1 + b2) / 4
        loss = local_contrastive_loss(embeddings, classes, 3, [(0, 1)], anchors_per_class=10, temperature=tau)
        assert loss.item() == pytest.approx(expected, rel=1e-5), tau
    # the default temperature is the paper's 0.1
    assert local_contrastive_loss(embeddings, classes, 3, [(0, 1)], 10).item() == pytest.approx(expected, rel=1e-5)


def test_local_contrastive_loss_samples_anchors_and_skips_what_is_absent():
    embeddings, classes = _images()
    # one anchor per class: b's two class-1 pixels give b1 or b2, so the loss is one of two values by hand
    torch.manual_seed(0)
    values = {round(local_contrastive_loss(embeddings, classes, 3, [(0, 1)], 1, 1.0).item(), 5) for _ in range(40)}
    e, d = math.exp, math.exp(1) + 1 + math.exp(R)
    a = -math.log(e(1) / d) - math.log(e(R) / d) - math.log(e(1) / d)
    b1, b2 = -math.log(e(R) / d) - math.log(e(1) / d), -math.log(e(R) / d) - math.log(e(0) / d)
    assert values == {round((a + b1) / 3, 5), round((a + b2) / 3, 5)}

    # pairs average: a pair whose images hold only background contributes nothing (not a 0 in the mean)
    background = torch.zeros_like(classes)
    both = local_contrastive_loss(torch.cat((embeddings, embeddings)), torch.cat((classes, background)), 3,
                                  [(0, 1), (2, 3)], 10, 1.0)
    alone = local_contrastive_loss(embeddings, classes, 3, [(0, 1)], 10, 1.0)
    assert both.item() == pytest.approx(alone.item())

    # nothing but background or excluded pixels: 0, never NaN, and a finite gradient
    x = embeddings.clone().requires_grad_(True)
    excluded = torch.tensor([[[-1, 0, 0]], [[0, -2, 0]]])
    loss = local_contrastive_loss(x, excluded, 3, [(0, 1)])
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(x.grad).all()
    # a class present in only one image: finite loss and gradient
    x.grad = None
    one_class = torch.tensor([[[2, 0, 0]], [[0, 0, 0]]])
    loss = local_contrastive_loss(x, one_class, 3, [(0, 1)])
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_round_schedule_and_pairs():
    assert round_starts(1000, 250, 3) == [250, 500, 750]  # the paper: warm-up, then three equal rounds
    assert round_starts(10, 2, 3) == [2, 4, 7]
    assert round_starts(3, 1, 3) == [1, 2]  # fewer epochs than rounds: one round per epoch
    assert round_starts(1, 0, 3) == [0]
    # labeled i with unlabeled i, then each image with the next within its group
    assert contrastive_pairs(2, 3) == [(0, 2), (1, 3), (0, 1), (2, 3), (3, 4), (4, 2)]
    assert contrastive_pairs(1, 1) == [(0, 1)]
    # every other image of each group gets a second view, appended after the batch and paired with its original
    assert viewed_images(2, 3) == [0, 2, 4]
    assert contrastive_pairs(2, 3, viewed_images(2, 3))[-3:] == [(0, 5), (2, 6), (4, 7)]


SEGMENT = '''
import sys, time
import numpy as np
sys.path[:0] = {path!r}
from nnunet_semi.data.pseudo_labels import write_pseudo_labels

def segment(key):
    time.sleep({delay})
    rng = np.random.RandomState(int(key.split('_')[-1]))
    return rng.randint(0, 3, (1, 6, 7, 8))

write_pseudo_labels([f'hidden:case_{{i}}' for i in range(8)], sys.argv[1], segment, [1, 2], log=lambda m: None)
'''


def test_pseudo_labels_are_complete_after_an_interrupted_generation(tmp_path):
    script = tmp_path / 'generate.py'
    script.write_text(textwrap.dedent(SEGMENT.format(path=sys.path, delay=0.3)))
    interrupted, reference = tmp_path / 'interrupted', tmp_path / 'reference'
    keys = [f'hidden:case_{i}' for i in range(8)]

    proc = subprocess.Popen([sys.executable, str(script), str(interrupted)])
    deadline = time.time() + 120
    while len(committed_cases(str(interrupted), '.npy')) < 2:
        assert proc.poll() is None and time.time() < deadline, 'the generation ended or stalled before the kill'
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = [k for k in keys if file_stem(k) in committed_cases(str(interrupted), '.npy')]
    assert 2 <= len(done) < len(keys)
    kept = {k: os.stat(interrupted / (file_stem(k) + '.npy')).st_mtime_ns for k in done}
    # a half-written case (its .npy renamed into place, killed before its .pkl) does not count and is redone
    half = keys[len(done)]
    np.save(interrupted / (file_stem(half) + '.npy'), np.zeros((1, 2, 2, 2), np.int8))

    subprocess.run([sys.executable, str(script), str(interrupted)], check=True)
    subprocess.run([sys.executable, str(script), str(reference)], check=True)
    for k in keys:
        stem = file_stem(k)
        a, b = np.load(interrupted / (stem + '.npy')), np.load(reference / (stem + '.npy'))
        assert a.dtype == np.int8 and a.shape == (1, 6, 7, 8) and np.array_equal(a, b), k
        with open(interrupted / (stem + '.pkl'), 'rb') as f, open(reference / (stem + '.pkl'), 'rb') as g:
            la, lb = pickle.load(f)['class_locations'], pickle.load(g)['class_locations']
        assert sorted(la) == [1, 2] and all(np.array_equal(la[c], lb[c]) for c in la), k
        assert all((a[tuple(loc)] == c) for c in la for loc in la[c][:20]), k  # locations point at their class
    # what existed was not regenerated
    assert all(os.stat(interrupted / (file_stem(k) + '.npy')).st_mtime_ns == t for k, t in kept.items())
    assert not list((interrupted / '.partial').iterdir())  # nothing half-written left behind


def test_writer_counts_and_skips(tmp_path):
    calls = []

    def segment(key):
        calls.append(key)
        return np.full((1, 2, 3, 4), 300 if key == 'big' else 1)

    assert write_pseudo_labels(['a', 'big'], str(tmp_path), segment, [1], log=lambda m: None) == 2
    assert np.load(tmp_path / 'big.npy').dtype == np.int16  # labels above 127 do not fit int8
    assert write_pseudo_labels(['a', 'big', 'c'], str(tmp_path), segment, [1], log=lambda m: None) == 1
    assert calls == ['a', 'big', 'c']
