"""Configs as dataclasses, their command lines, and the one error boundary every job shares.

A config field is one line: ``lr: float = opt(0.02, "peak learning rate", group="recipe")``.
:func:`build_parser` turns each field into ``--field-name`` (``bool`` fields get ``--x/--no-x``),
in ``argparse`` groups. :func:`parse_explicit` returns only the flags the user typed, so presets
(``--recipe``) fill the rest without overriding what was asked for.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


# seconds a job may make no progress (waiting for resources included) before it ends, saying
# what it waited for (--stall-timeout of every job)
STALL_TIMEOUT_S = 600.0


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
    required: bool = False,
) -> Any:
    """A config field. ``resumable``: may change when a training run is resumed; ``cli=False``:
    set by the program, not a flag; ``aliases``: other spellings (``--gpu`` for a bool also
    gives ``--no-gpu``); ``convert``: parses the typed value (before ``choices`` are checked);
    ``required``: the command line must give it."""
    meta = {
        "required": required,
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
        allow_abbrev=False,  # a new flag must never change what an old script's flags mean
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
        if m.get("required"):
            kw["required"] = True
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
    for k, v in values.items():
        for item in v if isinstance(v, list | tuple) else [v]:
            if isinstance(item, str):
                refuse_credentials(k, item)
    cfg = cls(**values)
    if isinstance(cfg, Config):
        cfg.validate()
    return cfg


_CREDENTIALS_IN_URI = re.compile(
    r"^[a-z][\w+.-]*://[^/@]*@|[?&](access_key|secret_key|session_token)=", re.IGNORECASE
)


def refuse_credentials(field: str, value: str) -> None:
    """A URI with a key or token in it would be written into config.json, summary.json and the
    logs: refused (before anything is written) with where credentials go instead."""
    if _CREDENTIALS_IN_URI.search(value):
        raise ConfigError(
            f"--{field.replace('_', '-')}: the URI carries credentials (user:key@ or a key "
            "parameter). They would be saved with the run and printed in its log, so it was "
            "refused. Give credentials through the standard AWS environment instead: "
            "AWS_PROFILE / ~/.aws/credentials, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
            "the node's instance profile; AWS_ENDPOINT_URL for an S3-compatible server."
        )


def add_job_flags(parser: argparse.ArgumentParser, saved_config: bool = False) -> None:
    """Flags that steer a job but are not part of its config: --dry-run (and --config)."""
    job = parser.add_argument_group("job")
    job.add_argument(
        "--dry-run",
        action="store_true",
        help="check the config, data, model, inputs and output, print the plan, start nothing",
    )
    if saved_config:
        job.add_argument(
            "--config",
            metavar="CONFIG_JSON",
            help="start from a run's saved config.json (flags typed here win over it)",
        )


def read_saved_config(path: str | None) -> dict[str, Any]:
    """A saved ``config.json`` (local path or URI) as a dict; {} without a path."""
    if not path:
        return {}
    import json

    from cifar.io import storage
    from cifar.io.faults import StorageError

    try:
        return json.loads(storage.read_text(path))
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file. Pass a run's config.json.") from None
    except StorageError:
        raise  # the store, not the file: the job says so as such
    except (OSError, ValueError) as e:
        raise ConfigError(f"--config {path} is not a readable JSON config ({e}).") from None
