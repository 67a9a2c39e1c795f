"""The data sets: one module (or package) per data set, each registering itself with the catalog
(:mod:`reprlab.platform.data.catalog`). Importing this package imports every module in it, so
adding a data set is adding a file here."""

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_") and _info.name != "listfiles":  # listfiles: shared parsing helpers
        importlib.import_module(f"{__name__}.{_info.name}")
