"""Which commands of a shell script would run: a small, conservative reading of sh.

It lexes and parses lists, `&&`/`||`, pipelines, `if`/`while`/`until`/`for`/`case`, groups,
functions, `$( … )` and `ssh HOST '…'`, then walks the tree tracking which exit statuses can
reach each point. A command of interest is reported with why control never gets there: the
dead side of `false &&` or `true ||`, a branch a constant condition never takes, anything after
an `exit`, `return`, `exec` or endless loop. What it cannot tell (a variable's value) is taken
as either way; what it cannot read is reported as unreadable, never as running.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

Statuses = frozenset[bool]  # the exit statuses (True: success) a point can be reached with
OK: Statuses = frozenset({True})
FAIL: Statuses = frozenset({False})
EITHER: Statuses = frozenset({True, False})
NONE: Statuses = frozenset()

# Longest first, so `;;` is not read as two `;`.
_OPERATORS: tuple[str, ...] = (";;&", "&>>", "<<<", "<<-", ";;", ";&", "&&", "||", "|&", "&>")
_OPERATORS += (">>", "<<", ">&", "<&", "<>", ">|", "|", "&", ";", "(", ")", "<", ">", "\n")
_REDIRECTS = {"&>>", "<<<", "<<-", "&>", ">>", "<<", ">&", "<&", "<>", ">|", "<", ">"}
_LIST_ENDS = {"then", "elif", "else", "fi", "do", "done", "esac", "}"}
_CASE_ENDS = {";;", ";&", ";;&"}
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\[[^]]*\])?\+?=")
_PREFIXES = {"sudo", "time", "command", "nohup"}  # run the rest of the line as the command
_SSH_OPTS_WITH_VALUE = set("BbcDEeFIiJLlmOopQRSWw")
MAX_NESTING = 3  # ssh and $( ) inside each other, as deep as pvcheck follows
_MAX_DEPTH = 32  # compound commands inside each other, as deep as pvcheck reads
_MAX_CALLS = 64  # function calls followed in one script, nested scripts included


class ShellSyntaxError(ValueError):
    """The text is not shell pvcheck can read (unbalanced quotes, a missing `fi`, …)."""


@dataclass(frozen=True)
class Reached:
    """A command of interest: its argv, the source line it is on, and why it never runs."""

    argv: tuple[str, ...]
    line: str
    dead: str | None = None
    upstream: tuple[tuple[str, ...], ...] = ()  # the commands piped into it, if it reads a pipe
    stdin: str = ""  # the redirection (`<`, `<<`, `<<<`, …) its stdin comes from, if any


def ssh_remote_command(argv: Sequence[str]) -> str | None:
    """Pure: the command an `ssh [options] HOST COMMAND...` line runs on the host."""
    i = 1
    while i < len(argv) and argv[i].startswith("-"):
        opt = argv[i]
        takes_value = len(opt) == 2 and opt[1] in _SSH_OPTS_WITH_VALUE
        i += 2 if takes_value else 1
    rest = argv[i + 1 :]  # argv[i] is the host
    return " ".join(rest) if rest else None


# --- lexing ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Token:
    text: str  # a word's value with its quotes removed, or the operator
    line: int
    op: bool = False
    expands: bool = False  # holds `$` or a backquote outside single quotes: not a fixed value
    subs: tuple[str, ...] = ()  # the scripts of its command substitutions
    quoted: bool = False  # some of it was quoted: not a reserved word, not a plain pattern


def _closing(s: str, i: int, opener: str, closer: str) -> int:
    """Index of the `closer` matching an `opener` just before i, skipping quoted text."""
    depth = 1
    while i < len(s):
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c in "'\"":
            end = s.find(c, i + 1)
            while c == '"' and end > 0 and s[end - 1] == "\\":
                end = s.find(c, end + 1)
            if end < 0:
                raise ShellSyntaxError(f"unbalanced {c}")
            i = end + 1
            continue
        depth += (c == opener) - (c == closer)
        if depth == 0:
            return i
        i += 1
    raise ShellSyntaxError(f"no closing {closer!r}")


class _Lexer:
    def __init__(self, text: str) -> None:
        self.s, self.i, self.line = text, 0, 0
        self.out: list[Token] = []
        self.delimiter: bool | None = None  # after `<<` (False) or `<<-` (True): its word
        self.heredocs: list[tuple[str, bool, bool]] = []  # (delimiter, strip tabs, quoted)
        self.parens: list[bool] = []  # open `(`s, each True when inside `(( ))` arithmetic
        self._reset()

    def _reset(self) -> None:
        self.word: list[str] = []
        self.started = self.quoted = self.expands = False
        self.subs: list[str] = []
        self.word_line = self.line

    def _add(self, text: str, quoted: bool = False) -> None:
        if not self.started:
            self.started, self.word_line = True, self.line
        self.word.append(text)
        self.quoted |= quoted

    def _flush(self) -> None:
        if self.started:
            text = "".join(self.word)
            subs = tuple(self.subs)
            self.out.append(Token(text, self.word_line, False, self.expands, subs, self.quoted))
            if self.delimiter is not None:
                self.heredocs.append((text, self.delimiter, self.quoted))
                self.delimiter = None
        self._reset()

    def tokens(self) -> list[Token]:
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in " \t":
                self._flush()
                self.i += 1
            elif c == "#" and not self.started:
                end = self.s.find("\n", self.i)
                self.i = len(self.s) if end < 0 else end
            elif c == "\\":
                self._escape()
            elif c == "'":
                self._single()
            elif c == '"':
                self._double()
            elif c in "$`":
                self._expansion()
            elif c in "|&;()<>\n":
                self._operator()
            else:
                self._add(c)
                self.i += 1
        self._flush()
        return self.out

    def _escape(self) -> None:
        nxt = self.s[self.i + 1 : self.i + 2]
        if nxt == "\n":  # a line continuation
            self.line += 1
        else:
            self._add(nxt or "\\", quoted=True)
        self.i += 2

    def _single(self) -> None:
        end = self.s.find("'", self.i + 1)
        if end < 0:
            raise ShellSyntaxError("unbalanced '")
        text = self.s[self.i + 1 : end]
        self._add(text, quoted=True)
        self.line += text.count("\n")
        self.i = end + 1

    def _double(self) -> None:
        self._add("", quoted=True)
        self.i += 1
        while self.i < len(self.s):
            c = self.s[self.i]
            if c == '"':
                self.i += 1
                return
            if c == "\\" and self.s[self.i + 1 : self.i + 2] in ("$", "`", '"', "\\"):
                self._add(self.s[self.i + 1])
                self.i += 2
            elif c in "$`":
                self._expansion()
            else:
                self.line += c == "\n"
                self._add(c)
                self.i += 1
        raise ShellSyntaxError('unbalanced "')

    def _expansion(self) -> None:
        s, i = self.s, self.i
        if s[i] == "`":
            end = s.find("`", i + 1)
            if end < 0:
                raise ShellSyntaxError("unbalanced `")
            self.subs.append(s[i + 1 : end])
        elif s.startswith("$(", i):
            end = _closing(s, i + 2, "(", ")")
            if not s.startswith("$((", i):  # arithmetic runs no command
                self.subs.append(s[i + 2 : end])
        elif s.startswith("${", i):
            end = _closing(s, i + 2, "{", "}")
        elif re.match(r"[A-Za-z0-9_@*#?$!-]", s[i + 1 : i + 2]):
            end = i  # `$name`: the name is read as ordinary word characters
        else:
            self._add("$")  # a lone `$` is literal
            self.i += 1
            return
        self.expands = True
        self._add(s[i : end + 1])
        self.line += s[i : end + 1].count("\n")
        self.i = end + 1

    def _operator(self) -> None:
        op = next(o for o in _OPERATORS if self.s.startswith(o, self.i))
        if op in _REDIRECTS and self.started and not self.quoted and "".join(self.word).isdigit():
            self._reset()  # `2>`: the digits name a file descriptor, not a word
        self._flush()
        if self.delimiter is not None:
            raise ShellSyntaxError(f"a here-document has no delimiter before {op!r}")
        arithmetic = bool(self.parens) and self.parens[-1]
        if op in ("<<", "<<-") and not arithmetic:  # in `(( ))`, `<<` is a shift
            self.delimiter = op == "<<-"
        elif op == "(":
            self.parens.append(arithmetic or self.s.startswith("((", self.i))
        elif op == ")" and self.parens:
            self.parens.pop()
        self.out.append(Token(op, self.line, op=True))
        self.line += op == "\n"
        self.i += len(op)
        if op == "\n":
            self._heredoc_bodies()

    def _heredoc_bodies(self) -> None:
        """Skip the bodies of the here-documents the line just ended opened: they are text.
        As in bash and dash, an unquoted delimiter's body joins `\\`-newline before the
        delimiter is looked for; a body with no delimiter runs to the end of the script."""
        for delimiter, strip_tabs, quoted in self.heredocs:
            while self.i < len(self.s):
                line = self._body_line()
                while not quoted and _continues(line) and self.i < len(self.s):
                    line = line[:-1] + self._body_line()
                if (line.lstrip("\t") if strip_tabs else line) == delimiter:
                    break
        self.heredocs = []

    def _body_line(self) -> str:
        end = self.s.find("\n", self.i)
        end = len(self.s) if end < 0 else end
        line = self.s[self.i : end]
        self.i, self.line = end + 1, self.line + 1
        return line


def _continues(line: str) -> bool:
    """An odd number of trailing backslashes: the last one escapes the newline."""
    return (len(line) - len(line.rstrip("\\"))) % 2 == 1


# --- parsing ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Simple:
    words: tuple[Token, ...]
    line: str  # the source line, for findings
    redirects: tuple[str, ...] = ()  # its redirection operators


@dataclass(frozen=True)
class Pipeline:
    commands: tuple[Node, ...]
    negated: bool = False


@dataclass(frozen=True)
class AndOr:
    first: Pipeline
    rest: tuple[tuple[str, Pipeline], ...] = ()


@dataclass(frozen=True)
class ShList:
    items: tuple[tuple[AndOr, bool], ...]  # each and-or list, and whether `&` backgrounds it


@dataclass(frozen=True)
class Group:
    body: ShList
    subshell: bool


@dataclass(frozen=True)
class If:
    arms: tuple[tuple[ShList, ShList], ...]  # (condition, body) for `if` and each `elif`
    otherwise: ShList | None


@dataclass(frozen=True)
class Loop:
    keyword: str  # while / until
    cond: ShList
    body: ShList


@dataclass(frozen=True)
class For:
    words: tuple[Token, ...] | None  # None: `for x` or `for ((…))`, whose list is not known
    body: ShList
    var: str = ""


@dataclass(frozen=True)
class Case:
    word: Token
    arms: tuple[tuple[tuple[Token, ...], ShList], ...]


@dataclass(frozen=True)
class FuncDef:
    name: str
    body: Node


@dataclass(frozen=True)
class Redirected:
    """A compound command with redirections of its own (`{ …; } </dev/null`)."""

    body: Node
    redirects: tuple[str, ...]


Node = Simple | Group | If | Loop | For | Case | FuncDef | Redirected


class _Parser:
    def __init__(self, tokens: list[Token], line_text: Callable[[int], str]) -> None:
        self.t, self.i, self.line_text = tokens, 0, line_text
        self.depth = 0

    def peek(self, ahead: int = 0) -> Token | None:
        k = self.i + ahead
        return self.t[k] if k < len(self.t) else None

    def at_word(self, *words: str) -> bool:
        """At one of these reserved words: unquoted, since `"fi"` is an ordinary word."""
        tok = self.peek()
        return tok is not None and not tok.op and not tok.quoted and tok.text in words

    def at_op(self, *ops: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.op and tok.text in ops

    def take(self) -> Token:
        tok = self.peek()
        if tok is None:
            raise ShellSyntaxError("the script ends in the middle of a command")
        self.i += 1
        return tok

    def expect(self, text: str, op: bool = False) -> None:
        tok = self.take()
        if tok.text != text or tok.op != op or (tok.quoted and not op):
            raise ShellSyntaxError(f"expected {text!r}, found {tok.text!r}")

    def skip_newlines(self) -> None:
        while self.at_op("\n"):
            self.i += 1

    def script(self) -> ShList:
        body = self.shlist()
        tok = self.peek()
        if tok is not None:
            raise ShellSyntaxError(f"unexpected {tok.text!r}")
        return body

    def shlist(self) -> ShList:
        items: list[tuple[AndOr, bool]] = []
        while True:
            while self.at_op("\n", ";"):
                self.i += 1
            tok = self.peek()
            ends = tok is None or (tok.op and tok.text in {")", *_CASE_ENDS})
            if ends or self.at_word(*_LIST_ENDS):
                return ShList(tuple(items))
            node = self.and_or()
            background = self.at_op("&")
            if background or self.at_op(";", "\n"):
                self.i += 1
            items.append((node, background))

    def and_or(self) -> AndOr:
        first, rest = self.pipeline(), []
        while self.at_op("&&", "||"):
            op = self.take().text
            self.skip_newlines()
            rest.append((op, self.pipeline()))
        return AndOr(first, tuple(rest))

    def pipeline(self) -> Pipeline:
        negated = False
        while self.at_word("!"):
            self.i += 1
            negated = not negated
        commands = [self.command()]
        while self.at_op("|", "|&"):
            self.i += 1
            self.skip_newlines()
            commands.append(self.command())
        return Pipeline(tuple(commands), negated)

    def command(self) -> Node:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise ShellSyntaxError(f"compound commands nested deeper than {_MAX_DEPTH}")
        try:
            return self._command()
        finally:
            self.depth -= 1

    def _command(self) -> Node:
        tok, nxt = self.peek(), self.peek(1)
        if tok is None:
            raise ShellSyntaxError("a command is missing")
        node: Node
        keyword = None if tok.op or tok.quoted else tok.text
        if tok.op and tok.text in _REDIRECTS:
            return self.simple()
        if tok.op and tok.text == "(":
            self.i += 1
            node = Group(self.shlist(), subshell=True)
            self.expect(")", op=True)
        elif tok.op:
            raise ShellSyntaxError(f"unexpected {tok.text!r}")
        elif keyword == "{":
            self.i += 1
            node = Group(self.shlist(), subshell=False)
            self.expect("}")
        elif keyword == "if":
            node = self.if_()
        elif keyword in ("while", "until"):
            node = self.loop()
        elif keyword == "for":
            node = self.for_()
        elif keyword == "case":
            node = self.case()
        elif keyword == "[[":
            return self.conditional()
        elif keyword == "function":
            self.i += 1
            return self.funcdef()
        elif nxt is not None and nxt.op and nxt.text == "(":  # name() body
            return self.funcdef()
        else:
            return self.simple()
        redirects = self.redirections()
        return Redirected(node, redirects) if redirects else node

    def redirections(self) -> tuple[str, ...]:
        ops = []
        while self.at_op(*_REDIRECTS):
            ops.append(self.take().text)
            if self.peek() is not None and not self.at_op(*_OPERATORS):
                self.i += 1  # the target (or here-document delimiter)
        return tuple(ops)

    def simple(self) -> Simple:
        words: list[Token] = []
        redirects: list[str] = []
        first = self.t[self.i].line
        while (tok := self.peek()) is not None:
            if tok.op and tok.text in _REDIRECTS:
                redirects += self.redirections()
            elif tok.op:
                break
            else:
                words.append(tok)
                self.i += 1
        return Simple(tuple(words), self.source(first), tuple(redirects))

    def conditional(self) -> Simple:
        """`[[ … ]]`: one command up to its `]]`, whose `&&`, `(`, `<` … are its own operands,
        not the shell's operators (bash reads them so)."""
        first = self.t[self.i].line
        words = [self.take()]
        while not (words[-1].text == "]]" and not words[-1].op and not words[-1].quoted):
            tok = self.take()
            if tok.op and tok.text == "\n" and words[-1].text not in ("&&", "||"):
                raise ShellSyntaxError("a newline inside `[[ … ]]`")
            if not (tok.op and tok.text == "\n"):
                words.append(tok)
        return Simple(tuple(words), self.source(first), self.redirections())

    def source(self, first: int) -> str:
        """The source lines from `first` to the last token read, `\\`-newlines joined."""
        last = self.t[self.i - 1].line if self.i else first
        lines = [self.line_text(k) for k in range(first, min(last, first + 20) + 1)]
        if len(set(lines)) == 1:  # one line, or a nested script's one line
            return lines[0]
        parts = [x[:-1].rstrip() if _continues(x) else x for x in lines]
        return " ".join([parts[0], *(x.lstrip() for x in parts[1:])])

    def funcdef(self) -> FuncDef:
        name = self.take().text
        if self.at_op("("):
            self.i += 1
            self.expect(")", op=True)
        self.skip_newlines()
        return FuncDef(name, self.command())

    def if_(self) -> If:
        self.expect("if")
        arms = []
        while True:
            cond = self.shlist()
            self.expect("then")
            arms.append((cond, self.shlist()))
            if not self.at_word("elif"):
                break
            self.i += 1
        otherwise = None
        if self.at_word("else"):
            self.i += 1
            otherwise = self.shlist()
        self.expect("fi")
        return If(tuple(arms), otherwise)

    def loop(self) -> Loop:
        keyword = self.take().text
        cond = self.shlist()
        self.expect("do")
        body = self.shlist()
        self.expect("done")
        return Loop(keyword, cond, body)

    def for_(self) -> For:
        self.expect("for")
        words: tuple[Token, ...] | None = None
        var = ""
        if self.at_op("("):  # for ((…)): skip the arithmetic
            while not (self.at_op(")") and (nxt := self.peek(1)) is not None and nxt.text == ")"):
                self.take()
            self.i += 2
        else:
            var = self.take().text
            self.skip_newlines()
            if self.at_word("in"):
                self.i += 1
                listed = []
                while (tok := self.peek()) is not None and not tok.op:
                    listed.append(self.take())
                words = tuple(listed)
        while self.at_op(";", "\n"):
            self.i += 1
        self.expect("do")
        body = self.shlist()
        self.expect("done")
        return For(words, body, var)

    def case(self) -> Case:
        self.expect("case")
        word = self.take()
        self.skip_newlines()
        self.expect("in")
        arms: list[tuple[tuple[Token, ...], ShList]] = []
        while True:
            self.skip_newlines()
            if self.at_word("esac"):
                self.i += 1
                return Case(word, tuple(arms))
            if self.at_op("("):
                self.i += 1
            patterns = [self.take()]
            while self.at_op("|"):
                self.i += 1
                patterns.append(self.take())
            self.expect(")", op=True)
            arms.append((tuple(patterns), self.shlist()))
            if self.at_op(*_CASE_ENDS):
                self.i += 1


