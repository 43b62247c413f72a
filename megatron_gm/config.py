"""One config per tool: a dataclass whose fields carry their own flag, help text and allowed values.

    @dataclasses.dataclass
    class BootstrapConfig:
        width: int = setting(5, "beam width", low=1)

``add_dataclass_args(parser, BootstrapConfig)`` adds ``--width`` (type, default and help from the field);
``from_namespace(BootstrapConfig, args)`` builds the config from the parsed flags; ``check_settings(cfg)``
checks every field's declared type, range and choices, and a config's ``validate()`` calls it before its
rules across fields. The pipeline's sections take their fields from the tools' classes (``tool_setting``),
so a setting has one name, one help text and one rule wherever it is set.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import typing
from typing import Any

from megatron_gm.errors import GMError

MISSING: Any = dataclasses.MISSING


class SettingError(GMError):
    """A setting outside its rule; ``field`` and ``value`` let the pipeline name it as ``section.field``."""

    def __init__(self, flag: str, field: str, value: Any, reason: str):
        self.flag, self.field, self.value, self.reason = flag, field, value, reason
        # "--x must be >= 1, got 0", or "--x 0: <why>" for a reason in other words
        super().__init__(
            f"{flag} {reason}, got {value}" if reason.startswith("must") else f"{flag} {value}: {reason}"
        )


def setting(
    default: Any = MISSING,
    help: str = "",
    *,
    flag: str | tuple[str, ...] = (),
    choices: tuple | None = None,
    low: float | None = None,
    high: float | None = None,
    above: float | None = None,
    below: float | None = None,
    default_factory: Any = MISSING,
    metavar: str | None = None,
    group: str = "",
    cli: bool = True,
) -> Any:
    """A config field. ``flag``: its spelling(s) when not ``--<prefix><name>``; ``low``/``high``: inclusive
    bounds, ``above``/``below``: exclusive ones (None values pass: they mean "the tool's default");
    ``cli=False``: not a command-line flag (set by the caller)."""
    meta = {"help": help, "flag": (flag,) if isinstance(flag, str) else tuple(flag), "choices": choices,
            "low": low, "high": high, "above": above, "below": below, "metavar": metavar, "group": group, "cli": cli}  # fmt: skip
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def tool_setting(cls: type, name: str, default: Any = MISSING, **changes: Any) -> Any:
    """A pipeline section's field that is the tool ``cls``'s setting ``name`` (its help and rules), with
    the pipeline's own default; ``changes`` override rule items (e.g. ``low=0``)."""
    f = _field(cls, name)
    meta = {**f.metadata, **changes}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=f.default if default is MISSING else default, metadata=meta)


def _field(cls: type, name: str) -> dataclasses.Field:
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def flags(cls: type, name: str, prefix: str = "--") -> tuple[str, ...]:
    """The command-line spelling(s) of field ``name``: its own, or ``prefix`` + the name with dashes."""
    own = _field(cls, name).metadata.get("flag", ())
    return own or (prefix + name.replace("_", "-"),)


def _dest(prefix: str, name: str) -> str:
    return prefix.lstrip("-").replace("-", "_") + name


def _base_type(kind: Any) -> Any:
    """int for ``int | None``; list for ``list[str]``; the type itself otherwise."""
    if typing.get_origin(kind) is list:
        return list
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    return args[0] if args else kind


