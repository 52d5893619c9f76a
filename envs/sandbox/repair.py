"""Repair trivial mistakes in model-written code without changing what it means.

The paper lightens the model's coding burden: code comes wrapped in `<code>` and a ```python fence,
is sometimes indented as a whole or unevenly, names OpenCV `cv`, asks for crops a few pixels outside
the image, and (in the released Thyme models) loads `image_path = "<a path from training>"` and saves
under `/mnt/data/temp_processed_images/`. `repair_code` fixes exactly these and reports each fix.

Rules that keep meaning intact:
- Edits are made on the source text at positions taken from the `ast` (repair_edits.py), so
  comments, formatting and line numbers stay the model's own (runtime tracebacks point at the lines
  the model wrote).
- autopep8 (indentation fixes only) runs only when the code does not parse: it cannot change the
  meaning of code that already runs, and it keeps the common case fast.
- Crop boxes are clamped, never enlarged, and only where they are a crop of the input image; the
  rules are in repair_crops.py.
"""
from __future__ import annotations

import ast
import logging
import re
import textwrap
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Sequence

from envs.protocol import CODE_CLOSE, CODE_OPEN, REFERENCE_OUTPUT_DIR, strip_code_fence
from envs.sandbox.repair_crops import clamp_crops
from envs.sandbox.repair_edits import REFERENCE_DIR, ModelCodeError, SourceEdits, dotted, under

_log = logging.getLogger(__name__)
# Model code is parsed under this name, and the compiler's SyntaxWarnings about it ("invalid decimal
# literal", "invalid escape sequence") are silenced for it alone: they would flood the server's log,
# and the code's real errors are reported to the model anyway.
MODEL_CODE_FILENAME = "<model-code>"
warnings.filterwarnings("ignore", category=SyntaxWarning, module=re.escape(MODEL_CODE_FILENAME))
# autopep8's indentation fixers only (E1: indentation, W1: tabs): nothing that touches expressions.
_AUTOPEP8_OPTIONS = {"select": ["E1", "W1"]}
# autopep8 is pure Python and slow on long inputs; the sandbox refuses code over 64 KB anyway.
_AUTOPEP8_MAX_CHARS = 64 * 1024
_CV_ALIASES = ("cv", "CV")
_UNSAFE_PATH_CHARS = set("\\'\"{}\n\r")


@dataclass(frozen=True)
class RepairResult:
    """Repaired code, one short line per repair applied, or an error for the model (then `code` is
    the code as given and nothing should run)."""

    code: str
    fixes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None



def repair_code(
    code: str,
    *,
    image_size: tuple[int, int] | None = None,
    image_path: str | None = None,
    output_dir: str | None = None,
    image_paths: Sequence[str] = (),
    output_exists: Callable[[str], bool] | None = None,
) -> RepairResult:
    """Repair `code` (a model turn's `<code>` block, fenced or not) and report each fix.

    image_size: (width, height) of the primary input image; crop boxes are clamped to it.
    image_path: the real input path; `image_path = "<other literal>"` is pointed at it.
    output_dir: the episode's output folder; string literals under /mnt/data/temp_processed_images
        are mapped into it.
    image_paths: every real input path (multi-image episodes); `image_path` literals naming one of
        them are left alone.
    output_exists: tells whether a path in the output folder exists (the episode wrote it). With
        it, `image_path = "/mnt/data/temp_processed_images/x.jpg"` naming no such file is the input
        (the released SFT data stored rotated inputs there); without it, such a literal is taken to
        load an earlier output.
    """
    if output_dir is not None and _UNSAFE_PATH_CHARS & set(output_dir):
        raise ValueError(f"output_dir {output_dir!r} contains a quote, backslash, brace or newline; "
                         "use a plain path (it is written into string literals of the model's code)")
    size = _checked_size(image_size) if image_size is not None else None
    fixes: list[str] = []
    text, before_edits = code, []
    try:
        text = _extract(code, fixes)
        tree, text = _parse(text, fixes)
        nodes = list(ast.walk(tree))  # every pass below scans all nodes: walk the tree once
        before_edits = list(fixes)
        edits = SourceEdits(text)
        _rename_cv(nodes, edits, fixes)
        pointed: frozenset[int] = frozenset()
        if image_path is not None:
            pointed = _point_image_path(nodes, edits, fixes, image_path, output_dir, image_paths, output_exists)
        if output_dir is not None:
            _map_output_dir(nodes, edits, fixes, output_dir, skip=pointed)
        if size is not None:
            clamp_crops(nodes, edits, fixes, size, output_dir, input_literals=pointed)
        repaired = edits.apply()
        if edits.spans:
            ast.parse(repaired, MODEL_CODE_FILENAME)
    except ModelCodeError as refusal:
        return RepairResult(code=code, fixes=[], error=str(refusal))
    except Exception:  # a bug in an edit above, not the model's fault: run the code unedited
        _log.exception("code repair failed; running the code without ast edits")
        return RepairResult(code=text, fixes=before_edits)
    return RepairResult(code=repaired, fixes=fixes)