def parse(text: str, line_text: Callable[[int], str]) -> ShList:
    """Pure: the script's tree; `line_text` names the source line of a token's line number."""
    return _Parser(_Lexer(text).tokens(), line_text).script()


# --- what runs -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Flow:
    """How control leaves a piece of script."""

    falls: Statuses  # statuses it may go on to the next command with
    leaves: Statuses = NONE  # statuses of an `exit` that may end the (sub)shell
    returns: Statuses = NONE  # statuses of a `return` that may end the function
    breaks: bool = False  # a `break` may leave the enclosing loop
    why: str = ""  # when it never goes on: what stops it


def _then(a: Flow, b: Flow) -> Flow:
    """b, run after a went on: the ways out of either."""
    return Flow(b.falls, a.leaves | b.leaves, a.returns | b.returns, a.breaks or b.breaks, b.why)


def _contained(flow: Flow) -> Flow:
    """A subshell's flow as its parent sees it: its exits end only the subshell."""
    return Flow(flow.falls | flow.leaves | flow.returns, why=flow.why)


def command_text(node: Node | Pipeline | AndOr | ShList, limit: int = 80) -> str:
    """Pure: a short rendering of a piece of script for findings."""
    text = _render(node)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _render(node: Node | Pipeline | AndOr | ShList) -> str:
    match node:
        case Simple():
            return " ".join(w.text for w in node.words)
        case Pipeline():
            text = " | ".join(_render(c) for c in node.commands)
            return f"! {text}" if node.negated else text
        case AndOr():
            rest = "".join(f" {op} {_render(p)}" for op, p in node.rest)
            return _render(node.first) + rest
        case ShList():
            return "; ".join(_render(a) + (" &" if bg else "") for a, bg in node.items)
        case Group():
            body = _render(node.body)
            return f"( {body} )" if node.subshell else f"{{ {body}; }}"
        case If() | Loop() | For() | Case():
            return f"{type(node).__name__.lower()} …"
        case FuncDef():
            return f"{node.name}() …"
        case Redirected():
            return _render(node.body) + " " + " ".join(f"{r} …" for r in node.redirects)


