"""Clamp crop boxes in model code to the input image, without changing what a valid box means.

Part of repair_code (envs/sandbox/repair.py); the rules, all aimed at keeping the model's meaning:
- Crop boxes are clamped, never enlarged: a valid box is left exactly as written. A box whose corners
  are not ordered as written (x2 <= x1 or y2 <= y1; perhaps x, y, w, h) is not treated as a box.
  Normalised 0-1 boxes are never touched, because clamping to [0, width] x [0, height] leaves every
  value in [0, 1] unchanged. A box that lies entirely outside the image is an error the model can act
  on, not a silent change.
- Numbers are a crop only in context: a box named like one (`bbox`, `crop_coords`) in code that
  works on images or crops with it; corners (`x1, y1, x2, y2 = ...`, or `left = ...` on separate
  lines) only when the code crops with them (slice bounds or a `.crop(...)` argument). The corners
  of a line in a geometry computation are left alone.
- Numpy slices and PIL `.crop` are clamped only on images this code loaded itself (`cv2.imread`,
  `Image.open`, ...): a resized or earlier-round image has other bounds. In a slice, `img[-20:300]`
  is a coordinate left of the edge (it becomes `0:300`); `img[-100:]` and `img[-100:-10]` keep
  numpy's count-from-the-end meaning.
- Nothing is clamped after the code resizes, rotates or builds a new canvas (named boxes may then
  be in other coordinates), nor when it loads an earlier output (iterative zoom).
"""
from __future__ import annotations

import ast
import re
from collections import Counter
from typing import Iterable, Sequence

from envs.sandbox.repair_edits import REFERENCE_DIR, ModelCodeError, SourceEdits, call_name, dotted, under

# Names of 4-tuples the paper treats as crop parameters (case-insensitive substrings) ...
_BOX_NAME = re.compile(r"box|coord|crop", re.IGNORECASE)
# ... except these, which are 4-tuples of another kind (e.g. `box_color = (0, 255, 0, 255)`).
_NOT_BOX_NAME = re.compile(r"colou?r|size|scale|ratio|pad|margin|thick|font", re.IGNORECASE)
# Unpacked corner names: x1/left/x_min/box_x1/start_x ... (x) and y1/top/y_max/end_y ... (y).
_AXIS_SUFFIX = re.compile(r"(?:^|_)(x|y|left|right|top|bottom)_?(?:min|max|start|end|begin|stop|[0-9])?$")
_AXIS_PREFIX = re.compile(r"^(?:.*_)?(?:min|max|start|end|begin|stop)_?(x|y)$")
_AXIS_OF = {"x": "x", "left": "x", "right": "x", "y": "y", "top": "y", "bottom": "y"}
# Corner names assigned one by one, in (x1, y1, x2, y2) order; a shared prefix like `crop_` is allowed.
_CORNER_FAMILIES = (
    ("x1", "y1", "x2", "y2"), ("x0", "y0", "x1", "y1"), ("left", "top", "right", "bottom"),
    ("x_min", "y_min", "x_max", "y_max"), ("xmin", "ymin", "xmax", "ymax"),
    ("start_x", "start_y", "end_x", "end_y"), ("x_start", "y_start", "x_end", "y_end"),
)
# Calls after which coordinates may refer to an image of another size than the input: resizing,
# rotating, padding, or building a new canvas.
_SIZE_CHANGING = frozenset({
    "resize", "rotate", "rot90", "transpose", "pyrUp", "pyrDown", "warpAffine", "warpPerspective",
    "copyMakeBorder", "thumbnail", "zoom", "rescale", "pad", "expand", "reduce",
    "zeros", "ones", "full", "empty", "new", "hstack", "vstack", "concatenate", "stack", "hconcat",
    "vconcat",
})
# Calls that load the input image at its own size (clamping slices of their result is safe).
_LOADERS = ("imread", "Image.open")
_SAME_SIZE_WRAPPERS = frozenset({"array", "asarray", "cvtColor", "ascontiguousarray"})
_SAME_SIZE_METHODS = frozenset({"convert", "copy"})


def clamp_crops(nodes: list[ast.AST], edits: SourceEdits, fixes: list[str], size: tuple[int, int],
                output_dir: str | None, input_literals: frozenset[int] = frozenset()) -> None:
    """Clamp every crop of the input image (`size` = (width, height)) found among `nodes` (the
    parsed code's ast nodes); raises ModelCodeError for a box that lies outside the image.
    input_literals: ids of path literals known to name the input (repair pointed them at it), even
    when they look like an earlier output."""
    if not _loads_processed_image(nodes, output_dir, input_literals):
        _clamp_crops(nodes, edits, fixes, size)