def add_dataclass_args(
    parser: argparse.ArgumentParser,
    cls: type,
    prefix: str = "--",
    title: str = "",
    show_defaults: bool = False,
) -> argparse.ArgumentParser:
    """Add one flag per field of ``cls`` (fields with ``cli=False`` excepted). A field without a default is
    required; a bool is a switch (``--no-x`` when it defaults to on, else ``--x``). ``show_defaults``: the
    help of a valued flag ends with its default."""
    hints = typing.get_type_hints(cls)
    groups: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        m = f.metadata
        if not m.get("cli", True):
            continue
        name = m.get("group") or title
        if name and name not in groups:
            groups[name] = parser.add_argument_group(name)
        target = groups[name] if name else parser
        kind = _base_type(hints[f.name])
        kw: dict[str, Any] = {"dest": _dest(prefix, f.name), "help": m.get("help") or None}
        if f.default is MISSING and f.default_factory is MISSING:
            kw["required"] = True
        else:
            kw["default"] = f.default if f.default is not MISSING else f.default_factory()
        if kind is bool:
            on = bool(kw.get("default"))
            kw["action"] = "store_false" if on and flags(cls, f.name)[0].startswith("--no-") else (
                argparse.BooleanOptionalAction if on else "store_true")  # fmt: skip
        elif kind is list:
            kw["nargs"] = "+"
        else:
            kw["type"] = kind
            if m.get("choices"):
                kw["choices"] = m["choices"]
            if m.get("metavar"):
                kw["metavar"] = m["metavar"]
            if show_defaults and "default" in kw:
                kw["help"] = f"{kw['help'] or ''} (default {kw['default']})".lstrip()
        target.add_argument(*flags(cls, f.name, prefix), **kw)
    return parser


def from_namespace(cls: type, ns: argparse.Namespace, prefix: str = "--", **given: Any) -> Any:
    """``cls`` built from parsed flags (as ``add_dataclass_args`` named them); ``given`` sets the rest."""
    values = {
        f.name: getattr(ns, _dest(prefix, f.name)) for f in dataclasses.fields(cls) if f.name not in given
    }
    return cls(**{k: v for k, v in values.items()}, **given)


def check_settings(cfg: Any, prefix: str = "--", skip: tuple[str, ...] = ()) -> None:
    """Every field has its declared type and lies in its declared range or choices; else a SettingError."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        if f.name in skip:
            continue
        v, kind, m = getattr(cfg, f.name), hints[f.name], f.metadata
        flag = flags(type(cfg), f.name, prefix)[0]
        if v is None and type(None) in typing.get_args(kind):
            continue
        base = _base_type(kind)
        if base is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
            setattr(cfg, f.name, v)
        if base is list:
            ok = isinstance(v, list) and all(isinstance(x, (str, os.PathLike)) for x in v)
        elif base is str:
            ok = isinstance(v, (str, os.PathLike))
        else:
            ok = isinstance(v, base) and not (base is not bool and isinstance(v, bool))
        if not ok:
            raise SettingError(flag, f.name, v, f"must be a {getattr(base, '__name__', base)}")
        low, high, above, below = (m.get(k) for k in ("low", "high", "above", "below"))
        bounded = any(x is not None for x in (low, high, above, below))
        if isinstance(v, float) and not math.isfinite(v):
            reason = f"must be {_range(low, high, above, below)}" if bounded else "must be a finite number"
            raise SettingError(flag, f.name, v, reason)
        choices = m.get("choices")
        if choices and v not in choices:
            raise SettingError(flag, f.name, v, f"must be {_one_of(choices)}")
        if (
            (low is not None and v < low)
            or (high is not None and v > high)
            or ((above is not None and v <= above) or (below is not None and v >= below))
        ):
            raise SettingError(flag, f.name, v, f"must be {_range(low, high, above, below)}")


def _one_of(choices: tuple) -> str:
    items = [str(c) for c in choices]
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def _range(low: Any, high: Any, above: Any, below: Any) -> str:
    """ "in [0, 1)", ">= 1", "> 0", ... from the bounds that are set."""
    lo = f"[{low}" if low is not None else (f"({above}" if above is not None else "")
    hi = f"{high}]" if high is not None else (f"{below})" if below is not None else "")
    if lo and hi:
        return f"in {lo}, {hi}"
    if lo:
        return (">= " if lo[0] == "[" else "> ") + lo[1:]
    return ("<= " if hi[-1] == "]" else "< ") + hi[:-1]