_INTS: dict[str, Callable[[int, int], bool]] = {"-eq": int.__eq__, "-ne": int.__ne__}
_INTS |= {"-gt": int.__gt__, "-ge": int.__ge__, "-lt": int.__lt__, "-le": int.__le__}
_TEST_INT = re.compile(r"[+-]?[0-9]+")  # ASCII only: `1_0`, Arabic-Indic digits: sh errors
_COND_INT = re.compile(r"[+-]?(0|[1-9][0-9]*)")  # in `[[ ]]` operands are arithmetic: 010 is 8
_INT64 = 2**63
_REGEX_CHARS = set("\\.^$*+?()[]{}|")


def _test_int(text: str) -> int | None:
    """Pure: the number `test` reads (bash and dash allow blanks around it), or None: an
    error, status 2 (also past 64 bits)."""
    text = text.strip(" \t\n")
    if not _TEST_INT.fullmatch(text):
        return None
    n = int(text)
    return n if -_INT64 <= n < _INT64 else None


def _cond_status(words: tuple[Token, ...]) -> Statuses:
    """Pure: what `[[ … ]]` returns when its words are fixed (none expands). Its `==`/`!=`
    right side is a bash pattern, `=~` a regex and `-eq`'s operands arithmetic; what pvcheck
    cannot evaluate exactly is either way."""
    inner = words[1:-1]
    if any(w.op and w.text in ("&&", "||") for w in inner):
        return _cond_list(inner)
    if any(w.op for w in inner):  # `(`, `<` …: grouping, or a comparison by locale
        return EITHER
    args = [w.text for w in inner]
    if len(args) != 3:
        return _test_status(args) if len(args) < 3 else EITHER
    lhs, op, rhs = args
    if op in ("=", "==", "!="):
        if not set(rhs) & set("*?["):
            same = lhs == rhs
        elif inner[2].quoted or "[" in rhs:  # quoted parts are literal; classes differ
            return EITHER
        else:
            same = fnmatch.fnmatchcase(lhs, rhs)  # `*` and `?` mean the same in bash
        return OK if same == (op != "!=") else FAIL
    if op == "=~":
        if set(rhs) & _REGEX_CHARS:
            return EITHER
        return OK if rhs in lhs else FAIL  # a regex with no special character: a substring
    if op in _INTS:
        if not (_COND_INT.fullmatch(lhs) and _COND_INT.fullmatch(rhs)):
            return EITHER  # an arithmetic expression: a name is a variable
        return OK if _INTS[op](int(lhs), int(rhs)) else FAIL
    return _test_status(args)


