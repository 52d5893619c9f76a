"""What the pattern scan (scan.py) refuses and why: module, member and method tables, and the
message the model gets for each kind. scan.py reads the code; this file only lists the rules."""
from __future__ import annotations

import re

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
MODULES = {
    **dict.fromkeys(("subprocess", "_posixsubprocess", "pty", "pexpect", "multiprocessing", "signal",
                     "posix", "nt", "_thread"), "process"),
    **dict.fromkeys(("socket", "_socket", "ssl", "urllib", "urllib2", "urllib3", "http", "httpx",
                     "requests", "aiohttp", "ftplib", "smtplib", "telnetlib", "xmlrpc", "websocket",
                     "websockets", "paramiko", "socketserver", "asyncore", "webbrowser"), "network"),
    **dict.fromkeys(("ctypes", "_ctypes", "cffi"), "native"),
    **dict.fromkeys(("importlib", "imp", "runpy", "code", "codeop", "zipimport", "pkgutil"), "dynamic"),
}
# Members of allowed modules that are refused (exact qualified names).
MEMBERS = {
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
MEMBER_PREFIXES = {"os.exec": "process", "os.spawn": "process", "os.posix_spawn": "process"}
# Every refused member is `module.name`: a chain only needs its parts checked two at a time, which
# keeps the check linear in the chain's length (a 2 KB `os.os.os...` chain once took seconds).
MEMBER_PARTS = max(len(k.split(".")) for k in [*MEMBERS, *MEMBER_PREFIXES])
assert MEMBER_PARTS == 2
# Longer code is refused before it is parsed: the scan runs in the caller's own process (a rollout
# worker), so its cost must be bounded. The sandbox refuses code over max_code_bytes (64 KB) anyway.
MAX_SCAN_BYTES = 64 * 1024
# Method names refused on any object: they only exist on paths (pathlib) and mean what they say.
METHODS = {
    **dict.fromkeys(("unlink", "rmdir", "rmtree", "removedirs"), "delete"),
    **dict.fromkeys(("chmod", "lchmod", "chown", "lchown", "symlink_to", "hardlink_to", "link_to"),
                    "permissions"),
}
# Methods refused only on pathlib paths (str.replace and DataFrame.rename are everyday code).
PATH_METHODS = {"rename": "delete", "replace": "delete"}
PATH_CONSTRUCTORS = frozenset({"Path", "PurePath", "PosixPath", "PurePosixPath", "WindowsPath"})
PATH_DERIVED = frozenset({"parent", "with_name", "with_suffix", "with_stem", "absolute", "resolve",
                           "expanduser", "joinpath"})
# Attributes that lead from any object to the interpreter's internals (classic jail escapes).
DUNDERS = {n: "internals" for n in ("__subclasses__", "__globals__", "__builtins__", "__code__",
                                     "__closure__", "__loader__", "__getattribute__")}
DUNDERS["__import__"] = "dynamic"
# Modules whose attributes may not be looked up by a computed name.
SENSITIVE = frozenset({"os", "sys", "shutil", "builtins", "pathlib", "io", "gc", "posixpath",
                        "__builtins__", *MODULES})
# Dangerous names that are also everyday words: refused in getattr, not when merely spelled out.
COMMON_WORDS = frozenset({"open", "replace", "rename", "move", "exit", "quit", "link", "truncate"})
GETATTR_LIKE = frozenset({"getattr", "attrgetter", "methodcaller", "hasattr", "delattr", "setattr"})
WRITE_MODE = re.compile(r"[wax+]")
OS_WRITE_FLAGS = frozenset({"O_WRONLY", "O_RDWR", "O_CREAT", "O_APPEND", "O_TRUNC"})
