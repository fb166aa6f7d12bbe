"""Turn a verb's config dataclass into a command line: `--config run.yaml`, dotted overrides, positional fields, help.

Hand-written rather than argparse/jsonargparse because every mistake must come out as one line naming the field and
the fix (exit code 2), and YAML files and flags must share one validator (`plinth.config`). See docs/decisions.md.

Two shapes beyond plain fields: a section marked `flat` (e.g. `GenerateConfig.sampling`) also takes its fields
without the section prefix (`--top_k 5` = `--sampling.top_k 5`); a mapping field (e.g. `PretrainConfig.arch`) takes
any key (`--arch.n_layer 6`), typed and checked later against the model family's config class.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from plinth.common import PlinthError
from plinth.config import apply_mapping, coerce, field_types, suggest, type_name, unwrap_optional, validate


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
    except (OSError, UnicodeDecodeError) as e:
        raise PlinthError(f"config file {path}: cannot read it ({e})") from None
    return data or {}


def _positional_field(cls) -> dataclasses.Field | None:
    for f in dataclasses.fields(cls):
        if f.metadata.get("positional"):
            return f
    return None


def _is_mapping(tp) -> bool:
    inner = unwrap_optional(tp)[0]
    return inner is dict or typing.get_origin(inner) is dict


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


def _flat_sections(obj: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(obj) if f.metadata.get("flat")]


def _resolve(obj: Any, dotted: str, source: str) -> tuple[Any, str, Any, str | None]:
    """Walk `a.b.c` to (owner, field name, field type, mapping key or None); flat sections answer bare names."""
    parts = dotted.replace("-", "_").split(".")
    if len(parts) == 1 and parts[0] not in [f.name for f in dataclasses.fields(obj)]:
        for section in _flat_sections(obj):
            sub = getattr(obj, section)
            if parts[0] in [f.name for f in dataclasses.fields(sub)]:
                return sub, parts[0], field_types(type(sub))[parts[0]], None
    owner = obj
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(owner)]
        if part not in names:
            known = names + [n for s in _flat_sections(owner) for n in (f.name for f in
                                                                          dataclasses.fields(getattr(owner, s)))]
            raise PlinthError(f"{source}: unknown option --{dotted}{suggest(part, known if i == 0 else names)}")
        tp = field_types(type(owner))[part]
        if _is_mapping(tp):
            if len(parts) != i + 2:
                raise PlinthError(f"{source}: --{dotted}: give one key, e.g. --{'.'.join(parts[:i + 1])}.KEY VALUE")
            return owner, part, tp, parts[i + 1]
        if i == len(parts) - 1:
            return owner, part, tp, None
        owner = getattr(owner, part)
        if not dataclasses.is_dataclass(owner):
            raise PlinthError(f"{source}: --{dotted}: {'.'.join(parts[: i + 1])} has no sub-fields")
    raise AssertionError("unreachable")


def _flag_value(owner: Any, field_name: str, tp: Any, values: list[str], where: str) -> Any:
    inner = unwrap_optional(tp)[0]
    if dataclasses.is_dataclass(getattr(owner, field_name)):
        raise PlinthError(f"{where} is a section; set one of its fields, e.g. {where}.<field> VALUE")
    if inner is bool and not values:
        return True
    if typing.get_origin(inner) is list:
        meta = next(f.metadata for f in dataclasses.fields(owner) if f.name == field_name)
        if meta.get("sep"):  # `--shots 0,5` as well as `--shots 0 5`
            return [part for v in values for part in v.split(meta["sep"]) if part != ""]
        return values
    if len(values) != 1:
        raise PlinthError(f"{where} expects one value, got {len(values)}" + (": " + " ".join(values) if values else ""))
    return values[0]


def _apply_flag(obj: Any, name: str, values: list[str], prog: str, seen: set | None = None) -> None:
    """Set one `--name values` flag on `obj`; a list field given twice (`--adapter a=x --adapter b=y`) collects both
    (`seen` holds the list fields set so far), any other field takes the last value."""
    negate = name.startswith(("no-", "no_"))
    try:
        owner, field_name, tp, key = _resolve(obj, name, prog)
    except PlinthError:
        if not negate:
            raise
        owner, field_name, tp, key = _resolve(obj, name[3:], prog)
        if key is not None or unwrap_optional(tp)[0] is not bool or values:
            raise PlinthError(f"{prog}: --{name}: only true/false options can be negated") from None
        setattr(owner, field_name, False)
        return
    where = f"{prog}: --{name}"
    if key is not None:  # a mapping entry: kept as text here, typed by whoever owns the schema
        if len(values) != 1:
            raise PlinthError(f"{where} expects one value, got {len(values)}")
        getattr(owner, field_name)[key] = values[0]
        return
    value = coerce(_flag_value(owner, field_name, tp, values, f"--{name}"), tp, where)
    if isinstance(value, list) and seen is not None:
        if (id(owner), field_name) in seen:
            value = list(getattr(owner, field_name)) + value
        seen.add((id(owner), field_name))
    setattr(owner, field_name, value)


def parse(cls, argv: list[str], prog: str = "plinth") -> Any:
    """Build a `cls` instance from defaults, then `--config FILE`, then positional words, then `--field value` flags,
    and validate every range. Raises a one-line PlinthError naming the field for any mistake."""
    obj = cls()
    bare, flags = _split_argv(argv)
    for name, values in flags:
        if name == "config":
            if len(values) != 1:
                raise PlinthError("--config takes exactly one YAML file path")
            apply_mapping(obj, load_yaml(values[0]), f"config {values[0]}")
    pos = _positional_field(cls)
    rest = [f for f in dataclasses.fields(cls) if f.metadata.get("positional") and f is not pos]
    if bare and pos is not None and rest and len(bare) > 1:
        # A second positional field (a list) takes the words after the first: `plinth caption MODEL IMAGE...`.
        second = rest[0]
        setattr(obj, second.name, coerce(bare[1:], field_types(cls)[second.name], f"{prog}: {second.name}"))
        bare = bare[:1]
    if bare:
        if pos is None:
            raise PlinthError(f"{prog}: unexpected argument {bare[0]!r} (options start with --; see --help)")
        tp = field_types(cls)[pos.name]
        if typing.get_origin(unwrap_optional(tp)[0]) is not list and len(bare) > 1:
            raise PlinthError(f"{prog}: takes one {pos.name}, got {len(bare)}: {' '.join(bare)}")
        setattr(obj, pos.name, coerce(bare if len(bare) > 1 else bare[0], tp, f"{prog}: {pos.name}"))
    seen: set = set()
    for name, values in flags:
        if name != "config":
            _apply_flag(obj, name, values, prog, seen)
    validate(obj, prog)
    return obj


def _schema_lines(schema: str, prefix: str) -> list[str]:
    """Help lines for a mapping field whose keys are a model family's config fields."""
    if schema != "arch":
        return []
    from plinth.models import families

    lines = []
    for fam in families():
        hints = field_types(fam.config_class)
        lines.append(f"  (--{prefix}FIELD: any field of the {fam.name} family's config; the preset gives defaults)")
        for f in dataclasses.fields(fam.config_class):
            if f.name == "name":
                continue
            lines.append(f"  --{prefix}{f.name} ({type_name(hints[f.name])})")
            lines.append(f"        {f.metadata.get('help', '')}")
    return lines


