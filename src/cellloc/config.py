"""One dataclass per stage, filled from the command line and saved beside the run's outputs.

``parse_config(Config, argv)`` builds an argparse parser from the dataclass fields (their
``help`` metadata becomes ``--help`` text), so a script is: parse -> call the package -> report.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from .errors import InputError
from .fieldio import write_json

C = TypeVar("C")


def opt(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with help text for ``--help``. Lists/dicts get a factory."""
    meta = {"help": help, **kw}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(scalar type, is_list) for annotations like ``int``, ``str | None``, ``list[int]``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return (args[0] if args else str), True
    return tp, False


def build_parser(cls: type, description: str = "", positional: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """An argparse parser with one option per dataclass field (``--field-name``)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False:
            continue
        tp, is_list = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        choices = f.metadata.get("choices")
        if f.name in positional:
            parser.add_argument(f.name, type=tp, help=help_text, nargs="?" if default is not None else None, default=default)
            continue
        flag = "--" + f.name.replace("_", "-")
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif is_list:
            parser.add_argument(flag, type=tp, nargs="+", default=default, help=help_text, choices=choices)
        else:
            parser.add_argument(flag, type=tp, default=default, help=help_text, choices=choices)
    return parser


def parse_config(cls: type[C], argv: list[str] | None = None, description: str = "", positional: tuple[str, ...] = ()) -> C:
    """Parse ``argv`` into an instance of the dataclass ``cls`` (validated by its ``__post_init__``)."""
    ns = build_parser(cls, description, positional).parse_args(argv)
    try:
        return cls(**vars(ns))
    except (ValueError, TypeError) as exc:
        raise InputError(str(exc)) from None


def save_config(cfg: Any, path: str | Path) -> None:
    """Write a config as JSON so a result can be traced to the run that made it."""
    data = dataclasses.asdict(cfg)
    data["_config"] = type(cfg).__name__
    write_json(path, data)


def load_config(cls: type[C], path: str | Path) -> C:
    data = json.loads(Path(path).read_text())
    data.pop("_config", None)
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})
