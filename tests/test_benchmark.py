"""nnUNetv2_semi_benchmark's pieces without training: schedule names, the budget check and gap by hand, class names,
and which nnUNetv2_train command each state of a run leads to (subprocess replaced by a recorder)."""
import json
import subprocess
import warnings
from pathlib import Path

import pytest

from nnunet_semi import benchmark
from nnunet_semi.benchmark import Benchmark, Run, class_names, gap_closed, plateau_rise, schedule_name


def test_schedule_names_are_nnunets():
    assert schedule_name('nnUNetTrainer', '20') == 'nnUNetTrainer_20epochs'
    assert schedule_name('nnUNetTrainerCAML', '1') == 'nnUNetTrainerCAML_1epoch'
    assert schedule_name('nnUNetTrainerCAML', '1000') == 'nnUNetTrainerCAML'
    assert schedule_name('nnUNetTrainerCAML', 'smoke') == 'nnUNetTrainerCAML_smoke'


def test_plateau_rise_and_gap_by_hand():
    # 10 epochs: fifths of 2; last fifth mean 0.6, the fifth before 0.4
    assert plateau_rise([0.1] * 6 + [0.4, 0.4, 0.5, 0.7]) == pytest.approx(0.2)
    assert plateau_rise([0.5] * 15) == pytest.approx(0.0)
    assert plateau_rise([0.5] * 9) is None  # fifths of one epoch say nothing
    assert gap_closed(0.7, 0.6, 0.8) == '50%'
    assert gap_closed(0.55, 0.6, 0.8) == '-25%'
    assert gap_closed(0.7, 0.6, 0.6) == 'n/a (no gap)'


def test_class_names_match_summary_keys():
    assert class_names({'labels': {'background': 0, 'Anterior': 1, 'Posterior': 2}}) == \
        {'0': 'background', '1': 'Anterior', '2': 'Posterior'}
    # nnU-Net's summary.json writes a region as str(tuple)
    assert class_names({'labels': {'background': 0, 'whole': [1, 2], 'core': [2]}})['(1, 2)'] == 'whole'


@pytest.fixture
def bench(tmp_path, monkeypatch):
    """A benchmark of a fake dataset whose n1_seed0 split is already written, and a recorder for nnUNetv2_train that
    writes what a successful command would (a final checkpoint; a validation summary unless it is a pretraining)."""
    source = tmp_path / 'preprocessed' / 'Dataset777_Fake'
    source.mkdir(parents=True)
    (source / 'dataset.json').write_text(json.dumps({'labels': {'background': 0, 'a': 1}}))
    monkeypatch.setenv('nnUNet_preprocessed', str(tmp_path / 'preprocessed'))
    b = Benchmark('Dataset777_Fake', '2d', 'P', '20', 0, str(tmp_path / 'out'), 'cpu')
    split = tmp_path / 'out' / 'n1_seed0' / 'nnUNet_preprocessed' / 'Dataset777_Fake'
    split.mkdir(parents=True)
    (split / 'splits_final.json').write_text(json.dumps([{'train': ['x'], 'val': ['y'], 'unlabeled': ['z'],
                                                          'n_labeled': 1, 'seed': 0}]))
    calls = []

    def fake_run(cmd, env=None, stdout=None, stderr=None, **kw):
        calls.append(cmd[1:])
        trainer = cmd[cmd.index('-tr') + 1].rsplit('_', 1)[0]
        folder = Path(b.fold_folder('n1_seed0', trainer))
        folder.mkdir(parents=True, exist_ok=True)
        assert env['nnUNet_preprocessed'] == str(tmp_path / 'out' / 'n1_seed0' / 'nnUNet_preprocessed')
        (folder / 'checkpoint_final.pth').write_bytes(b'')
        if 'Pretrain' not in trainer:
            (folder / 'validation').mkdir(exist_ok=True)
            (folder / 'validation' / 'summary.json').write_text('{}')
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(benchmark.subprocess, 'run', fake_run)
    return b, calls