def help_text(cls, prog: str, summary: str) -> str:
    """Usage text listing every field (nested ones dotted, flat ones bare), its type, default, range and help."""
    pos = _positional_field(cls)
    usage = f"usage: {prog}" + (f" [{pos.name.upper()}{'...' if pos and 'list' in str(pos.type) else ''}]"
                                if pos else "") + " [--config FILE.yaml] [--FIELD VALUE ...]"
    lines = [usage, "", summary, "", "options:", "  --config FILE.yaml  read fields from a YAML file (same shape)"]

    def walk(c, obj, prefix):
        hints = field_types(c)
        for f in dataclasses.fields(c):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(type(value), value, "" if f.metadata.get("flat") else f"{prefix}{f.name}.")
                continue
            if "schema" in f.metadata:
                lines.extend(_schema_lines(f.metadata["schema"], f"{prefix}{f.name}."))
                continue
            default = " ".join(map(str, value)) if isinstance(value, list) else value
            bounds = ", ".join(f"{sign} {f.metadata[k]:g}" for k, sign in (("min", ">="), ("gt", ">"), ("max", "<="),
                                                                             ("lt", "<")) if k in f.metadata)
            lines.append(f"  --{prefix}{f.name} ({type_name(hints[f.name])}, default {default!r}"
                         + (f"; {bounds}" if bounds else "") + ")")
            lines.append(f"        {f.metadata.get('help', '')}")

    walk(cls, cls(), "")
    return "\n".join(lines)