def _cond_list(inner: tuple[Token, ...]) -> Statuses:
    """Pure: `[[ A && B || C ]]`, `&&` binding tighter, as bash does."""
    either: Statuses = FAIL
    both: Statuses = OK
    part: list[Token] = []
    for tok in (*inner, Token("||", 0, op=True)):
        if not (tok.op and tok.text in ("&&", "||")):
            part.append(tok)
            continue
        if not part:
            return EITHER  # a syntax error in bash
        status = _cond_status((Token("[[", 0), *part, Token("]]", 0)))
        both = frozenset(a and b for a in both for b in status)
        part = []
        if tok.text == "||":
            either, both = frozenset(a or b for a in either for b in both), OK
    return either


def _test_status(args: list[str]) -> Statuses:
    """Pure: what `test ARGS` / `[ ARGS ]` returns when every argument is a fixed value."""
    result: bool | None = None
    if len(args) == 0:
        result = False
    elif len(args) == 1:
        result = args[0] != ""
    elif len(args) == 2 and args[0] in ("!", "-n", "-z"):
        result = (args[1] != "") == (args[0] == "-n")
    elif len(args) == 3 and args[1] in ("=", "==", "!="):
        result = (args[0] == args[2]) == (args[1] != "!=")
    elif len(args) == 3 and args[1] in _INTS:
        lhs, rhs = _test_int(args[0]), _test_int(args[2])
        # test exits 2 on a non-number: false, so what follows its `&&` never runs
        result = False if lhs is None or rhs is None else _INTS[args[1]](lhs, rhs)
    if result is None:
        return EITHER  # file tests and the like depend on the host
    return OK if result else FAIL


