"""Variable interpolation as compose does it: `$NAME`, `${NAME}`, the `:-`/`-`, `:?`/`?` and
`:+`/`+` forms (nested), `$$` for a literal `$`, and the CLI's casts of interpolated values."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pvcheck.compose.common import DECLARED, DOC, NAME, Loc, to_bool, to_float, to_int
from pvcheck.errors import ConfigError

_NAME_RE = re.compile(NAME)
# Longest first, so `:-` is not read as `:` followed by a default starting with `-`.
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")


class _TemplateError(Exception):
    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


@dataclass(frozen=True)
class _Ref:
    name: str
    op: str  # "" for $NAME / ${NAME}, else one of _OPERATORS
    arg: tuple[_Node, ...]  # the default, message or alternative (itself a template)


_Node = str | _Ref


@dataclass(frozen=True)
class Reference:
    """A variable a compose value refers to. Required: always evaluated and without a default
    or alternative, so an unset value is an error (references nested in another's default,
    message or alternative are evaluated only sometimes, so never required)."""

    name: str
    required: bool


@lru_cache(maxsize=4096)
def _parse(text: str) -> tuple[_Node, ...]:
    nodes, end = _parse_from(text, 0, nested=False)
    assert end == len(text)
    return nodes


def _parse_from(text: str, i: int, nested: bool) -> tuple[tuple[_Node, ...], int]:
    """Compose's grammar: `$$` is a `$`; `$NAME`; `${NAME}` or `${NAME<op><template>}`, where
    the template may hold further references (compose nests them); a `$` before anything else
    is kept as it is. Nested: stop after the `}` that closes the enclosing reference."""
    nodes: list[_Node] = []
    literal: list[str] = []

    def flush() -> None:
        if literal:
            nodes.append("".join(literal))
            literal.clear()

    while i < len(text):
        char = text[i]
        if nested and char == "}":
            flush()
            return tuple(nodes), i + 1
        if char != "$":
            literal.append(char)
            i += 1
            continue
        if text.startswith("$$", i):
            literal.append("$")
            i += 2
            continue
        if text.startswith("${", i):
            ref, i = _parse_braced(text, i)
            flush()
            nodes.append(ref)
            continue
        name = _NAME_RE.match(text, i + 1)
        if name:
            flush()
            nodes.append(_Ref(name[0], "", ()))
            i = name.end()
            continue
        literal.append(char)
        i += 1
    if nested:
        raise _TemplateError(f"invalid interpolation {text!r}: a ${{ is never closed")
    flush()
    return tuple(nodes), i


def _parse_braced(text: str, start: int) -> tuple[_Ref, int]:
    name = _NAME_RE.match(text, start + 2)
    if not name:
        raise _TemplateError(
            f"invalid interpolation {text!r}: ${{ must be followed by a NAME (write $$ for a "
            "literal $)"
        )
    i = name.end()
    if text.startswith("}", i):
        return _Ref(name[0], "", ()), i + 1
    if i == len(text):
        raise _TemplateError(f"invalid interpolation {text!r}: a ${{ is never closed")
    op = next((o for o in _OPERATORS if text.startswith(o, i)), None)
    if op is None:
        raise _TemplateError(
            f"invalid interpolation {text!r}: after ${{{name[0]} compose allows only }}, "
            ":-, -, :?, ?, :+ or +"
        )
    arg, end = _parse_from(text, i + len(op), nested=True)
    return _Ref(name[0], op, arg), end


_Missing = Callable[[str, str | None], None]  # (name, message of ?/:? or None)


def _evaluate(nodes: tuple[_Node, ...], env: Mapping[str, str], missing: _Missing) -> str:
    return "".join(n if isinstance(n, str) else _resolve_ref(n, env, missing) for n in nodes)


def _resolve_ref(ref: _Ref, env: Mapping[str, str], missing: _Missing) -> str:
    value = env.get(ref.name)
    # The colon forms treat an empty value like an unset one.
    present = value is not None and (value != "" or not ref.op.startswith(":"))
    kind = ref.op[-1:]
    if kind == "+":
        return _evaluate(ref.arg, env, missing) if present else ""
    if present and value is not None:
        return value
    if kind == "-":
        return _evaluate(ref.arg, env, missing)
    # Compose substitutes "" for an unset plain reference (with a warning); pvcheck refuses:
    # an empty domain or image deploys something other than the recipe.
    message = _evaluate(ref.arg, env, lambda _n, _m: None) if kind == "?" else None
    missing(ref.name, message)
    return ""


def _strings(doc: Any, path: Loc = ()) -> Iterator[tuple[str, Loc]]:
    """Every string value in the tree. Keys are not values: compose never interpolates them."""
    if isinstance(doc, str):
        yield doc, path
    elif isinstance(doc, dict):
        for key, value in doc.items():
            yield from _strings(value, (*path, str(key)))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            yield from _strings(value, (*path, index))


def _field(path: Loc) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _parsed(text: str, path: Loc, where: str) -> tuple[_Node, ...]:
    try:
        return _parse(text)
    except _TemplateError as exc:
        raise ConfigError(where, _field(path), exc.problem) from None
    except RecursionError:  # `${A:-${A:-…` thousands deep
        raise ConfigError(where, _field(path), "variables nested too deeply") from None


def references(doc: Any, *, where: str = DOC) -> set[Reference]:
    """The variable references in the document's values."""

    def walk(nodes: tuple[_Node, ...], nested: bool) -> Iterator[Reference]:
        for node in nodes:
            if isinstance(node, _Ref):
                yield Reference(node.name, not nested and node.op in ("", "?", ":?"))
                yield from walk(node.arg, nested=True)

    found: set[Reference] = set()
    for text, path in _strings(doc):
        found.update(walk(_parsed(text, path, where), nested=False))
    return found


