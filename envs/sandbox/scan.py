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

_log = logging.getLogger(__name__)

# Why each kind of operation is refused, and what to do instead (the message's second half).
REFUSAL_REASONS = {
    "delete": ("deletes, moves or renames files, which the sandbox does not allow; write results to "
               "new files in the output folder instead"),
    "process": ("starts, replaces or signals processes, which the sandbox does not allow; do the work "
                "in Python itself (cv2, numpy as np, PIL's Image and math are already imported)"),
    "network": "uses the network, which the sandbox does not have; work with the given images only",
    "native": "calls native code directly, which the sandbox does not allow; use numpy, cv2 or PIL",
    "dynamic": ("runs or imports code chosen at run time, which the sandbox does not allow; write the "
                "code out directly (cv2, numpy as np, PIL's Image and math are already imported)"),
    "exit": ("would end the sandbox's Python process; let the code finish and print the result "
             "instead"),
    "permissions": ("changes file permissions, owners or links, which the sandbox does not allow; "
                    "image work never needs it"),
    "internals": ("reaches into the interpreter's internals, which the sandbox does not allow; use "
                  "the objects and modules directly"),
    "star": ("imports every name of a module that can delete files or run processes; import the "
             "names you need instead (e.g. `from os import path`)"),
    "write": ("writes outside the output folder, which the sandbox does not allow; save files under "
              "the output folder (or a relative path) instead"),
}

# Importing (or touching) any of these is refused outright.
_MODULES = {
    **dict.fromkeys(("subprocess", "_posixsubprocess", "pty", "pexpect", "multiprocessing", "signal",
                     "posix", "nt", "_thread"), "process"),
    **dict.fromkeys(("socket", "_socket", "ssl", "urllib", "urllib2", "urllib3", "http", "httpx",
                     "requests", "aiohttp", "ftplib", "smtplib", "telnetlib", "xmlrpc", "websocket",
                     "websockets", "paramiko", "socketserver", "asyncore", "webbrowser"), "network"),
    **dict.fromkeys(("ctypes", "_ctypes", "cffi"), "native"),
    **dict.fromkeys(("importlib", "imp", "runpy", "code", "codeop", "zipimport", "pkgutil"), "dynamic"),
}
# Members of allowed modules that are refused (exact qualified names).
_MEMBERS = {
    **{f"os.{n}": "delete" for n in ("remove", "unlink", "rmdir", "removedirs", "rename", "renames",
                                     "replace", "truncate", "ftruncate")},
    **{f"os.{n}": "process" for n in ("system", "popen", "fork", "forkpty", "kill", "killpg",
                                      "startfile", "plock", "setsid", "setuid", "setgid")},
    **{f"os.{n}": "exit" for n in ("_exit", "abort")},
    **{f"os.{n}": "permissions" for n in ("chmod", "fchmod", "lchmod", "chown", "fchown", "lchown",
                                          "chflags", "lchflags", "chroot", "symlink", "link")},
    **{f"shutil.{n}": "delete" for n in ("rmtree", "move")},
    "shutil.chown": "permissions",
    "sys.exit": "exit",
    **{f"sys.{n}": "internals" for n in ("modules", "_getframe", "settrace", "setprofile", "meta_path",
                                         "path_hooks")},
    **{f"gc.{n}": "internals" for n in ("get_objects", "get_referrers", "get_referents")},
    **{f"asyncio.{n}": "process" for n in ("create_subprocess_exec", "create_subprocess_shell",
                                           "subprocess")},
    **{f"builtins.{n}": "dynamic" for n in ("exec", "eval", "compile", "__import__")},
    **{f"builtins.{n}": "exit" for n in ("exit", "quit")},
    "builtins.__builtins__": "internals",
}
# os.execv, os.spawnl, os.posix_spawnp, ...: whole families.
_MEMBER_PREFIXES = {"os.exec": "process", "os.spawn": "process", "os.posix_spawn": "process"}
# Method names refused on any object: they only exist on paths (pathlib) and mean what they say.
_METHODS = {
    **dict.fromkeys(("unlink", "rmdir", "rmtree", "removedirs"), "delete"),
    **dict.fromkeys(("chmod", "lchmod", "chown", "lchown", "symlink_to", "hardlink_to", "link_to"),
                    "permissions"),
}
# Methods refused only on pathlib paths (str.replace and DataFrame.rename are everyday code).
_PATH_METHODS = {"rename": "delete", "replace": "delete"}
_PATH_CONSTRUCTORS = frozenset({"Path", "PurePath", "PosixPath", "PurePosixPath", "WindowsPath"})
_PATH_DERIVED = frozenset({"parent", "with_name", "with_suffix", "with_stem", "absolute", "resolve",
                           "expanduser", "joinpath"})
# Attributes that lead from any object to the interpreter's internals (classic jail escapes).
_DUNDERS = {n: "internals" for n in ("__subclasses__", "__globals__", "__builtins__", "__code__",
                                     "__closure__", "__loader__", "__getattribute__")}
_DUNDERS["__import__"] = "dynamic"
# Modules whose attributes may not be looked up by a computed name.
_SENSITIVE = frozenset({"os", "sys", "shutil", "builtins", "pathlib", "io", "gc", "posixpath",
                        "__builtins__", *_MODULES})
# Dangerous names that are also everyday words: refused in getattr, not when merely spelled out.
_COMMON_WORDS = frozenset({"open", "replace", "rename", "move", "exit", "quit", "link", "truncate"})
_GETATTR_LIKE = frozenset({"getattr", "attrgetter", "methodcaller", "hasattr", "delattr", "setattr"})
_WRITE_MODE = re.compile(r"[wax+]")
_OS_WRITE_FLAGS = frozenset({"O_WRONLY", "O_RDWR", "O_CREAT", "O_APPEND", "O_TRUNC"})


