"""The Python API's one trick: ``from fkd_core import train, predict`` gives callable modules.

    >>> from fkd_core import TrialConfig, train, predict
    >>> summary = train(TrialConfig(max_epochs=2, synth_n=200))     # loads cfg.data itself
    >>> from fkd_core.train import train as train_trial             # the sweep's form, unchanged
    >>> train_trial(cfg, data, report)

``fkd_core.train`` and ``fkd_core.predict`` are modules that tests, the sweep and notebooks
import by those names (``from fkd_core import train as train_module``); a package attribute can
hold only one object, so the module itself is made callable (Python supports assigning a
ModuleType subclass to ``module.__class__``, "Customizing module attribute access" in the
language reference). The module keeps every attribute; calling it runs the function given here.
"""
from __future__ import annotations

import sys
import types
from typing import Any, Callable


def make_callable(module_name: str, function: Callable[..., Any]) -> None:
    """Calling the module ``module_name`` calls ``function`` (its docstring becomes the call's)."""
    module = sys.modules[module_name]
    kind = type(f"Callable{module_name.rpartition('.')[2].title()}Module", (types.ModuleType,),
                {"__call__": staticmethod(function), "__doc__": function.__doc__})
    module.__class__ = kind
