"""The paper's pattern scan: refuse plainly dangerous code before it runs, saying why to the model.

This is the first and friendliest wall, NOT the security boundary. A scan of source text can always
be evaded (names carried over from an earlier round, objects reached through data, native code);
containment comes from the sandbox's isolation layers (bubblewrap, an unprivileged uid, resource
limits, a syscall filter, the wall-clock kill). The scan's job is to tell a model, in words it can
act on, that deleting files, starting processes, using the network, running code built from strings
or ending the interpreter is not how to solve an image task, and to do so with few false alarms:
ordinary image code (cv2.imwrite, PIL's .save, open() for reading, os.path.join, os.makedirs,
list.remove, str.replace) passes.

It works on the `ast` rather than on text, so aliases (`import subprocess as sp`), from-imports,
attribute chains (`os.path.os.remove`), getattr with built strings (`getattr(os, 'rem' + 'ove')`)
and unicode look-alikes are seen: Python folds identifiers with NFKC when it parses them (`ｏｓ` is
`os`), and strings are folded the same way here before they are compared.
"""
from __future__ import annotations

import ast
import builtins
import logging
import posixpath
import re
import tempfile
import unicodedata
from typing import Sequence

from envs.protocol import REFERENCE_OUTPUT_DIR
from envs.sandbox.repair import MODEL_CODE_FILENAME
from envs.sandbox.repair_edits import dotted
from envs.sandbox.scan_rules import (
    REFUSAL_REASONS, MAX_SCAN_BYTES, MODULES, MEMBERS, MEMBER_PREFIXES, MEMBER_PARTS, METHODS,
    PATH_METHODS, PATH_CONSTRUCTORS, PATH_DERIVED, DUNDERS, SENSITIVE, COMMON_WORDS, GETATTR_LIKE,
    WRITE_MODE, OS_WRITE_FLAGS)

_log = logging.getLogger(__name__)


def scan_code(code: str, *, output_dir: str | None = None, writable_dirs: Sequence[str] = (),
              earlier_code: Sequence[str] = (), max_bytes: int = MAX_SCAN_BYTES) -> str | None:
    """None when the code may run; otherwise one message for the model (what, where, why, instead).

    output_dir / writable_dirs: where writes with a literal absolute path may go (open(..., 'w'),
        Path.write_text, os.open for writing, cv2.imwrite, .save, shutil.copy's destination), besides
        relative paths and /mnt/data/temp_processed_images (which the repair maps to the output
        folder). Without output_dir the system's temporary folder stands in for it.
    earlier_code: the episode's earlier rounds, so `import os as o` there and `o.remove(...)` here
        is seen (their own problems were reported when they ran).
    max_bytes: longer code (or earlier code) is refused unscanned. Every step below is linear in the
        code's size, so the scan of code under the cap takes well under a second.
    """
    size = len(code.encode("utf-8", errors="replace"))
    if size > max_bytes:
        return (f"Refused by the sandbox's safety scan: the code is {size} bytes, over the scan's "
                f"{max_bytes}-byte limit; write shorter code.")
    earlier_code = [e for e in earlier_code if len(e) <= max_bytes]
    try:
        tree = ast.parse(code, MODEL_CODE_FILENAME)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        # It cannot run as it is; the executor reports the error. Still catch the plain patterns in
        # case a later repair makes it parse.
        return _scan_text(code)
    writable = [output_dir or tempfile.gettempdir(), REFERENCE_OUTPUT_DIR, *writable_dirs]
    try:
        scanner = _Scanner(tree, writable)
        for earlier in earlier_code:
            scanner.learn_imports(earlier)
        finding = scanner.first()
    except Exception:  # a bug here must not stop the run; the isolation layers still hold
        _log.exception("safety scan failed; leaving the decision to the sandbox's isolation")
        return None
    if finding is None:
        return None
    line, shown, category = finding
    return f"Refused by the sandbox's safety scan (line {line}): `{shown}` {REFUSAL_REASONS[category]}."


