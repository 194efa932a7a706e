"""
Read an existing lighttpd.conf: the mod_sockproxy part of lighttpd's
configuration language, into the same config objects as the native TOML.

Three stages:

  1. L{_Lexer} turns a file into tokens the way lighttpd's own tokenizer
     (C{configfile.c}) does: comments, strings with only C{\\"} as an escape,
     newlines that end statements except inside parentheses, a C{"}"} that
     ends a line by itself.
  2. L{_Evaluator} parses and evaluates at once, as lighttpd's grammar
     (C{configparser.y}) does: variables (C{var.x}, or C{x}), C{env.NAME},
     C{+} on strings, integers and arrays, C{=}, C{:=} and C{+=}, arrays,
     C{include} (relative to the main file's directory, globs allowed),
     C{include_shell} (run with C{/bin/sh}, as lighttpd runs it), C{global}
     blocks and conditions with C{else}. The result is a tree of L{_Block}s.
  3. L{_Mapper} reads what sockproxy needs from the tree: every socket
     (C{server.bind}/C{server.port} and each C{$SERVER["socket"] == ...}
     block) whose effective C{sockproxy.server} is set becomes a listener,
     and each C{sockproxy.server} definition a proxy with its backends.

Errors name the file, the line and the column and quote the token; whatever
does not concern sockproxy is reported once, as a notice, not rejected.
doc/lighttpd-config.md describes the mapping for users.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
from dataclasses import dataclass, field
from typing import Callable, Mapping, NoReturn, Sequence

from twisted.internet.endpoints import quoteStringArgument

from txsockproxy.checks import knownBalancers, nulProblem, unknownBalancer
from txsockproxy.config import (
    DEFAULT_BALANCE,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DISABLE_TIME,
    DEFAULT_SHUTDOWN_TIMEOUT,
    BackendConfig,
    Config,
    ConfigError,
    Problem,
    ProxyConfig,
)
from txsockproxy.endpoints import (
    Resolver,
    backendFromHost,
    checkEndpoint,
    originFields,
    resolveFirst,
)

# lighttpd refuses config files larger than this (configfile.c).
MAX_FILE_SIZE = 32 * 1024 * 1024
# include and include_shell may nest this deep (a file that includes itself
# would otherwise recurse for ever), and arrays and blocks this deep.
MAX_INCLUDE_DEPTH = 32
MAX_NESTING = 64
# include_shell commands must finish within this many seconds.
SHELL_TIMEOUT = 30.0
# lighttpd's integers are C longs.
_LONG_MAX = 2**63 - 1

# What a shell runner looks like: (command, working directory or None) ->
# the command's standard output; raises L{ShellError} when it fails.
ShellRunner = Callable[[str, "str | None"], str]


class ShellError(Exception):
    """
    An C{include_shell} command could not be run, or failed.
    """


def runShell(command: str, cwd: str | None) -> str:
    """
    Run an C{include_shell} command as lighttpd does: C{/bin/sh -c COMMAND}
    in the main config file's directory, its standard output being config
    text. Standard input is C{/dev/null}; it must finish within
    L{SHELL_TIMEOUT} seconds.

    @raise ShellError: it could not be started, timed out, exited non-zero,
        or printed something that is not UTF-8.
    """
    try:
        done = subprocess.run(
            ["/bin/sh", "-c", command], cwd=cwd or None, stdin=subprocess.DEVNULL,
            capture_output=True, timeout=SHELL_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ShellError(f"did not finish within {SHELL_TIMEOUT:g}s") from None
    except (OSError, ValueError) as e:
        # ValueError: what the system refuses before trying (a NUL in it).
        raise ShellError(f"cannot run it: {getattr(e, 'strerror', None) or e}") from None
    if done.returncode != 0:
        why = done.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = f": {why[-1]}" if why else ""
        status = (
            f"was killed by signal {-done.returncode}" if done.returncode < 0
            else f"exited with status {done.returncode}"
        )
        raise ShellError(f"{status}{detail}")
    if len(done.stdout) > MAX_FILE_SIZE:
        raise ShellError(f"printed more than {MAX_FILE_SIZE} bytes")
    try:
        return done.stdout.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ShellError(f"printed something that is not UTF-8 (byte {done.stdout[e.start]:#04x})"
                         ) from None


_LIGHTTPD_HINTS = re.compile(
    r"""=>|\$(?:SERVER|HTTP|REQUEST_HEADER)\s*\[|^\s*include(?:_shell)?\s+"|"""
    r"""^\s*[A-Za-z0-9_.\-]+\s*(?:\+=|:=|=\s*\()""",
    re.MULTILINE,
)


def looksLikeLighttpd(path: str, text: str) -> bool:
    """
    Whether the config file at C{path} with contents C{text} is in lighttpd's
    syntax rather than TOML: its name ends in C{.conf}, or (unless it ends in
    C{.toml}) it holds something TOML never does (C{=>}, C{$SERVER[},
    C{include "..."}, C{+=}, C{:=}, C{= (}).
    """
    name = path.lower()
    if name.endswith(".conf"):
        return True
    if name.endswith(".toml"):
        return False
    return _LIGHTTPD_HINTS.search(text) is not None


# --------------------------------------------------------------------------
# Values


@dataclass(frozen=True)
class _Pos:
    """
    Where something was written: file, 1-based line and column.
    """

    source: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass(frozen=True)
class _Str:
    text: str
    pos: _Pos


@dataclass(frozen=True)
class _Int:
    number: int
    pos: _Pos


@dataclass(frozen=True)
class _Entry:
    """
    One element of an array: C{key => value}, or a bare value (C{key} None).
    C{pos} is where the element starts.
    """

    key: str | None
    value: _Value
    pos: _Pos


@dataclass(frozen=True)
class _Arr:
    entries: tuple[_Entry, ...]
    pos: _Pos


_Value = _Str | _Int | _Arr


def _describe(value: _Value) -> str:
    if isinstance(value, _Str):
        return f"a string ({_quoted(value.text)})" if len(value.text) <= 40 else "a string"
    if isinstance(value, _Int):
        return f"an integer ({value.number})"
    return "an array"


def _quoted(text: str) -> str:
    """
    C{text} as lighttpd writes a string, for messages.
    """
    return '"' + text.replace('"', '\\"') + '"'


@dataclass(eq=False)
class _Assignment:
    """
    A directive's value in one block, and where its name was written.
    """

    key: str
    value: _Value
    pos: _Pos
    block: _Block


@dataclass(frozen=True)
class _Condition:
    """
    C{$VARIABLE["field"] op "value"}; C{op} is C{"else"} for an C{else}
    block, whose C{value} is then the text of the condition it negates.
    """

    variable: str
    field: str
    op: str
    value: str
    pos: _Pos

    @property
    def text(self) -> str:
        if self.op == "else":
            return f"else (of {self.value})"
        return f'${self.variable}["{self.field}"] {self.op} {_quoted(self.value)}'

    @property
    def isSocket(self) -> bool:
        return self.variable == "SERVER" and self.field == "socket" and self.op == "=="


@dataclass(eq=False)
class _Block:
    """
    The global scope or one condition's block: its directives, in order.
    """

    key: str
    condition: _Condition | None
    parent: _Block | None
    values: dict[str, _Assignment] = field(default_factory=dict)
    children: list[_Block] = field(default_factory=list)


# --------------------------------------------------------------------------
# Tokens


class _Stop(Exception):
    """
    Parsing stops at the first error, as lighttpd's does.
    """

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    pos: _Pos

    def describe(self) -> str:
        if self.kind == "EOF":
            return "end of file"
        if self.kind == "EOL":
            return "end of line"
        if self.kind == "STRING":
            return "the string " + _quoted(self.text)[:60]
        return f"{self.text!r}"


_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_KEYWORDS = {
    "include": "INCLUDE",
    "include_shell": "INCLUDE_SHELL",
    "global": "GLOBAL",
    "else": "ELSE",
    # lighttpd 1.4.70+ spellings of "else if"
    "elif": "ELSE",
    "elsif": "ELSE",
    "elseif": "ELSE",
}


def _problem(pos: _Pos, key: str, message: str) -> Problem:
    return Problem(pos.source, pos.line, key, message, column=pos.column)