def scan_code(code: str, *, output_dir: str | None = None, writable_dirs: Sequence[str] = (),
              earlier_code: Sequence[str] = ()) -> str | None:
    """None when the code may run; otherwise one message for the model (what, where, why, instead).

    output_dir / writable_dirs: where writes with a literal absolute path may go (open(..., 'w'),
        Path.write_text, os.open for writing, cv2.imwrite, .save, shutil.copy's destination), besides
        relative paths and /mnt/data/temp_processed_images (which the repair maps to the output
        folder). Without output_dir the system's temporary folder stands in for it.
    earlier_code: the episode's earlier rounds, so `import os as o` there and `o.remove(...)` here
        is seen (their own problems were reported when they ran).
    """
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
                if qualified and qualified.removeprefix("builtins.").split(".")[0] in _SENSITIVE:
                    self.aliases.setdefault(name, qualified.removeprefix("builtins."))
        for _ in range(2):  # p = Path(x); q = p / "y"
            for name, values in assigned.items():
                if all(self._is_path(v) for v in values):
                    self.paths.add(name)

    def _qualify(self, node: ast.AST) -> str | None:
        """`os.path.join` for a chain whose base is an import or an unshadowed module/builtin name."""
        name = dotted(node)
        if name is None:
            return None
        base, _, rest = name.partition(".")
        if base in self.aliases:
            base = self.aliases[base]
        elif base in self.variables or base in _MODULES:
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
                    and node.module.split(".")[0] in _SENSITIVE:
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
            if folded in _DUNDERS:
                self._flag(node, folded, _DUNDERS[folded])
        elif isinstance(node, (ast.BinOp, ast.JoinedStr)):
            built = self._string(node)  # a name assembled from pieces, e.g. "rem" + "ove"
            if built is not None and _fold(built) not in _COMMON_WORDS and self._dangerous_name(built):
                self._flag(node, _fold(built), self._dangerous_name(built))

    def _check_qualified(self, node: ast.AST, qualified: str, shown: str) -> bool:
        qualified = _fold(qualified)
        parts = qualified.split(".")
        # Check every module named inside the chain too: os.path.os.remove, np.os.system ...
        for start in range(len(parts)):
            if start and parts[start] not in _SENSITIVE:
                continue
            for end in range(start + 1, len(parts) + 1):
                category = self._category(".".join(parts[start:end]))
                if category:
                    self._flag(node, shown, category)
                    return True
        return False

    @staticmethod
    def _category(qualified: str) -> str | None:
        root = qualified.split(".")[0]
        if root in _MODULES:
            return _MODULES[root]
        if qualified in _MEMBERS:
            return _MEMBERS[qualified]
        for prefix, category in _MEMBER_PREFIXES.items():
            if qualified.startswith(prefix):
                return category
        return None

    def _check_reference(self, node: ast.AST) -> None:
        if isinstance(node, ast.Attribute) and _fold(node.attr) in _DUNDERS:
            self._flag(node, f".{_fold(node.attr)}", _DUNDERS[_fold(node.attr)])
            return
        if self._is_chain_head(node):
            qualified = self._qualify(node)
            if qualified and self._check_qualified(node, qualified, self._shown(node, qualified)):
                return
        if not isinstance(node, ast.Attribute):
            return
        attr = _fold(node.attr)
        if attr in _METHODS:
            self._flag(node, f".{attr}", _METHODS[attr])
        elif attr in _PATH_METHODS and self._is_path(node.value):
            self._flag(node, f"Path.{attr}", _PATH_METHODS[attr])
        elif attr == "__dict__" and (self._qualify(node.value) or "").split(".")[0] in _SENSITIVE:
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
        if name in _GETATTR_LIKE and (func.startswith(("builtins.", "operator.")) or func == name):
            self._check_getattr(call, name)
        elif func in ("builtins.vars", "builtins.dir") and call.args:
            target = self._qualify(call.args[0]) or ""
            if target.split(".")[0] in _SENSITIVE and func == "builtins.vars":
                self._flag(call, f"vars({target})", "internals")
        elif func in ("builtins.open", "io.open", "codecs.open"):
            self._check_open(call, mode_index=1)
        elif func == "os.open":
            flags = {n.attr if isinstance(n, ast.Attribute) else n.id
                     for arg in call.args[1:2] for n in ast.walk(arg) if isinstance(n, (ast.Attribute, ast.Name))}
            if flags & _OS_WRITE_FLAGS:
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
            if target and target.removeprefix("builtins.").split(".")[0] in _SENSITIVE:
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
        if name in _DUNDERS:
            return _DUNDERS[name]
        if name in _METHODS:
            return _METHODS[name]
        if name in _PATH_METHODS:
            return _PATH_METHODS[name]
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
        return bool(text and _WRITE_MODE.search(text))

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
        if isinstance(node, ast.Name):
            return node.id in self.paths
        if isinstance(node, ast.Call):
            func = self._qualify(node.func) or ""
            return func.rsplit(".", 1)[-1] in _PATH_CONSTRUCTORS or (
                isinstance(node.func, ast.Attribute) and node.func.attr in _PATH_DERIVED
                and self._is_path(node.func.value))
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            return self._is_path(node.left)
        if isinstance(node, ast.Attribute) and node.attr in _PATH_DERIVED:
            return self._is_path(node.value)
        return False

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
    re.compile(r"\b(?:import|from)\s+(" + "|".join(map(re.escape, _MODULES)) + r")\b"),
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
            category = _Scanner._category(shown) or _DUNDERS.get(shown, "internals")
            return f"Refused by the sandbox's safety scan (line {line}): `{shown}` {REFUSAL_REASONS[category]}."
    return None
