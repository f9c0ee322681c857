"""The search space of a sweep: which settings of the training recipe each trial draws, and from
what. Typed as ``--search lr=loguniform:0.001:0.3 --search batch_size=choice:16,32,64`` or as a
YAML/JSON file of ``name: spec`` lines; checked against the recipe group of
:class:`cifar.train.config.TrainConfig` before anything starts, each mistake as one line that
names the fix. Pure Python: Ray Tune's domains are made only in :meth:`Param.domain`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass
from typing import Any

from cifar.config import ConfigError, _base_type
from cifar.train.config import BATCH_RANGE, TrainConfig

KINDS = ("loguniform", "uniform", "randint", "choice")
FORMS = "loguniform:LO:HI, uniform:LO:HI, randint:LO:HI (both ends included) or choice:A,B,..."
# recipe settings a trial cannot draw: what to do instead
NOT_SEARCHED = {
    "epochs": "--epochs is the most a trial runs (ASHA stops the trailing ones earlier)",
    "recipe": "a preset, not a setting: start the sweep from one with --recipe, and search the "
    "settings it sets",
}
TRUE, FALSE = ("true", "on", "yes", "1"), ("false", "off", "no", "0")


@dataclass(frozen=True)
class Param:
    """One searched setting: ``kind`` and its ``values`` ((low, high) for a range, both ends
    included for randint; the options for choice)."""

    name: str
    kind: str
    values: tuple[Any, ...]

    @property
    def spec(self) -> str:
        """As typed after ``NAME=`` (what sweep.json records and a resume compares)."""
        sep = "," if self.kind == "choice" else ":"
        return f"{self.kind}:{sep.join(value_text(v) for v in self.values)}"

    def text(self) -> str:
        """For people: ``loguniform 0.001 .. 0.3``, ``one of 16, 32, 64``."""
        if self.kind == "choice":
            return "one of " + ", ".join(value_text(v) for v in self.values)
        lo, hi = self.values
        what = {"randint": "integer"}.get(self.kind, self.kind)
        return f"{what} {value_text(lo)} .. {value_text(hi)}"

    def holds(self, value: Any) -> bool:
        """Whether a trial could draw ``value``."""
        if self.kind == "choice":
            return value in self.values
        lo, hi = self.values
        return value is not None and lo <= value <= hi

    def domain(self):
        """Ray Tune's sampler for this setting."""
        from ray import tune

        if self.kind == "choice":
            return tune.choice(list(self.values))
        lo, hi = self.values
        if self.kind == "randint":
            return tune.randint(lo, hi + 1)  # Tune's upper end is left out
        return getattr(tune, self.kind)(lo, hi)


Space = tuple[Param, ...]


def searchable() -> list[str]:
    """The recipe settings a trial may draw, in the order --help lists them."""
    return [
        f.name
        for f in dataclasses.fields(TrainConfig)
        if f.metadata.get("group") == "recipe" and f.name not in NOT_SEARCHED
    ]


def parse_space(entries: list[str], base: TrainConfig) -> Space:
    """``--search`` entries (``NAME=SPEC``, or a YAML/JSON file of them) -> the space, each
    setting checked against the training config ``base`` (its other flags)."""
    params: list[Param] = []
    for entry in entries:
        if "=" in entry:
            name, _, spec = entry.partition("=")
            found = [parse_param(name.strip(), spec.strip(), base)]
        else:
            found = read_space_file(entry, base)
        for p in found:
            if any(q.name == p.name for q in params):
                raise ConfigError(f"--search {p.name} is given twice: keep one of them.")
            params.append(p)
    return tuple(params)


def read_space_file(path: str, base: TrainConfig) -> list[Param]:
    """A YAML or JSON mapping ``name: spec`` (a spec string, or a list for a choice)."""
    import yaml

    from cifar.io import storage
    from cifar.io.faults import StorageError

    try:
        loaded = yaml.safe_load(storage.read_text(path))
    except FileNotFoundError:
        raise ConfigError(
            f"--search {path}: no such file (a setting is NAME=SPEC, e.g. "
            "lr=loguniform:0.001:0.3; anything else is read as a YAML/JSON file)."
        ) from None
    except StorageError:
        raise
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise ConfigError(f"--search {path} is not a readable YAML or JSON file ({e}).") from None
    if not isinstance(loaded, dict) or not loaded:
        raise ConfigError(
            f"--search {path}: expected lines of NAME: SPEC (e.g. lr: loguniform:0.001:0.3, "
            "batch_size: [16, 32, 64]), found no such mapping."
        )
    params = []
    for name, spec in loaded.items():
        if isinstance(spec, list):
            spec = "choice:" + ",".join(value_text(v) for v in spec)
        params.append(parse_param(str(name), str(spec), base, where=f"{path}: "))
    return params