def missing_variables(
    doc: Any, env: Mapping[str, str], where: str
) -> dict[str, tuple[str, str | None]]:
    """name -> (first field, ?-message) for every variable interpolation would fail on. It
    evaluates, so a reference nested in a default counts only when that default is used."""
    found: dict[str, tuple[str, str | None]] = {}
    for text, path in _strings(doc):

        def note(name: str, message: str | None, path: Loc = path) -> None:
            found.setdefault(name, (_field(path), message))

        _evaluate(_parsed(text, path, where), env, note)
    return found


def unset_variables(doc: Any, env: Mapping[str, str], *, where: str = DOC) -> list[str]:
    """The variables the document needs that env does not give (sorted): referred to without
    a default and not in env, or `${NAME:?...}` with an empty value. Never one with a default."""
    return sorted(missing_variables(doc, env, where))


def interpolate(doc: Any, env: Mapping[str, str], where: str, *, escape: bool = True) -> Any:
    """A copy with every string value interpolated as compose does (keys are left as they are).

    The docker CLI interpolates the file again. So that it finds nothing left to do, every
    `$` in the result is written back as `$$` (escape=False leaves the plain values, for a
    caller that escapes once at the end with escape_dollars)."""

    def refuse(name: str, message: str | None) -> None:
        if message is None:
            raise _TemplateError(f"variable {name} is not set in the env and has no default")
        raise _TemplateError(f"required variable {name} is missing a value: {message}")

    def one(value: Any, path: Loc) -> Any:
        if isinstance(value, dict):
            return {key: one(item, (*path, str(key))) for key, item in value.items()}
        if isinstance(value, list):
            return [one(item, (*path, index)) for index, item in enumerate(value)]
        if not isinstance(value, str):
            return value
        try:
            result = _evaluate(_parsed(value, path, where), env, refuse)
        except _TemplateError as exc:
            raise ConfigError(where, _field(path), exc.problem) from None
        cast = _caster(path)
        # As the CLI does: a value that interpolation changed is converted where the schema
        # wants a number or a boolean (`replicas: ${REPLICAS:-1}`); the CLI would not convert
        # it afterwards, as it no longer changes there.
        if cast is not None and result != value:
            try:
                return cast(result)
            except ValueError as exc:
                raise ConfigError(where, _field(path), f"{result!r}: {exc}") from None
        return result.replace("$", "$$") if escape else result

    return one(doc, ())


def escape_dollars(doc: Any) -> Any:
    """A copy with every `$` in a string value doubled, so compose reads it literally."""
    if isinstance(doc, str):
        return doc.replace("$", "$$")
    if isinstance(doc, dict):
        return {key: escape_dollars(value) for key, value in doc.items()}
    if isinstance(doc, list):
        return [escape_dollars(value) for value in doc]
    return doc


_SVC = ("services", "*")
# The docker CLI's interpolateTypeCastMapping (cli/compose/loader/interpolate.go); "*" is
# any key, "[]" any list index.
_CASTS: dict[tuple[str, ...], Callable[[str], Any]] = {
    (*_SVC, "configs", "[]", "mode"): to_int,
    (*_SVC, "secrets", "[]", "mode"): to_int,
    (*_SVC, "healthcheck", "retries"): to_int,
    (*_SVC, "healthcheck", "disable"): to_bool,
    (*_SVC, "deploy", "replicas"): to_int,
    (*_SVC, "deploy", "update_config", "parallelism"): to_int,
    (*_SVC, "deploy", "update_config", "max_failure_ratio"): to_float,
    (*_SVC, "deploy", "rollback_config", "parallelism"): to_int,
    (*_SVC, "deploy", "rollback_config", "max_failure_ratio"): to_float,
    (*_SVC, "deploy", "restart_policy", "max_attempts"): to_int,
    (*_SVC, "deploy", "placement", "max_replicas_per_node"): to_int,
    (*_SVC, "ports", "[]", "target"): to_int,
    (*_SVC, "ports", "[]", "published"): to_int,
    (*_SVC, "ulimits", "*"): to_int,
    (*_SVC, "ulimits", "*", "hard"): to_int,
    (*_SVC, "ulimits", "*", "soft"): to_int,
    (*_SVC, "privileged"): to_bool,
    (*_SVC, "read_only"): to_bool,
    (*_SVC, "stdin_open"): to_bool,
    (*_SVC, "tty"): to_bool,
    (*_SVC, "volumes", "[]", "read_only"): to_bool,
    (*_SVC, "volumes", "[]", "volume", "nocopy"): to_bool,
    **{(section, "*", "external"): to_bool for section in DECLARED},
    ("networks", "*", "internal"): to_bool,
    ("networks", "*", "attachable"): to_bool,
}


def _caster(path: Loc) -> Callable[[str], Any] | None:
    for pattern, cast in _CASTS.items():
        if len(pattern) == len(path) and all(
            (p == "[]") if isinstance(part, int) else (p in ("*", part))
            for p, part in zip(pattern, path, strict=True)
        ):
            return cast
    return None