def _number(node: ast.AST) -> int | float | None:
    """The value of a numeric literal, `-5` and `+5` included; None for anything else."""
    sign = 1
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        sign = -1 if isinstance(node.op, ast.USub) else 1
        node = node.operand
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return sign * node.value
    return None


def _fmt(value: int | float) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _fmt_tuple(values: Iterable[int | float]) -> str:
    return ", ".join(_fmt(v) for v in values)


def _four_numbers(node: ast.AST) -> list[ast.AST] | None:
    if isinstance(node, (ast.Tuple, ast.List)) and len(node.elts) == 4:
        if all(_number(e) is not None for e in node.elts):
            return node.elts
    return None


def _axis(name: str) -> str | None:
    lower = name.lower()
    match = _AXIS_SUFFIX.search(lower) or _AXIS_PREFIX.search(lower)
    return _AXIS_OF[match.group(1)] if match else None


class _Clamper:
    def __init__(self, edits: SourceEdits, fixes: list[str], size: tuple[int, int]):
        self.edits, self.fixes = edits, fixes
        self.width, self.height = size

    def outside(self, what: str, values: Sequence[int | float]) -> ModelCodeError:
        w, h = self.width, self.height
        return ModelCodeError(f"crop box {what} ({_fmt_tuple(values)}) lies outside the {w}x{h} image after "
                        f"clamping; use 0 <= x < {w}, 0 <= y < {h}")

    def box(self, elts: Sequence[ast.AST], what: str) -> None:
        """Clamp an (x1, y1, x2, y2) box of literals in place; `what` names it in messages."""
        values = [_number(e) for e in elts]
        x1, y1, x2, y2 = values
        if not (x1 < x2 and y1 < y2):  # not corners as written (maybe x, y, w, h): not ours to judge
            return
        bounds = (self.width, self.height, self.width, self.height)
        clamped = [type(v)(min(max(v, 0), bound)) for v, bound in zip(values, bounds)]
        if clamped == values and all(type(a) is type(b) for a, b in zip(clamped, values)):
            return
        if not (clamped[0] < clamped[2] and clamped[1] < clamped[3]):
            raise self.outside(what, values)
        for elt, old, new in zip(elts, values, clamped):
            if old != new:
                self.edits.replace(elt, _fmt(new))
        self.fixes.append(f"clamped box {what} ({_fmt_tuple(values)}) -> ({_fmt_tuple(clamped)})")

    def slice(self, sub: ast.Subscript) -> None:
        """`img[y1:y2, x1:x2]` with literal bounds on an image this code loaded.

        Per axis: an upper bound past the edge becomes the edge; a negative lower bound with a
        positive upper one (`img[-20:300]`) is a coordinate left of the edge, so it becomes 0 (numpy
        would read it from the end and return nothing). Both negative (`img[-100:-10]`) or an open
        end (`img[-100:]`) is numpy's count-from-the-end, kept as written.
        """
        dims = sub.slice.elts if isinstance(sub.slice, ast.Tuple) else [sub.slice]
        original = self.edits.source(sub)
        changed: list[tuple[int, int, str]] = []  # (start, end, new text) in the source
        for dim, size, axis in zip(dims, (self.height, self.width), ("rows", "columns")):
            if not isinstance(dim, ast.Slice) or dim.step is not None:
                continue
            lower = 0 if dim.lower is None else _number(dim.lower)
            upper = size if dim.upper is None else _number(dim.upper)
            if type(lower) is not int or type(upper) is not int or lower >= upper:
                continue  # not literal, or empty as written (the model's choice, not a bounds slip)
            new_lower = 0 if lower < 0 < upper and dim.upper is not None else lower
            new_upper = min(upper, size)
            start = new_lower if new_lower >= 0 else max(new_lower + size, 0)
            stop = new_upper if new_upper >= 0 else max(new_upper + size, 0)
            if start >= stop:
                coord = "y" if axis == "rows" else "x"
                raise ModelCodeError(
                    f"slice `{original}` selects no {axis} of the {self.width}x{self.height} image "
                    f"({coord} runs from 0 to {size - 1}); use 0 <= x < {self.width}, "
                    f"0 <= y < {self.height}")
            for node, old, new in ((dim.lower, lower, new_lower), (dim.upper, upper, new_upper)):
                if node is not None and old != new:
                    changed.append((*self.edits.span(node), str(new)))
        if changed:
            for span_start, span_end, new in changed:
                self.edits.replace_span(span_start, span_end, new)
            self.fixes.append(f"clamped slice `{original}` -> `{self._render(sub, changed)}`")

    def _render(self, sub: ast.Subscript, changed: list[tuple[int, int, str]]) -> str:
        """The subscript's source with this slice's own edits applied (for the fix message)."""
        start, end = self.edits.span(sub)
        text = self.edits.text[start:end]
        for span_start, span_end, new in sorted(changed, reverse=True):
            text = text[:span_start - start] + new + text[span_end - start:]
        return text


