"""docs/writing_a_method.md is true: its example, saved as the guide says (one file in nnunet_semi/trainers/), is a
trainer that nnU-Net's own lookup finds and that nnUNetv2_train trains and nnUNetv2_predict predicts with."""
import re
import uuid
from pathlib import Path

import pytest

import nnunet_semi.trainers
from conftest import model_folder, newest_log, predict, preprocess_unlabeled, run, train_cmd

GUIDE = Path(__file__).resolve().parents[1] / 'docs' / 'writing_a_method.md'


def guide_example() -> str:
    return re.search(r'```python\n(.*?)```', GUIDE.read_text(), re.S).group(1)


@pytest.fixture
def method_file():
    """The guide's example saved in the installed nnunet_semi/trainers/ under a name no other module has; removed
    afterwards."""
    path = Path(nnunet_semi.trainers.__path__[0]) / f'guide_example_{uuid.uuid4().hex[:8]}.py'
    path.write_text(guide_example())
    try:
        yield path
    finally:
        path.unlink()
        for cached in (path.parent / '__pycache__').glob(f'{path.stem}.*'):
            cached.unlink()


@pytest.mark.e2e
def test_the_guide_example_is_found_trained_and_predicted(tiny_dataset, method_file, tmp_path):
    ds, trainer = tiny_dataset, 'nnUNetTrainerEntropyMin_smoke'
    found = run(['python', '-c', 'from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name; '
                 f'print(recursive_find_trainer_class_by_name("{trainer}").__module__)'], ds['env'])
    assert found.strip().splitlines()[-1] == f'nnunet_semi.trainers.{method_file.stem}'
    preprocess_unlabeled(ds, '2d')
    run(train_cmd(ds, '2d', 0, trainer), ds['env'])
    log = newest_log(model_folder(ds, trainer, '2d', 0))
    assert log.count('loss terms: supervised') == 3 and 'entropy ' in log
    predict(ds, '2d', trainer, tmp_path)


def test_without_the_file_there_is_no_such_trainer(nnunet_env):
    out = run(['python', '-c', 'from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name; '
               'recursive_find_trainer_class_by_name("nnUNetTrainerEntropyMin")'], nnunet_env, ok=False)
    assert 'nnUNetTrainerEntropyMin' in out
