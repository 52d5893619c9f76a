"""Answer rules on tricky cases: each must be decided right, or honestly left to the judge."""
import threading

import pytest

from rewards.config import RuleConfig
from rewards.rules import Verdict, check_answer, clean_answer, extract_final_answer, normalize_text
from rewards.rules_choice import chosen_letter, parse_options
from rewards.rules_numbers import parse_quantity

C, W, U = Verdict.CORRECT, Verdict.WRONG, Verdict.UNDECIDED
ANIMALS = "Which animal is in the box?\nA. cat\nB. dog\nC. bird"
ANIMALS_PAREN = "Which animal is in the box? (A) cat (B) dog (C) bird"

CASES = [
    # fractions and decimals
    ("1/2", "0.5", C), ("0.5", "1/2", C), ("\\frac{1}{2}", "0.5", C), ("0.5", "\\frac{1}{2}", C),
    ("\\frac{1}{3}", "0.33", C), ("0.3333", "1/3", C), ("2/4", "\\frac{1}{2}", C), ("0.25", "1/2", W),
    # thousands separators and formats
    ("1,000", "1000", C), ("1000", "1,000", C), ("1 000 000", "1000000", C), ("1,000", "100", W),
    ("2.50", "2.5", C), ("$12", "12", C), ("12 dollars", "12", C), ("five", "5", C), ("There are 5 cars.", "5", C),
    # percentages: % on either side accepts the percentage itself or its fraction
    ("0.5", "50%", C), ("50%", "0.5", C), ("50", "50%", C), ("50 percent", "50%", C), ("50\\%", "50%", C),
    ("50", "0.5", W), ("45%", "50%", W),
    # units
    ("3 cm", "3", C), ("3cm", "3 cm", C), ("90°", "90 degrees", C), ("3 cm", "3 m", U),
    # wrong but close
    ("3.15", "3.14", W), ("12", "12.5", W), ("101", "100", W), ("12.4", "12", W), ("0.51", "0.5", W), ("-5", "5", W),
    ("12.004", "12", W),
    # LaTeX and symbolic
    ("\\boxed{7}", "7", C), ("$7$", "7", C), ("\\sqrt{2}", "1.4142", C), ("\\sqrt{8}", "2\\sqrt{2}", C),
    ("2\\pi", "6.28", C), ("x^2+2x+1", "(x+1)^2", C), ("\\frac{\\pi}{2}", "\\pi/2", C), ("\\sqrt{3}", "\\sqrt{2}", W),
    ("2x", "3x", W), ("x+y", "y+x", C), ("\\{1, 2\\}", "\\{2, 1\\}", C),
    # text
    ("The car is RED.", "red", U), ("Red.", "red", C), ("the Eiffel Tower", "Eiffel tower", C),
    ("The answer is: blue", "Blue", C), ("blue", "red", U),
    # yes / no
    ("Yes, it is.", "Yes", C), ("no", "Yes", W), ("True", "yes", C),
    # no answer
    (None, "5", W), ("   ", "5", W),
]


@pytest.mark.parametrize("answer,reference,expected", CASES)
def test_free_form_answers(answer, reference, expected):
    decision = check_answer(answer, reference)
    assert decision.verdict is expected, decision


CHOICE_CASES = [
    ("B", "B", C), ("b", "B", C), ("(B)", "B", C), ("B.", "B", C), ("B. dog", "B", C), ("dog", "B", C), ("Dog.", "B", C),
    ("The answer is (B).", "B", C), ("Option B", "B", C), ("A", "B", W), ("cat", "B", W), ("(C) bird", "B", W),
    ("B", "dog", C), ("dog", "B. dog", C), ("A", "dog", W),
    ("B. cat", "B", U),  # letter and text disagree: the judge decides
    ("A or B", "B", U), ("a small dog", "B", U),
]


