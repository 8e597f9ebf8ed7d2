"""``nnunet_semi``: small helper commands.

    nnunet_semi ext-path       the folder to put into nnUNet_extTrainer yourself (the installed start-up hook
                               does it for you unless NNUNET_SEMI_NO_HOOK=1)
    nnunet_semi small-plans    write nnUNetSmallPlans (fewer features, batch 2) for CPU runs
    nnunet_semi export         write a trained model as a stock nnU-Net model folder (predicts without the plugin)
    nnunet_semi overhead       time, FLOPs and memory of each semi trainer relative to stock nnUNetTrainer
    nnunet_semi curves         validation pseudo Dice per epoch of several trainings: one plot and a table
    nnunet_semi check-images   every NIfTI file of a raw dataset whole (a truncated .nii.gz reads as zeros)
"""
import argparse
import os

import nnunet_semi


def ext_path() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(nnunet_semi.__file__)), '_ext')


def main(argv=None):
    parser = argparse.ArgumentParser(prog='nnunet_semi', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--version', action='version', version=nnunet_semi.__version__)
    sub = parser.add_subparsers(dest='command', required=True)
    sub.add_parser('ext-path', help='print the trainer shim folder for nnUNet_extTrainer')
    small = sub.add_parser('small-plans', help='write small plans (fewer features, small batch) for CPU runs')
    small.add_argument('-d', required=True, help='dataset name or id')
    small.add_argument('-p', default='nnUNetPlans', help='source plans (default nnUNetPlans)')
    small.add_argument('-o', default='nnUNetSmallPlans', help='name of the plans written (default nnUNetSmallPlans)')
    small.add_argument('--features', type=int, nargs=2, default=(8, 64), metavar=('BASE', 'MAX'),
                       help='features of the first stage and the cap (default 8 64)')
    small.add_argument('--batch_size', type=int, default=2)
    export = sub.add_parser('export', help='write a model folder that stock nnU-Net predicts with, without nnunet_semi')
    export.add_argument('-d', required=True, help='dataset name or id')
    export.add_argument('-c', required=True, help='configuration, e.g. 3d_fullres')
    export.add_argument('-tr', required=True, help='trainer the model was trained with, e.g. nnUNetTrainerCAML')
    export.add_argument('-p', default='nnUNetPlans', help='plans (default nnUNetPlans)')
    export.add_argument('-f', nargs='+', default=None, help='folds (default: every fold with the checkpoint)')
    export.add_argument('--chk', default='checkpoint_final.pth', help='checkpoint to export (default final)')
    export.add_argument('-o', required=True, help='output model folder (for nnUNetv2_predict_from_modelfolder -m)')
    from nnunet_semi import overhead
    overhead.add_arguments(sub.add_parser('overhead', help='time, FLOPs and memory of semi trainers relative to stock',
                                          description=overhead.__doc__,
                                          formatter_class=argparse.RawDescriptionHelpFormatter))
    from nnunet_semi import curves
    curves.add_arguments(sub.add_parser('curves', help='validation pseudo Dice per epoch of several trainings',
                                        description=curves.__doc__,
                                        formatter_class=argparse.RawDescriptionHelpFormatter))
    from nnunet_semi.data import image_check
    image_check.add_arguments(sub.add_parser('check-images', help='check that no NIfTI file of a raw dataset is cut '
                                             'off', description=image_check.__doc__,
                                             formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    if args.command == 'ext-path':
        print(ext_path())
    elif args.command == 'small-plans':
        from nnunet_semi.planners.small_plans import write_small_plans
        print(write_small_plans(args.d, args.p, args.o, args.features[0], args.features[1], args.batch_size))
    elif args.command == 'export':
        from nnunet_semi.data.unlabeled import exit_on_data_error
        from nnunet_semi.export import export_stock_model
        with exit_on_data_error():
            for path in export_stock_model(args.d, args.c, args.tr, args.o, args.p, args.f, args.chk):
                print(path)
        print(f'Predict without nnunet_semi: nnUNetv2_predict_from_modelfolder -i INPUT -o OUTPUT -m {args.o}')
    elif args.command == 'overhead':
        overhead.run(args)
    elif args.command == 'curves':
        curves.run(args)
    elif args.command == 'check-images':
        image_check.run(args)


if __name__ == '__main__':
    main()
