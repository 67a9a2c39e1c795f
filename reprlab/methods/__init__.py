"""Methods, one module each; importing this package imports (and so registers) every module in it,
so adding a method is adding a file here."""

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