@pytest.mark.parametrize("answer,reference,expected", CHOICE_CASES)
@pytest.mark.parametrize("question", [ANIMALS, ANIMALS_PAREN])
def test_multiple_choice_letters_and_option_text(question, answer, reference, expected):
    decision = check_answer(answer, reference, question)
    assert decision.verdict is expected, decision


def test_options_given_as_a_list():
    assert check_answer("dog", "B", options=["cat", "dog"]).verdict is C
    assert check_answer("B", "cat", options=["A. cat", "B. dog"]).verdict is W
    assert parse_options(options=["(A) cat", "(B) dog"]) == {"A": "cat", "B": "dog"}


def test_letter_reference_without_options():
    assert check_answer("(C)", "C").verdict is C
    assert check_answer("D", "C").verdict is W
    assert check_answer("a cat", "C").verdict is U  # "a" is an article, not option A


def test_option_parsing_needs_consecutive_letters():
    assert parse_options("Is it big?\nI. think so") == {}
    assert parse_options("Pick:\nA) one\nB) two") == {"A": "one", "B": "two"}
    assert chosen_letter("A cat sat", parse_options(ANIMALS)) is None


def test_quantity_parsing():
    assert parse_quantity("1,5") is None  # a decimal comma is ambiguous: not read as 1 or 15
    q = parse_quantity("-3.25 cm")
    assert (q.value, q.decimals, q.unit) == (-3.25, 2, "cm")
    assert parse_quantity("5 apples on the left table") is None


def test_answer_extraction_ignores_tags_printed_by_code():
    text = (
        "<code>print('<answer>A</answer>')</code><sandbox_output><answer>A</answer></sandbox_output>"
        "<answer>\\boxed{B}</answer>"
    )
    assert extract_final_answer(text) == "\\boxed{B}"
    assert clean_answer("\\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    assert normalize_text("The  Eiffel-Tower!") == "eiffel tower"
    assert extract_final_answer("<code>x</code>") is None


def test_explosive_math_is_left_to_the_judge_quickly():
    assert check_answer("10^{100000}!", "1").verdict is U
    assert check_answer("9^{9^{9}}", "\\sqrt{2}").verdict is U


def test_math_verify_works_off_the_main_thread():
    # math-verify's own timeout uses SIGALRM (main thread only); off it we must still decide, not raise.
    results = {}

    def run():
        results["frac"] = check_answer("\\frac{3}{4}", "0.75").verdict
        results["sym"] = check_answer("(a+b)^2", "a^2+2ab+b^2").verdict

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    assert results == {"frac": C, "sym": C}


def test_tolerance_is_configurable():
    strict = RuleConfig(round_to_reference_min_decimals=99)
    assert check_answer("0.3333", "1/3", cfg=strict).verdict is W
    assert check_answer("0.3333", "1/3").verdict is C


OPTION_REFERENCE_CASES = [
    ("B", C), ("(B)", C), ("Option B", C), ("a red car", C), ("A red car.", C), ("B. a red car", C),
    ("b", C),
    ("A", W), ("(C)", W), ("C. a blue car", W),
    ("C. a red car", U),   # a letter that contradicts the reference's text: the judge decides
    ("a blue car", U),     # without the other options, a paraphrase or another option: the judge decides
]


@pytest.mark.parametrize("reference", ["B. a red car", "(B) a red car", "B) a red car", "B: a red car"])
@pytest.mark.parametrize("answer,expected", OPTION_REFERENCE_CASES)
def test_a_reference_written_as_an_option_is_a_choice(reference, answer, expected):
    decision = check_answer(answer, reference)
    assert decision.verdict is expected, decision


def test_option_form_needs_a_space_after_the_label():
    # "U.S. Army" is not option U: the answer "U" must not be decided correct.
    assert check_answer("U", "U.S. Army").verdict is not C
    assert check_answer("US Army", "U.S. Army").verdict is not W
    # Options in the question still decide over the reference's own label.
    assert check_answer("dog", "B. dog", ANIMALS).verdict is C
    assert check_answer("cat", "B. dog", ANIMALS).verdict is W