class _Lexer:
    """
    lighttpd's tokenizer: the whole file at once, into a list of tokens.
    """

    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source
        self.offset = 0
        self.line = 1
        self.lineStart = 0
        self.tokens: list[_Token] = []
        self.parens: list[_Pos] = []
        self.inCondition = False

    def pos(self, offset: int | None = None) -> _Pos:
        at = self.offset if offset is None else offset
        return _Pos(self.source, self.line, at - self.lineStart + 1)

    def fail(self, message: str, pos: _Pos | None = None) -> NoReturn:
        raise _Stop(_problem(pos or self.pos(), "", f"syntax error: {message}"))

    def emit(self, kind: str, text: str, pos: _Pos) -> None:
        self.tokens.append(_Token(kind, text, pos))

    @property
    def last(self) -> str:
        return self.tokens[-1].kind if self.tokens else ""

    def newline(self) -> None:
        # "\r\n", "\r" or "\n"
        if self.text.startswith("\r\n", self.offset):
            self.offset += 2
        else:
            self.offset += 1
        self.line += 1
        self.lineStart = self.offset

    def skipComment(self) -> None:
        while self.offset < len(self.text) and self.text[self.offset] not in "\r\n":
            self.offset += 1

    def run(self) -> list[_Token]:
        text = self.text
        while self.offset < len(text):
            c = text[self.offset]
            start = self.pos()
            if c in " \t\u00a0":
                self.offset += 1
            elif c in "\r\n":
                # Newlines, comments and blank space collapse into one end of
                # line; inside parentheses they are only blank space.
                while self.offset < len(text):
                    c = text[self.offset]
                    if c in "\r\n":
                        self.newline()
                    elif c == "#":
                        self.skipComment()
                    elif c in " \t\u00a0":
                        self.offset += 1
                    else:
                        break
                if not self.parens:
                    self.emit("EOL", "(EOL)", start)
            elif c == "#":
                self.skipComment()
            elif c == ",":
                self.offset += 1
                # lighttpd skips a comma outside parentheses.
                if self.parens:
                    self.emit("COMMA", ",", start)
            elif c == '"':
                self.string(start)
            elif c == "(":
                self.offset += 1
                self.parens.append(start)
                self.emit("LPAREN", "(", start)
            elif c == ")":
                if not self.parens:
                    self.fail("')' without a matching '('", start)
                self.offset += 1
                self.parens.pop()
                self.emit("RPAREN", ")", start)
            elif c == "$":
                self.offset += 1
                self.inCondition = True
                self.emit("DOLLAR", "$", start)
            elif c == "+":
                if text.startswith("+=", self.offset):
                    self.offset += 2
                    self.emit("APPEND", "+=", start)
                else:
                    self.offset += 1
                    self.emit("PLUS", "+", start)
            elif c == ":":
                if not text.startswith(":=", self.offset):
                    self.fail("unexpected ':' (':=' replaces a value)", start)
                self.offset += 2
                self.emit("FORCE", ":=", start)
            elif c == "{":
                self.offset += 1
                self.emit("LCURLY", "{", start)
            elif c == "}":
                self.offset += 1
                self.emit("RCURLY", "}", start)
                # Anything after "}" on the same line starts a new statement.
                rest = self.offset
                while rest < len(text) and text[rest] in " \t":
                    rest += 1
                if rest < len(text) and text[rest] not in "\r\n#":
                    self.emit("EOL", "(EOL)", self.pos(rest))
            elif c == "[":
                self.offset += 1
                self.emit("LBRACKET", "[", start)
            elif c == "]":
                self.offset += 1
                self.emit("RBRACKET", "]", start)
            elif c == "=":
                self.equals(start)
            elif c == "!":
                two = text[self.offset : self.offset + 2]
                if not self.inCondition or two not in ("!=", "!~"):
                    self.fail("unexpected '!' (only '!=' and '!~' compare, in a condition)", start)
                self.offset += 2
                self.inCondition = False
                self.emit("COND", two, start)
            elif c == "\0":
                self.fail("stray NUL character", start)
            else:
                self.word(c, start)
        if self.parens:
            self.fail("'(' is never closed", self.parens[-1])
        self.emit("EOF", "", self.pos())
        return self.tokens

    def equals(self, start: _Pos) -> None:
        two = self.text[self.offset : self.offset + 2]
        if self.parens:
            if two != "=>":
                opened = self.parens[-1]
                self.fail(f"unexpected '=' inside the '(' of line {opened.line} column "
                          f"{opened.column}: use '=>' for \"key\" => value in arrays, or "
                          "close the '(' first", start)
            self.offset += 2
            self.emit("ARROW", "=>", start)
        elif self.inCondition:
            if two not in ("==", "=~", "=^", "=$"):
                self.fail("only == != =~ !~ =^ =$ compare in a condition", start)
            self.offset += 2
            self.inCondition = False
            self.emit("COND", two, start)
        else:
            self.offset += 1
            self.emit("ASSIGN", "=", start)

    def string(self, start: _Pos) -> None:
        if self.last == "STRING":
            self.fail("two strings in a row: combine strings with '+', "
                      "or separate them with ',' or '=>' in arrays", start)
        if self.last == "LKEY":
            self.fail(f"missing '=' after {self.tokens[-1].text!r}", start)
        text = self.text
        i = self.offset + 1
        out: list[str] = []
        begin = i
        line, lineStart = self.line, self.lineStart
        while i < len(text) and text[i] != '"':
            if text[i] == "\\" and i + 1 < len(text) and text[i + 1] == '"':
                out.append(text[begin:i])
                begin = i + 1
                i += 2
                continue
            if text[i] == "\n" or (text[i] == "\r" and not text.startswith("\r\n", i)):
                line += 1
                lineStart = i + 1
            i += 1
        if i >= len(text):
            self.fail("missing closing '\"' of this string", start)
        out.append(text[begin:i])
        self.offset = i + 1
        self.line, self.lineStart = line, lineStart
        self.emit("STRING", "".join(out), start)

    def word(self, c: str, start: _Pos) -> None:
        text = self.text
        i = self.offset
        if self.inCondition:
            while i < len(text) and text[i] in _NAME_CHARS:
                i += 1
            if i == self.offset:
                self.fail(f"unexpected {c!r} in a condition (expected e.g. "
                          "$SERVER[\"socket\"] == \"...\")", start)
            word = text[self.offset : i]
            self.offset = i
            self.emit("NAME", word, start)
            return
        if c.isascii() and c.isdigit():
            while i < len(text) and text[i].isascii() and text[i].isdigit():
                i += 1
            digits = text[self.offset : i]
            self.offset = i
            self.emit("INTEGER", digits, start)
            return
        while i < len(text) and text[i] in _KEY_CHARS:
            i += 1
        if i == self.offset:
            self.fail(f"unexpected character {c!r}", start)
        word = text[self.offset : i]
        self.offset = i
        if word == "if":
            # "if $HTTP[...]" and "else if $HTTP[...]" (lighttpd 1.4.70+).
            j = i
            while j < len(text) and text[j] in " \t":
                j += 1
            if j < len(text) and text[j] == "$":
                return
        kind = _KEYWORDS.get(word, "LKEY")
        if kind == "LKEY" and self.last == "LKEY":
            self.fail(f"missing '=' or '+' between {self.tokens[-1].text!r} and {word!r}", start)
        self.emit(kind, word, start)


# --------------------------------------------------------------------------
# Parsing and evaluation


def _braceExpand(pattern: str) -> list[str]:
    """
    Expand C{{a,b}} alternatives in a glob pattern, as glibc's
    C{GLOB_BRACE} (which lighttpd asks for) does.
    """
    depth = 0
    start = -1
    for i, c in enumerate(pattern):
        if c == "{":
            if depth == 0:
                start = i
            depth += 1
        elif c == "}" and depth:
            depth -= 1
            if depth == 0:
                inner = pattern[start + 1 : i]
                parts: list[str] = []
                level = 0
                begin = 0
                for j, d in enumerate(inner):
                    if d == "{":
                        level += 1
                    elif d == "}":
                        level -= 1
                    elif d == "," and level == 0:
                        parts.append(inner[begin:j])
                        begin = j + 1
                parts.append(inner[begin:])
                if len(parts) == 1:
                    continue
                head, tail = pattern[:start], pattern[i + 1 :]
                out: list[str] = []
                for part in parts:
                    out.extend(_braceExpand(head + part + tail))
                return out
    return [pattern]


