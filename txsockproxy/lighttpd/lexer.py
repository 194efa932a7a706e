"""
The first stage of reading a lighttpd.conf: L{Lexer} turns a file into
L{Token}s the way lighttpd's own tokenizer (C{configfile.c}) does: comments,
strings with only C{\\"} as an escape, newlines that end statements except
inside parentheses, a C{"}"} that ends a line by itself.

Parsing stops at the first error, as lighttpd's does: L{StopParsing} carries
the L{Problem}, which names the file, the line and the column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

from txsockproxy.config import Problem

# lighttpd's integers are C longs.
LONG_MAX = 2**63 - 1


@dataclass(frozen=True)
class Pos:
    """
    Where something was written: file, 1-based line and column.
    """

    source: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.source}:{self.line}"


def quoted(text: str) -> str:
    """
    C{text} as lighttpd writes a string, for messages.
    """
    return '"' + text.replace('"', '\\"') + '"'


class StopParsing(Exception):
    """
    Parsing stops at the first error, as lighttpd's does.
    """

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    pos: Pos

    def describe(self) -> str:
        if self.kind == "EOF":
            return "end of file"
        if self.kind == "EOL":
            return "end of line"
        if self.kind == "STRING":
            return "the string " + quoted(self.text)[:60]
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


def problemAt(pos: Pos, key: str, message: str) -> Problem:
    """
    The problem C{message} about C{key}, at C{pos}.
    """
    return Problem(pos.source, pos.line, key, message, column=pos.column)


class Lexer:
    """
    lighttpd's tokenizer: the whole file at once, into a list of tokens.
    """

    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source
        self.offset = 0
        self.line = 1
        self.lineStart = 0
        self.tokens: list[Token] = []
        self.parens: list[Pos] = []
        self.inCondition = False

    def pos(self, offset: int | None = None) -> Pos:
        at = self.offset if offset is None else offset
        return Pos(self.source, self.line, at - self.lineStart + 1)

    def fail(self, message: str, pos: Pos | None = None) -> NoReturn:
        raise StopParsing(problemAt(pos or self.pos(), "", f"syntax error: {message}"))

    def emit(self, kind: str, text: str, pos: Pos) -> None:
        self.tokens.append(Token(kind, text, pos))

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

    def run(self) -> list[Token]:
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

    def equals(self, start: Pos) -> None:
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

    def string(self, start: Pos) -> None:
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

    def word(self, c: str, start: Pos) -> None:
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
