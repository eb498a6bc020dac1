"""The config reference, generated from the config model (docs/config.md).

`reference_markdown()` walks `pvcheck.config.Config`: one table per section (key, type,
default, bounds, description), nested sections under their own `[section.sub]` heading. The
descriptions are the fields' own (`Field(description=...)`); the bounds are the Field
constraints. Pure: no file is read or written.
"""

from __future__ import annotations

import json
import re
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel
from pydantic.fields import FieldInfo

from pvcheck import config as c

REGENERATE = ".venv/bin/pvcheck config reference > docs/config.md"

# The config module's own value types, told apart by their validator.
_VALIDATOR_TYPES = {
    c._docker_name: "name",
    c._resolve_path: "path",
    c._subnet: "CIDR",
    c._http_url: "URL",
    c._host_port: "HOST:PORT",
    c._regex: "regex",
}

_PREAMBLE = f"""\
# Config reference

<!-- Generated from pvcheck/config.py by `pvcheck config reference`: do not edit by hand.
Change a field's description there, then run: {REGENERATE} -->

One TOML file describes one host: its engine, the checks and the run's caps. The shipped
configs are [lab/pvcheck.toml](../lab/pvcheck.toml) (the built-in lab),
[deployments/cc-ci.toml](../deployments/cc-ci.toml) (the cc-ci host) and
[lab/cc-ci-twin.toml](../lab/cc-ci-twin.toml) (the cc-ci twin: the cc-ci config with only
locations changed, see [lab.md](lab.md)). `pvcheck config check FILE` validates a config and
prints the effective one (bases merged, defaults filled in, paths absolute); `--json` prints
only that.

Rules that hold for every key:

- Unknown keys are errors. A bad value stops pvcheck with exit 2, naming the file and the
  key's path (like `deploy.compose.route.url`).
- A secret is never written in the file: a key whose name ends in `token`, `password`,
  `passwd`, `secret` or `api_key` (`apikey` too) and holds a value is refused without echoing
  it. Name an environment variable (`token_env`) or a Prefect Secret block (`token_block`).
- Relative paths resolve against the folder of the file that wrote them.
- Run as root, pvcheck refuses a config file, or the folder holding it, that anyone but
  root can change (`logs.command` and `deploy.command.argv` would run as root).
- `deploy.compose` files are read when the config is: a compose file that cannot be read,
  or that needs a variable the env file does not set, is refused here (exit 2), naming the
  file and the variable.

Types: *name* is what Docker accepts as a name and nothing a shell or filter could read
(letters, digits, `_`, `.`, `-`, starting with a letter or digit, at most 63 characters);
*path* a file or folder; *CIDR* an IPv4 subnet with no host bits; *URL* an http(s) URL with a
host and no `user:password@`; *HOST:PORT* like `127.0.0.1:443`; *regex* a Python regular
expression. *unset* means the key is left out.

## Top level

| key | type | default | bounds | description |
|---|---|---|---|---|
| `base` | path | unset | at most {c.MAX_BASE_DEPTH} nested, no cycle | another config this one \
is built on, relative to this file: tables merge key by key, values and arrays replace, and an \
error names the file that wrote the bad value |
"""


def reference_markdown() -> str:
    """The whole reference, as docs/config.md holds it."""
    out = [_PREAMBLE.rstrip("\n")]
    _sections(c.Config, "", out, {})
    return "\n".join(out).rstrip("\n") + "\n"


def _sections(
    model: type[BaseModel], prefix: str, out: list[str], seen: dict[type[BaseModel], str]
) -> None:
    rows: list[str] = []
    subs: list[tuple[str, FieldInfo, type[BaseModel], bool]] = []
    for name, info in model.model_fields.items():
        if info.exclude:
            continue
        sub = _section_type(info.annotation)
        if sub is not None:
            subs.append((name, info, *sub))
        else:
            rows.append(_row(name, info))
    if rows:
        if prefix:
            out.append("")
        out += ["| key | type | default | bounds | description |", "|---|---|---|---|---|", *rows]
    for name, info, sub_model, many in subs:
        key = f"{prefix}.{name}" if prefix else name
        heading = f"[[{key}]]" if many else f"[{key}]"
        out += ["", f"## `{heading}`" if not prefix else f"### `{heading}`", ""]
        out.append(f"{_sentence(info.description)} {_presence(info, many)}")
        if sub_model in seen:
            out.append("")
            out.append(f"The same keys as `{seen[sub_model]}`.")
            continue
        seen[sub_model] = heading
        _sections(sub_model, key, out, seen)


def _section_type(annotation: Any) -> tuple[type[BaseModel], bool] | None:
    """(the section's model, whether it is an array of tables) or None for a plain value."""
    for arg in _without_none(annotation):
        if _is_model(arg):
            return arg, False
        if get_origin(arg) is list and _is_model(get_args(arg)[0]):
            return get_args(arg)[0], True
    return None


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _without_none(annotation: Any) -> list[Any]:
    if get_origin(annotation) in (Union, types.UnionType):
        return [a for a in get_args(annotation) if a is not type(None)]
    return [annotation]


