"""Trainer discovery: the start-up hook, its opt-out, and the wheel that carries it."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import run

ROOT = Path(__file__).resolve().parents[1]
LOOKUP = ("from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f\n"
          "import os\n"
          "try:\n"
          "    c = f('nnUNetTrainerMeanTeacher'); print('FOUND', c.__module__, c.__name__)\n"
          "except RuntimeError as e:\n"
          "    print('NOT FOUND', e)\n"
          "print('EXT', os.environ.get('nnUNet_extTrainer'))\n")


def _fresh_python(code, **env_changes):
    env = {k: v for k, v in os.environ.items() if k not in ('nnUNet_extTrainer', 'NNUNET_SEMI_NO_HOOK')}
    env.update(env_changes)
    return subprocess.run([sys.executable, '-c', code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, cwd='/', timeout=300).stdout


def test_nnunet_finds_the_trainer_through_the_hook():
    out = _fresh_python(LOOKUP)
    assert 'FOUND nnunet_semi.trainers.mean_teacher nnUNetTrainerMeanTeacher' in out, out


def test_opt_out_switches_the_hook_off():
    out = _fresh_python(LOOKUP, NNUNET_SEMI_NO_HOOK='1')
    assert 'NOT FOUND' in out and 'EXT None' in out, out


def test_an_existing_value_is_kept_and_ours_appended(tmp_path):
    out = _fresh_python(LOOKUP, nnUNet_extTrainer=str(tmp_path))
    ext = run(['nnunet_semi', 'ext-path'], dict(os.environ)).strip()
    assert f'EXT {tmp_path}{os.pathsep}{ext}' in out, out
    assert 'FOUND nnunet_semi.trainers.mean_teacher' in out


def test_ext_path_is_the_shim_folder():
    ext = Path(run(['nnunet_semi', 'ext-path'], dict(os.environ)).strip())
    assert ext.name == '_ext' and (ext / 'nnunet_semi_trainers.py').is_file()


def test_the_installed_wheel_carries_the_hook(tmp_path):
    """Build the wheel, install it into a folder, and let Python's site machinery process that folder as it does
    site-packages at start-up: the hook must point nnUNet_extTrainer at the folder's own shim."""
    # from a copy of the sources: the tests that run beside this one (pytest -n 2) write into nnunet_semi/trainers/
    source = tmp_path / 'source'
    shutil.copytree(ROOT / 'nnunet_semi', source / 'nnunet_semi',
                    ignore=shutil.ignore_patterns('__pycache__', 'guide_example_*'))
    for name in ('setup.py', 'pyproject.toml', 'README.md'):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', str(source), '--no-deps', '--no-build-isolation', '-q',
                    '-w', str(tmp_path / 'wheel')], check=True, timeout=600)
    wheel = next((tmp_path / 'wheel').glob('nnunet_semi-*.whl'))
    names = zipfile.ZipFile(wheel).namelist()
    assert 'nnunet_semi.pth' in names and 'nnunet_semi/_ext/nnunet_semi_trainers.py' in names
    pth = zipfile.ZipFile(wheel).read('nnunet_semi.pth').decode()
    assert pth.startswith('import os;') and pth.count('import') == 1  # imports nothing but os
    target = tmp_path / 'site'
    subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '-q', '--target', str(target), str(wheel)],
                   check=True, timeout=600)
    code = ("import site, sys, os\n"
            f"sys.path.insert(0, {str(target)!r}); site.addsitedir({str(target)!r})\n"
            "print('EXT', os.environ['nnUNet_extTrainer'].split(os.pathsep)[-1])\n" + LOOKUP)
    out = _fresh_python(code, NNUNET_SEMI_NO_HOOK='')
    assert f'EXT {target / "nnunet_semi" / "_ext"}' in out, out
    assert 'FOUND nnunet_semi.trainers.mean_teacher nnUNetTrainerMeanTeacher' in out, out