def _flip(statuses: Statuses) -> Statuses:
    return frozenset(not s for s in statuses)


def _exit_status(args: list[str]) -> Statuses:
    if args and args[0].isdigit():
        return OK if int(args[0]) == 0 else FAIL
    return EITHER


@dataclass
class _Run:
    """One walk over a script: what it found, the functions it knows and `set -e`."""

    wanted: Callable[[tuple[str, ...]], bool]
    found: list[Reached] = field(default_factory=list)
    functions: dict[str, Node] = field(default_factory=dict)
    called: set[str] = field(default_factory=set)
    errexit: bool = False
    depth: int = 0
    calls: list[int] = field(default_factory=lambda: [_MAX_CALLS])  # left, shared with children
    active: set[str] = field(default_factory=set)  # the functions being called right now
    overrides: dict[str, str] = field(default_factory=dict)  # aliases and `hash -p`: name, how
    path_changed: str = ""  # the command that set PATH, after which any command may be another
    upstream: tuple[tuple[str, ...], ...] = ()  # what the pipe into this point carries
    stdin: str = ""  # the redirection this point's stdin comes from

    # -- the walk over code that can run --
    def shlist(self, node: ShList, checked: bool = False) -> Flow:
        flow = Flow(OK)
        for k, (item, background) in enumerate(node.items):
            if not flow.falls:
                for rest, _ in node.items[k:]:
                    why = flow.why or "what comes before it never finishes"
                    self.dead(rest, f"never reached: {why}")
                break
            if background:  # `&`: runs on its own; its exit ends only itself
                self.and_or(item, True)
                step = Flow(OK)
            else:
                step = self.and_or(item, checked)
            flow = _then(flow, step)
        return flow

    def and_or(self, node: AndOr, checked: bool) -> Flow:
        flow = self.pipeline(node.first, checked or bool(node.rest))
        status_of = command_text(node.first)
        for k, (op, pipe) in enumerate(node.rest):
            runs_on = op == "&&"
            if runs_on not in flow.falls:
                self.dead(pipe, self._skipped(flow, op, status_of))
                continue
            ran = self.pipeline(pipe, checked or k < len(node.rest) - 1)
            skipped = frozenset(s for s in flow.falls if s != runs_on)
            flow = Flow(
                ran.falls | skipped,
                flow.leaves | ran.leaves,
                flow.returns | ran.returns,
                flow.breaks or ran.breaks,
                ran.why or flow.why,
            )
            status_of = command_text(pipe)
        plain = not node.rest and not node.first.negated
        if self.errexit and not checked and plain and flow.falls == FAIL:
            why = f"`set -e` ends the script when `{status_of}` fails, and it always does"
            return Flow(NONE, flow.leaves | FAIL, flow.returns, flow.breaks, why)
        return flow

    @staticmethod
    def _skipped(flow: Flow, op: str, status_of: str) -> str:
        if not flow.falls:
            return f"never reached: {flow.why}"
        outcome = "fails" if op == "&&" else "succeeds"
        return f"never runs: `{status_of}` always {outcome}, so what follows its `{op}` is skipped"

    def pipeline(self, node: Pipeline, checked: bool) -> Flow:
        checked = checked or node.negated
        if len(node.commands) == 1:
            flow = self.command(node.commands[0], checked)
        else:  # every stage runs in a subshell of its own
            outer = self.upstream, self.stdin
            flows = []
            for k, stage in enumerate(node.commands):
                if k:  # it reads the pipe: what came into the pipeline and each stage before
                    fed = (tuple(_argv(s.words)) for s in _simples(node.commands[k - 1]))
                    self.upstream, self.stdin = (*self.upstream, *(a for a in fed if a)), ""
                flows.append(_contained(self.command(stage, True)))
            self.upstream, self.stdin = outer
            flow = flows[-1]
        if node.negated:
            return Flow(_flip(flow.falls), flow.leaves, flow.returns, flow.breaks, flow.why)
        return flow

    def command(self, node: Node, checked: bool) -> Flow:
        match node:
            case Simple():
                return self.simple(node, checked)
            case Group(subshell=True):
                errexit, path_changed = self.errexit, self.path_changed
                flow = _contained(self.shlist(node.body, checked))
                self.errexit, self.path_changed = errexit, path_changed
                return flow
            case Redirected():
                stdin = self.stdin
                self.stdin = next((r for r in node.redirects if "<" in r), stdin)
                flow = self.command(node.body, checked)
                self.stdin = stdin
                return flow
            case Group():
                return self.shlist(node.body, checked)
            case If():
                return self.if_(node, checked)
            case Loop():
                return self.loop(node, checked)
            case For():
                return self.for_(node, checked)
            case Case():
                return self.case(node, checked)
            case FuncDef():
                self.functions[node.name] = node.body
                return Flow(OK)

    def if_(self, node: If, checked: bool) -> Flow:
        out = Flow(NONE, why="")
        why_not: str | None = None  # set once an earlier condition settles the branch
        for cond, body in node.arms:
            if why_not is not None:
                self.dead(cond, why_not)
                self.dead(body, why_not)
                continue
            c = self.shlist(cond, checked=True)
            out = Flow(out.falls, out.leaves | c.leaves, out.returns | c.returns, out.breaks)
            shown = command_text(cond)
            if True in c.falls:
                out = self._join(out, self.shlist(body, checked))
            else:
                self.dead(body, self._never(c, f"`if {shown}` is never true"))
            if False not in c.falls:
                why_not = self._never(c, f"`if {shown}` is always true")
        if why_not is not None:
            if node.otherwise is not None:
                self.dead(node.otherwise, why_not)
        elif node.otherwise is not None:
            out = self._join(out, self.shlist(node.otherwise, checked))
        else:
            out = self._join(out, Flow(OK))  # no branch taken: `if` returns 0
        if not out.falls:
            why = "every branch of the `if` before it ends the script"
            out = Flow(NONE, out.leaves, out.returns, out.breaks, why)
        return out

    @staticmethod
    def _never(cond: Flow, because: str) -> str:
        return f"never reached: {cond.why}" if not cond.falls else f"never runs: {because}"

    @staticmethod
    def _join(a: Flow, b: Flow) -> Flow:
        """Either a or b happened."""
        return Flow(
            a.falls | b.falls,
            a.leaves | b.leaves,
            a.returns | b.returns,
            a.breaks or b.breaks,
            a.why or b.why,
        )

    def loop(self, node: Loop, checked: bool) -> Flow:
        enters = node.keyword == "while"  # the condition status that runs the body
        c = self.shlist(node.cond, checked=True)
        shown = f"{node.keyword} {command_text(node.cond)}"
        body = None
        if enters in c.falls:
            body = self.shlist(node.body, checked)
        else:
            self.dead(node.body, self._never(c, f"`{shown}` never runs its body"))
        ends = (not enters) in c.falls or (body is not None and body.breaks)
        leaves, returns = c.leaves, c.returns
        if body is not None:
            leaves, returns = leaves | body.leaves, returns | body.returns
        why = "" if ends else c.why or f"`{shown}` never ends (no `break` leaves it)"
        return Flow(OK if ends else NONE, leaves, returns, False, why)

    def for_(self, node: For, checked: bool) -> Flow:
        if node.words is not None and not node.words:
            self.dead(node.body, "never runs: a `for` over an empty list")
            return Flow(OK)
        if node.var == "PATH":
            self.path_changed = "for PATH in …"
        body = self.shlist(node.body, checked)
        once = node.words is not None and not any(w.expands for w in node.words)
        if once and not body.falls and not body.breaks:  # it runs, and never comes back
            return Flow(NONE, body.leaves, body.returns, why=body.why)
        return Flow(OK, body.leaves, body.returns)

    def case(self, node: Case, checked: bool) -> Flow:
        out = Flow(NONE)
        matched: str | None = None  # an earlier pattern that always matches
        for patterns, body in node.arms:
            if matched is not None:
                self.dead(body, f"never runs: `case` always takes the `{matched})` branch")
                continue
            fixed = not node.word.expands and not any(p.expands for p in patterns)
            hits = [p for p in patterns if fnmatch.fnmatchcase(node.word.text, p.text)]
            if fixed and not hits:
                self.dead(body, f"never runs: `{node.word.text}` matches none of its patterns")
                continue
            out = self._join(out, self.shlist(body, checked))
            if fixed:
                matched = hits[0].text
        return out if matched is not None else self._join(out, Flow(OK))

    def simple(self, node: Simple, checked: bool) -> Flow:
        for word in node.words:
            for sub in word.subs:  # $( … ) runs in a subshell that sees the functions
                self.nested(sub, node.line, subshell=True)
        argv = _argv(node.words)
        lead = [w.text for w in node.words[: len(node.words) - len(argv)]]  # `X=1 sudo` …
        if not argv:
            self.path_changed = _path_change(lead) or self.path_changed
            return Flow(EITHER if any(w.subs for w in node.words) else OK)
        name, text = argv[0], " ".join(argv)
        remote = ssh_remote_command(argv) if name == "ssh" else None
        shadow = next((w for w in (*lead, name) if w in self.functions or w in self.overrides), "")
        if shadow:  # the function (or alias) runs instead: the command it names never does
            how = self.overrides.get(shadow, "a shell function")
            why = f"never runs: `{shadow}` is {how} here, which runs instead of the command"
            if self.wanted(tuple(argv)):
                self.found.append(Reached(tuple(argv), node.line, why))
            if remote:
                self._dead_script(remote, node.line, why)
            return self.call(shadow, checked) if shadow in self.functions else Flow(EITHER)
        path = _path_change(lead) or self.path_changed
        stdin = next((r for r in node.redirects if "<" in r), self.stdin)
        self._note(argv, node.line, path, stdin)
        if remote:
            self.nested(remote, node.line, subshell=False, path=path)
        elif name in ("true", ":"):
            return Flow(OK)
        elif name == "false":
            return Flow(FAIL)
        elif name in ("exit", "return"):
            status = _exit_status(argv[1:])
            why = f"`{text}` always ends the script before it"
            if name == "exit":
                return Flow(NONE, leaves=status, why=why)
            return Flow(NONE, returns=status, why=why)
        elif name in ("break", "continue"):
            return Flow(NONE, breaks=name == "break", why=f"`{text}` always leaves the loop first")
        elif name == "exec" and len(argv) > 1:
            self._note(argv[1:], node.line, path, stdin)
            return Flow(NONE, leaves=EITHER, why=f"`{text}` replaces the shell before it")
        elif name == "set":
            self._set(argv[1:])
            return Flow(OK)
        elif name in ("[", "test", "[["):
            return Flow(self._test(node.words, argv))
        else:
            self._overrides(argv)
        return Flow(EITHER)

    def _note(self, argv: list[str], line: str, path: str, stdin: str) -> None:
        if self.wanted(tuple(argv)):
            why = None
            if path:  # a PATH without /usr/bin, or with a directory of fakes first
                why = f"PATH is changed (`{_clip(path)}`): pvcheck cannot tell what it runs"
            self.found.append(Reached(tuple(argv), line, why, self.upstream, stdin))

    def _overrides(self, argv: list[str]) -> None:
        """Note what changes which program a name runs: PATH, an alias, `hash -p`."""
        name, args = argv[0], argv[1:]
        if name in ("export", "declare", "typeset", "local", "readonly"):
            self.path_changed = _path_change(args) or self.path_changed
        elif name in ("unset", "read", "printf", "mapfile", "readarray", "getopts"):
            if "PATH" in args:  # `unset PATH`, `read PATH`, `printf -v PATH …`
                self.path_changed = " ".join(argv)
        elif name == "alias":
            for arg in args:
                if "=" in arg:
                    self.overrides[arg.split("=", 1)[0]] = f"an alias (`alias {_clip(arg)}`)"
        elif name == "hash" and "-p" in args[:-2]:
            k = args.index("-p")
            for hashed in args[k + 2 :]:
                self.overrides[hashed] = f"hashed to {args[k + 1]} (`hash -p`)"

    @staticmethod
    def _test(words: tuple[Token, ...], argv: list[str]) -> Statuses:
        if any(w.expands for w in words):
            return EITHER
        if argv[0] == "[[":
            start = len(words) - len(argv)
            quoted = words[start].quoted  # `"[["` is no keyword: a command not found
            return FAIL if quoted else _cond_status(words[start:])
        if argv[0] == "test":
            return _test_status(argv[1:])
        return _test_status(argv[1:-1]) if argv[-1] == "]" else FAIL

    def _set(self, args: list[str]) -> None:
        for k, arg in enumerate(args):
            if arg == "--":  # the rest are positional parameters
                return
            if arg in ("-o", "+o") and args[k + 1 : k + 2] == ["errexit"]:
                self.errexit = arg == "-o"
            elif len(arg) > 1 and arg[0] in "-+" and arg != "--" and "e" in arg[1:]:
                self.errexit = arg[0] == "-"

    def call(self, name: str, checked: bool) -> Flow:
        self.called.add(name)
        if name in self.active or self.calls[0] <= 0:  # recursion, or too many calls: unknown
            return Flow(EITHER)
        self.calls[0] -= 1
        self.active.add(name)
        try:
            flow = self.command(self.functions[name], checked)
        finally:
            self.active.discard(name)
        return Flow(flow.falls | flow.returns, flow.leaves, why=flow.why)

    def nested(self, script: str, line: str, subshell: bool, path: str | None = None) -> None:
        """A script run in a shell of its own: `$( )` (a subshell, which knows this shell's
        functions) or ssh's remote command. What it finds counts; its exits end only itself.
        After a PATH change nothing in it counts: the `ssh` itself may be another program."""
        if self.depth >= MAX_NESTING:
            self.unreadable(script, line, f"shell nested deeper than {MAX_NESTING} levels")
            return
        functions = dict(self.functions) if subshell else {}
        called = self.called if subshell else set()
        child = _Run(self.wanted, self.found, functions, called, depth=self.depth + 1)
        child.calls = self.calls
        child.active = self.active if subshell else set()
        child.overrides = dict(self.overrides) if subshell else {}
        child.path_changed = self.path_changed if path is None else path
        child.upstream, child.stdin = self.upstream, self.stdin
        try:
            tree = parse(script, lambda _: line)
        except ShellSyntaxError as exc:
            child.unreadable(script, line, f"this shell: {exc}")
            return
        child.shlist(tree)
        child.uncalled(exclude=set(functions))

    # -- code that never runs --
    def dead(self, node: Node | Pipeline | AndOr | ShList, why: str) -> None:
        for simple in _simples(node):
            argv = _argv(simple.words)
            for candidate in (argv, argv[1:] if argv[:1] == ["exec"] else []):
                if candidate and self.wanted(tuple(candidate)):
                    self.found.append(Reached(tuple(candidate), simple.line, why))
            nested = [s for w in simple.words for s in w.subs]
            if argv[:1] == ["ssh"] and (remote := ssh_remote_command(argv)):
                nested.append(remote)
            for script in nested:
                self._dead_script(script, simple.line, why)

    def _dead_script(self, script: str, line: str, why: str) -> None:
        if self.depth >= MAX_NESTING:
            return
        try:
            tree = parse(script, lambda _: line)
        except ShellSyntaxError:
            return
        _Run(self.wanted, self.found, depth=self.depth + 1).dead(tree, why)

    def uncalled(self, exclude: set[str] | None = None) -> None:
        for name, body in self.functions.items():
            if name not in self.called and name not in (exclude or set()):
                self.dead(body, f"never runs: it is inside `{name}()`, which is never called")

    def unreadable(self, text: str, line: str, why: str) -> None:
        """Text pvcheck cannot read as shell: a wanted command in its words is refused."""
        words = _WORDS.findall(text)
        for k in range(len(words)):
            if self.wanted(tuple(words[k:])):
                self.found.append(Reached(tuple(words[k:]), line, f"pvcheck cannot read {why}"))
                return