def parse_param(name: str, spec: str, base: TrainConfig, where: str = "") -> Param:
    """One setting: its name checked, its spec parsed for the setting's type, and the values at
    the ends of the range (or every option) checked as the training job checks its flags."""
    said = f"--search {where}{name}={spec}"
    kind_type = _setting_type(name, said)
    kind, colon, rest = spec.partition(":")
    if not colon or kind not in KINDS:
        flag = f"--{name.replace('_', '-')} {spec}"
        fixed = f" (a fixed value is a flag: {flag})" if spec and not colon else ""
        raise ConfigError(f"{said}: say how to draw it: {FORMS}{fixed}.")
    if kind == "choice":
        values = tuple(_value(v.strip(), kind_type, name, said) for v in rest.split(","))
        if len(set(values)) < 2:
            raise ConfigError(f"{said}: a choice needs two different options at least.")
        _check_choices(name, values, said)
    else:
        values = _range(kind, rest, kind_type, name, said)
    for v in values:
        errors = [msg for ok, msg in dataclasses.replace(base, **{name: v}).checks() if not ok]
        if errors:
            raise ConfigError(f"{said}: {errors[0]}.")
    return Param(name, kind, values)


def _setting_type(name: str, said: str) -> type:
    if name in NOT_SEARCHED:
        raise ConfigError(f"{said}: {name} is not searched: {NOT_SEARCHED[name]}.")
    names = searchable()
    if name not in names:
        near = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        hint = f"did you mean {near[0]}? " if near else ""
        raise ConfigError(
            f"{said}: {hint}a sweep searches the training recipe's settings: {', '.join(names)} "
            "(any other flag is one value for every trial)."
        )
    tp, _ = _base_type(typing.get_type_hints(TrainConfig)[name])
    return tp


def _range(kind: str, rest: str, tp: type, name: str, said: str) -> tuple[Any, Any]:
    if tp not in (int, float):
        raise ConfigError(f"{said}: {name} takes named values: choice:A,B.")
    if tp is int and kind != "randint":
        raise ConfigError(f"{said}: {name} is a whole number: randint:LO:HI or choice:A,B,...")
    if tp is float and kind == "randint":
        raise ConfigError(f"{said}: {name} is not a whole number: uniform:LO:HI or loguniform.")
    parts = rest.split(":")
    if len(parts) != 2:
        raise ConfigError(f"{said}: a range is {kind}:LO:HI, e.g. {kind}:{_example(kind)}.")
    lo, hi = (_value(p.strip(), tp, name, said) for p in parts)
    if not lo < hi:
        raise ConfigError(f"{said}: LO must be below HI ({kind}:LO:HI).")
    if kind == "loguniform" and lo <= 0:
        raise ConfigError(f"{said}: loguniform needs LO > 0 (or draw it with uniform:LO:HI).")
    return lo, hi


def _value(text: str, tp: type, name: str, said: str) -> Any:
    try:
        if tp is bool:
            if text.lower() not in TRUE + FALSE:
                raise ValueError(text)
            return text.lower() in TRUE
        value = tp(text)
    except ValueError:
        kind = {bool: "true or false", int: "a whole number", float: "a number"}.get(tp, "a word")
        raise ConfigError(f"{said}: {text!r} is not {kind}, as {name} takes.") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{said}: {text!r} is not a finite number.")
    return value


def _check_choices(name: str, values: tuple[Any, ...], said: str) -> None:
    field = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
    allowed = field.metadata.get("choices")
    wrong = [v for v in values if allowed and v not in allowed]
    if wrong:
        raise ConfigError(f"{said}: {name} is one of {', '.join(allowed)} (not {wrong[0]}).")


def _example(kind: str) -> str:
    return {"loguniform": "0.001:0.3", "uniform": "0:0.2", "randint": "0:9"}[kind]


def value_text(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    return f"{v:g}" if isinstance(v, float) else str(v)


# --------------------------------------------------------------------------- the default space


def default_space(cfg: TrainConfig) -> Space:
    """What a sweep searches without ``--search``, around ``cfg``'s recipe (resolved for the
    data): lr from a third to three times its own, its global batch halved, kept or doubled,
    weight decay from a tenth to ten times its own."""
    batch = cfg.batch_size
    batches = sorted(
        {
            min(max(b, BATCH_RANGE[0], cfg.worker_range[1]), BATCH_RANGE[1])
            for b in (batch // 2, batch, batch * 2)
        }
    )
    decay = cfg.weight_decay or 5e-4
    params = [
        Param("lr", "loguniform", (_round(cfg.lr / 3), _round(cfg.lr * 3))),
        Param("batch_size", "choice", tuple(batches)) if len(batches) > 1 else None,
        Param("weight_decay", "loguniform", (_round(decay / 10), _round(decay * 10))),
    ]
    return tuple(p for p in params if p is not None)


def default_point(space: Space, cfg: TrainConfig) -> dict[str, Any] | None:
    """The default recipe's values of the searched settings (``cfg`` resolved for the data),
    when the space holds every one of them: the sweep's first trial, so that its best is never
    below the default (None otherwise)."""
    point = {p.name: getattr(cfg, p.name) for p in space}
    return point if all(p.holds(point[p.name]) for p in space) else None


def is_default(point: dict[str, Any] | None, values: dict[str, Any]) -> bool:
    """Whether a trial that drew ``values`` is the default recipe's (``point``, from
    :func:`default_point`): the sweep's first trial, or one that drew the very same."""
    return point is not None and all(values.get(k) == v for k, v in point.items())


def _round(x: float) -> float:
    return float(f"{x:.3g}")
