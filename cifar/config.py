"""Configs as dataclasses, their command lines, and the one error boundary every job shares.

A config field is one line: ``lr: float = opt(0.02, "peak learning rate", group="recipe")``.
:func:`build_parser` turns each field into ``--field-name`` (``bool`` fields get ``--x/--no-x``),
in ``argparse`` groups. :func:`parse_explicit` returns only the flags the user typed, so presets
(``--recipe``) fill the rest without overriding what was asked for.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """An impossible or inconsistent setting; the message says which and what to use instead."""


def opt(
    default: Any,
    help: str = "",
    *,
    choices: Sequence[Any] | None = None,
    group: str | None = None,
    resumable: bool = False,
    cli: bool = True,
    metavar: str | None = None,
    aliases: Sequence[str] = (),
    convert: Callable[[str], Any] | None = None,
) -> Any:
    """A config field. ``resumable``: may change when a training run is resumed; ``cli=False``:
    set by the program, not a flag; ``aliases``: other spellings; ``convert``: parses the typed
    value (before ``choices`` are checked)."""
    meta = {
        "help": help,
        "choices": choices,
        "group": group,
        "resumable": resumable,
        "cli": cli,
        "metavar": metavar,
        "aliases": tuple(aliases),
        "convert": convert,
    }
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class Config:
    """Base of the job configs: validation in one style, and a plain dict for JSON."""

    def checks(self) -> list[tuple[bool, str]]:
        """(condition that must hold, message when it does not)."""
        return []

    def validate(self) -> None:
        errors = [msg for ok, msg in self.checks() if not ok]
        if errors:
            raise ConfigError("; ".join(errors) + ".")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


def fields_where(cls: type, key: str) -> set[str]:
    """Names of the fields whose ``opt(...)`` set ``key`` (e.g. ``resumable``)."""
    return {f.name for f in dataclasses.fields(cls) if f.metadata.get(key)}


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(inner type, is_list) for ``X``, ``X | None``, ``list[X]``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    if origin is list:
        return typing.get_args(tp)[0], True
    return tp, False


def build_parser(
    cls: type, prog: str, description: str, epilog: str = ""
) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    groups: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        m = f.metadata
        if m.get("cli") is False:
            continue
        group = m.get("group")
        if group and group not in groups:
            groups[group] = p.add_argument_group(group)
        target = groups[group] if group else p
        tp, is_list = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        helptext = m.get("help", "")
        if default not in (None, [], ""):
            helptext += f" (default: {default})"
        names = [f"--{f.name.replace('_', '-')}", *m.get("aliases", ())]
        kw: dict[str, Any] = {"help": helptext, "dest": f.name}
        if tp is bool:
            target.add_argument(*names, action=argparse.BooleanOptionalAction, **kw)
            continue
        if m.get("choices"):
            kw["choices"] = m["choices"]
        if is_list:
            kw["action"] = "append"
        target.add_argument(*names, type=m.get("convert") or tp, metavar=m.get("metavar"), **kw)
    return p


def parse_explicit(parser: argparse.ArgumentParser, argv: list[str] | None) -> dict[str, Any]:
    """Only the options present on the command line."""
    return vars(parser.parse_args(argv))


def make_config(cls: type[T], *layers: dict[str, Any]) -> T:
    """Dataclass defaults, then each layer in turn (presets, then what the user typed);
    validated."""
    known = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for layer in layers:
        values.update({k: v for k, v in layer.items() if k in known})
    cfg = cls(**values)
    if isinstance(cfg, Config):
        cfg.validate()
    return cfg


def run_main(main: Callable[[], int | None], handled: tuple[type[BaseException], ...]) -> None:
    """Run a job's main; a known bad-input error becomes one clear paragraph and exit status 2
    (set CIFAR_RAY_DEBUG=1 for the traceback)."""
    try:
        code = main()
    except handled as e:
        if os.environ.get("CIFAR_RAY_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
