"""
The second stage of reading a lighttpd.conf: L{Evaluator} parses the tokens
and evaluates them at once, as lighttpd's grammar (C{configparser.y}) does:
variables (C{var.x}, or C{x}), C{env.NAME}, C{+} on strings, integers and
arrays, C{=}, C{:=} and C{+=}, arrays, C{include} (relative to the main file's
directory, globs allowed), C{include_shell} (run with C{/bin/sh}, as lighttpd
runs it), C{global} blocks and conditions with C{else}. The result is a tree
of L{Block}s holding L{Assignment}s of values (L{Str}, L{Int}, L{Arr}).
"""

from __future__ import annotations

import errno
import glob
import re
import subprocess
from dataclasses import dataclass, field
from typing import Callable, Mapping, NoReturn

from txsockproxy.checks import nulProblem
from txsockproxy.config import Problem
from txsockproxy.lighttpd.lexer import (
    LONG_MAX,
    Lexer,
    Pos,
    StopParsing,
    Token,
    problemAt,
    quoted,
)
from txsockproxy.readfile import MAX_FILE_SIZE, readBounded

# lighttpd refuses config files larger than this (configfile.c).
# include and include_shell may nest this deep (a file that includes itself
# would otherwise recurse for ever), and arrays and blocks this deep.
MAX_INCLUDE_DEPTH = 32
MAX_NESTING = 64
# include_shell commands must finish within this many seconds.
SHELL_TIMEOUT = 30.0
# lighttpd's integers are C longs.

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


@dataclass(frozen=True)
class Str:
    text: str
    pos: Pos


@dataclass(frozen=True)
class Int:
    number: int
    pos: Pos


@dataclass(frozen=True)
class Entry:
    """
    One element of an array: C{key => value}, or a bare value (C{key} None).
    C{pos} is where the element starts.
    """

    key: str | None
    value: Value
    pos: Pos


@dataclass(frozen=True)
class Arr:
    entries: tuple[Entry, ...]
    pos: Pos


Value = Str | Int | Arr


def describeValue(value: Value) -> str:
    if isinstance(value, Str):
        return f"a string ({quoted(value.text)})" if len(value.text) <= 40 else "a string"
    if isinstance(value, Int):
        return f"an integer ({value.number})"
    return "an array"


@dataclass(eq=False)
class Assignment:
    """
    A directive's value in one block, and where its name was written.
    """

    key: str
    value: Value
    pos: Pos
    block: Block


@dataclass(frozen=True)
class Condition:
    """
    C{$VARIABLE["field"] op "value"}; C{op} is C{"else"} for an C{else}
    block, whose C{value} is then the text of the condition it negates.
    C{chained}: written C{else $VARIABLE[...]}, so that it applies only
    where the conditions before it did not match.
    """

    variable: str
    field: str
    op: str
    value: str
    pos: Pos
    chained: bool = False

    @property
    def text(self) -> str:
        if self.op == "else":
            return f"else (of {self.value})"
        return f'${self.variable}["{self.field}"] {self.op} {quoted(self.value)}'

    @property
    def isSocket(self) -> bool:
        return self.variable == "SERVER" and self.field == "socket" and self.op == "=="


@dataclass(eq=False)
class Block:
    """
    The global scope or one condition's block: its directives, in order.
    """

    key: str
    condition: Condition | None
    parent: Block | None
    values: dict[str, Assignment] = field(default_factory=dict)
    children: list[Block] = field(default_factory=list)


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