def _loads_processed_image(nodes: list[ast.AST], output_dir: str | None,
                           input_literals: frozenset[int] = frozenset()) -> bool:
    """True when the code loads an earlier output (iterative zoom): its boxes are in that image's
    coordinates, not the input's, so the input's size says nothing about them."""
    folders = [REFERENCE_DIR, *([output_dir] if output_dir else [])]

    def processed_literal(node: ast.AST) -> bool:
        if id(node) in input_literals:
            return False
        if isinstance(node, ast.JoinedStr) and node.values:
            node = node.values[0]
        return (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and any(under(node.value, f) or node.value.startswith(f.rstrip("/") + "/") for f in folders))

    names = {t.id for node in nodes if isinstance(node, ast.Assign) and processed_literal(node.value)
             for t in node.targets if isinstance(t, ast.Name)}
    if "image_path" in names:
        return True
    for node in nodes:
        if isinstance(node, ast.Call) and node.args and (dotted(node.func) or "").endswith(_LOADERS):
            source = node.args[0]
            if processed_literal(source) or (isinstance(source, ast.Name) and (
                    source.id in names or "processed" in source.id.lower())):
                return True
    return False


def _clamp_crops(nodes: list[ast.AST], edits: SourceEdits, fixes: list[str], size: tuple[int, int]) -> None:
    clamper = _Clamper(edits, fixes, size)
    resized_at = min((node.lineno for node in nodes
                      if isinstance(node, ast.Call) and call_name(node) in _SIZE_CHANGING),
                     default=None)
    images = _loaded_images(nodes)
    image_code = _works_on_images(nodes)
    cropping = _names_used_for_cropping(nodes)

    def before_resize(node: ast.AST) -> bool:
        return resized_at is None or node.lineno <= resized_at

    _clamp_corner_scalars(nodes, clamper, before_resize, cropping)
    for node in _in_source_order(nodes):
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None and before_resize(node):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                _clamp_assignment(target, node.value, clamper, cropping, image_code)
        elif isinstance(node, ast.Call):
            _clamp_call(node, clamper, images)
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            if _loads_image(node.value, images):
                clamper.slice(node)


def _works_on_images(nodes: list[ast.AST]) -> bool:
    """The code touches an image (cv2, PIL, the preset image_path, a crop) rather than only numbers."""
    for node in nodes:
        if isinstance(node, ast.Name) and node.id in ("cv2", "Image", "image_path", "image_paths"):
            return True
        if isinstance(node, ast.Attribute) and node.attr in ("crop", "imread", "open"):
            return True
    return False


def _names_used_for_cropping(nodes: list[ast.AST]) -> set[str]:
    """Names read in slice bounds (`img[y1:y2, x1:x2]`) or in a `.crop(...)` argument: unpacked or
    separately assigned corners are clamped only when the code crops with them (x1, y1, x2, y2 of a
    line or a distance computation are not a crop)."""
    used: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Slice):
            parts = [p for p in (node.lower, node.upper) if p is not None]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "crop":
            parts = [*node.args, *(k.value for k in node.keywords)]
        else:
            continue
        used.update(n.id for part in parts for n in ast.walk(part) if isinstance(n, ast.Name))
    return used


def _clamp_corner_scalars(nodes: list[ast.AST], clamper: _Clamper, before_resize, cropping: set[str]) -> None:
    """`left = -5`, `top = 0`, `right = 3000`, `bottom = 900` on separate lines: one box, clamped
    when each name is bound exactly once in the code, to a numeric literal, and the code crops with
    them."""
    bindings = Counter(n.id for n in nodes if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store))
    literals: dict[str, ast.Assign] = {}  # lower-case name -> its assignment
    for node in nodes:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if bindings[name] == 1 and _number(node.value) is not None:
                literals[name.lower()] = node
    used: set[str] = set()
    for name in sorted(literals, key=lambda n: literals[n].lineno):
        for family in _CORNER_FAMILIES:
            core = next((c for c in family if name.endswith(c)), None)
            prefix = name[: len(name) - len(core)] if core else None
            if prefix is None or (prefix and not prefix.endswith("_")):
                continue
            group = [prefix + c for c in family]
            if used.intersection(group) or not all(g in literals for g in group):
                continue
            assignments = [literals[g] for g in group]
            if not any(a.targets[0].id in cropping for a in assignments):
                continue
            if all(before_resize(a) for a in assignments):
                used.update(group)
                shown = ", ".join(a.targets[0].id for a in assignments)
                clamper.box([a.value for a in assignments], f"`{shown}`")


