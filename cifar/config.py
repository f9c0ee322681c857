"""Configs as dataclasses, their command lines and their files.

A config field is one line: ``lr: float = opt(0.02, "peak learning rate", group="recipe")``.
:func:`build_parser` turns each field into ``--field-name`` in ``argparse`` groups (a ``bool``
that is off by default is a plain switch; one that is on, or decided by the program, gets
``--x/--no-x``). :func:`parse_explicit` returns only the flags the user typed, so presets
(``--recipe``) and a config file fill the rest without overriding what was asked for. Config
files are YAML or JSON; a key the config does not have is refused with the nearest one.

Own code rather than jsonargparse (what LightningCLI uses): the jobs need per-field metadata it
does not carry (which settings a resumed run may change, which the program sets), presets layered
under typed flags, and credentials refused in URIs; the rest (groups, YAML, suggestions) is a few
lines here, without a dependency and its own command-line dialect.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
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
    flag: str | None = None,
    convert: Callable[[str], Any] | None = None,
    required: bool = False,
) -> Any:
    """A config field. ``resumable``: may change when a training run is resumed; ``cli=False``:
    set by the program, not a flag; ``flag``: its spelling on the command line where that is
    not ``--field-name`` (``--gpu`` for ``use_gpu``); ``convert``: parses the typed value
    (before ``choices`` are checked); ``required``: the command line must give it."""
    meta = {
        "required": required,
        "help": help,
        "choices": choices,
        "group": group,
        "resumable": resumable,
        "cli": cli,
        "metavar": metavar,
        "flag": flag,
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


class Parser(argparse.ArgumentParser):
    """argparse that answers a mistake in one line, with the nearest flag for a typo, instead
    of the whole usage."""

    def error(self, message: str) -> typing.NoReturn:
        unknown = re.match(r"unrecognized arguments: (.*)", message)
        if unknown:
            flags = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
            said = []
            for word in unknown[1].split():
                if not word.startswith("-"):
                    continue  # the value of an unknown flag
                near = difflib.get_close_matches(word.split("=")[0], flags, n=1, cutoff=0.6)
                said.append(f"{word} (did you mean {near[0]}?)" if near else word)
            message = f"unknown flag {', '.join(said) or unknown[1]}"
        self.exit(2, f"error: {message}. `{self.prog} --help` lists every flag.\n")


def flag_of(f: dataclasses.Field) -> str:
    """The command-line spelling of a config field."""
    return f.metadata.get("flag") or f"--{f.name.replace('_', '-')}"


def build_parser(
    cls: type, prog: str, description: str, epilog: str = ""
) -> argparse.ArgumentParser:
    p = Parser(
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
        if default not in (None, [], "", False):
            helptext += f" (default: {default})"
        kw: dict[str, Any] = {"help": helptext, "dest": f.name}
        if m.get("required"):
            kw["required"] = True
        if tp is bool:
            switch = "store_true" if default is False else argparse.BooleanOptionalAction
            target.add_argument(flag_of(f), action=switch, **kw)
            continue
        if m.get("choices"):
            kw["choices"] = m["choices"]
        if is_list:
            kw["action"] = "append"
        target.add_argument(flag_of(f), type=m.get("convert") or tp, metavar=m.get("metavar"), **kw)
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


def add_job_flags(parser: argparse.ArgumentParser) -> None:
    """Flags that steer a job but are not part of its config."""
    from cifar import __version__

    job = parser.add_argument_group("job")
    job.add_argument(
        "--dry-run",
        action="store_true",
        help="check the config, data, model, inputs and output, print the plan, start nothing",
    )
    job.add_argument(
        "--config",
        metavar="FILE",
        help="a YAML or JSON config (from --print-config, or a run's config.json); flags typed "
        "here win over it",
    )
    job.add_argument(
        "--print-config",
        action="store_true",
        help="print the complete config these flags make, as YAML that --config reads back",
    )
    job.add_argument("--version", action="version", version=f"%(prog)s {__version__}")


def read_config_file(path: str | None, cls: type) -> dict[str, Any]:
    """A config file (YAML or JSON, local path or URI) as a dict of ``cls``'s fields; {} without
    a path. A key ``cls`` does not have is refused, with the nearest one it does."""
    if not path:
        return {}
    import yaml

    from cifar.io import storage
    from cifar.io.faults import StorageError

    try:
        loaded = yaml.safe_load(storage.read_text(path))  # JSON is YAML too
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file.") from None
    except StorageError:
        raise  # the store, not the file: the job says so as such
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise ConfigError(f"--config {path} is not a readable YAML or JSON config ({e}).") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"--config {path} holds a {type(loaded).__name__}, not key: value pairs.")
    known = [f.name for f in dataclasses.fields(cls)]
    wrong = [k for k in loaded if k not in known and k not in LEGACY_KEYS]
    if wrong:
        said = []
        for k in wrong:
            near = difflib.get_close_matches(str(k), known, n=1, cutoff=0.6)
            said.append(f"{k!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
        raise ConfigError(
            f"--config {path}: unknown key(s) {', '.join(said)}. The keys are the flags' names "
            f"with _ for -; `--print-config` writes a complete config to start from."
        )
    return loaded


LEGACY_KEYS = ("amp",)  # keys earlier versions wrote into config.json, read as today's


def config_yaml(cfg: Any, leave_out: Sequence[str] = ()) -> str:
    """Every setting of ``cfg`` that a flag can set, as YAML (``--print-config``)."""
    import yaml

    values = {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(cfg)
        if f.metadata.get("cli") is not False and f.name not in leave_out
    }
    return yaml.safe_dump(values, sort_keys=False, default_flow_style=False)