class Evaluator:
    """
    Parses lighttpd config text and evaluates it as it goes, into a tree of
    L{Block}s rooted at C{root}.
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
        self.root = Block("global", None, None)
        self.blocks: dict[str, Block] = {"global": self.root}
        builtin = Pos("<builtin>", 0, 0)
        for key, value in (("var.CWD", Str(cwd, builtin)), ("var.PID", Int(pid, builtin))):
            self.root.values[key] = Assignment(key, value, builtin, self.root)
        self.current = self.root
        self.assignments: list[Assignment] = []
        self.includeDepth = 0

    def parseText(self, text: str, source: str) -> None:
        tokens = Lexer(text, source).run()
        _FileParser(self, tokens).file()

    def include(self, pattern: str, pos: Pos) -> None:
        if self.includeDepth >= MAX_INCLUDE_DEPTH:
            raise StopParsing(problemAt(pos, "include", f"includes nested more than "
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
            raise StopParsing(problemAt(pos, "include", f"include file not found: {quoted(path)}"))
        for name in matches:
            try:
                raw = readBounded(name, MAX_FILE_SIZE)
            except OSError as e:
                if e.errno == errno.EFBIG:
                    raise StopParsing(problemAt(pos, "include",
                                         f"{quoted(name)} is larger than 32 MiB")) from None
                raise StopParsing(problemAt(pos, "include",
                                     f"cannot read {quoted(name)}: {e.strerror or e}")) from None
            try:
                text = raw.decode("utf-8-sig")
            except UnicodeDecodeError as e:
                line = raw[: e.start].count(b"\n") + 1
                raise StopParsing(Problem(name, line, "", f"not valid UTF-8 (byte {raw[e.start]:#04x})")
                            ) from None
            self.includeDepth += 1
            try:
                self.parseText(text, name)
            finally:
                self.includeDepth -= 1

    def includeShell(self, command: str, pos: Pos) -> None:
        if self.includeDepth >= MAX_INCLUDE_DEPTH:
            raise StopParsing(problemAt(pos, "include_shell", f"includes nested more than "
                                 f"{MAX_INCLUDE_DEPTH} deep"))
        try:
            text = self.shell(command, self.basedir or None)
        except ShellError as e:
            raise StopParsing(problemAt(pos, "include_shell", f"command {quoted(command)} {e}")) from None
        self.includeDepth += 1
        try:
            self.parseText(text, f"include_shell {quoted(command)}")
        finally:
            self.includeDepth -= 1

    def lookup(self, name: str, pos: Pos) -> Value:
        if name.startswith("env."):
            value = self.environ.get(name[4:])
            if value is None:
                raise StopParsing(problemAt(pos, name, f"undefined environment variable {name[4:]!r}"))
            return Str(value, pos)
        block: Block | None = self.current
        while block is not None:
            found = block.values.get(name)
            if found is not None:
                return found.value
            block = block.parent
        raise StopParsing(problemAt(pos, name, f"unknown variable {name!r}: nothing of that name is set "
                             "before this line, here or in an enclosing block"))

    def assign(self, name: str, op: str, value: Value, pos: Pos) -> None:
        if name.startswith("env."):
            raise StopParsing(problemAt(pos, name, "environment variables cannot be set"))
        values = self.current.values
        if op == "=":
            if name in values:
                raise StopParsing(problemAt(pos, name, f"already set at {values[name].pos} "
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
        assignment = Assignment(name, value, pos, self.current)
        values.pop(name, None)
        values[name] = assignment
        self.assignments.append(assignment)

    def enter(self, condition: Condition) -> Block:
        key = f"{self.current.key} / {condition.text}"
        block = self.blocks.get(key)
        if block is None:
            block = Block(key, condition, self.current)
            self.blocks[key] = block
            self.current.children.append(block)
        self.current = block
        return block

    def leave(self) -> None:
        assert self.current.parent is not None
        self.current = self.current.parent


def _merge(left: Value, right: Value, pos: Pos, name: str) -> Value:
    """
    lighttpd's C{+}: concatenate strings (an integer becomes its digits),
    add integers, append arrays.
    """
    if isinstance(left, Str) and isinstance(right, (Str, Int)):
        tail = right.text if isinstance(right, Str) else str(right.number)
        return Str(left.text + tail, left.pos)
    if isinstance(left, Int) and isinstance(right, Str):
        return Str(str(left.number) + right.text, left.pos)
    if isinstance(left, Int) and isinstance(right, Int):
        total = left.number + right.number
        if total > LONG_MAX:
            raise StopParsing(problemAt(pos, name, "the sum is too large"))
        return Int(total, left.pos)
    if isinstance(left, Arr) and isinstance(right, Arr):
        entries = list(left.entries)
        keys = {e.key: e for e in entries if e.key is not None}
        for entry in right.entries:
            if entry.key is not None and entry.key in keys:
                old = keys[entry.key].value
                same = (
                    isinstance(old, Str) and isinstance(entry.value, Str)
                    and old.text == entry.value.text
                ) or (
                    isinstance(old, Int) and isinstance(entry.value, Int)
                    and old.number == entry.value.number
                )
                if same:
                    continue
                raise StopParsing(problemAt(entry.pos, name, f"duplicate array key "
                                     f"{quoted(entry.key)}: already in the array at "
                                     f"{keys[entry.key].pos}"))
            entries.append(entry)
            if entry.key is not None:
                keys[entry.key] = entry
        return Arr(tuple(entries), left.pos)
    raise StopParsing(problemAt(pos, name, f"cannot combine {describeValue(left)} with {describeValue(right)}"))


_HTTP_FIELDS = frozenset({
    "url", "host", "referer", "useragent", "user-agent", "language", "cookie", "remoteip",
    "remote-ip", "querystring", "query-string", "request-method", "scheme",
})


class _FileParser:
    """
    lighttpd's grammar over one file's tokens, evaluating as it reduces.
    """

    def __init__(self, ev: Evaluator, tokens: list[Token]) -> None:
        self.ev = ev
        self.tokens = tokens
        self.i = 0
        self.depth = 0
        self.inGlobal = False

    def peek(self, ahead: int = 0) -> Token:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)]

    def next(self) -> Token:
        token = self.tokens[self.i]
        if token.kind != "EOF":
            self.i += 1
        return token

    def fail(self, token: Token, message: str, key: str = "") -> NoReturn:
        raise StopParsing(problemAt(token.pos, key, f"syntax error: {message}"))

    def unexpected(self, token: Token, expected: str) -> NoReturn:
        if token.kind == "RCURLY":
            self.fail(token, f"'}}' without a matching '{{' (expected {expected})")
        self.fail(token, f"unexpected {token.describe()} (expected {expected})")

    def nest(self, token: Token) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise StopParsing(problemAt(token.pos, "", f"nested more than {MAX_NESTING} deep"))

    def file(self) -> None:
        self.metalines(None)
        token = self.peek()
        if token.kind != "EOF":
            self.unexpected(token, "a directive")

    def metalines(self, opened: Token | None) -> None:
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

    def expression(self, name: str) -> Value:
        left = self.value(name)
        while self.peek().kind == "PLUS":
            plus = self.next()
            right = self.value(name)
            left = _merge(left, right, plus.pos, name)
        return left

    def value(self, name: str) -> Value:
        token = self.next()
        if token.kind == "STRING":
            if "\0" in token.text:
                # No path, host name or endpoint can hold one; refused here,
                # the system would refuse it only once the value is used.
                raise StopParsing(problemAt(token.pos, name, nulProblem(token.text)))
            return Str(token.text, token.pos)
        if token.kind == "INTEGER":
            number = int(token.text, 10)
            if number > LONG_MAX:
                raise StopParsing(problemAt(token.pos, name, f"number too large: {token.text}"))
            return Int(number, token.pos)
        if token.kind == "LKEY":
            ref = token.text if "." in token.text else "var." + token.text
            found = self.ev.lookup(ref, token.pos)
            return found
        if token.kind == "LPAREN":
            return self.array(token, name)
        self.unexpected(token, "a value: a string, a number, an array or a variable")

    def array(self, opened: Token, name: str) -> Arr:
        self.nest(opened)
        entries: list[Entry] = []
        keys: dict[str, Entry] = {}
        if self.peek().kind == "RPAREN":
            self.next()
            self.depth -= 1
            return Arr((), opened.pos)
        while True:
            start = self.peek()
            first = self.expression(name)
            if self.peek().kind == "ARROW":
                self.next()
                key = self._keyOf(first, start, name)
                value = self.expression(name)
                if key in keys:
                    raise StopParsing(problemAt(start.pos, name, f"duplicate array key {quoted(key)}: "
                                         f"already in this array at line {keys[key].pos.line}"))
                entry = Entry(key, value, start.pos)
                keys[key] = entry
            else:
                entry = Entry(None, first, start.pos)
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
        return Arr(tuple(entries), opened.pos)

    @staticmethod
    def _keyOf(value: Value, token: Token, name: str) -> str:
        if isinstance(value, Str):
            return value.text
        if isinstance(value, Int):
            return str(value.number)
        raise StopParsing(problemAt(token.pos, name, "an array key must be a string, not an array"))

    def stringop(self, token: Token, what: str) -> str:
        value = self.expression(what)
        if isinstance(value, Str):
            return value.text
        if isinstance(value, Int):
            return str(value.number)
        raise StopParsing(problemAt(token.pos, what, f"needs a string, not {describeValue(value)}"))

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
                block = self.condline(self.next(), chained=True)
            elif self.peek().kind == "LCURLY":
                condition = Condition(previous.variable, previous.field, "else",
                                       previous.text, elseToken.pos)
                block = self.body(condition, self.next())
            else:
                self.unexpected(self.peek(), "a condition or '{' after 'else'")

    def condline(self, dollar: Token, chained: bool = False) -> Block:
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
        if not isinstance(value, Str):
            raise StopParsing(problemAt(valueToken.pos, what,
                                 f"must be compared with a string, not {describeValue(value)}"))
        variable = nameToken.text
        if variable == "SERVER" and fieldName != "socket":
            raise StopParsing(problemAt(fieldToken.pos, what, "unknown condition: $SERVER has only "
                                 "[\"socket\"]"))
        if variable == "HTTP" and fieldName not in _HTTP_FIELDS:
            raise StopParsing(problemAt(fieldToken.pos, what, "unknown condition field"))
        condition = Condition(variable, fieldName, op.text, value.text, dollar.pos, chained)
        opened = self.next()
        if opened.kind != "LCURLY":
            self.unexpected(opened, f"'{{' after the condition {condition.text}")
        return self.body(condition, opened)

    def body(self, condition: Condition, opened: Token) -> Block:
        self.nest(opened)
        block = self.ev.enter(condition)
        self.metalines(opened)
        self.next()  # the "}"
        self.ev.leave()
        self.depth -= 1
        return block
