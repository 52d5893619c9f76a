"""Multiple-choice answers: options from the question ("A. cat\\nB. dog", "(A) cat (B) dog") or a list,
and the letter an answer picks, whether written as a letter ("B", "(B)", "B. dog", "Option B") or
as the option's text ("dog").
"""
from __future__ import annotations

import functools
import re
import string

_LINE_OPTION = re.compile(r"^\s*\(?([A-Z])(?:\)|\.|:|\uff1a)\s*(.+?)\s*$")
_INLINE_OPTION = re.compile(r"\(([A-Z])\)\s*(.+?)(?=\s*\([A-Z]\)|\s*$)", re.DOTALL)
_LABEL = re.compile(r"^\s*\(?([A-Z])(?:\)|\.|:)\s+")
_BARE_LETTER = re.compile(r"^\(?([A-Za-z])\)?[.):]?$")
_LETTER_THEN_TEXT = re.compile(r"^\(?([A-Z])(?:\)|\.|:)\s*(.+)$", re.DOTALL)
_SAID_LETTER = re.compile(r"\b(?i:option|choice|answer(?: is)?)\s*:?\s*\(?([A-Z])\b\)?")
_PAREN_LETTER = re.compile(r"\(([A-Z])\)")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})
# A reference written as an option: "B. a red car", "(B) a red car", "B) a red car", "B: a red car".
# Whitespace must follow the label, so "U.S. Army" or "A.I." are not options.
_OPTION_REFERENCE = re.compile(r"^\s*(?:\(([A-Z])\)|([A-Z])[.):])\s+(\S.*?)\s*$", re.DOTALL)


def _norm(text: str) -> str:
    return " ".join(text.lower().translate(_PUNCT).split())


def _consecutive(letters: list[str]) -> bool:
    return len(letters) >= 2 and letters == [chr(ord("A") + i) for i in range(len(letters))]


def parse_options(question: str = "", options: list[str] | tuple[str, ...] | None = None) -> dict[str, str]:
    """Letter -> option text; {} when the question offers no choices."""
    return dict(_parse_options(question, tuple(options) if options else None))


@functools.lru_cache(maxsize=4096)  # the G rollouts of a prompt share its question
def _parse_options(question: str, options: tuple[str, ...] | None) -> tuple[tuple[str, str], ...]:
    return tuple(_parse_options_uncached(question, options).items())


def _parse_options_uncached(question: str, options: tuple[str, ...] | None) -> dict[str, str]:
    if options:
        out = {}
        for i, opt in enumerate(options):
            opt = str(opt)
            m = _LABEL.match(opt)
            letter = m.group(1) if m else chr(ord("A") + i)
            out[letter] = opt[m.end():].strip() if m else opt.strip()
        return out
    if not question:
        return {}
    found = [m.groups() for line in question.splitlines() if (m := _LINE_OPTION.match(line))]
    if _consecutive([letter for letter, _ in found]):
        return dict(found)
    inline = _INLINE_OPTION.findall(question)
    if _consecutive([letter for letter, _ in inline]):
        return {letter: text.strip().rstrip(",;") for letter, text in inline}
    return {}


def chosen_letter(answer: str, options: dict[str, str]) -> str | None:
    """The one option letter `answer` picks, or None when it names none or several."""
    text = answer.strip().rstrip(".").strip()
    m = _BARE_LETTER.match(text)
    if m and (m.group(1).isupper() or options):
        letter = m.group(1).upper()
        return letter if not options or letter in options else None
    m = _LETTER_THEN_TEXT.match(text)
    if m:
        letter, rest = m.group(1), _norm(m.group(2))
        if options and letter in options:
            # "B. cat" where cat is option A contradicts itself: let the judge look.
            named = [k for k, v in options.items() if _norm(v) == rest]
            return letter if not named or named == [letter] else None
        if not options:
            return letter
    if options:
        norm = _norm(text)
        named = [k for k, v in options.items() if _norm(v) == norm]
        if len(named) == 1:
            return named[0]
    said = {s.upper() for s in _SAID_LETTER.findall(text)} | set(_PAREN_LETTER.findall(text))
    if options:
        said &= set(options)
    return said.pop() if len(said) == 1 else None


def reference_option(reference: str) -> tuple[str, str] | None:
    """(letter, text) when the reference is written as an option (`B. a red car`), else None."""
    m = _OPTION_REFERENCE.match(reference)
    if not m:
        return None
    return m.group(1) or m.group(2), m.group(3)


def picks_reference_option(answer: str, letter: str, text: str) -> bool | None:
    """Whether `answer` picks the reference option (letter, text) when the question lists no options.

    `B`, `(B)`, `Option B` and the option's text `a red car` pick it; another letter (`A`,
    `C. a blue car`) does not; a letter that contradicts the reference's text (`C. a red car`) and
    anything else (a paraphrase) are undecided (None): without the other options only the judge can tell.
    """
    if chosen_letter(answer, {letter: text}) is not None:
        return True
    other = chosen_letter(answer, {})
    if other is None:
        return None
    m = _LETTER_THEN_TEXT.match(answer.strip().rstrip(".").strip())
    if m and _norm(m.group(2)) == _norm(text) and m.group(1) != letter:
        return None
    return other == letter