_GLOB_CHARS = re.compile(r"[*?\[\]{}]")


class _Evaluator:
    """
    Parses lighttpd config text and evaluates it as it goes, into a tree of
    L{_Block}s rooted at C{root}.
    """

    def __init__(
        self,
        mainPath: str,
        environ: Mapping[str, str],
        shell: ShellRunner,
        cwd: str,
        pid: int,
    ) -> None:
        self.environ = environ
        self.shell = shell
        # lighttpd resolves includes against the main file's directory, not
        # the including file's; "./x" and "../x" stay relative to the
        # working directory (configfile.c config_parse_file()).
        slash = mainPath.rfind("/")
        self.basedir = mainPath[: slash + 1] if slash >= 0 else ""
        self.root = _Block("global", None, None)
        self.blocks: dict[str, _Block] = {"global": self.root}
        builtin = _Pos("<builtin>", 0, 0)
        for key, value in (("var.CWD", _Str(cwd, builtin)), ("var.PID", _Int(pid, builtin))):
            self.root.values[key] = _Assignment(key, value, builtin, self.root)
        self.current = self.root
        self.assignments: list[_Assignment] = []
        self.includeDepth = 0

    def parseText(self, text: str, source: str) -> None:
        tokens = _Lexer(text, source).run()
        _FileParser(self, tokens).file()

    def include(self, pattern: str, pos: _Pos) -> None:
        if self.includeDepth >= MAX_INCLUDE_DEPTH:
            raise _Stop(_problem(pos, "include", f"includes nested more than "
                                 f"{MAX_INCLUDE_DEPTH} deep (does a file include itself?)"))
        if (not self.basedir or pattern.startswith(("/", "./", "../"))):
            path = pattern
        else:
            path = self.basedir + pattern
        matches: list[str] = []
        for expanded in _braceExpand(path):
            matches.extend(glob.glob(expanded))
        matches = sorted(set(matches))
        if not matches:
            if _GLOB_CHARS.search(path):
                return  # lighttpd: no file matching a pattern is not an error
            raise _Stop(_problem(pos, "include", f"include file not found: {_quoted(path)}"))
        for name in matches:
            try:
                with open(name, "rb") as f:
                    raw = f.read(MAX_FILE_SIZE + 1)
            except OSError as e:
                raise _Stop(_problem(pos, "include",
                                     f"cannot read {_quoted(name)}: {e.strerror or e}")) from None
            if len(raw) > MAX_FILE_SIZE:
                raise _Stop(_problem(pos, "include", f"{_quoted(name)} is larger than 32 MiB"))
            try:
                text = raw.decode("utf-8-sig")
            except UnicodeDecodeError as e:
                line = raw[: e.start].count(b"\n") + 1
                raise _Stop(Problem(name, line, "", f"not valid UTF-8 (byte {raw[e.start]:#04x})")
                            ) from None
            self.includeDepth += 1
            try:
                self.parseText(text, name)
            finally:
                self.includeDepth -= 1

    def includeShell(self, command: str, pos: _Pos) -> None:
        if self.includeDepth >= MAX_INCLUDE_DEPTH:
            raise _Stop(_problem(pos, "include_shell", f"includes nested more than "
                                 f"{MAX_INCLUDE_DEPTH} deep"))
        try:
            text = self.shell(command, self.basedir or None)
        except ShellError as e:
            raise _Stop(_problem(pos, "include_shell", f"command {_quoted(command)} {e}")) from None
        self.includeDepth += 1
        try:
            self.parseText(text, f"include_shell {_quoted(command)}")
        finally:
            self.includeDepth -= 1

    def lookup(self, name: str, pos: _Pos) -> _Value:
        if name.startswith("env."):
            value = self.environ.get(name[4:])
            if value is None:
                raise _Stop(_problem(pos, name, f"undefined environment variable {name[4:]!r}"))
            return _Str(value, pos)
        block: _Block | None = self.current
        while block is not None:
            found = block.values.get(name)
            if found is not None:
                return found.value
            block = block.parent
        raise _Stop(_problem(pos, name, f"unknown variable {name!r}: nothing of that name is set "
                             "before this line, here or in an enclosing block"))

    def assign(self, name: str, op: str, value: _Value, pos: _Pos) -> None:
        if name.startswith("env."):
            raise _Stop(_problem(pos, name, "environment variables cannot be set"))
        values = self.current.values
        if op == "=":
            if name in values:
                raise _Stop(_problem(pos, name, f"already set at {values[name].pos} "
                                     "(use := to replace a value, += to add to it)"))
        elif op == "+=":
            old = values.get(name)
            if old is None:
                block = self.current.parent
                while block is not None and old is None:
                    old = block.values.get(name)
                    block = block.parent
            if old is not None:
                value = _merge(old.value, value, pos, name)
        assignment = _Assignment(name, value, pos, self.current)
        values.pop(name, None)
        values[name] = assignment
        self.assignments.append(assignment)

    def enter(self, condition: _Condition) -> _Block:
        key = f"{self.current.key} / {condition.text}"
        block = self.blocks.get(key)
        if block is None:
            block = _Block(key, condition, self.current)
            self.blocks[key] = block
            self.current.children.append(block)
        self.current = block
        return block

    def leave(self) -> None:
        assert self.current.parent is not None
        self.current = self.current.parent


def _merge(left: _Value, right: _Value, pos: _Pos, name: str) -> _Value:
    """
    lighttpd's C{+}: concatenate strings (an integer becomes its digits),
    add integers, append arrays.
    """
    if isinstance(left, _Str) and isinstance(right, (_Str, _Int)):
        tail = right.text if isinstance(right, _Str) else str(right.number)
        return _Str(left.text + tail, left.pos)
    if isinstance(left, _Int) and isinstance(right, _Str):
        return _Str(str(left.number) + right.text, left.pos)
    if isinstance(left, _Int) and isinstance(right, _Int):
        total = left.number + right.number
        if total > _LONG_MAX:
            raise _Stop(_problem(pos, name, "the sum is too large"))
        return _Int(total, left.pos)
    if isinstance(left, _Arr) and isinstance(right, _Arr):
        entries = list(left.entries)
        keys = {e.key: e for e in entries if e.key is not None}
        for entry in right.entries:
            if entry.key is not None and entry.key in keys:
                old = keys[entry.key].value
                same = (
                    isinstance(old, _Str) and isinstance(entry.value, _Str)
                    and old.text == entry.value.text
                ) or (
                    isinstance(old, _Int) and isinstance(entry.value, _Int)
                    and old.number == entry.value.number
                )
                if same:
                    continue
                raise _Stop(_problem(entry.pos, name, f"duplicate array key "
                                     f"{_quoted(entry.key)}: already in the array at "
                                     f"{keys[entry.key].pos}"))
            entries.append(entry)
            if entry.key is not None:
                keys[entry.key] = entry
        return _Arr(tuple(entries), left.pos)
    raise _Stop(_problem(pos, name, f"cannot combine {_describe(left)} with {_describe(right)}"))


_HTTP_FIELDS = frozenset({
    "url", "host", "referer", "useragent", "user-agent", "language", "cookie", "remoteip",
    "remote-ip", "querystring", "query-string", "request-method", "scheme",
})