# ---------------------------------------------------------------------------------------------------
# Extraction, dedent, parse


def _extract(code: str, fixes: list[str]) -> str:
    text = code.replace("\r\n", "\n").replace("\r", "\n")
    if (CODE_OPEN in text or CODE_CLOSE in text) and not _parses(text):
        text = _raw_block(text).lstrip("\n")  # the first line of code is line 1, as in a fence
        fixes.append("extracted code from <code> block")
    unfenced = _strip_fences(text)
    if unfenced != text:
        fixes.append("removed ```python fence")
        text = unfenced
    lines = text.split("\n")
    if lines and lines[0].strip().lower() in ("python", "py", "python3"):
        text = "\n".join(lines[1:])  # the fence's language word left behind without its backticks
        fixes.append("removed stray `python` line")
    dedented = textwrap.dedent(text)
    if dedented != text:
        fixes.append("dedented")
        text = dedented
    if not text.strip():
        raise ModelCodeError("no code to run: the <code> block is empty; put Python code between "
                       "<code> and </code>")
    return text


def _parses(text: str) -> bool:
    """True for code that is Python as it stands (tags inside its strings are data, not a wrapper)."""
    try:
        ast.parse(text, MODEL_CODE_FILENAME)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def _raw_block(text: str) -> str:
    """The content of the last <code> block, still fenced; an unclosed block runs to the end, and a
    lone closing tag ends the code."""
    start = text.rfind(CODE_OPEN)
    if start == -1:
        return text[: text.find(CODE_CLOSE)]
    body = text[start + len(CODE_OPEN):]
    end = body.find(CODE_CLOSE)
    return body if end == -1 else body[:end]


_ANY_FENCE = re.compile(r"```[ \t]*(?:python3|python|py|Python)?[ \t]*\n(.*?)(?:\n[ \t]*```|\Z)", re.DOTALL)


def _strip_fences(text: str) -> str:
    stripped = strip_code_fence(text)
    if stripped != text or "```" not in text:
        return stripped
    # Prose around the fence, or a fence that was never closed: keep the last fenced block.
    blocks = _ANY_FENCE.findall(text)
    if blocks:
        return blocks[-1]
    # A closing fence with no opening one.
    return re.sub(r"\n?[ \t]*```[ \t]*\Z", "", text)


def _parse(text: str, fixes: list[str]) -> tuple[ast.Module, str]:
    try:
        return ast.parse(text, MODEL_CODE_FILENAME), text
    except SyntaxError as exc:
        error = exc
    except ValueError as exc:  # e.g. a NUL byte in the source
        raise ModelCodeError(f"SyntaxError: {exc}") from None
    except (RecursionError, MemoryError):
        raise ModelCodeError("SyntaxError: the code is nested too deeply to compile; flatten it") from None
    if isinstance(error, IndentationError) and len(text) <= _AUTOPEP8_MAX_CHARS:
        fixed = _autopep8_indentation(text)
        if fixed is not None:
            fixes.append("autopep8: fixed indentation")
            return ast.parse(fixed, MODEL_CODE_FILENAME), fixed
    line = f" (line {error.lineno})" if error.lineno else ""
    raise ModelCodeError(f"SyntaxError: {error.msg}{line}")


def _autopep8_indentation(text: str) -> str | None:
    """autopep8's indentation fixes, if they make the code parse with the same lines (so that the
    line numbers of later errors are still the model's)."""
    import autopep8  # imported on first need: most code parses and never gets here

    try:
        fixed = autopep8.fix_code(text, options=_AUTOPEP8_OPTIONS)
    except Exception:  # autopep8 is a heuristic tool; any failure means "not repairable"
        return None
    if fixed.rstrip("\n").count("\n") != text.rstrip("\n").count("\n") or not _parses(fixed):
        return None
    return fixed


def _checked_size(image_size: tuple[int, int]) -> tuple[int, int]:
    width, height = image_size
    if width <= 0 or height <= 0:
        raise ValueError(f"image_size must be (width, height) > 0, got {image_size!r}")
    return int(width), int(height)


def _bound_names(nodes: list[ast.AST]) -> set[str]:
    """Every name the code binds (assignment, import, def, loop, with, except, argument, ...)."""
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name.split(".")[0])
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            names.update(node.names)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            names.add(node.name)
    return names


# ---------------------------------------------------------------------------------------------------
# cv -> cv2


@lru_cache(maxsize=1)
def _cv2_names() -> frozenset[str] | None:
    try:
        import cv2
    except ImportError:  # without OpenCV every `cv.<name>` is taken to mean cv2
        return None
    return frozenset(dir(cv2))