def _imported_names(node: ast.AST) -> list[tuple[str, str]]:
    """(local name, qualified name) for each name an import statement binds."""
    if isinstance(node, ast.Import):
        return [(a.asname, a.name) if a.asname else (a.name.split(".")[0], a.name.split(".")[0])
                for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and not node.level:
        return [(a.asname or a.name, f"{node.module}.{a.name}") for a in node.names if a.name != "*"]
    return []


def _fold(text: str) -> str:
    """What Python makes of an identifier (NFKC), applied to strings too."""
    return unicodedata.normalize("NFKC", text)


class _Scanner:
    def __init__(self, tree: ast.Module, writable: list[str]):
        self.tree = tree
        self.writable = [w.rstrip("/") or "/" for w in writable]
        self.aliases: dict[str, str] = {}      # local name -> qualified name, from imports
        self.variables: set[str] = set()        # names bound otherwise (they shadow modules/builtins)
        self.strings: dict[str, str] = {}       # names assigned one constant string (for getattr)
        self.paths: set[str] = set()            # names holding pathlib paths
        self.findings: list[tuple[int, int, str, str]] = []
        self._qualified: dict[int, str | None] = {}   # memo: node id -> _qualify's answer
        self._path_nodes: dict[int, bool] = {}        # memo: node id -> _is_path's answer
        # Nodes that are the `.value` of an attribute: parts of a longer chain, checked as the chain.
        self.inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        self._collect_bindings()

    def first(self) -> tuple[int, str, str] | None:
        for node in ast.walk(self.tree):
            self._check(node)
        if not self.findings:
            return None
        line, _, shown, category = min(self.findings)
        return line, shown, category

    def _flag(self, node: ast.AST, shown: str, category: str) -> None:
        self.findings.append((getattr(node, "lineno", 0), getattr(node, "col_offset", 0), shown, category))

    # -- bindings ------------------------------------------------------------------------------

    def learn_imports(self, earlier: str) -> None:
        """Aliases imported by an earlier round of the episode (names still bound when this runs)."""
        try:
            tree = ast.parse(earlier, MODEL_CODE_FILENAME)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return
        for node in ast.walk(tree):
            for local, qualified in _imported_names(node):
                if local not in self.aliases and local not in self.variables:
                    self.aliases[local] = qualified

    def _collect_bindings(self) -> None:
        assigned: dict[str, list[ast.AST]] = {}
        for node in ast.walk(self.tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                self.aliases.update(_imported_names(node))
            elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
                self.variables.add(node.id)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                self.variables.add(node.name)
            elif isinstance(node, ast.arg):
                self.variables.add(node.arg)
            elif isinstance(node, ast.ExceptHandler) and node.name:
                self.variables.add(node.name)
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        assigned.setdefault(target.id, []).append(node.value)
        for name, values in assigned.items():
            if len(values) == 1:
                value = self._string(values[0])
                if value is not None:
                    self.strings[name] = value
        for _ in range(2):  # o = os; r = o -- a sensitive module under another name is still itself
            for name, values in assigned.items():
                qualified = self._qualify(values[0]) if len(values) == 1 else None
                if qualified and qualified.removeprefix("builtins.").split(".")[0] in SENSITIVE:
                    self.aliases.setdefault(name, qualified.removeprefix("builtins."))
        for _ in range(2):  # p = Path(x); q = p / "y"
            for name, values in assigned.items():
                if all(self._is_path(v) for v in values):
                    self.paths.add(name)

    def _qualify(self, node: ast.AST) -> str | None:
        """`os.path.join` for a chain whose base is an import or an unshadowed module/builtin name."""
        key = id(node)
        if key not in self._qualified:
            self._qualified[key] = self._qualify_uncached(node)
        return self._qualified[key]

    def _qualify_uncached(self, node: ast.AST) -> str | None:
        name = dotted(node)
        if name is None:
            return None
        base, _, rest = name.partition(".")
        if base in self.aliases:
            base = self.aliases[base]
        elif base in self.variables or base in MODULES:
            # An unbound `signal` or `code` is a variable from an earlier round: importing such a
            # module is refused, so no earlier round can have bound the module itself.
            return None
        elif hasattr(builtins, base):
            base = f"builtins.{base}"
        elif base == "__builtins__":
            base = "builtins.__builtins__"
        return f"{base}.{rest}" if rest else base

    # -- checks --------------------------------------------------------------------------------

    def _check(self, node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                self._check_qualified(node, alias.name, alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if any(a.name == "*" for a in node.names) and not self._check_qualified(node, node.module, node.module) \
                    and node.module.split(".")[0] in SENSITIVE:
                self._flag(node, f"from {node.module} import *", "star")
            module_refused = self._category(_fold(node.module)) is not None
            for alias in node.names:
                if alias.name != "*":
                    shown = node.module if module_refused else f"from {node.module} import {alias.name}"
                    self._check_qualified(node, f"{node.module}.{alias.name}", shown)
        elif isinstance(node, (ast.Attribute, ast.Name)):
            self._check_reference(node)
        elif isinstance(node, ast.Call):
            self._check_call(node)
        elif isinstance(node, ast.Subscript) and self._is_namespace(node.value):
            key = self._string(node.slice)  # os.__dict__['remove'], globals()['exec'], vars(os)[...]
            if key is not None and self._dangerous_name(key):
                self._flag(node, f"[{_fold(key)!r}]", self._dangerous_name(key))
        elif isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if self._qualify(exc) in ("builtins.SystemExit", "SystemExit"):
                self._flag(node, "raise SystemExit", "exit")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            folded = _fold(node.value)
            if folded in DUNDERS:
                self._flag(node, folded, DUNDERS[folded])
        elif isinstance(node, (ast.BinOp, ast.JoinedStr)):
            built = self._string(node)  # a name assembled from pieces, e.g. "rem" + "ove"
            if built is not None and _fold(built) not in COMMON_WORDS and self._dangerous_name(built):
                self._flag(node, _fold(built), self._dangerous_name(built))

    def _check_qualified(self, node: ast.AST, qualified: str, shown: str) -> bool:
        qualified = _fold(qualified)
        parts = qualified.split(".")
        # Check every module named inside the chain too: os.path.os.remove, np.os.system ...
        for start in range(len(parts)):
            if start and parts[start] not in SENSITIVE:
                continue
            for end in range(start + 1, min(len(parts), start + MEMBER_PARTS) + 1):
                category = self._category(".".join(parts[start:end]))
                if category:
                    self._flag(node, shown, category)
                    return True
        return False

    @staticmethod
    def _category(qualified: str) -> str | None:
        root = qualified.split(".")[0]
        if root in MODULES:
            return MODULES[root]
        if qualified in MEMBERS:
            return MEMBERS[qualified]
        for prefix, category in MEMBER_PREFIXES.items():
            if qualified.startswith(prefix):
                return category
        return None

    def _check_reference(self, node: ast.AST) -> None:
        if isinstance(node, ast.Attribute) and _fold(node.attr) in DUNDERS:
            self._flag(node, f".{_fold(node.attr)}", DUNDERS[_fold(node.attr)])
            return
        if self._is_chain_head(node):
            qualified = self._qualify(node)
            if qualified and self._check_qualified(node, qualified, self._shown(node, qualified)):
                return
        if not isinstance(node, ast.Attribute):
            return
        attr = _fold(node.attr)
        if attr in METHODS:
            self._flag(node, f".{attr}", METHODS[attr])
        elif attr in PATH_METHODS and self._is_path(node.value):
            self._flag(node, f"Path.{attr}", PATH_METHODS[attr])
        elif attr == "__dict__" and (self._qualify(node.value) or "").split(".")[0] in SENSITIVE:
            self._flag(node, f"{self._qualify(node.value)}.__dict__", "internals")

    @staticmethod
    def _shown(node: ast.AST, qualified: str) -> str:
        """The qualified name, without the `builtins.` the model did not write."""
        base = node
        while isinstance(base, ast.Attribute):
            base = base.value
        written_builtins = isinstance(base, ast.Name) and base.id == "builtins"
        return qualified if written_builtins else qualified.removeprefix("builtins.")

    def _is_chain_head(self, node: ast.AST) -> bool:
        """Only the whole chain `a.b.c` is checked, not its parts `a.b` and `a` again."""
        return id(node) not in self.inner

    def _check_call(self, call: ast.Call) -> None:
        func = self._qualify(call.func) or ""
        name = func.rsplit(".", 1)[-1]
        if name in GETATTR_LIKE and (func.startswith(("builtins.", "operator.")) or func == name):
            self._check_getattr(call, name)
        elif func in ("builtins.vars", "builtins.dir") and call.args:
            target = self._qualify(call.args[0]) or ""
            if target.split(".")[0] in SENSITIVE and func == "builtins.vars":
                self._flag(call, f"vars({target})", "internals")
        elif func in ("builtins.open", "io.open", "codecs.open"):
            self._check_open(call, mode_index=1)
        elif func == "os.open":
            flags = {n.attr if isinstance(n, ast.Attribute) else n.id
                     for arg in call.args[1:2] for n in ast.walk(arg) if isinstance(n, (ast.Attribute, ast.Name))}
            if flags & OS_WRITE_FLAGS:
                self._check_write_path(call, call.args[0] if call.args else None, "os.open")
        elif func in ("shutil.copy", "shutil.copy2", "shutil.copyfile", "shutil.copytree") and len(call.args) > 1:
            self._check_write_path(call, call.args[1], func)
        elif func == "cv2.imwrite" or (isinstance(call.func, ast.Attribute) and call.func.attr == "save"
                                       and not self._is_path(call.func.value)):
            target = call.args[0] if call.args else next(
                (k.value for k in call.keywords if k.arg in ("filename", "fp")), None)
            if target is not None:
                self._check_write_path(call, target, func or ".save")
        elif isinstance(call.func, ast.Attribute) and self._is_path(call.func.value):
            method = call.func.attr
            if method in ("write_text", "write_bytes", "touch", "open"):
                if method != "open" or self._mode_writes(call, mode_index=0):
                    self._check_write_path(call, self._path_literal(call.func.value), f"Path.{method}")

    def _check_getattr(self, call: ast.Call, name: str) -> None:
        if name in ("attrgetter", "methodcaller"):
            names = [self._string(a) for a in call.args[:1]]
            target = None
        else:
            if len(call.args) < 2:
                return
            names = [self._string(call.args[1])]
            target = self._qualify(call.args[0])
        attr = names[0] if names else None
        if attr is None:
            if target and target.removeprefix("builtins.").split(".")[0] in SENSITIVE:
                self._flag(call, f"{name}({target}, <computed name>)", "internals")
            return
        attr = _fold(attr)
        shown = f"{name}(..., {attr!r})"
        if target and self._check_qualified(call, f"{target}.{attr}", shown):
            return
        category = self._dangerous_name(attr)
        if category:
            self._flag(call, shown, category)

    def _is_namespace(self, node: ast.AST) -> bool:
        """A mapping of names to objects: `X.__dict__`, `vars(...)`, `globals()`, `__builtins__`, ..."""
        if isinstance(node, ast.Attribute) and node.attr == "__dict__":
            return True
        if isinstance(node, ast.Call):
            return self._qualify(node.func) in ("builtins.vars", "builtins.globals", "builtins.locals")
        return self._qualify(node) in ("builtins.__builtins__", "sys.modules", "builtins.__dict__")

    def _dangerous_name(self, name: str) -> str | None:
        """A string that names something refused, whatever object it is looked up on."""
        name = _fold(name)
        if name in DUNDERS:
            return DUNDERS[name]
        if name in METHODS:
            return METHODS[name]
        if name in PATH_METHODS:
            return PATH_METHODS[name]
        if name == "open":
            return "write"
        for qualified in (f"os.{name}", f"shutil.{name}", f"builtins.{name}", f"sys.{name}"):
            category = self._category(qualified)
            if category:
                return category
        return None

    # -- writing files -------------------------------------------------------------------------

    def _mode_writes(self, call: ast.Call, mode_index: int) -> bool:
        mode = call.args[mode_index] if len(call.args) > mode_index else None
        for keyword in call.keywords:
            if keyword.arg == "mode":
                mode = keyword.value
        text = self._string(mode) if mode is not None else None
        return bool(text and WRITE_MODE.search(text))

    def _check_open(self, call: ast.Call, mode_index: int) -> None:
        if self._mode_writes(call, mode_index):
            path = call.args[0] if call.args else next(
                (k.value for k in call.keywords if k.arg == "file"), None)
            self._check_write_path(call, path, "open(..., 'w')")

    def _check_write_path(self, call: ast.Call, path_node: ast.AST | None, shown: str) -> None:
        path = self._string_head(path_node) if path_node is not None else None
        if path is None:
            return  # not knowable before running; the sandbox's isolation decides
        path = _fold(path)
        normal = posixpath.normpath(path) if path else path
        if path.startswith("~") or normal == ".." or normal.startswith("../"):
            self._flag(call, f"{shown} to {path}", "write")
        elif path.startswith("/") and not any(
                normal == w or normal.startswith(w.rstrip("/") + "/") for w in self.writable):
            self._flag(call, f"{shown} to {path}", "write")

    def _string_head(self, node: ast.AST) -> str | None:
        """A literal path, or the literal start of an f-string / os.path.join (enough to see where)."""
        whole = self._string(node)
        if whole is not None:
            return whole
        if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
            head = node.values[0].value
            return head if head.startswith("/") else None
        if isinstance(node, ast.Call) and (self._qualify(node.func) or "").endswith("path.join") and node.args:
            head = self._string_head(node.args[0])
            return head if head and head.startswith("/") else None
        return None

    def _path_literal(self, node: ast.AST) -> ast.AST | None:
        if isinstance(node, ast.Call) and node.args:
            return node.args[0]
        return None

    def _is_path(self, node: ast.AST) -> bool:
        """A pathlib path: Path(...), a name holding one, or one derived from it (p / "x",
        p.parent, p.with_suffix(...)). Walked as a loop and remembered per node, so long chains
        (`p.joinpath("a").joinpath("a")...`) cost linear time and no recursion."""
        seen = []
        answer = False
        while True:
            if id(node) in self._path_nodes:
                answer = self._path_nodes[id(node)]
                break
            seen.append(id(node))
            if isinstance(node, ast.Name):
                answer = node.id in self.paths
            elif isinstance(node, ast.Call):
                func = self._qualify(node.func) or ""
                if func.rsplit(".", 1)[-1] in PATH_CONSTRUCTORS:
                    answer = True
                elif isinstance(node.func, ast.Attribute) and node.func.attr in PATH_DERIVED:
                    node = node.func.value
                    continue
            elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
                node = node.left
                continue
            elif isinstance(node, ast.Attribute) and node.attr in PATH_DERIVED:
                node = node.value
                continue
            break
        for key in seen:
            self._path_nodes[key] = answer
        return answer

    # -- strings built from constants ----------------------------------------------------------

    def _string(self, node: ast.AST | None, depth: int = 0) -> str | None:
        """The value of a string expression made only of constants, else None.

        Covers what hides a name in a few characters: "a" + "b", f"{'a'}b", "".join([...]),
        "evomer"[::-1], chr(114), "REMOVE".lower(), b"remove".decode(), and names assigned once.
        """
        if node is None or depth > 20:
            return None
        d = depth + 1
        if isinstance(node, ast.Constant):
            if isinstance(node.value, str):
                return node.value
            return None
        if isinstance(node, ast.Name):
            return self.strings.get(node.id)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left, right = self._string(node.left, d), self._string(node.right, d)
            return left + right if left is not None and right is not None else None
        if isinstance(node, ast.JoinedStr):
            parts = [self._string(v.value if isinstance(v, ast.FormattedValue) else v, d)
                     for v in node.values]
            return "".join(parts) if all(p is not None for p in parts) else None
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Slice):
            base = self._string(node.value, d)
            bounds = [self._int(b) for b in (node.slice.lower, node.slice.upper, node.slice.step)]
            if base is None or any(b is False for b in bounds):
                return None
            try:
                return base[slice(*bounds)]
            except ValueError:
                return None
        if isinstance(node, ast.Call):
            return self._string_call(node, d)
        return None

    def _string_call(self, node: ast.Call, depth: int) -> str | None:
        func = node.func
        if isinstance(func, ast.Name) and func.id == "chr" and len(node.args) == 1:
            code = self._int(node.args[0])
            return chr(code) if isinstance(code, int) and 0 <= code < 0x110000 else None
        if not isinstance(func, ast.Attribute):
            return None
        if func.attr == "join" and len(node.args) == 1 and isinstance(node.args[0], (ast.List, ast.Tuple)):
            sep = self._string(func.value, depth)
            parts = [self._string(e, depth) for e in node.args[0].elts]
            return sep.join(parts) if sep is not None and all(p is not None for p in parts) else None
        if func.attr == "decode" and isinstance(func.value, ast.Constant) and isinstance(func.value.value, bytes):
            try:
                return func.value.value.decode()
            except UnicodeDecodeError:
                return None
        if func.attr in ("lower", "upper", "strip", "casefold", "title") and not node.args:
            base = self._string(func.value, depth)
            return getattr(base, func.attr)() if base is not None else None
        return None

    @staticmethod
    def _int(node: ast.AST | None) -> int | None | bool:
        """None for an absent bound, an int for an int literal, False for anything else."""
        if node is None:
            return None
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            inner = _Scanner._int(node.operand)
            return -inner if type(inner) is int else False
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        return False


# Code that does not parse: a coarse text check over the folded text, for the plainest patterns only.
_TEXT_PATTERNS = (
    re.compile(r"\b(?:import|from)\s+(" + "|".join(map(re.escape, MODULES)) + r")\b"),
    re.compile(r"\b(os\.(?:remove|unlink|rmdir|removedirs|rename|renames|replace|system|popen|fork|"
               r"kill|killpg|_exit|chmod|chown|exec\w*|spawn\w*)|shutil\.(?:rmtree|move)|"
               r"__import__|__subclasses__|__builtins__)\s*\("),
)


def _scan_text(code: str) -> str | None:
    folded = _fold(code)
    for pattern in _TEXT_PATTERNS:
        match = pattern.search(folded)
        if match:
            shown = match.group(1)
            line = folded.count("\n", 0, match.start()) + 1
            category = _Scanner._category(shown) or DUNDERS.get(shown, "internals")
            return f"Refused by the sandbox's safety scan (line {line}): `{shown}` {REFUSAL_REASONS[category]}."
    return None
