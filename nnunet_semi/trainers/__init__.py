"""The public trainers (DESIGN.md), found by nnU-Net through the shim in nnunet_semi/_ext.

Every module of this package is imported, and every name in its ``__all__`` is exported: a method file with an
``__all__`` is all it takes to add a trainer (docs/writing_a_method.md). Modules without ``__all__`` (the base's
helpers) export nothing.
"""
import importlib
import pkgutil

__all__ = []
for _module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    _module = importlib.import_module(f'{__name__}.{_module_info.name}')
    for _name in getattr(_module, '__all__', ()):
        globals()[_name] = getattr(_module, _name)
        __all__.append(_name)
