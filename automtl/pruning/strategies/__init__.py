"""The pruning strategies, one module each, named as the strategy it registers.

Every module of this package is imported here, so a strategy registers itself
(``@register`` in :mod:`automtl.pruning.registry`) just by being added.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