def test_a_chain_trains_each_stage_from_the_one_before(bench):
    b, calls = bench
    run = Run('TPretrain:TFine', 1, 0)
    b.train(run)
    pretrained = b.fold_folder('n1_seed0', 'TPretrain') + '/checkpoint_final.pth'
    assert calls == [['Dataset777_Fake', '2d', '0', '-tr', 'TPretrain_20epochs', '-p', 'P', '-device', 'cpu'],
                     ['Dataset777_Fake', '2d', '0', '-tr', 'TFine_20epochs', '-p', 'P', '-device', 'cpu',
                      '-pretrained_weights', pretrained]]
    calls.clear()
    b.train(run)
    assert calls == []  # finished: nothing is redone


def test_resume_continues_or_validates_what_is_left(bench):
    b, calls = bench
    pre, fine = (Path(b.fold_folder('n1_seed0', t)) for t in ('TPretrain', 'TFine'))
    pre.mkdir(parents=True)
    (pre / 'checkpoint_final.pth').write_bytes(b'')
    fine.mkdir(parents=True)
    (fine / 'checkpoint_latest.pth').write_bytes(b'')
    b.train(Run('TPretrain:TFine', 1, 0))
    # the pretraining is done; the fine-tuning goes on from its latest checkpoint (no -pretrained_weights with --c)
    assert calls == [['Dataset777_Fake', '2d', '0', '-tr', 'TFine_20epochs', '-p', 'P', '-device', 'cpu', '--c']]
    calls.clear()
    (fine / 'validation' / 'summary.json').unlink()
    b.train(Run('TPretrain:TFine', 1, 0))
    assert calls == [['Dataset777_Fake', '2d', '0', '-tr', 'TFine_20epochs', '-p', 'P', '-device', 'cpu', '--val']]


def test_a_failed_training_names_its_log(bench, monkeypatch):
    b, _ = bench
    monkeypatch.setattr(benchmark.subprocess, 'run', lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1))
    with pytest.raises(RuntimeError, match=r'exit code 1\); the end of .*logs/n1_seed0__TFine_20epochs\.log'):
        b.train(Run('TFine', 1, 0))


def test_a_trainer_after_a_pretraining_and_again_is_refused(tmp_path, monkeypatch):
    assert benchmark.shared_folders(['P:F', 'F', 'Q:G', 'R:G', 'P:H', 'M']) == ['F', 'G']  # P shared: one training
    monkeypatch.setenv('nnUNet_results', str(tmp_path / 'results'))
    with pytest.raises(SystemExit, match=r'F would be trained after a pretraining and again in -tr'):
        benchmark.main(['-d', 'Dataset777_Fake', '-c', '2d', '-n', '1', '-tr', 'P:F', 'F'])
    assert not (tmp_path / 'results').exists()


def test_missing_plans_or_configuration_name_the_file(tmp_path, monkeypatch):
    folder = tmp_path / 'preprocessed' / 'Dataset777_Fake'
    folder.mkdir(parents=True)
    monkeypatch.setenv('nnUNet_preprocessed', str(tmp_path / 'preprocessed'))
    monkeypatch.setenv('nnUNet_results', str(tmp_path / 'results'))
    argv = ['-d', 'Dataset777_Fake', '-c', '3d_fullres', '-n', '1', '-tr', 'nnUNetTrainerMeanTeacher', '-p', 'P']
    with pytest.raises(SystemExit, match=f'{folder / "P.json"} not found. Plan and preprocess'):
        benchmark.main(argv)
    (folder / 'P.json').write_text(json.dumps({'configurations': {'2d': {}}}))
    with pytest.raises(SystemExit, match=r'P\.json has no configuration 3d_fullres \(it has 2d\)'):
        benchmark.main(argv)
    assert not (tmp_path / 'results').exists()  # nothing written before the checks


def test_a_report_before_any_run_finished_is_written_without_warnings(bench):
    b, _ = bench
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        results = benchmark.report(b, ['TFine'], [1], [0], 'nnUNetv2_semi_benchmark -d 777')
    assert results['runs'] == []
    for name in ('benchmark.md', 'benchmark.png', 'curves.png', 'results.json'):
        assert (Path(b.output) / name).is_file(), name
