"""Configs as data: one dataclass per stage, filled from a file and the command line, saved with the run.

``parse_config(Config, argv)`` builds an argparse parser from the dataclass fields (their
``help`` metadata becomes ``--help`` text) and adds ``--config FILE``: a YAML or JSON file of
the same fields. Values come from the dataclass defaults, then the file, then the flags given
on the command line (the last wins). ``save_config`` writes the resolved config as JSON beside
a run's outputs, and that file is itself a valid ``--config``: ``python src/train.py --config
models/effb2/fold0/config.json`` re-runs the run as it was.
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
CONFIG_KEY = "_config"  # the class name save_config records, so a file for another stage is refused


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


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def build_parser(cls: type, description: str = "", positional: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """An argparse parser with one option per dataclass field (``--field-name``) and ``--config FILE``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False:
            continue
        tp, is_list = _base_type(hints[f.name])
        default = _default(f)
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
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="YAML or JSON file of these options (e.g. a run's saved config); flags given here override it")
    return parser


def _coerce(value: Any, tp: Any, is_list: bool, where: str) -> Any:
    """A config-file value checked (and, for numbers, converted) against a field's type."""
    if is_list:
        if not isinstance(value, list):
            raise InputError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, tp, False, where) for v in value]
    if value is None:
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise InputError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise InputError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):
                try:
                    return float(value)  # YAML 1.1 reads 1e-3 as a string
                except ValueError:
                    pass
            raise InputError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)):
            raise InputError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def read_config_file(path: str | Path, cls: type) -> dict[str, Any]:
    """The options a YAML or JSON config file sets, checked against ``cls``'s fields.

    Unknown keys and values of the wrong type are one-line errors naming the file and key; a file
    saved by another stage (its ``_config`` names another class) is refused.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read config file ({exc})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InputError(f"{path}: not valid JSON ({' '.join(str(exc).split())})") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise InputError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: a config file holds a mapping of option names to values, got {type(data).__name__}")
    recorded = data.pop(CONFIG_KEY, None)
    if recorded is None and path.name == "recipe.json" and "in_chans" in data:
        raise InputError(f"{path}: is a model's recipe (what inference needs), not a {cls.__name__}; "
                         "a run's training options are in the config.json beside it")
    if recorded is not None and recorded != cls.__name__:
        raise InputError(f"{path}: is a {recorded} (another stage's config), not a {cls.__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("cli") is not False}
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            raise InputError(f"{path}: unknown option {key!r} for {cls.__name__} (known: {', '.join(fields)})")
        tp, is_list = _base_type(hints[name])
        out[name] = _coerce(value, tp, is_list, f"{path}: {key}")
    return out


def parse_config(cls: type[C], argv: list[str] | None = None, description: str = "", positional: tuple[str, ...] = ()) -> C:
    """Parse ``argv`` (and the ``--config FILE`` it names) into a ``cls`` validated by its ``__post_init__``."""
    parser = build_parser(cls, description, positional)
    pre, _ = parser.parse_known_args(argv)
    from_file = read_config_file(pre.config, cls) if pre.config else {}
    parser.set_defaults(**from_file)
    ns = vars(parser.parse_args(argv))
    ns.pop("config")
    if from_file.get("task") and ns.get("task") and ns["task"] != from_file["task"]:
        # a task's settings (loss, classes, channels) do not carry over to another task
        raise InputError(f"{pre.config}: a config of task {from_file['task']}, not {ns['task']}; "
                         f"drop --task {ns['task']}, or pass a config of {ns['task']}")
    try:
        return cls(**ns)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{exc} (options from {pre.config} and the command line)" if pre.config else str(exc)) from None


def config_dict(cfg: Any) -> dict[str, Any]:
    """A config as a JSON-ready dict, with ``_config`` naming its class (what :func:`save_config` writes).

    Fields marked ``opt(..., saved=False)`` (what one command does, like ``--overwrite``, not how
    the run is made) are left out, so re-running a saved config never repeats them.
    """
    data = dataclasses.asdict(cfg)
    for f in dataclasses.fields(cfg):
        if f.metadata.get("saved") is False:
            data.pop(f.name, None)
    data[CONFIG_KEY] = type(cfg).__name__
    return data


def save_config(cfg: Any, path: str | Path) -> None:
    """Write a config as JSON, so a result can be traced to (and re-run from) the run that made it."""
    write_json(path, config_dict(cfg))


def load_config(cls: type[C], path: str | Path) -> C:
    """A saved config file read back into ``cls`` (same checks as ``--config``)."""
    try:
        return cls(**read_config_file(path, cls))
    except (ValueError, TypeError) as exc:
        raise InputError(f"{path}: {exc}") from None