def _simples(node: Node | Pipeline | AndOr | ShList) -> Iterator[Simple]:
    match node:
        case Simple():
            yield node
        case Pipeline():
            for command in node.commands:
                yield from _simples(command)
        case AndOr():
            yield from _simples(node.first)
            for _, pipe in node.rest:
                yield from _simples(pipe)
        case ShList():
            for item, _ in node.items:
                yield from _simples(item)
        case Group():
            yield from _simples(node.body)
        case If():
            for cond, body in node.arms:
                yield from _simples(cond)
                yield from _simples(body)
            if node.otherwise is not None:
                yield from _simples(node.otherwise)
        case Loop():
            yield from _simples(node.cond)
            yield from _simples(node.body)
        case For():
            yield from _simples(node.body)
        case Case():
            for _, body in node.arms:
                yield from _simples(body)
        case FuncDef() | Redirected():
            yield from _simples(node.body)


def _argv(words: tuple[Token, ...]) -> list[str]:
    """Pure: the command a simple command runs, without assignments and `sudo`-like prefixes."""
    argv = [w.text for w in words]
    while argv and (_ASSIGNMENT.match(argv[0]) or argv[0] in _PREFIXES):
        argv.pop(0)
    return argv


def _path_change(words: Sequence[str]) -> str:
    """Pure: the first assignment among words that changes where commands are found (PATH),
    or "". Appending (`PATH=$PATH:/opt/bin`, `PATH+=:/opt/bin`) leaves every lookup as it was."""
    for word in words:
        match = re.fullmatch(r"PATH(\[[^]]*\])?(\+?=)(.*)", word, re.S)
        if match is None:
            continue
        element, op, value = match.groups()
        appends = re.match(r"(\$PATH|\$\{PATH\})(:|$)", value) if op == "=" else value[:1] == ":"
        if element or not appends:
            return word
    return ""


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