def _rename_cv(nodes: list[ast.AST], edits: SourceEdits, fixes: list[str]) -> None:
    """`cv.imread(...)` with no `cv` defined in this code means cv2 (the model's common slip).

    Only `cv.<attr>` where <attr> exists in cv2 is renamed, so a `cv` variable from an earlier round
    used another way (`print(cv)`) is left alone.
    """
    bound = None
    for alias in _CV_ALIASES:
        uses = [node.value for node in nodes
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id == alias]
        if not uses:
            continue
        bound = _bound_names(nodes) if bound is None else bound
        if alias in bound:
            continue
        known = _cv2_names()
        parents = {id(node.value): node.attr for node in nodes
                   if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)}
        renamed = [name for name in uses if known is None or parents[id(name)] in known]
        for name in renamed:
            edits.replace(name, "cv2")
        if renamed:
            fixes.append(f"renamed {alias} -> cv2")


# ---------------------------------------------------------------------------------------------------
# image_path and the output folder



def _point_image_path(nodes: list[ast.AST], edits: SourceEdits, fixes: list[str], image_path: str,
                      output_dir: str | None, image_paths: Sequence[str],
                      output_exists: Callable[[str], bool] | None) -> frozenset[int]:
    """`image_path = "/some/training/path.jpg"` -> the real input (the released models do this);
    `image_paths = [...]` with as many literals as there are inputs -> the real inputs, in order.
    Returns the ids of the literals it pointed at an input."""
    real = list(image_paths) or [image_path]
    keep = set(real) | {image_path}

    def earlier_output(literal: str) -> bool:
        if output_dir is not None and under(literal, output_dir):
            return True
        if not under(literal, REFERENCE_DIR):
            return False
        if output_exists is None or output_dir is None:
            return True  # unknown: an image_path there is taken to be an earlier output (iterative zoom)
        return output_exists(output_dir.rstrip("/") + literal[len(REFERENCE_DIR):])

    def stale(node: ast.AST) -> bool:
        """A literal path that is neither a real input nor an output loaded on purpose."""
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            return False
        return not (node.value in keep or earlier_output(node.value))

    pointed, replaced = set(), set()
    for node in nodes:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        names = {t.id for t in targets if isinstance(t, ast.Name)}
        if "image_path" in names and stale(value):
            edits.replace(value, repr(image_path))
            replaced.add(id(value))
            pointed.add("pointed image_path at the input image")
        if "image_paths" in names and isinstance(value, (ast.List, ast.Tuple)) and len(value.elts) == len(real) \
                and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in value.elts):
            for element, path in zip(value.elts, real):
                if stale(element):
                    edits.replace(element, repr(path))
                    replaced.add(id(element))
                    pointed.add("pointed image_paths at the input images")
    fixes.extend(sorted(pointed))
    return frozenset(replaced)


_STRING_START = re.compile(r"([rRuUfFbB]{0,2})(\"\"\"|'''|\"|')")


def _map_output_dir(nodes: list[ast.AST], edits: SourceEdits, fixes: list[str], output_dir: str,
                    skip: frozenset[int] = frozenset()) -> None:
    """String literals (plain, f-string heads, os.path.join parts) under the reference folder;
    `skip`: literals already pointed at an input."""
    target = output_dir.rstrip("/") or "/"
    changed = False
    fstring_parts = {id(v) for n in nodes if isinstance(n, ast.JoinedStr) for v in n.values}
    for node in nodes:
        if id(node) in fstring_parts or id(node) in skip:  # f-string parts: handled with their f-string
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            head = node.value
        elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
            head = node.values[0].value
        elif isinstance(node, ast.Call):
            changed |= _map_split_join(node, edits, target)
            continue
        else:
            continue
        if not _under_reference_head(head):
            continue
        start, end = edits.span(node)
        source = edits.text[start:end]
        match = _STRING_START.match(source)
        if not match or "b" in match.group(1).lower():
            continue
        body_start = match.end()
        if not source.startswith(REFERENCE_DIR, body_start):  # escapes in the literal: leave it
            continue
        edits.replace_span(start + body_start, start + body_start + len(REFERENCE_DIR), target)
        changed = True
    if changed:
        fixes.append(f"mapped {REFERENCE_OUTPUT_DIR} to the output folder")


def _under_reference_head(head: str) -> bool:
    """True for "…/temp_processed_images", "…/temp_processed_images/x" (an f-string head may end
    right after the folder name, where a `{…}` follows)."""
    return head.startswith(REFERENCE_DIR) and (len(head) == len(REFERENCE_DIR)
                                                or head[len(REFERENCE_DIR)] == "/")


def _map_split_join(call: ast.Call, edits: SourceEdits, target: str) -> bool:
    """`os.path.join("/mnt/data", "temp_processed_images", name)` -> `os.path.join("<out>", name)`."""
    if dotted(call.func) not in ("os.path.join", "path.join", "join") or len(call.args) < 2:
        return False
    first, second = call.args[0], call.args[1]
    if not all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in (first, second)):
        return False
    if _joined(first.value, second.value) != REFERENCE_DIR:
        return False
    start, _ = edits.span(first)
    _, end = edits.span(second)
    edits.replace_span(start, end, repr(target))
    return True


def _joined(first: str, second: str) -> str:
    """What os.path.join(first, second) gives, normalised without a trailing slash."""
    if second.startswith("/"):
        return second.rstrip("/")
    return (first.rstrip("/") + "/" + second).rstrip("/")
