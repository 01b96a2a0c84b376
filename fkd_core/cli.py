"""Command-line flags generated from TrialConfig: one per field, help from the field's docstring.

    python -m fkd_core.train --help          # every field, its choices and its default

    >>> p = argparse.ArgumentParser()
    >>> add_config_flags(p, skip={"max_epochs"})
    >>> fields = config_values(p.parse_args(["--dropout", "0.2"]))   # {"dropout": 0.2}

A generated flag is ``--field-name``; its default is None ("not given"), so that a recipe's value
holds unless the flag is given, and the help text shows TrialConfig's default instead. A bool
field is ``--name`` / ``--no-name``; a Literal field shows its choices (TrialConfig rejects
others, in the one-line error the Python API gives). The docstrings are read
from config.py's source with ``ast``: a string right under a field is that field's help, the
same text a reader of the class sees.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
from typing import Any, Literal, get_args, get_origin, get_type_hints

from fkd_core import config
from fkd_core.config import TrialConfig


@functools.cache
def field_docs() -> dict[str, str]:
    """TrialConfig field -> its docstring, whitespace collapsed to one paragraph."""
    tree = ast.parse(inspect.getsource(config))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == TrialConfig.__name__)
    docs = {}
    for field, doc in zip(cls.body, cls.body[1:]):
        if (isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name)
                and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
                and isinstance(doc.value.value, str)):
            docs[field.target.id] = " ".join(doc.value.value.split())
    return docs


def _flag_type(hint: Any) -> tuple[type, tuple[str, ...] | None]:
    """(argparse type, choices) of a field's annotation: a Literal's values are its choices."""
    if get_origin(hint) is Literal:
        return str, get_args(hint)
    args = [a for a in get_args(hint) if a is not type(None)]   # "float | None" -> float
    return (args[0] if args else hint), None


def flag_help(name: str, default: Any) -> str:
    """The field's docstring and its default, escaped for argparse's %-formatting."""
    shown = "None: see above" if default is None else repr(default) if isinstance(default, str) else default
    return f"{field_docs().get(name, name)} (default: {shown})".replace("%", "%%")


def add_config_flags(parser: argparse.ArgumentParser, skip: set[str] = frozenset()) -> None:
    """A flag for every TrialConfig field not in ``skip`` (those the caller spells itself)."""
    hints = get_type_hints(TrialConfig)
    group = parser.add_argument_group("TrialConfig fields (fkd_core/config.py)")
    for f in dataclasses.fields(TrialConfig):
        if f.name in skip:
            continue
        kind, choices = _flag_type(hints[f.name])
        flag, help_text = f"--{f.name.replace('_', '-')}", flag_help(f.name, f.default)
        if kind is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        else:
            # The choices are shown, not enforced: TrialConfig checks them with the same one-line
            # error the Python API gives, so the two cannot word it differently.
            metavar = f.name.upper() if choices is None else "{" + ",".join(choices) + "}"
            group.add_argument(flag, dest=f.name, type=kind, default=None, metavar=metavar, help=help_text)


def config_values(args: argparse.Namespace) -> dict[str, Any]:
    """The TrialConfig fields the command line gave (generated flags left at None are not)."""
    names = {f.name for f in dataclasses.fields(TrialConfig)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}
