"""FixMatch's pseudo-label term added to the other methods (``<method>_FixMatch`` and ``_FixMatchEMA``, and by default
in Mean Teacher and MASSL, trainers/weak_to_strong.py): MASSL with it through nnUNetv2_train and nnUNetv2_predict in
2d, and one step of each variant on a real 3d batch, the siamese fine-tuning's (labeled-only on its own) and
PLContrast's round included; the paper's forms (``_noFixMatch``) without it."""
import numpy as np
import pytest
import torch

from conftest import predict, preprocess_unlabeled, train, trainer_from_args

pytestmark = pytest.mark.e2e


def test_massl_with_the_fixmatch_term_2d_trains_and_predicts(tiny_dataset, tmp_path):
    trainer = 'nnUNetTrainerMASSL_FixMatch_smoke'
    log, ckpt = train(tiny_dataset, '2d', 0, trainer)
    # step 1 (E + D_S) holds the segmentation and the pseudo-label term, step 2 the reconstruction
    assert log.count('loss terms: segmentation ') == 3 and log.count('(weight 1), pseudo_label ') == 3
    assert log.count('reconstruction ') >= 3 and log.count('training metrics: confident_share ') == 3
    assert all(np.isfinite(ckpt['logging']['term_pseudo_label']))
    predict(tiny_dataset, '2d', trainer, tmp_path)


@pytest.mark.parametrize('name', ['nnUNetTrainerMeanTeacher', 'nnUNetTrainerSSCL_FixMatch',
                                  'nnUNetTrainerCAML_FixMatch', 'nnUNetTrainerMASSLJoint',
                                  'nnUNetTrainerMASSL_FixMatch', 'nnUNetTrainerMASSL',
                                  'nnUNetTrainerPLContrast_FixMatchEMA', 'nnUNetTrainerSiameseFinetune_FixMatchEMA'])
def test_the_fixmatch_term_joins_each_method_in_one_step(tiny_dataset, name):
    ds = tiny_dataset
    preprocess_unlabeled(ds, '3d_fullres')
    # PLContrast with its own self-training term too: both terms are logged, under their own names
    settings = {'self_training_weight': 1.0} if 'PLContrast' in name else {}
    trainer = trainer_from_args(ds, name, 4, num_epochs=1, **settings)
    trainer.on_train_start()
    trainer.on_train_epoch_start()  # PLContrast, one epoch long, has no warm-up: its first round starts here
    # the siamese fine-tuning reads unlabeled batches only for the term
    assert trainer.dataloader_unlabeled is not None
    out = trainer.train_step(next(trainer.dataloader_train))
    terms = {k[len('term_'):] for k in out if k.startswith('term_')}
    assert 'pseudo_label' in terms and len(terms) >= 2 and 0.0 <= out['metric_confident_share'] <= 1.0
    assert np.isfinite(out['term_pseudo_label']) and out['weight_pseudo_label'] == 1.0
    assert out['loss'] == pytest.approx(sum(out['weight_' + t] * out['term_' + t] for t in terms), rel=1e-5)
    if settings:
        assert {'self_training', 'contrastive'} <= terms and 'metric_self_training_confident_share' in out
    if name == 'nnUNetTrainerMASSL_FixMatch':  # the term trains E + D_S, in the labeled step of the alternation
        step, steps = trainer.optimization_step, []

        def spy(compute, optimizers):
            terms = step(compute, optimizers)
            steps.append((set(terms), optimizers))
            return terms
        trainer.optimization_step = spy
        trainer.train_step(next(trainer.dataloader_train))
        assert steps[0] == ({'segmentation', 'pseudo_label', 'confident_share'}, [trainer.optimizer])
        assert steps[1][0] == {'reconstruction'}
    # _FixMatch labels with the network itself; _FixMatchEMA, Mean Teacher and MASSL (their defaults) with an EMA teacher
    assert (trainer.teacher is None) == name.endswith('_FixMatch')
    if trainer.teacher is not None:  # the pseudo-labels are the teacher's: a silent one gives none
        for p in trainer.teacher.parameters():
            p.data.zero_()  # every logit 0: probability 1/3 per class, nothing reaches 0.95
        out = trainer.train_step(next(trainer.dataloader_train))
        assert out['metric_confident_share'] == 0.0 and out['term_pseudo_label'] == 0.0
    trainer.on_train_end()


@pytest.mark.parametrize('name, terms', [('nnUNetTrainerMeanTeacher_noFixMatch', {'supervised', 'consistency'}),
                                         ('nnUNetTrainerMASSL_noFixMatch', {'segmentation', 'reconstruction'})])
def test_the_papers_forms_have_no_fixmatch_term(tiny_dataset, name, terms):
    ds = tiny_dataset
    preprocess_unlabeled(ds, '3d_fullres')
    trainer = trainer_from_args(ds, name, 4, num_epochs=1)
    trainer.on_train_start()
    trainer.on_train_epoch_start()
    out = trainer.train_step(next(trainer.dataloader_train))
    assert {k[len('term_'):] for k in out if k.startswith('term_')} == terms and 'metric_confident_share' not in out
    assert (trainer.teacher is None) == ('MASSL' in name)  # MASSL's paper has no teacher; Mean Teacher's is its own
    trainer.on_train_end()


def test_the_teacher_is_deployed_at_the_end_of_training(tiny_dataset):
    from nnunet_semi.trainers.base import unwrap
    ds = tiny_dataset
    preprocess_unlabeled(ds, '3d_fullres')
    trainer = trainer_from_args(ds, 'nnUNetTrainerMeanTeacher_deployTeacher', 4, num_epochs=1)
    trainer.on_train_start()
    trainer.on_train_epoch_start()
    for _ in range(2):
        trainer.train_step(next(trainer.dataloader_train))
    teacher = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    assert any(not torch.equal(v, unwrap(trainer.network).state_dict()[k]) for k, v in teacher.items())
    trainer.on_train_end()
    final = torch.load(f'{trainer.output_folder}/checkpoint_final.pth', map_location='cpu', weights_only=False)
    assert all(torch.equal(final['network_weights'][k], v) for k, v in teacher.items())
    assert all(torch.equal(unwrap(trainer.network).state_dict()[k], v) for k, v in teacher.items())