def _in_source_order(nodes: list[ast.AST]) -> list[ast.AST]:
    nodes = [n for n in nodes if hasattr(n, "lineno")]
    return sorted(nodes, key=lambda n: (n.lineno, n.col_offset))


def _is_box_name(name: str) -> bool:
    return bool(_BOX_NAME.search(name)) and not _NOT_BOX_NAME.search(name)


def _clamp_assignment(target: ast.AST, value: ast.AST, clamper: _Clamper, cropping: set[str],
                      image_code: bool) -> None:
    """A box named like one (`bbox = (...)`), in code that works on images or crops with it (pure
    computation's `coords = (-3, -2, 5, 4)` are numbers); corners unpacked (`x1, y1, x2, y2 = ...`)
    that the code crops with."""
    if isinstance(target, ast.Name) and _is_box_name(target.id) and (image_code or target.id in cropping):
        elts = _four_numbers(value)
        if elts is not None:
            clamper.box(elts, f"`{target.id}`")
        elif isinstance(value, (ast.List, ast.Tuple)):  # boxes = [(x1, y1, x2, y2), ...]
            for i, item in enumerate(value.elts):
                item_elts = _four_numbers(item)
                if item_elts is not None:
                    clamper.box(item_elts, f"`{target.id}[{i}]`")
    elif isinstance(target, (ast.Tuple, ast.List)) and len(target.elts) == 4:
        names = [t.id if isinstance(t, ast.Name) else "" for t in target.elts]
        elts = _four_numbers(value)
        if elts is not None and [_axis(n) for n in names] == ["x", "y", "x", "y"] and cropping.intersection(names):
            clamper.box(elts, f"`{', '.join(names)}`")


def _clamp_call(call: ast.Call, clamper: _Clamper, images: set[str]) -> None:
    """PIL: img.crop((left, upper, right, lower)) or img.crop(box=(...)) on an image loaded here."""
    if not (isinstance(call.func, ast.Attribute) and call.func.attr == "crop"):
        return
    if not _loads_image(call.func.value, images):
        return
    box = call.args[0] if call.args else next((k.value for k in call.keywords if k.arg == "box"), None)
    elts = _four_numbers(box) if box is not None else None
    if elts is not None:
        clamper.box(elts, "`.crop(...)`")


def _loads_image(node: ast.AST, images: set[str]) -> bool:
    """An expression giving the input image at its own size."""
    if isinstance(node, ast.Name):
        return node.id in images
    if not isinstance(node, ast.Call):
        return False
    if (dotted(node.func) or "").endswith(_LOADERS):
        return True
    name = call_name(node)
    if isinstance(node.func, ast.Attribute) and name in _SAME_SIZE_METHODS:
        return _loads_image(node.func.value, images)
    if name in _SAME_SIZE_WRAPPERS and node.args:
        return _loads_image(node.args[0], images)
    return False


def _loaded_images(nodes: list[ast.AST]) -> set[str]:
    """Names bound only ever to the input image at its size (loaded and maybe converted in this code)."""
    bindings: dict[str, list[ast.AST | None]] = {}
    for node in nodes:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    bindings.setdefault(target.id, []).append(node.value)
        elif isinstance(node, ast.withitem) and isinstance(node.optional_vars, ast.Name):
            bindings.setdefault(node.optional_vars.id, []).append(node.context_expr)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and isinstance(node.func.value, ast.Name) and node.func.attr in _SIZE_CHANGING:
            bindings.setdefault(node.func.value.id, []).append(None)  # in place: img.thumbnail(...)
    # Every other kind of binding (augmented, loop, unpacking, argument, ...) disqualifies a name.
    plain_targets = {id(t) for node in nodes if isinstance(node, ast.Assign) for t in node.targets}
    for node in nodes:
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and id(node) not in plain_targets:
            bindings.setdefault(node.id, []).append(None)
    # Start from every candidate and drop names until stable, so that `img = cv2.cvtColor(img, ...)`
    # (a same-size conversion of itself) keeps `img` an image.
    images = {name for name, values in bindings.items() if values and None not in values}
    while True:
        kept = {name for name in images if all(_loads_image(v, images) for v in bindings[name])}
        if kept == images:
            return images
        images = kept
