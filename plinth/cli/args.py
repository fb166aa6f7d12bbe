"""Turn a verb's config dataclass into a command line: `--config run.yaml`, dotted overrides, positional fields, help.

Hand-written rather than argparse/jsonargparse because every mistake must come out as one line naming the field and
the fix (exit code 2), and YAML files and flags must share one validator. See docs/decisions.md.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

from plinth.common import PlinthError


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp) -> tuple[Any, bool]:
    """`int | None` -> (int, True)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _type_name(tp) -> str:
    inner, optional = _unwrap_optional(tp)
    if typing.get_origin(inner) is list:
        name = f"list of {typing.get_args(inner)[0].__name__}"
    else:
        name = getattr(inner, "__name__", str(inner))
    return f"{name} or null" if optional else name


def coerce(value: Any, tp, where: str) -> Any:
    """Convert a YAML or command-line value to the field type `tp`, or raise a one-line PlinthError."""
    inner, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise PlinthError(f"{where}: expects a {_type_name(tp)}, got null")
    origin = typing.get_origin(inner)
    if origin is list:
        item = typing.get_args(inner)[0]
        items = value if isinstance(value, list) else [value]
        return [coerce(v, item, where) for v in items]
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise PlinthError(f"{where}: expects true or false, got {value!r}")
    if inner is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise PlinthError(f"{where}: expects an integer, got {value!r}")
        try:
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        except (TypeError, ValueError):
            raise PlinthError(f"{where}: expects an integer, got {value!r}") from None
    if inner is float:
        if isinstance(value, bool):
            raise PlinthError(f"{where}: expects a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise PlinthError(f"{where}: expects a number, got {value!r}") from None
    if inner is str:
        if isinstance(value, (dict, list)):
            raise PlinthError(f"{where}: expects a string, got {type(value).__name__}")
        return str(value)
    raise PlinthError(f"{where}: unsupported field type {tp}")


def _suggest(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(options)})"


def apply_mapping(obj: Any, data: dict, source: str, prefix: str = "") -> None:
    """Set fields of dataclass instance `obj` from a nested mapping; unknown or mistyped fields raise PlinthError."""
    if not isinstance(data, dict):
        raise PlinthError(f"{source}: {prefix.rstrip('.') or 'top level'} must be a mapping, got {data!r}")
    hints = _hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise PlinthError(f"{source}: unknown field {path!r}{_suggest(str(key), names)}")
        tp = hints[key]
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            apply_mapping(current, value, source, prefix=f"{path}.")
        else:
            setattr(obj, key, coerce(value, tp, f"{source}: field {path!r}"))
    _validate_choices(obj, source, prefix)


def _validate_choices(obj: Any, source: str, prefix: str) -> None:
    for f in dataclasses.fields(obj):
        choices = f.metadata.get("choices")
        if choices and getattr(obj, f.name) not in choices:
            raise PlinthError(f"{source}: field {prefix}{f.name!r} must be one of {', '.join(choices)}, "
                              f"got {getattr(obj, f.name)!r}")


def load_yaml(path: str) -> dict:
    """Read a YAML config file into a dict, with one-line errors."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise PlinthError(f"config file {path} not found: check the path passed to --config")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise PlinthError(f"config file {path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    return data or {}


def _positional_field(cls) -> dataclasses.Field | None:
    for f in dataclasses.fields(cls):
        if f.metadata.get("positional"):
            return f
    return None


def _split_argv(argv: list[str]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Split into bare (positional) words and (flag, values) pairs; a flag owns the words up to the next flag."""
    bare: list[str] = []
    flags: list[tuple[str, list[str]]] = []
    for word in argv:
        if word.startswith("--") and len(word) > 2:
            name, eq, val = word[2:].partition("=")
            flags.append((name, [val] if eq else []))
        elif flags:
            flags[-1][1].append(word)
        else:
            bare.append(word)
    return bare, flags