class _FileParser:
    """
    lighttpd's grammar over one file's tokens, evaluating as it reduces.
    """

    def __init__(self, ev: _Evaluator, tokens: list[_Token]) -> None:
        self.ev = ev
        self.tokens = tokens
        self.i = 0
        self.depth = 0
        self.inGlobal = False

    def peek(self, ahead: int = 0) -> _Token:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)]

    def next(self) -> _Token:
        token = self.tokens[self.i]
        if token.kind != "EOF":
            self.i += 1
        return token

    def fail(self, token: _Token, message: str, key: str = "") -> NoReturn:
        raise _Stop(_problem(token.pos, key, f"syntax error: {message}"))

    def unexpected(self, token: _Token, expected: str) -> NoReturn:
        if token.kind == "RCURLY":
            self.fail(token, f"'}}' without a matching '{{' (expected {expected})")
        self.fail(token, f"unexpected {token.describe()} (expected {expected})")

    def nest(self, token: _Token) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise _Stop(_problem(token.pos, "", f"nested more than {MAX_NESTING} deep"))

    def file(self) -> None:
        self.metalines(None)
        token = self.peek()
        if token.kind != "EOF":
            self.unexpected(token, "a directive")

    def metalines(self, opened: _Token | None) -> None:
        while True:
            token = self.peek()
            kind = token.kind
            if kind == "EOF":
                if opened is not None:
                    self.fail(opened, "'{' is never closed")
                return
            if kind == "RCURLY":
                if opened is None:
                    self.fail(token, "'}' without a matching '{'")
                return
            if kind == "EOL":
                self.next()
            elif kind == "LKEY":
                self.varline()
            elif kind == "DOLLAR":
                if self.inGlobal:
                    self.fail(token, "a condition cannot be used inside 'global { ... }'")
                self.condlines()
                after = self.peek()
                if after.kind == "EOL":
                    self.next()
                elif after.kind != "EOF":
                    self.unexpected(after, "a new line after '}'")
            elif kind == "INCLUDE":
                self.next()
                self.ev.include(self.stringop(token, "include"), token.pos)
            elif kind == "INCLUDE_SHELL":
                self.next()
                self.ev.includeShell(self.stringop(token, "include_shell"), token.pos)
            elif kind == "GLOBAL":
                self.globalBlock()
            elif kind == "ELSE":
                self.fail(token, "'else' must follow a condition's '}'")
            else:
                self.unexpected(token, "a directive")

    def varline(self) -> None:
        keyToken = self.next()
        name = keyToken.text if "." in keyToken.text else "var." + keyToken.text
        op = self.next()
        if op.kind not in ("ASSIGN", "FORCE", "APPEND"):
            self.unexpected(op, f"'=', ':=' or '+=' after {keyToken.text!r}")
        value = self.expression(name)
        self.ev.assign(name, {"ASSIGN": "=", "FORCE": ":=", "APPEND": "+="}[op.kind],
                       value, keyToken.pos)

    def expression(self, name: str) -> _Value:
        left = self.value(name)
        while self.peek().kind == "PLUS":
            plus = self.next()
            right = self.value(name)
            left = _merge(left, right, plus.pos, name)
        return left

    def value(self, name: str) -> _Value:
        token = self.next()
        if token.kind == "STRING":
            if "\0" in token.text:
                # No path, host name or endpoint can hold one; refused here,
                # the system would refuse it only once the value is used.
                raise _Stop(_problem(token.pos, name, nulProblem(token.text)))
            return _Str(token.text, token.pos)
        if token.kind == "INTEGER":
            number = int(token.text, 10)
            if number > _LONG_MAX:
                raise _Stop(_problem(token.pos, name, f"number too large: {token.text}"))
            return _Int(number, token.pos)
        if token.kind == "LKEY":
            ref = token.text if "." in token.text else "var." + token.text
            found = self.ev.lookup(ref, token.pos)
            return found
        if token.kind == "LPAREN":
            return self.array(token, name)
        self.unexpected(token, "a value: a string, a number, an array or a variable")

    def array(self, opened: _Token, name: str) -> _Arr:
        self.nest(opened)
        entries: list[_Entry] = []
        keys: dict[str, _Entry] = {}
        if self.peek().kind == "RPAREN":
            self.next()
            self.depth -= 1
            return _Arr((), opened.pos)
        while True:
            start = self.peek()
            first = self.expression(name)
            if self.peek().kind == "ARROW":
                self.next()
                key = self._keyOf(first, start, name)
                value = self.expression(name)
                if key in keys:
                    raise _Stop(_problem(start.pos, name, f"duplicate array key {_quoted(key)}: "
                                         f"already in this array at line {keys[key].pos.line}"))
                entry = _Entry(key, value, start.pos)
                keys[key] = entry
            else:
                entry = _Entry(None, first, start.pos)
            entries.append(entry)
            token = self.next()
            if token.kind == "COMMA":
                while self.peek().kind == "COMMA":
                    self.next()
                if self.peek().kind == "RPAREN":
                    self.next()
                    break
                continue
            if token.kind == "RPAREN":
                break
            self.unexpected(token, "',' or ')'")
        self.depth -= 1
        return _Arr(tuple(entries), opened.pos)

    @staticmethod
    def _keyOf(value: _Value, token: _Token, name: str) -> str:
        if isinstance(value, _Str):
            return value.text
        if isinstance(value, _Int):
            return str(value.number)
        raise _Stop(_problem(token.pos, name, "an array key must be a string, not an array"))

    def stringop(self, token: _Token, what: str) -> str:
        value = self.expression(what)
        if isinstance(value, _Str):
            return value.text
        if isinstance(value, _Int):
            return str(value.number)
        raise _Stop(_problem(token.pos, what, f"needs a string, not {_describe(value)}"))

    def globalBlock(self) -> None:
        token = self.next()
        if self.ev.current is not self.ev.root:
            self.fail(token, "'global { ... }' cannot be used inside a condition")
        opened = self.next()
        if opened.kind != "LCURLY":
            self.unexpected(opened, "'{' after 'global'")
        self.nest(opened)
        self.inGlobal = True
        self.metalines(opened)
        self.inGlobal = False
        self.next()
        self.depth -= 1

    def condlines(self) -> None:
        block = self.condline(self.next())
        while True:
            if self.peek().kind == "EOL" and self.peek(1).kind == "ELSE":
                self.next()
            if self.peek().kind != "ELSE":
                return
            elseToken = self.next()
            previous = block.condition
            assert previous is not None
            if previous.op == "else":
                self.fail(elseToken, "nothing can follow the catch-all 'else { ... }'")
            if self.peek().kind == "DOLLAR":
                block = self.condline(self.next())
            elif self.peek().kind == "LCURLY":
                condition = _Condition(previous.variable, previous.field, "else",
                                       previous.text, elseToken.pos)
                block = self.body(condition, self.next())
            else:
                self.unexpected(self.peek(), "a condition or '{' after 'else'")

    def condline(self, dollar: _Token) -> _Block:
        nameToken = self.next()
        if nameToken.kind != "NAME":
            self.unexpected(nameToken, "a name such as SERVER after '$'")
        bracket = self.next()
        if bracket.kind != "LBRACKET":
            self.unexpected(bracket, f"'[' after ${nameToken.text}")
        fieldToken = self.peek()
        fieldName = self.stringop(fieldToken, f"${nameToken.text}")
        close = self.next()
        if close.kind != "RBRACKET":
            self.unexpected(close, "']'")
        op = self.next()
        if op.kind != "COND":
            self.unexpected(op, "a comparison: == != =~ !~ =^ =$")
        valueToken = self.peek()
        what = f'${nameToken.text}["{fieldName}"]'
        value = self.expression(what)
        if not isinstance(value, _Str):
            raise _Stop(_problem(valueToken.pos, what,
                                 f"must be compared with a string, not {_describe(value)}"))
        variable = nameToken.text
        if variable == "SERVER" and fieldName != "socket":
            raise _Stop(_problem(fieldToken.pos, what, "unknown condition: $SERVER has only "
                                 "[\"socket\"]"))
        if variable == "HTTP" and fieldName not in _HTTP_FIELDS:
            raise _Stop(_problem(fieldToken.pos, what, "unknown condition field"))
        condition = _Condition(variable, fieldName, op.text, value.text, dollar.pos)
        opened = self.next()
        if opened.kind != "LCURLY":
            self.unexpected(opened, f"'{{' after the condition {condition.text}")
        return self.body(condition, opened)

    def body(self, condition: _Condition, opened: _Token) -> _Block:
        self.nest(opened)
        block = self.ev.enter(condition)
        self.metalines(opened)
        self.next()  # the "}"
        self.ev.leave()
        self.depth -= 1
        return block


# --------------------------------------------------------------------------
# Mapping to config objects

