"""Branch and path globs of git triggers: validated once, matched in linear time.

The rules are those of GitHub Actions filters: `*` matches within one path segment (no
`/`), `**` matches across segments (`src/**` matches `src/a/b.py`), `**/` matches zero
or more whole segments (`**/test_*.py` matches at any depth, the top included), `?` one
character other than `/`, `[abc]`, `[a-z]` and `[!abc]` one character of (or not of) a
class, never `/`. Every other character, `\\` included, stands for itself.

Why not `fnmatch` or a translated regular expression: Python's `re` backtracks, so a
pattern such as `**/**/**/**/x` against a deep path that does not match takes exponential
time, and the API matches patterns it did not write against paths it did not choose. Here a
pattern compiles to a list of tokens and a name is matched by stepping the set of token
positions reachable so far over each character (an NFA simulation): at most
`len(tokens)` positions per character, so time is O(len(name) x len(pattern)), whatever
the pattern. Bad patterns (`[z-a]`, an unclosed `[`) are refused with a message that says
what is wrong, when the flow is applied, instead of failing when a push arrives.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

#: Longer patterns are refused: a branch or path filter is never this long, and the
#: bound keeps the matching cost per name small.
MAX_GLOB_LENGTH = 500


class GlobError(ValueError):
    """A glob is malformed; the message says where and why."""


@dataclass(frozen=True)
class _Class:
    """`[...]`: a set of characters and ranges, possibly negated; never matches `/`."""

    chars: frozenset[str]
    ranges: tuple[tuple[str, str], ...]
    negated: bool

    def matches(self, char: str) -> bool:
        if char == "/":
            return False
        inside = char in self.chars or any(lo <= char <= hi for lo, hi in self.ranges)
        return inside != self.negated


# Token kinds. A token is (kind, payload).
_LITERAL = 0  # payload: the character
_ONE = 1  # `?`
_CLASS = 2  # payload: a _Class
_STAR = 3  # `*`: any run of non-`/` characters
_ANY = 4  # `**` not followed by `/`: any run of characters
_SEGMENTS = 5  # `**/`: empty, or any run of characters ending in `/`

_STARS = (_STAR, _ANY, _SEGMENTS)  # may match nothing

_Token = tuple[int, object]


def _parse_class(pattern: str, start: int) -> tuple[_Class, int]:
    """The class that opens at `pattern[start] == '['`; returns it and the index after `]`."""
    i = start + 1
    negated = i < len(pattern) and pattern[i] == "!"
    if negated:
        i += 1
    first = i
    chars: set[str] = set()
    ranges: list[tuple[str, str]] = []
    while True:
        if i >= len(pattern):
            raise GlobError(f"'[' at position {start} is never closed with ']'")
        char = pattern[i]
        if char == "]" and i > first:  # a `]` first in the class is a member
            break
        if i + 2 < len(pattern) and pattern[i + 1] == "-" and pattern[i + 2] != "]":
            low, high = char, pattern[i + 2]
            if low > high:
                raise GlobError(f"the range {low}-{high} is reversed (write {high}-{low})")
            ranges.append((low, high))
            i += 3
            continue
        chars.add(char)
        i += 1
    return _Class(frozenset(chars), tuple(ranges), negated), i + 1


def _tokens(pattern: str) -> tuple[_Token, ...]:
    tokens: list[_Token] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            end = i + 2
            while pattern.startswith("*", end):  # `***` is `**`
                end += 1
            if pattern.startswith("/", end):
                kind, end = _SEGMENTS, end + 1
            else:
                kind = _ANY
            # Consecutive `**/**/` match exactly what one does: keep one, so that
            # the state set stays small for hostile patterns too.
            if not (tokens and tokens[-1][0] == kind == _SEGMENTS):
                tokens.append((kind, None))
            i = end
        elif char == "*":
            if not (tokens and tokens[-1][0] == _STAR):
                tokens.append((_STAR, None))
            i += 1
        elif char == "?":
            tokens.append((_ONE, None))
            i += 1
        elif char == "[":
            klass, i = _parse_class(pattern, i)
            tokens.append((_CLASS, klass))
        else:
            tokens.append((_LITERAL, char))
            i += 1
    return tuple(tokens)


@dataclass(frozen=True)
class Glob:
    """A compiled glob. `match(name)` is linear in `len(name)` (see the module docstring)."""

    pattern: str
    tokens: tuple[_Token, ...]

    def _closure(self, states: set[int]) -> set[int]:
        """`states` plus every position reachable by letting a star match nothing."""
        stack = list(states)
        out = set(states)
        while stack:
            position = stack.pop()
            skippable = position < len(self.tokens) and self.tokens[position][0] in _STARS
            if skippable and position + 1 not in out:
                out.add(position + 1)
                stack.append(position + 1)
        return out

    def match(self, name: str) -> bool:
        """Whether the whole of `name` matches the pattern."""
        end = len(self.tokens)
        states = self._closure({0})
        for char in name:
            following: set[int] = set()
            for position in states:
                if position == end:
                    continue
                kind, payload = self.tokens[position]
                if kind == _LITERAL:
                    if char == payload:
                        following.add(position + 1)
                elif kind == _ONE:
                    if char != "/":
                        following.add(position + 1)
                elif kind == _CLASS:
                    assert isinstance(payload, _Class)
                    if payload.matches(char):
                        following.add(position + 1)
                elif kind == _STAR:
                    if char != "/":
                        following.add(position)
                elif kind == _ANY:
                    following.add(position)
                else:  # _SEGMENTS: stay inside the segments, or leave after a `/`
                    following.add(position)
                    if char == "/":
                        following.add(position + 1)
            if not following:
                return False
            states = self._closure(following)
        return end in states


@lru_cache(maxsize=1024)
def compile_glob(pattern: str) -> Glob:
    """Check and compile a branch or path glob.

    Raises:
        GlobError: the pattern is empty, too long, has an unclosed `[` or a reversed range.
    """
    if not pattern:
        raise GlobError("a glob cannot be empty")
    if len(pattern) > MAX_GLOB_LENGTH:
        raise GlobError(f"a glob is at most {MAX_GLOB_LENGTH} characters")
    return Glob(pattern, _tokens(pattern))


def check_glob(pattern: str) -> str:
    """A pydantic validator: the pattern unchanged, or a ValueError naming the problem."""
    try:
        compile_glob(pattern)
    except GlobError as e:
        raise ValueError(f"invalid glob {pattern!r}: {e}") from None
    return pattern


def glob_match(pattern: str, name: str) -> bool:
    """Whether `name` matches `pattern`.

    Raises:
        GlobError: the pattern is malformed (flows are validated at apply, so only a
            pattern stored before that check can get here).
    """
    return compile_glob(pattern).match(name)