def _presence(info: FieldInfo, many: bool) -> str:
    low, high = _lengths(info.metadata)
    if many:
        count = _count(low, high, "table")
        return f"{'Required' if info.is_required() else 'Optional'}{': ' + count if count else ''}."
    if info.is_required():
        return "Required."
    if info.default is None:
        return "Optional."
    return "Optional: left out, every key takes its default."


def _row(name: str, info: FieldInfo) -> str:
    cells = [
        f"`{name}`",
        _type(info.annotation, info.metadata),
        _default(info),
        _bounds(info.annotation, info.metadata),
        _cell(info.description or ""),
    ]
    return "| " + " | ".join(cells) + " |"


def _metadata(items: Iterable[Any]) -> list[Any]:
    """Constraint objects, a FieldInfo inside an Annotated opened into its own."""
    out: list[Any] = []
    for item in items:
        out += item.metadata if isinstance(item, FieldInfo) else [item]
    return out


def _split(annotation: Any, metadata: Iterable[Any] = ()) -> tuple[Any, list[Any]]:
    """The bare type and every constraint on it (Annotated layers and None unwrapped)."""
    meta = _metadata(metadata)
    while True:
        args = _without_none(annotation)
        if len(args) == 1 and args[0] is not annotation:
            annotation = args[0]
        elif get_origin(annotation) is Annotated:
            annotation, *extra = get_args(annotation)
            meta += _metadata(extra)
        else:
            return annotation, meta


def _type(annotation: Any, metadata: Iterable[Any] = ()) -> str:
    tp, meta = _split(annotation, metadata)
    for m in meta:
        if isinstance(m, AfterValidator) and m.func in _VALIDATOR_TYPES:
            return _VALIDATOR_TYPES[m.func]
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin is list:
        return f"list of {_type(args[0])}"
    if origin is dict:
        return f"table of {_type(args[0])} to {_type(args[1])}"
    names = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    return _code(_toml(value))


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return str(value)


def _bounds(annotation: Any, metadata: Iterable[Any]) -> str:
    tp, meta = _split(annotation, metadata)
    origin, args = get_origin(tp), get_args(tp)
    parts = _limits(meta, tp)
    if origin is list:
        inner = _bounds(args[0], ())
        parts += [f"each: {inner}"] if inner else []
    elif origin is dict:
        inner = _bounds(args[1], ())
        parts += [f"each value: {inner}"] if inner else []
    return "; ".join(parts)


def _limits(meta: list[Any], tp: Any) -> list[str]:
    out = []
    gt, ge, lt, le = (_attr(meta, k) for k in ("gt", "ge", "lt", "le"))
    low = f"> {_num(gt)}" if gt is not None else f"≥ {_num(ge)}" if ge is not None else ""
    high = f"< {_num(lt)}" if lt is not None else f"≤ {_num(le)}" if le is not None else ""
    if ge is not None and le is not None:
        out.append(f"{_num(ge)} to {_num(le)}")
    elif low or high:
        out.append(", ".join(p for p in (low, high) if p))
    unit = {list: "item", dict: "entry"}.get(get_origin(tp), "character")
    count = _count(*_lengths(meta), unit)
    if count:
        out.append(count)
    pattern = _attr(meta, "pattern")
    if pattern is not None:
        out.append(f"pattern {_code(str(pattern))}")
    return out


def _attr(meta: list[Any], name: str) -> Any:
    for m in meta:
        value = getattr(m, name, None)
        if value is not None:
            return value
    return None


def _lengths(meta: Iterable[Any]) -> tuple[int | None, int | None]:
    items = list(meta)
    return _attr(items, "min_length"), _attr(items, "max_length")


def _count(low: int | None, high: int | None, unit: str) -> str:
    plural = {"item": "items", "entry": "entries", "character": "characters", "table": "tables"}
    if low is not None and high is not None:
        return f"{low} to {high} {plural[unit]}"
    if low is not None:
        return f"at least {low} {unit if low == 1 else plural[unit]}"
    if high is not None:
        return f"at most {high} {plural[unit]}"
    return ""


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _sentence(text: str | None) -> str:
    text = _cell(text or "")
    return (text[:1].upper() + text[1:]).rstrip(".") + "."


def _code(text: str) -> str:
    """A code span in a table cell: only the pipe needs escaping there."""
    return "`" + text.replace("|", "\\|") + "`"


def _cell(text: str) -> str:
    """Text safe in a Markdown table cell: no pipe splits it, no `<word>` becomes a tag."""
    return re.sub(r"<(?=[A-Za-z/!?])", "&lt;", text.replace("|", "\\|"))