# Host options of lighttpd's gw code that mean nothing for a socket proxy
# (HTTP gateway settings), or only with bin-path (process spawning).
_MEANINGLESS_HOST_OPTIONS = frozenset({
    "check-local", "mode", "docroot", "broken-scriptfilename", "strip-request-uri",
    "fix-root-scriptname", "x-sendfile", "allow-x-send-file", "x-sendfile-docroot", "upgrade",
    "bin-environment", "bin-copy-environment", "kill-signal", "min-procs", "max-procs",
    "max-load-per-proc", "idle-timeout", "listen-backlog",
})
_HOST_OPTIONS = frozenset({
    "host", "port", "socket", "disable-time", "connect-timeout", "read-timeout",
    "write-timeout", "tcp-fin-propagate", "weight", "bin-path",
})
# What to use instead, for ignored directives that have an equivalent.
_IGNORED_HINTS = {
    "server.username": " (twistd --uid)",
    "server.groupname": " (twistd --gid)",
    "server.pid-file": " (twistd --pidfile)",
    "server.errorlog": " (twistd --logfile)",
    "server.chroot": " (twistd --chroot)",
    "server.max-read-idle": " (read-timeout)",
    "server.max-write-idle": " (write-timeout)",
    "status.statistics-url": " (the native [status] listen)",
    "status.status-url": " (the native [status] listen)",
}
_SERVER_EXAMPLE = '( "" => ( "label" => ( "host" => "10.0.0.2", "port" => 5432 ) ) )'
_TRUE = frozenset({"enable", "true", "on", "1"})
_FALSE = frozenset({"disable", "false", "off", "0"})


@dataclass
class _Socket:
    """
    A socket lighttpd listens on: C{token} as written, and the block whose
    directives apply to it (the global scope for server.bind/server.port
    without a block of its own).
    """

    token: str
    block: _Block
    pos: _Pos | None
    isGlobal: bool = False


@dataclass
class _Listen:
    """
    A socket's listen endpoint. C{wildcard} is C{"v4"} or C{"v6"} for every
    address of one family, else C{""}; C{variant} holds what else shapes the
    endpoint (TLS options, PROXY protocol), for comparing two of them.
    """

    endpoint: str
    wildcard: str
    port: int
    socket: _Socket
    variant: str


@dataclass
class _Server:
    """
    One C{sockproxy.server} definition, read.
    """

    backends: tuple[BackendConfig, ...]
    idleTimeout: float


