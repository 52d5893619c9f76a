"""The Result term by rules: decide correct / wrong from the answer and the reference, or say undecided.

Order of checks (the first that decides wins):
1. no answer -> wrong; same text after normalisation (case, punctuation, articles, \\boxed, $) -> correct;
2. multiple choice (options in the question or given, a letter reference, or a reference written as an
   option, `B. a red car`, which both `B` and `a red car` pick): compare letters;
3. yes/no references against a yes/no answer;
4. numbers (separators, fractions, units, percentages, tolerance; see rules_numbers.py);
5. mathematical equivalence by math-verify (see rules_math.py);
6. otherwise undecided: only then is the judge asked (semantic equivalence is its job).
"""
from __future__ import annotations

import enum
import functools
import re
import string
from dataclasses import dataclass

from envs.protocol import extract_answer, strip_sandbox_outputs
from rewards.config import RuleConfig
from rewards.rules_choice import chosen_letter, parse_options, picks_reference_option, reference_option
from rewards.rules_math import looks_mathematical, math_equal, math_value
from rewards.rules_numbers import Quantity, numbers_in, parse_quantity, same_quantity


class Verdict(str, enum.Enum):
    CORRECT = "correct"
    WRONG = "wrong"
    UNDECIDED = "undecided"


@dataclass(frozen=True)
class RuleDecision:
    verdict: Verdict
    reason: str  # which rule decided, for logs and debugging reward curves


_BOXED = re.compile(r"\\boxed\s*\{")
_TEXT_CMD = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
_LEAD_IN = re.compile(r"^(?:the\s+)?(?:final\s+)?(?:correct\s+)?answer\s*(?:is|:)\s*", re.IGNORECASE)
_PUNCT = str.maketrans({c: " " for c in string.punctuation if c not in "%"})
_ARTICLES = {"a", "an", "the"}
_YES = {"yes", "true", "correct", "right"}
_NO = {"no", "false", "incorrect", "wrong"}


def extract_final_answer(text: str) -> str | None:
    """The model's final answer: the last <answer> outside sandbox replies (code may print tags)."""
    return extract_answer(strip_sandbox_outputs(text))


def _unbox(text: str) -> str:
    """Content of the last \\boxed{...} (braces balanced), else the text itself."""
    starts = list(_BOXED.finditer(text))
    if not starts:
        return text
    i = starts[-1].end()
    depth = 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return text


def clean_answer(text: str) -> str:
    """Strip wrappers a model puts around an answer: \\boxed{}, $...$, \\text{}, "The answer is", a final period."""
    s = _unbox(text.strip())
    s = _TEXT_CMD.sub(r"\1", s).strip()
    s = _LEAD_IN.sub("", s).strip()
    if len(s) >= 2 and s[0] == s[-1] == "$":
        s = s.strip("$").strip()
    return s.rstrip(".").strip()


def normalize_text(text: str) -> str:
    """Case-, punctuation-, article- and whitespace-insensitive form of a short answer."""
    words = text.lower().translate(_PUNCT).split()
    return " ".join(w for w in words if w not in _ARTICLES)


def _yes_no(text: str) -> bool | None:
    words = normalize_text(text).split()
    if not words:
        return None
    if words[0] in _YES:
        return True
    if words[0] in _NO:
        return False
    return None


def _decide(ok: bool, reason: str) -> RuleDecision:
    return RuleDecision(Verdict.CORRECT if ok else Verdict.WRONG, reason)


def check_answer(
    answer: str | None,
    reference: str,
    question: str = "",
    options: list[str] | None = None,
    cfg: RuleConfig = RuleConfig(),
) -> RuleDecision:
    """Compare a model's answer with the reference by rules alone."""
    if answer is None or not answer.strip():
        return RuleDecision(Verdict.WRONG, "no answer")
    return _check_cached(answer, str(reference), question, tuple(options) if options else None, cfg)


# A group's rollouts often give the same answer to the same prompt: decide it once.
@functools.lru_cache(maxsize=16384)
def _check_cached(answer: str, reference: str, question: str, options: tuple[str, ...] | None, cfg: RuleConfig) -> RuleDecision:
    ans, ref = clean_answer(answer), clean_answer(reference)
    if not ref:
        return RuleDecision(Verdict.UNDECIDED, "empty reference")
    if ans == ref:
        return RuleDecision(Verdict.CORRECT, "same text")

    choices = parse_options(question, options)
    option = None if choices else reference_option(ref)
    if option is not None:  # "B. a red car" with no options in the question: the reference is a choice
        picked = picks_reference_option(ans, *option)
        if picked is not None:
            return _decide(picked, f"choice against the reference option {option[0]}")
    ref_letter = chosen_letter(ref, choices)
    if ref_letter is not None and (choices or len(ref) <= 3):
        ans_letter = chosen_letter(ans, choices)
        if ans_letter is not None:
            return _decide(ans_letter == ref_letter, f"choice {ans_letter} vs {ref_letter}")
        if not choices and re.fullmatch(r"\(?[A-Z]\)?", ref):
            return RuleDecision(Verdict.UNDECIDED, "letter reference, answer names no letter")

    ref_yes = _yes_no(ref) if len(ref.split()) == 1 else None
    if ref_yes is not None:
        ans_yes = _yes_no(ans)
        if ans_yes is not None:
            return _decide(ans_yes == ref_yes, "yes/no")

    ref_q = parse_quantity(ref)
    if ref_q is not None:
        ans_q = parse_quantity(ans)
        if ans_q is None and looks_mathematical(ans):
            value = math_value(ans, cfg)
            ans_q = None if value is None else Quantity(value, 0, False, "")
        if ans_q is None:
            found = numbers_in(ans)
            distinct = {(q.value, q.percent) for q in found}
            ans_q = found[0] if len(distinct) == 1 else None
        if ans_q is not None:
            same = same_quantity(ans_q, ref_q, cfg)
            if same is not None:
                return _decide(same, "number")
            return RuleDecision(Verdict.UNDECIDED, "numbers with different units")

    if looks_mathematical(ans) or looks_mathematical(ref):
        same = math_equal(ans, ref, cfg)
        if same is not None:
            return _decide(same, "math-verify")
    # Last, not first: punctuation matters to numbers ("-5" is not "5") and those are decided above.
    if normalize_text(ans) == normalize_text(ref) and normalize_text(ref):
        return RuleDecision(Verdict.CORRECT, "same text")
    return RuleDecision(Verdict.UNDECIDED, "no rule decides")
