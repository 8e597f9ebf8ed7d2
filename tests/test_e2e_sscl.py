"""nnUNetTrainerSSCL end to end through nnU-Net's commands on the tiny generated dataset (small plans, CPU): training
and prediction in 2d with the two-pass network nnU-Net builds from the trainer class, a 3d_fullres run interrupted,
resumed and predicted, the losses on a real batch, and the fusion ablations."""
import numpy as np
import pytest
import torch

from conftest import (assert_restored, interrupt_then_load, predict, preprocess_unlabeled, resume_to_the_end, run,
                      SMALL, train, trainer_from_args)
from nnunet_semi.networks.sscl import AddFusion, ConcatFusion, GatedFeatureFusion, SSCLNetwork

pytestmark = pytest.mark.e2e
SSCL = 'nnUNetTrainerSSCL_smoke'


def test_sscl_2d_trains_and_predicts(tiny_dataset, tmp_path):
    ds = tiny_dataset
    log, ckpt = train(ds, '2d', 0, SSCL)
    assert 'SSCL: two-pass network, gff fusion on 4 encoder levels, inpainting of 1 channel(s)' in log
    assert log.count('loss terms: segmentation ') == 3 and log.count('(weight 2), inpainting ') == 3
    assert any(k.startswith('fusions.') for k in ckpt['network_weights'])  # the deployed net is the two-pass model
    inpainting = ckpt['logging']['term_inpainting']
    assert len(inpainting) == 3 and all(np.isfinite(inpainting))
    predict(ds, '2d', SSCL, tmp_path)  # nnU-Net builds the network from the trainer class


def test_sscl_3d_resumes_predicts_and_refuses_a_stock_export(tiny_dataset, tmp_path):
    ds = tiny_dataset
    saved, trainer = interrupt_then_load(ds, SSCL, 0)
    assert isinstance(trainer.network, SSCLNetwork)
    assert_restored(trainer.network, trainer.optimizer, saved['network_weights'], saved['optimizer_state'])
    resume_to_the_end(ds, SSCL, 0, saved, 'inpainting')
    predict(ds, '3d_fullres', SSCL, tmp_path / 'pred')
    # no stock model folder: stock nnU-Net cannot build this network
    out = run(['nnunet_semi', 'export', '-d', ds['id'], '-c', '3d_fullres', '-tr', SSCL, '-p', SMALL, '-o',
               tmp_path / 'stock'], ds['env'], ok=False)
    assert 'deploys a network of its own' in out and not (tmp_path / 'stock').exists()


def test_losses_and_ablations_on_a_real_batch(tiny_dataset):
    ds = tiny_dataset
    preprocess_unlabeled(ds, '3d_fullres')
    for name, fusion, settings in (('nnUNetTrainerSSCL', GatedFeatureFusion, {}),
                                   ('nnUNetTrainerSSCL_add', AddFusion, {}),
                                   ('nnUNetTrainerSSCL_concat', ConcatFusion, {'inpaint_labeled': True}),
                                   ('nnUNetTrainerSSCL_fuseBelowFullRes', GatedFeatureFusion, {})):
        trainer = trainer_from_args(ds, name, 4, num_epochs=1, **settings)
        assert all(isinstance(f, fusion) for f in trainer.network.fusions), name
        levels = len(trainer.network.encoder.output_channels)  # the full-resolution skip is level 0
        fused = levels - 1 if name == 'nnUNetTrainerSSCL_fuseBelowFullRes' else levels
        assert len(trainer.network.fusions) == fused, name
        # the inpainting scales weigh as nnU-Net's deep supervision: 1, 1/2, (1/4 -> 0), normalised
        assert list(trainer.loss.weight_factors) == pytest.approx([2 / 3, 1 / 3, 0.0])
        trainer.on_train_start()
        before = [p.detach().clone() for p in trainer.network.inpainting_decoder.parameters()]
        out = trainer.train_step(next(trainer.dataloader_train))
        assert (out['weight_segmentation'], out['weight_inpainting']) == (2.0, 1.0)
        assert np.isfinite(out['term_segmentation']) and out['term_inpainting'] > 0, name
        after = list(trainer.network.inpainting_decoder.parameters())
        assert any(not torch.equal(a, b) for a, b in zip(before, after)), name  # nnU-Net's optimizer trains D_I too

        # the inpainting loss reads the pass-2 foreground: with the segmentation forced to background, it is 0
        with torch.no_grad():
            for layer in trainer.network.decoder.seg_layers:
                layer.weight.zero_()
                layer.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))
        batch = next(trainer.dataloader_train)
        terms = trainer.compute_losses(trainer.to_device(batch), trainer.next_unlabeled_batch())
        assert terms['inpainting'][1].item() == 0.0, name
        trainer.on_train_end()
