"""Dataclass config -> argparse CLI, and the one error boundary every job shares.

Each config field becomes ``--field-name``; its ``metadata`` may give ``help``, ``choices``,
``flag`` (other spellings) and ``positional``. ``bool`` fields get ``--x/--no-x``. Only flags the
user actually typed are returned by :func:`parse_explicit`, so presets (``--recipe``) can fill the
rest without overriding what was asked for.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """An impossible or inconsistent setting; the message says which and what to use instead."""


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
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False:
            continue
        tp, is_list = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        helptext = f.metadata.get("help", "")
        if default not in (None, [], ""):
            helptext += f" (default: {default})"
        names = [f"--{f.name.replace('_', '-')}", *f.metadata.get("flag", ())]
        kw: dict[str, Any] = {"help": helptext, "dest": f.name}
        if f.metadata.get("positional"):
            p.add_argument(f.name, nargs="+" if is_list else None, type=tp, help=helptext)
            continue
        if tp is bool:
            p.add_argument(*names, action=argparse.BooleanOptionalAction, **kw)
            continue
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if is_list:
            kw["action"] = "append"
        p.add_argument(*names, type=tp, metavar=f.metadata.get("metavar"), **kw)
    return p


def parse_explicit(parser: argparse.ArgumentParser, argv: list[str] | None) -> dict[str, Any]:
    """Only the options present on the command line."""
    return vars(parser.parse_args(argv))


def make_config(cls: type[T], values: dict[str, Any]) -> T:
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in known})


def run_main(main: Callable[[], int | None], handled: tuple[type[BaseException], ...]) -> None:
    """Run a job's main; a known bad-input error becomes one clear paragraph and exit status 2
    (set CIFAR_RAY_DEBUG=1 for the traceback)."""
    import os

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
