"""nnunet_semi: semi-supervised trainers for an unmodified nnU-Net v2.

Besides the package, the wheel carries a start-up hook, ``nnunet_semi.pth``, at the top of site-packages. Python
runs its single line at interpreter start: it appends the package's shim folder (``nnunet_semi/_ext``) to
``nnUNet_extTrainer`` so that ``nnUNetv2_train -tr nnUNetTrainerMeanTeacher`` finds the trainer with no variable set
by hand. The line imports nothing but ``os``; ``NNUNET_SEMI_NO_HOOK=1`` switches it off.
"""
import os
import re

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PTH_NAME = 'nnunet_semi.pth'


def hook_line(ext_dir_expr: str) -> str:
    """The one line of the .pth file. ``ext_dir_expr`` evaluates to the shim folder (inside a .pth line, ``sitedir``
    is the site-packages folder that holds the file). An existing nnUNet_extTrainer is kept and the folder appended."""
    return ("import os; d = %s; v = [p for p in os.environ.get('nnUNet_extTrainer', '').split(os.pathsep) if p]; "
            "os.environ.get('NNUNET_SEMI_NO_HOOK') == '1' or not os.path.isdir(d) or d in v or "
            "os.environ.__setitem__('nnUNet_extTrainer', os.pathsep.join(v + [d]))\n" % ext_dir_expr)


class build_py_with_hook(build_py):
    """Writes nnunet_semi.pth next to the package in the build tree, so it lands at the top of site-packages.

    A regular wheel points the hook at ``sitedir/nnunet_semi/_ext``; an editable install (PEP 660) points it at this
    source tree, where the package lives."""

    def run(self):
        super().run()
        if getattr(self, 'editable_mode', False):
            # PEP 660: setuptools points the install command at the unpacked editable wheel; what lands there is
            # installed at the top of site-packages, and the package itself stays in this source tree.
            expr = repr(os.path.join(HERE, 'nnunet_semi', '_ext'))
            target_dir = self.distribution.get_command_obj('install').install_lib
        else:
            expr = "os.path.join(sitedir, 'nnunet_semi', '_ext')"
            target_dir = self.build_lib
        os.makedirs(target_dir, exist_ok=True)
        with open(os.path.join(target_dir, PTH_NAME), 'w') as f:
            f.write(hook_line(expr))

    def get_outputs(self, include_bytecode=1):
        outputs = super().get_outputs(include_bytecode)
        if not getattr(self, 'editable_mode', False):
            outputs.append(os.path.join(self.build_lib, PTH_NAME))
        return outputs


with open(os.path.join(HERE, 'nnunet_semi', '__init__.py')) as f:
    version = re.search(r"__version__ = '([^']+)'", f.read()).group(1)

setup(
    name='nnunet-semi',
    version=version,
    description='Semi-supervised learning for an unmodified nnU-Net v2: unlabeled data, Mean Teacher and more',
    long_description=open(os.path.join(HERE, 'README.md')).read() if os.path.isfile(os.path.join(HERE, 'README.md')) else '',
    long_description_content_type='text/markdown',
    packages=find_packages(include=['nnunet_semi', 'nnunet_semi.*']),
    python_requires='>=3.10',
    install_requires=['nnunetv2>=2.8,<2.9'],
    extras_require={'test': ['pytest', 'pytest-xdist']},
    cmdclass={'build_py': build_py_with_hook},
    entry_points={'console_scripts': [
        'nnunet_semi=nnunet_semi.cli:main',
        'nnUNetv2_semi_preprocess=nnunet_semi.data.preprocess:main',
        'nnUNetv2_semi_split=nnunet_semi.data.split:main',
        'nnUNetv2_semi_plan_and_preprocess=nnunet_semi.planners.semi_planner:main',
        'nnUNetv2_semi_demo=nnunet_semi.demo:main',
        'nnUNetv2_semi_benchmark=nnunet_semi.benchmark:main',
    ]},
)
