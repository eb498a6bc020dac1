"""Reading an app's env file (abra-style KEY=VALUE lines)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from pvcheck.compose.common import NAME, read_text
from pvcheck.errors import ConfigError

MAX_ENV_BYTES = 256 * 1024


class _EnvProblem(Exception):
    pass


_ENV_KEY = re.compile(NAME)
_ENV_REF = re.compile(rf"\$(?:\{{({NAME})\}}|({NAME}))")
_AFTER_QUOTE = re.compile(r"\s*(#.*)?")
_INLINE_COMMENT = re.compile(r"\s#")


def read_env_file(path: Path) -> dict[str, str]:
    """The variables of an abra-style env file (KEY=VALUE lines); ConfigError names the line."""
    return parse_env(read_text(path, MAX_ENV_BYTES), str(path))


def parse_env(text: str, where: str) -> dict[str, str]:
    """Parse env file text. `$NAME`/`${NAME}` in unquoted and double-quoted values expand to
    a key set on an earlier line (as abra's godotenv does); single quotes keep text as is."""
    env: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if re.match(r"export\s", line):
            line = line[len("export") :].lstrip()
        key, eq, rest = line.partition("=")
        key = key.strip()
        if not eq or not _ENV_KEY.fullmatch(key):
            raise ConfigError(
                where, f"line {number}", "expected KEY=VALUE (KEY: letters, _, digits)"
            )
        try:
            env[key] = _env_value(rest, env)
        except _EnvProblem as exc:
            raise ConfigError(where, f"line {number}", f"{key}: {exc}") from None
    return env


def _env_value(rest: str, env: Mapping[str, str]) -> str:
    text = rest.lstrip()
    if text.startswith("'"):
        end = text.find("'", 1)
        if end < 0:
            raise _EnvProblem("no closing single quote (values span one line)")
        value, tail = text[1:end], text[end + 1 :]
    elif text.startswith('"'):
        value, used = _expand(text[1:], env, quoted=True)
        tail = text[1 + used :]
    else:
        # `#` starts a comment only after whitespace, so `COLOR=#fff` keeps its value.
        cut = _INLINE_COMMENT.search(rest)
        return _expand((rest[: cut.start()] if cut else rest).strip(), env, quoted=False)[0]
    if not _AFTER_QUOTE.fullmatch(tail):
        raise _EnvProblem("text after the closing quote")
    return value


def _expand(text: str, env: Mapping[str, str], quoted: bool) -> tuple[str, int]:
    """Expand references in `text`; when quoted, stop after the closing double quote.

    Returns the value and how many characters were used."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if quoted and char == '"':
            return "".join(out), i + 1
        if char == "\\" and i + 1 < len(text) and (quoted or text[i + 1] == "$"):
            nxt = text[i + 1]
            out.append({"n": "\n", "r": "\r"}.get(nxt, nxt) if quoted else nxt)
            i += 2
            continue
        if char == "$":
            ref = _ENV_REF.match(text, i)
            if ref:
                name = ref[1] or ref[2]
                # godotenv would substitute "" for an unknown name and silently change the
                # value (a password with a `$` in it): refuse and say how to keep it literal.
                if name not in env:
                    raise _EnvProblem(
                        f"${name} is not set on an earlier line (single-quote the value, or "
                        "write \\$, for a literal $)"
                    )
                out.append(env[name])
                i = ref.end()
                continue
            if text.startswith("${", i):
                raise _EnvProblem("${ must be followed by a NAME and }")
        out.append(char)
        i += 1
    if quoted:
        raise _EnvProblem("no closing double quote (values span one line)")
    return "".join(out), i
