"""Export a semi-supervised model as a stock nnU-Net model folder, for machines without nnunet_semi.

Most trainers of this package deploy ``self.network``, a plain network of the plans. The export copies the model
folder's dataset.json, plans.json and dataset_fingerprint.json, and writes each fold's checkpoint with the trainer
name set to ``nnUNetTrainer`` and without the ``nnunet_semi`` training state (second networks, memory banks,
optimizers). Stock nnU-Net then predicts with it:

    nnunet_semi export -d 501 -c 3d_fullres -tr nnUNetTrainerCAML -o /models/caml_stock
    nnUNetv2_predict_from_modelfolder -i in -o out -m /models/caml_stock -f 0
"""
import os
import shutil
from typing import Optional, Sequence

import torch

from nnunet_semi.data.unlabeled import UnlabeledDataError

KEEP = ('network_weights', 'init_args', 'current_epoch', 'inference_allowed_mirroring_axes')


class ExportError(UnlabeledDataError):
    """A model folder or checkpoint that cannot be exported; the message names it and the fix."""


def export_stock_model(dataset: str, configuration: str, trainer: str, output: str, plans: str = 'nnUNetPlans',
                       folds: Optional[Sequence[str]] = None, checkpoint: str = 'checkpoint_final.pth') -> list:
    """Write the stock model folder ``output``; returns the checkpoint files written."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    import nnunet_semi.trainers

    trainer_class = getattr(nnunet_semi.trainers, trainer, None)
    if trainer_class is not None and \
            trainer_class.build_network_architecture != nnUNetTrainer.build_network_architecture:
        raise ExportError(f'{trainer} deploys a network of its own (not a network of the plans), which stock nnU-Net '
                          f'cannot build: predict with nnUNetv2_predict -tr {trainer} where nnunet_semi is installed.')
    source = get_output_folder(maybe_convert_to_dataset_name(dataset), trainer, plans, configuration)
    if not os.path.isdir(source):
        raise ExportError(f'{source} does not exist: train {trainer} ({plans}, {configuration}) first, or check -tr, '
                          f'-p and -c.')
    if folds is None:
        folds = sorted(f[len('fold_'):] for f in os.listdir(source)
                       if f.startswith('fold_') and os.path.isfile(os.path.join(source, f, checkpoint)))
    if not folds:
        raise ExportError(f'no fold_*/{checkpoint} in {source}: training has not finished (use --chk '
                          f'checkpoint_best.pth or checkpoint_latest.pth to export an unfinished run).')
    written = []
    for fold in folds:
        target = os.path.join(output, f'fold_{fold}', 'checkpoint_final.pth')
        if os.path.exists(target):
            raise ExportError(f'{target} exists already; choose another -o or remove it.')
        path = os.path.join(source, f'fold_{fold}', checkpoint)
        if not os.path.isfile(path):
            raise ExportError(f'{path} does not exist: fold {fold} has not been trained to this checkpoint.')
        saved = torch.load(path, map_location='cpu', weights_only=False)
        stock = {k: saved[k] for k in KEEP if k in saved}
        stock['trainer_name'] = 'nnUNetTrainer'
        os.makedirs(os.path.dirname(target), exist_ok=True)
        torch.save(stock, target)
        written.append(target)
    for name in ('dataset.json', 'plans.json', 'dataset_fingerprint.json'):
        if os.path.isfile(os.path.join(source, name)):
            shutil.copy(os.path.join(source, name), os.path.join(output, name))
    return written
