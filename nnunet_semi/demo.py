"""nnUNetv2_semi_demo: the whole workflow on a small generated dataset, in a folder of your choice.

Every step is printed as the command it runs, so the output doubles as a recipe for your own data:
stock planning and preprocessing, small plans for a CPU, unlabeled preprocessing, a short FixMatch training,
stock prediction. A few minutes on a CPU.
"""
import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time

from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json, maybe_mkdir_p

from nnunet_semi.planners.small_plans import SMALL_PLANS


def executable(name: str) -> str:
    """A console script of this environment, also when its bin folder is not on PATH."""
    here = join(os.path.dirname(sys.executable), name)
    return here if isfile(here) else (shutil.which(name) or name)


def _run(cmd, env, quiet: bool = False):
    """Run one step, printed as the command it is. quiet: keep its output, and show it only if it fails."""
    print(f'\n$ {" ".join(shlex.quote(str(c)) for c in cmd)}', flush=True)
    start = time.time()
    full = [executable(cmd[0])] + [str(c) for c in cmd[1:]]
    if quiet:
        p = subprocess.run(full, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if p.returncode != 0:
            print(p.stdout[-6000:])
            raise subprocess.CalledProcessError(p.returncode, full, p.stdout)
    else:
        subprocess.run(full, env=env, check=True)
    print(f'  ({time.time() - start:.0f} s)', flush=True)


def planning_env(env: dict) -> dict:
    """Stock planning crashes with nnUNet_n_proc_DA=0 (torch.set_num_threads(0) in its memory estimate): a copy of
    env without it."""
    return {k: v for k, v in env.items() if not (k == 'nnUNet_n_proc_DA' and v == '0')}


def example_env(folder: str) -> dict:
    """This process's environment with nnU-Net's three folders inside ``folder`` (created)."""
    folder = os.path.abspath(folder)
    env = dict(os.environ)
    for k in ('nnUNet_raw', 'nnUNet_preprocessed', 'nnUNet_results'):
        env[k] = join(folder, k)
        maybe_mkdir_p(env[k])
    # nnU-Net starts 8 export workers by default; on a small machine that costs more than the demo's predictions
    env.setdefault('nnUNet_def_n_proc', str(min(8, os.cpu_count() or 1)))
    return env


def prepare_example(env: dict, dataset_id: int = 990, configurations=('3d_fullres',), unlabeled: bool = True,
                    quiet: bool = False) -> str:
    """The synthetic dataset in env's nnUNet_raw, stock planning and preprocessing of ``configurations``,
    nnUNetSmallPlans and (``unlabeled``) the unlabeled images preprocessed with them. Returns the raw folder."""
    from nnunet_semi.data.synthetic import make_synthetic_dataset

    raw = make_synthetic_dataset(env['nnUNet_raw'], dataset_id)
    print(f'\nExample dataset written to {raw}: labeled cases in imagesTr/labelsTr, unlabeled images in '
          f'imagesUnlabeled/, test images in imagesTs/')
    d = str(dataset_id)
    _run(['nnUNetv2_plan_and_preprocess', '-d', d, '-c', *configurations, '-np', '2', '--verify_dataset_integrity'],
         planning_env(env), quiet)
    _run(['nnunet_semi', 'small-plans', '-d', d, '-o', SMALL_PLANS], env, quiet)
    if unlabeled:
        _run(['nnUNetv2_semi_preprocess', '-d', d, '-c', *configurations, '-p', SMALL_PLANS, '-np', '2'], env, quiet)
    return raw


def run_demo(folder: str, dataset_id: int = 990, trainer: str = 'nnUNetTrainerFixMatch_smoke',
             device: str = None) -> dict:
    import torch

    env = example_env(folder)
    for k in ('nnUNet_raw', 'nnUNet_preprocessed', 'nnUNet_results', 'nnUNet_def_n_proc'):
        print(f'export {k}={env[k]}')
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    d, c, p = str(dataset_id), '3d_fullres', SMALL_PLANS
    raw = prepare_example(env, dataset_id, (c,))
    _run(['nnUNetv2_train', d, c, '0', '-tr', trainer, '-p', p, '-device', device], env)
    predictions_folder = join(os.path.abspath(folder), 'predictions')
    _run(['nnUNetv2_predict', '-i', join(raw, 'imagesTs'), '-o', predictions_folder, '-d', d, '-c', c, '-tr', trainer,
          '-p', p, '-f', '0', '-device', device], env)

    model = join(env['nnUNet_results'], f'Dataset{dataset_id:03d}_SemiDemo', f'{trainer}__{p}__{c}', 'fold_0')
    summary = load_json(join(model, 'validation', 'summary.json'))
    predictions = sorted(f for f in os.listdir(predictions_folder) if f.endswith('.nii.gz'))
    print(f'\nDone. Model, training log and progress.png: {model}\n'
          f'Validation Dice (foreground mean, a few iterations only): {summary["foreground_mean"]["Dice"]:.3f}\n'
          f'Predictions of imagesTs: {predictions_folder} ({", ".join(predictions)})')
    return {'model_folder': model, 'summary': summary, 'predictions': predictions}


def main(argv=None):
    parser = argparse.ArgumentParser(prog='nnUNetv2_semi_demo', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('folder', nargs='?', default='nnunet_semi_demo',
                        help='where the demo writes nnUNet_raw, nnUNet_preprocessed, nnUNet_results and predictions '
                             '(default: ./nnunet_semi_demo)')
    parser.add_argument('-tr', default='nnUNetTrainerFixMatch_smoke', help='trainer to run')
    parser.add_argument('-device', default=None, help='cuda or cpu (default: cuda if available)')
    args = parser.parse_args(argv)
    try:
        run_demo(args.folder, trainer=args.tr, device=args.device)
    except subprocess.CalledProcessError as e:
        print(f'\nThe step above failed (exit code {e.returncode}).', file=sys.stderr)
        sys.exit(1)


if __name__ == '__main__':
    main()
