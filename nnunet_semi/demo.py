"""nnUNetv2_semi_demo: the whole workflow on a small generated dataset, in a folder of your choice.

Every step is printed as the command it runs, so the output doubles as a recipe for your own data:
stock planning and preprocessing, small plans for a CPU, unlabeled preprocessing, a short Mean Teacher training,
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


def _executable(name: str) -> str:
    """A console script of this environment, also when its bin folder is not on PATH."""
    here = join(os.path.dirname(sys.executable), name)
    return here if isfile(here) else (shutil.which(name) or name)


def _run(cmd, env):
    print(f'\n$ {" ".join(shlex.quote(c) for c in cmd)}', flush=True)
    start = time.time()
    subprocess.run([_executable(cmd[0])] + cmd[1:], env=env, check=True)
    print(f'  ({time.time() - start:.0f} s)', flush=True)


def run_demo(folder: str, dataset_id: int = 990, trainer: str = 'nnUNetTrainerMeanTeacher_smoke',
             device: str = None) -> dict:
    import torch

    from nnunet_semi.data.synthetic import make_synthetic_dataset

    folder = os.path.abspath(folder)
    env = dict(os.environ)
    env.update(nnUNet_raw=join(folder, 'nnUNet_raw'), nnUNet_preprocessed=join(folder, 'nnUNet_preprocessed'),
               nnUNet_results=join(folder, 'nnUNet_results'))
    # nnU-Net starts 8 export workers by default; on a small machine that costs more than the demo's predictions
    env.setdefault('nnUNet_def_n_proc', str(min(8, os.cpu_count() or 1)))
    for k in ('nnUNet_raw', 'nnUNet_preprocessed', 'nnUNet_results', 'nnUNet_def_n_proc'):
        if k != 'nnUNet_def_n_proc':
            maybe_mkdir_p(env[k])
        print(f'export {k}={env[k]}')
    plan_env = dict(env)
    if plan_env.get('nnUNet_n_proc_DA') == '0':  # stock planning crashes with 0 (torch.set_num_threads(0))
        del plan_env['nnUNet_n_proc_DA']
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    d, c, p = str(dataset_id), '3d_fullres', 'nnUNetSmallPlans'

    raw = make_synthetic_dataset(env['nnUNet_raw'], dataset_id)
    print(f'\nExample dataset written to {raw}: labeled cases in imagesTr/labelsTr, unlabeled images in '
          f'imagesUnlabeled/, test images in imagesTs/')
    steps = [
        (['nnUNetv2_plan_and_preprocess', '-d', d, '-c', c, '-np', '2', '--verify_dataset_integrity'], plan_env),
        (['nnunet_semi', 'small-plans', '-d', d, '-o', p], env),
        (['nnUNetv2_semi_preprocess', '-d', d, '-c', c, '-p', p, '-np', '2'], env),
        (['nnUNetv2_train', d, c, '0', '-tr', trainer, '-p', p, '-device', device], env),
        (['nnUNetv2_predict', '-i', join(raw, 'imagesTs'), '-o', join(folder, 'predictions'), '-d', d, '-c', c,
          '-tr', trainer, '-p', p, '-f', '0', '-device', device], env),
    ]
    for cmd, step_env in steps:
        _run(cmd, step_env)

    model = join(env['nnUNet_results'], f'Dataset{dataset_id:03d}_SemiDemo', f'{trainer}__{p}__{c}', 'fold_0')
    summary = load_json(join(model, 'validation', 'summary.json'))
    predictions = sorted(f for f in os.listdir(join(folder, 'predictions')) if f.endswith('.nii.gz'))
    print(f'\nDone. Model, training log and progress.png: {model}\n'
          f'Validation Dice (foreground mean, a few iterations only): {summary["foreground_mean"]["Dice"]:.3f}\n'
          f'Predictions of imagesTs: {join(folder, "predictions")} ({", ".join(predictions)})')
    return {'model_folder': model, 'summary': summary, 'predictions': predictions}


def main(argv=None):
    parser = argparse.ArgumentParser(prog='nnUNetv2_semi_demo', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('folder', nargs='?', default='nnunet_semi_demo',
                        help='where the demo writes nnUNet_raw, nnUNet_preprocessed, nnUNet_results and predictions '
                             '(default: ./nnunet_semi_demo)')
    parser.add_argument('-tr', default='nnUNetTrainerMeanTeacher_smoke', help='trainer to run')
    parser.add_argument('-device', default=None, help='cuda or cpu (default: cuda if available)')
    args = parser.parse_args(argv)
    try:
        run_demo(args.folder, trainer=args.tr, device=args.device)
    except subprocess.CalledProcessError as e:
        print(f'\nThe step above failed (exit code {e.returncode}).', file=sys.stderr)
        sys.exit(1)


if __name__ == '__main__':
    main()