_STOPPERS = re.compile(r"\b(exit|return|exec)\b")
_WORDS = re.compile(r"[^\s;&|()<>'\"`$]+")  # words of text that is not readable shell


def _line_of(lines: Sequence[str]) -> Callable[[int], str]:
    return lambda n: lines[min(n, len(lines) - 1)] if lines else ""


def reachable(
    blocks: Sequence[Sequence[str]], wanted: Callable[[tuple[str, ...]], bool]
) -> list[Reached]:
    """Pure: every command `wanted` picks out of the script the blocks make, in order, each with
    why it never runs (None: it may). The blocks run one after the other in one shell."""
    run = _Run(wanted)
    flow = Flow(OK)
    for lines in blocks:
        text = "\n".join(lines)
        try:
            tree = parse(text, _line_of(lines))
        except ShellSyntaxError as exc:
            for line in lines:
                run.unreadable(line, line, f"this shell: {exc}")
            if _STOPPERS.search(text):  # it may end the script: refuse what follows
                flow = Flow(NONE, why="a block pvcheck cannot read, which may exit, comes first")
            continue
        if not flow.falls:
            run.dead(tree, f"never reached: {flow.why}")
            continue
        try:
            flow = _then(flow, run.shlist(tree))
        except RecursionError:  # hostile nesting: refuse the block and everything after it
            for line in lines:
                run.unreadable(line, line, "this shell: it is nested too deep to follow")
            flow = Flow(NONE, why="a block nested too deep to follow comes first")
    run.uncalled()
    return list(dict.fromkeys(run.found))
