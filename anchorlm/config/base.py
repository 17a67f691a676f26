"""The config layer: typed sections on pydantic v2, YAML recipes with `--set` overrides.

A section is a `Section` (a pydantic model: strict types, unknown keys refused, values checked on
assignment); each field is declared with `f(default, help, min=, max=, above=)`, so its help text
and bounds sit beside it. `build` reads a mapping into a section and turns pydantic's errors into
one line that names the field by its full path (`pretrain.model.num_heads must be >= 1, not 0`).
Recipes are YAML read strictly (a key given twice, or aliases expanding past `MAX_VALUES` values,
are refused); `load_config` applies `section.field=value` overrides on top (`load_recipe`).
"""

from __future__ import annotations

import copy
import typing
from pathlib import Path
from typing import Any

import yaml
from annotated_types import Ge, Gt, Le
from pydantic import BaseModel, ConfigDict, Field, ValidationError

PACKAGE = Path(__file__).resolve().parents[1]
MAX_VALUES = 100_000  # a recipe is a few hundred values; more means YAML aliases expanding without bound


class Section(BaseModel):
    """A config section: strict types (an int is a float, nothing else converts), no unknown keys,
    no NaN or infinity, values checked again when assigned."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, validate_assignment=True)


def f(default: Any, help: str, *, min=None, max=None, above=None):  # noqa: A002 - argparse's words
    """A field with its one-line help and its bounds: min / max inclusive, above exclusive."""
    kw: dict = {"description": help}
    if min is not None:
        kw["ge"] = min
    if max is not None:
        kw["le"] = max
    if above is not None:
        kw["gt"] = above
    if isinstance(default, (list, dict)):
        return Field(default_factory=lambda: copy.deepcopy(default), **kw)
    return Field(default, **kw)


# ---- reading a mapping into a section, with errors that name the field -----------------------------
_KINDS = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "finite_number": "a finite number",
}


def _field_info(cls, loc: tuple):
    """The FieldInfo at `loc` in section class `cls` (None where the path leaves the sections)."""
    info = None
    for part in loc:
        if isinstance(part, int) or not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return info
        info = cls.model_fields.get(part)
        if info is None:
            return None
        cls = info.annotation
        origin = typing.get_origin(cls)
        if origin is not None and origin is not list and origin is not dict:
            args = [a for a in typing.get_args(cls) if isinstance(a, type) and issubclass(a, BaseModel)]
            cls = args[0] if args else cls
    return info


def _bounds(info) -> str:
    parts = []
    for m in getattr(info, "metadata", []):
        if isinstance(m, Ge):
            parts.append(f">= {m.ge}")
        elif isinstance(m, Gt):
            parts.append(f"> {m.gt}")
    for m in getattr(info, "metadata", []):
        if isinstance(m, Le):
            parts.append(f"<= {m.le}")
    return " and ".join(parts)


def _dotted(where: str, loc: tuple) -> str:
    path = where
    for part in loc:
        path = f"{path}[{part}]" if isinstance(part, int) else (f"{path}.{part}" if path else str(part))
    return path


def explain(cls, e: ValidationError, where: str = "") -> str:
    """pydantic's first error as one line naming the field by its full path."""
    err = e.errors(include_url=False)[0]
    loc, kind, value = tuple(err["loc"]), err["type"], err.get("input")
    items = [i for i, p in enumerate(loc) if isinstance(p, int)]
    if items and kind in _KINDS:  # an item of a list: name the list
        name = _dotted(where, loc[: items[0]])
        return f"{name} must be a list of {_KINDS[kind].removeprefix('an ').removeprefix('a ')} values, not {value!r}"
    name = _dotted(where, loc)
    if kind == "extra_forbidden":
        section = _dotted(where, loc[:-1]) or "the config"
        info = _field_info(cls, loc[:-1]) if loc[:-1] else None
        sub = info.annotation if info is not None else cls
        valid = sorted(sub.model_fields) if isinstance(sub, type) and issubclass(sub, BaseModel) else []
        return f"unknown config key(s) {[name]}; valid keys of {section}: {valid}"
    if kind == "model_type":
        return f"{name} is a section of fields; give a mapping, not {value!r}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        return f"{name} must be {_bounds(_field_info(cls, loc)) or err['msg'].lower()}, not {value!r}"
    if kind == "literal_error":
        return f"{name} must be {err['ctx']['expected']}, not {value!r}"
    if kind in _KINDS:
        return f"{name} must be {_KINDS[kind]}, not {value!r}"
    if kind == "value_error":  # a cross-field check: its message says what to change
        msg = str(err["ctx"]["error"]) if "ctx" in err else err["msg"]
        return msg if not name or msg.startswith(name) else f"{name}: {msg}"
    return f"{name or 'the config'}: {err['msg']}"


def build(cls, data, where: str = ""):
    """Section `cls` from a mapping, every value checked; a ValueError names the first bad field."""
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'the config'} must be a mapping of fields, not {data!r}")
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ValueError(explain(cls, e, where)) from None


def replace(cfg: Section, **changes_):
    """A copy of `cfg` with some fields changed, checked like any other (pydantic's `model_copy`
    does not check)."""
    return build(type(cfg), {**cfg.model_dump(), **changes_})


def to_dict(cfg: Section) -> dict:
    return cfg.model_dump()