def _resolve(obj: Any, dotted: str, source: str) -> tuple[Any, str, Any]:
    """Walk `a.b.c` to (owner instance, field name, field type)."""
    parts = dotted.replace("-", "_").split(".")
    owner = obj
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(owner)]
        if part not in names:
            known = names if i else names + ["config", "help"]
            raise PlinthError(f"{source}: unknown option --{dotted}{_suggest(part, known)}")
        if i == len(parts) - 1:
            return owner, part, _hints(type(owner))[part]
        owner = getattr(owner, part)
        if not dataclasses.is_dataclass(owner):
            raise PlinthError(f"{source}: --{dotted}: {'.'.join(parts[: i + 1])} has no sub-fields")
    raise AssertionError("unreachable")


def parse(cls, argv: list[str], prog: str = "plinth") -> Any:
    """Build a `cls` instance from defaults, then `--config FILE`, then positional words, then `--field value` flags."""
    obj = cls()
    bare, flags = _split_argv(argv)
    for name, values in flags:
        if name == "config":
            if len(values) != 1:
                raise PlinthError("--config takes exactly one YAML file path")
            apply_mapping(obj, load_yaml(values[0]), f"config {values[0]}")
    pos = _positional_field(cls)
    if bare:
        if pos is None:
            raise PlinthError(f"{prog}: unexpected argument {bare[0]!r} (options start with --; see --help)")
        tp = _hints(cls)[pos.name]
        if typing.get_origin(_unwrap_optional(tp)[0]) is not list and len(bare) > 1:
            raise PlinthError(f"{prog}: takes one {pos.name}, got {len(bare)}: {' '.join(bare)}")
        setattr(obj, pos.name, coerce(bare if len(bare) > 1 else bare[0], tp, f"{prog}: {pos.name}"))
    for name, values in flags:
        if name == "config":
            continue
        negate = name.startswith("no-") or name.startswith("no_")
        try:
            owner, field_name, tp = _resolve(obj, name, prog)
        except PlinthError:
            if not negate:
                raise
            owner, field_name, tp = _resolve(obj, name[3:], prog)
            if _unwrap_optional(tp)[0] is not bool or values:
                raise PlinthError(f"{prog}: --{name}: only true/false options can be negated") from None
            setattr(owner, field_name, False)
            continue
        where = f"{prog}: --{name}"
        inner = _unwrap_optional(tp)[0]
        if dataclasses.is_dataclass(getattr(owner, field_name)):
            raise PlinthError(f"{where} is a section; set one of its fields, e.g. --{name}.<field> VALUE")
        if inner is bool and not values:
            value: Any = True
        elif typing.get_origin(inner) is list:
            value = values
        elif len(values) != 1:
            raise PlinthError(f"{where} expects one value, got {len(values)}" + (": " + " ".join(values) if values
                                                                                 else ""))
        else:
            value = values[0]
        setattr(owner, field_name, coerce(value, tp, where))
    _validate_all(obj, prog)
    return obj


def _validate_all(obj: Any, source: str, prefix: str = "") -> None:
    _validate_choices(obj, source, prefix)
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _validate_all(value, source, f"{prefix}{f.name}.")


def help_text(cls, prog: str, summary: str) -> str:
    """Usage text listing every field (nested ones dotted), its type, default and help."""
    pos = _positional_field(cls)
    usage = f"usage: {prog}" + (f" [{pos.name.upper()}{'...' if pos and 'list' in str(pos.type) else ''}]"
                                if pos else "") + " [--config FILE.yaml] [--FIELD VALUE ...]"
    lines = [usage, "", summary, "", "options:", "  --config FILE.yaml  read fields from a YAML file (same shape)"]

    def walk(c, obj, prefix):
        for f in dataclasses.fields(c):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(type(value), value, f"{prefix}{f.name}.")
                continue
            tp = _type_name(_hints(c)[f.name])
            default = " ".join(value) if isinstance(value, list) else value
            lines.append(f"  --{prefix}{f.name} ({tp}, default {default!r})")
            lines.append(f"        {f.metadata.get('help', '')}")

    walk(cls, cls(), "")
    return "\n".join(lines)