class _Mapper:
    """
    Reads what sockproxy needs from an evaluated config tree.
    """

    def __init__(
        self,
        ev: _Evaluator,
        source: str,
        resolve: Resolver,
        balancers: frozenset[str],
        dualStack: bool,
    ) -> None:
        self.ev = ev
        self.root = ev.root
        self.source = source
        self.resolve = resolve
        self.balancers = balancers
        self.dualStack = dualStack
        self.problems: list[Problem] = []
        self.notices: list[str] = []
        self.used: set[int] = set()
        self.servers: dict[int, _Server | None] = {}

    # -- helpers

    def error(self, pos: _Pos | None, key: str, message: str) -> None:
        problem = (Problem(self.source, None, key, message) if pos is None
                   else _problem(pos, key, message))
        if problem not in self.problems:
            self.problems.append(problem)

    def notice(self, pos: _Pos | None, key: str, message: str) -> None:
        if pos is None:
            text = str(Problem(self.source, None, key, message))
        else:
            text = str(Problem(pos.source, pos.line, key, message))
        if text not in self.notices:
            self.notices.append(text)

    def setting(self, block: _Block, key: str) -> _Assignment | None:
        """
        The directive C{key} as it applies to a socket's C{block}: set there,
        or else globally (lighttpd patches a connection's config with every
        matching condition, over the global values).
        """
        found = block.values.get(key)
        if found is None and block is not self.root:
            found = self.root.values.get(key)
        if found is not None:
            self.used.add(id(found))
        return found

    def integer(self, value: _Value, pos: _Pos, key: str, what: str, minimum: int,
                maximum: int | None = None) -> int | None:
        if isinstance(value, _Int):
            number = value.number
        elif isinstance(value, _Str) and value.text.strip().isdigit() and value.text.isascii():
            # lighttpd reads a string of digits where it wants a number.
            number = int(value.text.strip())
        else:
            self.error(pos, key, f"{what}must be an integer, not {_describe(value)}")
            return None
        if number < minimum or (maximum is not None and number > maximum):
            bound = f"{minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
            self.error(pos, key, f"{what}must be {bound}, not {number}")
            return None
        return number

    def boolean(self, value: _Value, pos: _Pos, key: str, what: str = "") -> bool | None:
        if isinstance(value, _Int):
            return value.number != 0
        if isinstance(value, _Str):
            word = value.text.strip().lower()
            if word in _TRUE:
                return True
            if word in _FALSE:
                return False
        self.error(pos, key, f'{what}must be "enable" or "disable", not {_describe(value)}')
        return None

    def string(self, value: _Value, pos: _Pos, key: str, what: str = "") -> str | None:
        if isinstance(value, _Str):
            return value.text
        self.error(pos, key, f"{what}must be a string, not {_describe(value)}")
        return None

    def flag(self, block: _Block, key: str) -> bool:
        found = self.setting(block, key)
        if found is None:
            return False
        return bool(self.boolean(found.value, found.pos, key))

    # -- the whole config

    def run(self) -> Config:
        self.checkConditions()
        sockets, served = self.sockets()
        modules = self.root.values.get("server.modules")
        if modules is not None:
            self.used.add(id(modules))
        listens: list[tuple[tuple[int, str], _Listen]] = []
        order: list[tuple[int, str]] = []
        proxies: dict[tuple[int, str], tuple[str, _Server, str]] = {}
        debugLevels: list[tuple[int, _Pos]] = []
        for sock in sockets:
            server = self.setting(sock.block, "sockproxy.server")
            if server is None:
                served.append(sock.token)
                continue
            definition = self.server(server)
            balance = self.balance(sock.block)
            debug = self.setting(sock.block, "sockproxy.debug")
            if debug is not None:
                level = self.integer(debug.value, debug.pos, "sockproxy.debug", "", 0)
                if level is not None:
                    debugLevels.append((level, debug.pos))
            listen = self.listen(sock)
            if definition is None or balance is None or listen is None:
                continue
            group = (id(server), balance)
            if group not in proxies:
                order.append(group)
                proxies[group] = (sock.token, definition, balance)
            listens.append((group, listen))
        listenByGroup = self.dualStackListeners(listens)
        if served:
            self.notice(None, "", "lighttpd's HTTP socket(s) without sockproxy.server are not "
                        "served (sockproxy only proxies): " + ", ".join(served))
        self.checkModules(modules)
        debugLevel = self.debugLevel(debugLevels)
        shutdownTimeout = self.shutdownTimeout()
        self.checkServerLevel()
        self.noticeIgnored()
        if not order and not self.problems:
            self.error(None, "sockproxy.server",
                       "not set for any socket: nothing to proxy (sockproxy runs only the "
                       "mod_sockproxy part of a lighttpd config)")
        if self.problems:
            raise ConfigError(self.problems)
        result: list[ProxyConfig] = []
        for group in order:
            name, definition, balance = proxies[group]
            result.append(ProxyConfig(
                name=name,
                listen=tuple(listenByGroup[group]),
                backends=definition.backends,
                balance=balance,
                idleTimeout=definition.idleTimeout,
            ))
        return Config(
            proxies=tuple(result), debug=debugLevel, source=self.source,
            notices=tuple(self.notices), shutdownTimeout=shutdownTimeout,
        )

    def checkConditions(self) -> None:
        """
        sockproxy directives count only globally and directly in a top-level
        C{$SERVER["socket"] == ...} block: a backend is chosen when the
        connection is accepted, and no other condition can be honoured then.
        """
        for block in self.ev.blocks.values():
            if block is self.root or self.isSocketBlock(block):
                continue
            assert block.condition is not None
            for key, assignment in block.values.items():
                if not key.startswith("sockproxy."):
                    continue
                self.used.add(id(assignment))
                condition = block.condition
                if condition.isSocket:
                    why = ("a $SERVER[\"socket\"] block inside another condition is not "
                           "supported: write it at the top level")
                elif condition.variable == "HTTP" and condition.field == "host":
                    why = (f"inside {condition.text}: lighttpd 1.4.83+ picks these backends by "
                           "the TLS SNI name, which sockproxy does not do per name; "
                           "use balance \"hash\" with inspect-delay in the native config, or "
                           "a socket of its own")
                else:
                    why = (f"inside {condition.text}: sockproxy honours sockproxy directives "
                           "only globally and directly inside $SERVER[\"socket\"] == \"...\" "
                           "blocks")
                self.error(assignment.pos, key, why)
        if "sockproxy.server" in self.root.values:
            for block in self.ev.blocks.values():
                if block.condition is not None and block.condition.isSocket \
                        and not self.isSocketBlock(block):
                    self.error(block.condition.pos, "$SERVER[\"socket\"]",
                               f"{_quoted(block.condition.value)} inside another condition: "
                               "lighttpd would proxy it with the global sockproxy.server; "
                               "sockproxy needs $SERVER[\"socket\"] blocks at the top level")

    def isSocketBlock(self, block: _Block) -> bool:
        return (block.parent is self.root and block.condition is not None
                and block.condition.isSocket)

    # -- sockets and listen endpoints

    def sockets(self) -> tuple[list[_Socket], list[str]]:
        """
        Every socket lighttpd would listen on, in config order, the
        server.bind/server.port one first.

        @return: the sockets, and the tokens of those that are HTTP-only
            for another reason (nested in a condition).
        """
        bind = self.setting(self.root, "server.bind")
        port = self.globalPort()
        host = ""
        portSetting = self.root.values.get("server.port")
        bindPos = (bind.pos if bind is not None
                   else portSetting.pos if portSetting is not None else None)
        if bind is not None:
            host = self.string(bind.value, bind.pos, "server.bind") or ""
        if host.startswith("/"):
            token = host
        elif ":" in host and not host.startswith("["):
            token = f"[{host}]:{port}"
        elif host.startswith("["):
            token = host if "]:" in host else f"{host}:{port}"
        else:
            token = f"{host}:{port}"
        sockets: list[_Socket] = [_Socket(token, self.root, bindPos, isGlobal=True)]
        seen: dict[tuple[str, str, int], _Socket] = {}
        globalKey = self.splitSocket(token, port)
        if globalKey is not None:
            seen[globalKey] = sockets[0]
        nested: list[str] = []
        for block in self.ev.blocks.values():
            condition = block.condition
            if condition is None or not condition.isSocket:
                continue
            if not self.isSocketBlock(block):
                nested.append(condition.value)
                continue
            key = self.splitSocket(condition.value, port)
            if key is None:
                self.error(condition.pos, '$SERVER["socket"]', f"{_quoted(condition.value)}: "
                           "not a socket: give \"ip:port\", \":port\", \"[ipv6]:port\" or a "
                           "unix socket path")
                continue
            if key in seen:
                other = seen[key]
                if other.isGlobal and other.block is self.root:
                    # The block configures the server.bind/server.port socket.
                    other.block = block
                    continue
                self.error(condition.pos, '$SERVER["socket"]', f"{_quoted(condition.value)} "
                           f"is the same socket as {_quoted(other.token)}"
                           + (f" ({other.pos})" if other.pos else ""))
                continue
            sock = _Socket(condition.value, block, condition.pos)
            seen[key] = sock
            sockets.append(sock)
        return sockets, nested

    def globalPort(self) -> int:
        found = self.setting(self.root, "server.port")
        if found is None:
            # lighttpd: 443 when TLS is enabled globally, else 80.
            return 443 if self.flag(self.root, "ssl.engine") else 80
        number = self.integer(found.value, found.pos, "server.port", "", 1, 65535)
        return number if number is not None else 80

    @staticmethod
    def splitSocket(token: str, defaultPort: int) -> tuple[str, str, int] | None:
        """
        Split a socket token as lighttpd's network.c does.

        @return: (C{"unix"}, path, 0) or (C{"tcp"}, host, port) with the host
            without brackets (C{""} = every address); L{None} if invalid.
        """
        if token.startswith("/"):
            return ("unix", token, 0)
        if token.startswith("["):
            end = token.find("]")
            if end < 0:
                return None
            host, rest = token[1:end], token[end + 1 :]
            if not host:
                return None
            if rest == "":
                return ("tcp", host, defaultPort)
            if not rest.startswith(":"):
                return None
            portText = rest[1:]
        else:
            if token.count(":") > 1:
                return None  # IPv6 needs brackets
            host, sep, portText = token.partition(":")
            if not sep:
                return ("tcp", host, defaultPort) if host else None
        if not (portText.isascii() and portText.isdigit()):
            return None
        port = int(portText)
        if not 1 <= port <= 65535:
            return None
        return ("tcp", host, port)

    def listen(self, sock: _Socket) -> _Listen | None:
        """
        The Twisted server endpoint string for a sockproxy socket.
        """
        parts = self.splitSocket(sock.token, self.globalPort())
        key = '$SERVER["socket"]' if not sock.isGlobal else "server.bind"
        if parts is None:
            self.error(sock.pos, key, f"{_quoted(sock.token)}: not a socket")
            return None
        kind, host, port = parts
        tls = self.tls(sock)
        if tls is False:
            return None
        proxyProtocol = self.flag(sock.block, "extforward.hap-PROXY")
        if kind == "unix":
            if tls:
                self.error(sock.pos, key, f"{_quoted(sock.token)}: TLS (ssl.engine) on a unix "
                           "socket is not supported")
                return None
            endpoint = "unix:" + _escape(host)
            wildcard = ""
        else:
            wildcard = ""
            if host == "":
                if self.flag(sock.block, "server.use-ipv6"):
                    interface = "::"
                    wildcard = "v6"
                else:
                    interface = ""
                    wildcard = "v4"
            elif ":" in host:
                interface = host
                wildcard = "v6" if host == "::" else ""
            else:
                try:
                    interface = self.resolve(host)
                except OSError as e:
                    self.error(sock.pos, key, f"{_quoted(sock.token)}: cannot resolve "
                               f"{host!r}: {e.strerror or e}")
                    return None
                if interface == "0.0.0.0":
                    wildcard = "v4"
            family = "tcp6" if ":" in interface else "tcp"
            options = f":interface={_escape(interface)}" if interface else ""
            if tls:
                endpoint = f"ssl:{port}{options}{tls}"
            else:
                endpoint = f"{family}:{port}{options}"
        if proxyProtocol:
            endpoint = "haproxy:" + endpoint
            self.notice(sock.pos, key, f"{_quoted(sock.token)}: extforward.hap-PROXY: a "
                        "PROXY protocol header is required from every client "
                        "(extforward.forwarder is not consulted)")
        error = checkEndpoint(endpoint, server=True)
        if error:
            where = self.setting(sock.block, "ssl.pemfile") if tls else None
            self.error(where.pos if where else sock.pos, "ssl.pemfile" if where else key, error)
            return None
        return _Listen(endpoint, wildcard, port, sock, f"{proxyProtocol}{tls}")

    def tls(self, sock: _Socket) -> str | bool:
        """
        The ssl: endpoint options for a socket with ssl.engine enabled;
        C{""} for a plain socket; C{False} after an error.
        """
        engine = self.setting(sock.block, "ssl.engine")
        if engine is None or not self.boolean(engine.value, engine.pos, "ssl.engine"):
            return ""
        pem = self.setting(sock.block, "ssl.pemfile")
        if pem is None:
            self.error(engine.pos, "ssl.engine", f"enabled for {_quoted(sock.token)} but "
                       "ssl.pemfile is not set")
            return False
        pemfile = self.string(pem.value, pem.pos, "ssl.pemfile")
        if pemfile is None:
            return False
        verify = self.setting(sock.block, "ssl.verifyclient.activate")
        if verify is not None and self.boolean(verify.value, verify.pos,
                                               "ssl.verifyclient.activate"):
            self.error(verify.pos, "ssl.verifyclient.activate", "client certificates are not "
                       "supported on a sockproxy socket")
            return False
        options = ""
        privkey = self.setting(sock.block, "ssl.privkey")
        if privkey is not None:
            keyfile = self.string(privkey.value, privkey.pos, "ssl.privkey")
            if keyfile is None:
                return False
            options += f":privateKey={_escape(keyfile)}:certKey={_escape(pemfile)}"
        else:
            # A lighttpd pemfile holds the certificate and the key.
            options += f":privateKey={_escape(pemfile)}"
        dh = self.setting(sock.block, "ssl.dh-file")
        if dh is not None:
            dhfile = self.string(dh.value, dh.pos, "ssl.dh-file")
            if dhfile is None:
                return False
            options += f":dhParameters={_escape(dhfile)}"
        return options

    def dualStackListeners(
        self, listens: Sequence[tuple[tuple[int, str], _Listen]]
    ) -> dict[tuple[int, str], list[str]]:
        """
        The listen endpoints of each proxy.

        lighttpd binds C{[::]:P} IPv6-only beside C{0.0.0.0:P}. Twisted's
        IPv6 listener on C{::} takes IPv4 connections too where the system
        is dual-stack (C{net.ipv6.bindv6only = 0}, Linux's default), so that
        there the IPv4 wildcard listener is left out when the IPv6 one serves
        the same proxy the same way, and is an error otherwise.
        """
        result: dict[tuple[int, str], list[str]] = {group: [] for group, _ in listens}
        v6: dict[int, tuple[tuple[int, str], _Listen]] = {}
        if self.dualStack:
            for group, listen in listens:
                if listen.wildcard == "v6":
                    v6.setdefault(listen.port, (group, listen))
        for group, listen in listens:
            twin = v6.get(listen.port) if listen.wildcard == "v4" else None
            if twin is None:
                result[group].append(listen.endpoint)
                continue
            twinGroup, twinListen = twin
            token, twinToken = _quoted(listen.socket.token), _quoted(twinListen.socket.token)
            if twinGroup != group or twinListen.variant != listen.variant:
                self.error(listen.socket.pos or twinListen.socket.pos, '$SERVER["socket"]',
                           f"{token} and {twinToken} cannot both listen: Twisted's IPv6 "
                           "listener on :: takes IPv4 connections too on this system "
                           "(net.ipv6.bindv6only = 0), and the two are configured "
                           "differently: configure them alike, or drop one")
                continue
            self.notice(listen.socket.pos, "", f"{token} is served by the IPv6 listener of "
                        f"{twinToken}, which takes IPv4 connections too on this system")
        return result

    # -- sockproxy.server, .balance, .debug

    def balance(self, block: _Block) -> str | None:
        found = self.setting(block, "sockproxy.balance")
        if found is None:
            return DEFAULT_BALANCE
        name = self.string(found.value, found.pos, "sockproxy.balance")
        if name is None:
            return None
        name = name.strip()
        if not name:
            return DEFAULT_BALANCE
        if name not in self.balancers:
            self.error(found.pos, "sockproxy.balance", unknownBalancer(name, self.balancers)
                       + " (lighttpd would log an error and use fair)")
            return None
        return name

    def debugLevel(self, levels: Sequence[tuple[int, _Pos]]) -> int:
        if not levels:
            return 0
        highest, pos = max(levels, key=lambda item: item[0])
        if len({level for level, _ in levels}) > 1:
            self.notice(pos, "sockproxy.debug", f"differs between sockets: the highest, "
                        f"{highest}, applies to all of them")
        if highest > 3:
            self.notice(pos, "sockproxy.debug", f"{highest} is more than 3: 3 is used")
            highest = 3
        return highest

    def server(self, assignment: _Assignment) -> _Server | None:
        """
        Read one sockproxy.server definition (once, however many sockets
        share it).
        """
        if id(assignment) in self.servers:
            return self.servers[id(assignment)]
        self.servers[id(assignment)] = None
        before = len(self.problems)
        result = self._server(assignment)
        if len(self.problems) != before:
            result = None
        self.servers[id(assignment)] = result
        return result

    def _server(self, assignment: _Assignment) -> _Server | None:
        key = "sockproxy.server"
        value = assignment.value
        if not isinstance(value, _Arr):
            self.error(assignment.pos, key, f"must be an array like {_SERVER_EXAMPLE}, "
                       f"not {_describe(value)}")
            return None
        if not value.entries:
            self.error(assignment.pos, key, f"is empty: write {_SERVER_EXAMPLE}")
            return None
        extensions: list[_Entry] = []
        for entry in value.entries:
            if entry.key is None or not isinstance(entry.value, _Arr):
                self.error(entry.pos, key, f"must be an array like {_SERVER_EXAMPLE}: each "
                           "element is \"\" => ( hosts ), not " + _describe(entry.value))
                continue
            if entry.key not in ("", "/"):
                self.error(entry.pos, key, f"extension {_quoted(entry.key)}: must be \"\" or "
                           "\"/\" (mod_sockproxy matches the path \"/\" only; lighttpd would "
                           "never use these hosts)")
                continue
            extensions.append(entry)
        if not extensions:
            return None
        if len(extensions) > 1:
            self.notice(extensions[1].pos, key, f"extension {_quoted(extensions[1].key or '')} "
                        f"is never used: the first, {_quoted(extensions[0].key or '')}, "
                        "matches every connection")
        hosts = extensions[0].value
        assert isinstance(hosts, _Arr)
        if not hosts.entries:
            self.error(extensions[0].pos, key, "has no hosts")
            return None
        read: list[tuple[str, BackendConfig, float, _Entry]] = []
        for entry in hosts.entries:
            host = self.host(entry)
            if host is not None:
                read.append(host)
        if len(read) != len(hosts.entries):
            return None
        backends = self.labelBackends(read, assignment)
        timeouts = [t for _, _, t, _ in read]
        positive = [t for t in timeouts if t > 0]
        idle = min(positive) if positive else 0.0
        if positive and len(set(timeouts)) > 1:
            self.notice(assignment.pos, key, "read-timeout/write-timeout differ between hosts: "
                        f"the smallest set, {idle:g}s, is the idle timeout of every session of "
                        "this proxy")
        return _Server(backends=backends, idleTimeout=idle)

    def labelBackends(
        self, read: Sequence[tuple[str, BackendConfig, float, _Entry]], assignment: _Assignment
    ) -> tuple[BackendConfig, ...]:
        """
        Give every backend a unique label: lighttpd labels unlabeled hosts
        all C{""} (and merges their statistics); here they are named after
        their address.
        """
        key = "sockproxy.server"
        taken = {label for label, _, _, _ in read if label}
        result: list[BackendConfig] = []
        used: set[str] = set()
        generated: list[str] = []
        endpoints: dict[str, _Entry] = {}
        for label, backend, _, entry in read:
            if backend.endpoint in endpoints:
                first = endpoints[backend.endpoint]
                self.error(entry.pos, key, f"{_addressLabel(backend)} is already a host, at "
                           f"{first.pos}: sockproxy needs each backend once; give it a "
                           "\"weight\" instead")
                continue
            endpoints[backend.endpoint] = entry
            # Labels written are unique: they are keys of one array.
            unique = label
            if not label:
                name = unique = _addressLabel(backend)
                n = 2
                while unique in used or unique in taken:
                    unique = f"{name}#{n}"
                    n += 1
                generated.append(unique)
            used.add(unique)
            result.append(BackendConfig(
                endpoint=backend.endpoint, label=unique, weight=backend.weight,
                disableTime=backend.disableTime, connectTimeout=backend.connectTimeout,
                origin=backend.origin,
            ))
        if generated:
            self.notice(assignment.pos, key, "unlabeled hosts are labeled by their address: "
                        + ", ".join(generated) + " (lighttpd labels them all \"\")")
        return tuple(result)

    def host(self, entry: _Entry) -> tuple[str, BackendConfig, float, _Entry] | None:
        """
        Read one host of sockproxy.server.

        @return: its label (C{""} if none), the backend (labeled later), its
            idle timeout, and the entry; or L{None} after an error.
        """
        key = "sockproxy.server"
        # A blank label is no label (the native config refuses blank ones).
        label = entry.key if entry.key and entry.key.strip() else ""
        what = f"host {_quoted(label)}: " if label else "host: "
        if not isinstance(entry.value, _Arr):
            self.error(entry.pos, key, f"{what}must be an array of \"option\" => value, like "
                       f"( \"host\" => \"10.0.0.2\", \"port\" => 5432 ), not "
                       f"{_describe(entry.value)}")
            return None
        before = len(self.problems)
        options: dict[str, _Entry] = {}
        for option in entry.value.entries:
            if option.key is None:
                self.error(option.pos, key, f"{what}options are \"name\" => value pairs, "
                           f"not a bare value ({_describe(option.value)})")
                continue
            options[option.key] = option
            name = option.key
            if name in _HOST_OPTIONS:
                continue
            dashed = name.replace("_", "-")
            if dashed != name and dashed in (_HOST_OPTIONS | _MEANINGLESS_HOST_OPTIONS):
                self.error(option.pos, key, f"{what}{_quoted(name)}: write {_quoted(dashed)} "
                           "(with '-', not '_')")
            elif name in _MEANINGLESS_HOST_OPTIONS:
                self.notice(option.pos, key, f"{what}{_quoted(name)} is ignored: it concerns "
                            "HTTP gateways or spawned backends, not socket proxying")
            else:
                self.notice(option.pos, key, f"{what}unknown option {_quoted(name)} is ignored "
                            "(as lighttpd ignores it)")
        if "bin-path" in options:
            self.error(options["bin-path"].pos, key, f"{what}bin-path: spawning backends is not "
                       "supported: start the backend yourself and give its host and port, or "
                       "socket")
            return None

        def text(name: str) -> str | None:
            option = options.get(name)
            if option is None:
                return None
            return self.string(option.value, option.pos, key, f"{what}{name}: ")

        def number(name: str, minimum: int, maximum: int | None = None) -> int | None:
            option = options.get(name)
            if option is None:
                return None
            return self.integer(option.value, option.pos, key, f"{what}{name}: ", minimum,
                                maximum)

        hostName = text("host")
        sock = text("socket")
        port = number("port", 1, 65535)
        disableTime = number("disable-time", 0)
        connectTimeout = number("connect-timeout", 0)
        readTimeout = number("read-timeout", 0)
        writeTimeout = number("write-timeout", 0)
        weight = number("weight", 1)
        fin = options.get("tcp-fin-propagate")
        if fin is not None:
            # Accepted for compatibility: half-close is always forwarded.
            self.boolean(fin.value, fin.pos, key, f"{what}tcp-fin-propagate: ")
        if connectTimeout == 0:
            option = options["connect-timeout"]
            self.error(option.pos, key, f"{what}connect-timeout: 0 (no limit) is not supported: "
                       "give the seconds a connect may take")
        if len(self.problems) != before:
            return None
        if hostName is not None and hostName.startswith("/") and port is not None:
            self.notice(options["port"].pos, key, f"{what}port is ignored: host "
                        f"{_quoted(hostName)} is a unix socket")
            port = None
        try:
            endpoint, origin = backendFromHost(hostName, port, sock, self.resolve)
        except ValueError as e:
            where = options.get("socket") or options.get("host") or options.get("port") or entry
            if hostName is None and sock is None and port is None:
                self.error(where.pos, key, f"{what}needs \"host\" (and \"port\") or \"socket\"")
            else:
                self.error(where.pos, key, f"{what}{e}")
            return None
        error = checkEndpoint(endpoint, server=False)
        if error:
            self.error(entry.pos, key, f"{what}{error}")
            return None
        timeouts = [t for t in (readTimeout, writeTimeout) if t]
        backend = BackendConfig(
            endpoint=endpoint, label=label, weight=weight or 1,
            disableTime=float(DEFAULT_DISABLE_TIME if disableTime is None else disableTime),
            connectTimeout=float(connectTimeout or DEFAULT_CONNECT_TIMEOUT),
            origin=origin,
        )
        return label, backend, float(min(timeouts)) if timeouts else 0.0, entry

    # -- the rest

    def checkModules(self, modules: _Assignment | None) -> None:
        names: list[str] = []
        if modules is not None and isinstance(modules.value, _Arr):
            names = [e.value.text for e in modules.value.entries if isinstance(e.value, _Str)]
        if "mod_sockproxy" not in names:
            where = modules.pos if modules is not None else None
            self.notice(where, "server.modules", "\"mod_sockproxy\" is not loaded: lighttpd "
                        "would not proxy with this config, sockproxy does")

    def shutdownTimeout(self) -> float:
        found = self.setting(self.root, "server.graceful-shutdown-timeout")
        value: _Value | None = found.value if found is not None else None
        pos = found.pos if found is not None else None
        flags = self.setting(self.root, "server.feature-flags")
        if flags is not None and isinstance(flags.value, _Arr):
            for entry in flags.value.entries:
                if entry.key == "server.graceful-shutdown-timeout":
                    value, pos = entry.value, entry.pos
        if value is None or pos is None:
            return DEFAULT_SHUTDOWN_TIMEOUT
        seconds = self.integer(value, pos, "server.graceful-shutdown-timeout", "", 0)
        if seconds is None:
            return DEFAULT_SHUTDOWN_TIMEOUT
        if seconds == 0:
            self.notice(pos, "server.graceful-shutdown-timeout", "0 (wait for ever) is not "
                        f"supported: sessions get {DEFAULT_SHUTDOWN_TIMEOUT:g}s")
            return DEFAULT_SHUTDOWN_TIMEOUT
        return float(seconds)

    def checkServerLevel(self) -> None:
        workers = self.setting(self.root, "server.max-worker")
        if workers is not None:
            count = self.integer(workers.value, workers.pos, "server.max-worker", "", 0)
            if count is not None and count > 1:
                self.notice(workers.pos, "server.max-worker", f"{count} workers: sockproxy "
                            "runs one process (lighttpd's workers each keep their own "
                            "balancing state)")
        activation = self.setting(self.root, "server.systemd-socket-activation")
        if activation is not None and self.boolean(activation.value, activation.pos,
                                                   "server.systemd-socket-activation"):
            self.error(activation.pos, "server.systemd-socket-activation", "not supported for "
                       "lighttpd configs: use the native config with systemd: listen endpoints")

    def noticeIgnored(self) -> None:
        ignored: list[str] = []
        for assignment in self.ev.assignments:
            name = assignment.key
            if id(assignment) in self.used or name.startswith(("var.", "env.")):
                continue
            if name not in ignored:
                ignored.append(name)
        # A directive counts as used if any of its assignments was.
        usedNames = {a.key for a in self.ev.assignments if id(a) in self.used}
        ignored = [name for name in ignored if name not in usedNames]
        if ignored:
            described = [name + _IGNORED_HINTS.get(name, "") for name in ignored]
            self.notice(None, "", "ignored, not used by sockproxy: " + ", ".join(described))