def changes(cfg: Section) -> dict:
    """The fields of a config that differ from their defaults (nested sections recursively): what
    names a cached result, so that adding a field with a default keeps every cache valid."""
    out = {}
    for name, info in type(cfg).model_fields.items():
        v = getattr(cfg, name)
        if isinstance(v, BaseModel):
            sub = changes(v)
            if sub:
                out[name] = sub
            continue
        if v != info.get_default(call_default_factory=True):
            out[name] = v
    return out


# ---- YAML -------------------------------------------------------------------------------------------
class _StrictLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (lines {seen[key]} and "
                    f"{key_node.start_mark.line + 1}); keep one", key_node.start_mark,
                )  # fmt: skip
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def _expanded_size(obj, memo: dict | None = None) -> int:
    """How many values `obj` holds once YAML aliases are expanded (shared nodes counted each time
    they are used, but computed once)."""
    memo = {} if memo is None else memo
    if id(obj) in memo:
        return memo[id(obj)]
    n = 1
    if isinstance(obj, dict):
        n += sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in obj.items())
    elif isinstance(obj, list):
        n += sum(_expanded_size(v, memo) for v in obj)
    memo[id(obj)] = n
    return n


def parse_yaml(text: str, where: str):
    """YAML text as Python values: duplicate keys refused, and aliases that expand past
    `MAX_VALUES` values refused before anything expands them."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ValueError(f"{where}: not valid YAML: {e}") from None
    if _expanded_size(data) > MAX_VALUES:
        raise ValueError(
            f"{where}: expands to more than {MAX_VALUES:,} values through YAML aliases (&name / *name); "
            "write the values out instead"
        )
    return data


def recipe(name: str | Path) -> Path:
    """A recipe by path, or by the name of one shipped with anchorlm (`demo`, `smoke`, `reproduce`,
    ... : anchorlm/configs/<name>.yaml), so installed copies find them without the repository."""
    p = Path(name)
    if p.is_file():
        return p
    if p.is_dir():
        raise ValueError(f"config {str(name)!r} is a directory, not a YAML recipe")
    shipped = PACKAGE / "configs" / (p.name if p.suffix == ".yaml" else p.name + ".yaml")
    if len(p.parts) <= 2 and shipped.is_file() and (len(p.parts) == 1 or p.parts[0] == "configs"):
        return shipped
    names = sorted(x.stem for x in (PACKAGE / "configs").glob("*.yaml"))
    raise FileNotFoundError(
        f"config {str(name)!r}: no such file, and not a shipped recipe ({', '.join(names)})"
    )


def set_path(data: dict, dotted: str, value: Any) -> None:
    """data[a][b][c] = value for 'a.b.c'; a ValueError when 'a.b' is a value, not a section."""
    keys = dotted.split(".")
    if not all(keys):
        raise ValueError(f"override key {dotted!r} must look like section.field")
    for i, k in enumerate(keys[:-1]):
        data = data.setdefault(k, {})
        if not isinstance(data, dict):
            raise ValueError(f"{'.'.join(keys[: i + 1])} is a value, not a section; cannot set {dotted}")
    data[keys[-1]] = value


def merged(under: dict, over: dict) -> dict:
    """`over` laid on `under`: mappings merge key by key, anything else (a list, a value) replaces."""
    out = dict(under)
    for k, v in over.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_recipe(name: str | Path, seen: tuple = ()) -> dict:
    """A recipe's mapping; with `extends: <recipe>` at its top, that recipe's mapping (read the same
    way) with this one's keys laid over it (mappings merge, lists and values replace)."""
    path = recipe(name)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a text (UTF-8) YAML file ({e.reason} at byte {e.start})") from None
    data = parse_yaml(text, str(path)) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a mapping of sections")
    if "extends" not in data:
        return data
    parent = data.pop("extends")
    if not isinstance(parent, str) or not parent:
        raise ValueError(f"{path}: extends must name one recipe (a file or a shipped name), not {parent!r}")
    key = Path(path).resolve()
    if key in seen:
        raise ValueError(f"{path}: extends {parent!r} comes back to itself")
    here = Path(path).parent  # a file beside this one (`base` or `base.yaml`), else as `recipe` finds it
    beside = next((p for p in (here / parent, here / f"{parent}.yaml") if p.is_file()), None)
    try:
        under = read_recipe(beside or parent, (*seen, key))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path}: extends {parent!r}: {e}") from None
    return merged(under, data)


def load_recipe(path: str | Path | None, overrides: list[str], cls):
    """A YAML recipe (or the defaults) read into section `cls`, with ``section.field=value``
    overrides applied."""
    data: dict = {}
    if path:
        path = recipe(path)
        data = read_recipe(path)
    for o in overrides:
        k, eq, v = o.partition("=")
        if not eq or not k.strip():
            raise ValueError(f"override {o!r} must look like section.field=value")
        set_path(data, k.strip(), parse_yaml(v, f"override {o!r}"))
    try:
        return build(cls, data)
    except ValueError as e:
        raise ValueError(f"{path or 'config'}: {e}") from e


def check_out_dir(path: str, name: str = "--out") -> None:
    """An output directory anchorlm may fill: not empty, not the file system's root or the home
    directory (a run writes several folders into it)."""
    p = str(path).strip()
    if not p:
        raise ValueError(f"{name} is empty; name the directory to write into")
    resolved = Path(p).expanduser().resolve()
    if resolved == Path(resolved.anchor) or resolved == Path.home().resolve():
        raise ValueError(f"{name} {p!r} is {resolved}; name a directory of its own for the run")