def _addressLabel(backend: BackendConfig) -> str:
    """
    A label for an unlabeled host, from what was written: C{host:port},
    C{[v6]:port} or the unix socket path.
    """
    fields = originFields(backend.origin)
    host = fields.get("host")
    sock = fields.get("socket")
    if isinstance(sock, str):
        return sock
    if isinstance(host, str):
        port = fields.get("port")
        if port is None:
            return host
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return backend.endpoint


def _escape(text: str) -> str:
    """
    Quote a value for an endpoint string: C{quoteStringArgument} escapes
    backslashes and colons; C{=} is escaped too, so that a positional
    argument holding one is not read as a keyword.
    """
    return quoteStringArgument(text).replace("=", "\\=")


def _systemIsDualStack() -> bool:
    try:
        with open("/proc/sys/net/ipv6/bindv6only", encoding="ascii") as f:
            return f.read().strip() == "0"
    except OSError:
        return False


# --------------------------------------------------------------------------
# Entry points


def parseLighttpd(
    text: str,
    source: str = "<string>",
    resolve: Resolver = resolveFirst,
    balancers: frozenset[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    shell: ShellRunner = runShell,
    dualStack: bool | None = None,
    cwd: str | None = None,
    pid: int | None = None,
) -> Config:
    """
    Parse a lighttpd configuration and map its mod_sockproxy part.

    @param text: the main file's contents.
    @param source: its path: includes are resolved against its directory.
    @param resolve: resolves host names of backends and sockets.
    @param balancers: the balancer names that may be used; by default,
        those of the installed balancer plugins.
    @param environ: what C{env.NAME} reads (default: C{os.environ}).
    @param shell: runs C{include_shell} commands (default: L{runShell}).
    @param dualStack: whether an IPv6 listener on C{::} also takes IPv4
        connections (default: read from C{/proc}).
    @param cwd: C{var.CWD} (default: the working directory).
    @param pid: C{var.PID} (default: this process's id).

    @raise ConfigError: the config has errors; each names file, line, column.
    """
    if balancers is None:
        balancers = knownBalancers()
    ev = _Evaluator(
        source,
        os.environ if environ is None else environ,
        shell,
        os.getcwd() if cwd is None else cwd,
        os.getpid() if pid is None else pid,
    )
    try:
        ev.parseText(text, source)
    except _Stop as e:
        raise ConfigError([e.problem]) from None
    except RecursionError:
        raise ConfigError([Problem(source, None, "", "nested too deeply")]) from None
    if dualStack is None:
        dualStack = _systemIsDualStack()
    return _Mapper(ev, source, resolve, balancers, dualStack).run()
