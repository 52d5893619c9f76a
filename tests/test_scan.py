"""scan_code: dangerous code is refused with a message the model can act on; image code passes."""
import textwrap

import pytest

from envs.sandbox.scan import REFUSAL_REASONS, scan_code

OUT = "/work/ep-3/out"

# (refused snippet, what the message must name, a close allowed neighbour)
PAIRS = [
    # deleting, moving, renaming
    ("import os\nos.remove('a.png')", "`os.remove` deletes", "import os\nos.path.exists('a.png')"),
    ("import os\nos.unlink(p)", "`os.unlink`", "import os\nos.listdir('.')"),
    ("import os\nos.rmdir('d')", "`os.rmdir`", "import os\nos.makedirs('d', exist_ok=True)"),
    ("import os\nos.rename('a', 'b')", "`os.rename`", "import os\nname = os.path.basename('a/b')"),
    ("import os\nos.replace('a', 'b')", "`os.replace`", "s = 'a.png'.replace('.png', '.jpg')"),
    ("import shutil\nshutil.rmtree('/work')", "`shutil.rmtree`", "import shutil\nshutil.copy('a.png', 'b.png')"),
    ("import shutil\nshutil.move('a', 'b')", "`shutil.move`", "import shutil\nprint(shutil.disk_usage('.'))"),
    ("from pathlib import Path\nPath('a.png').unlink()", "`.unlink`",
     "from pathlib import Path\nprint(Path('a.png').exists())"),
    ("from pathlib import Path\nPath('d').rmdir()", "`.rmdir`", "from pathlib import Path\nPath('d').mkdir(exist_ok=True)"),
    ("from pathlib import Path\np = Path('a')\np.rename('b')", "`Path.rename`",
     "renamed = df.rename(columns={'a': 'b'})"),
    ("import pathlib\n(pathlib.Path('a') / 'b').replace('c')", "`Path.replace`",
     "import pathlib\nprint((pathlib.Path('a') / 'b').name.replace('b', 'c'))"),
    ("from os import remove as rm\nrm('x')", "`from os import remove`", "from os import path as osp\nosp.join('a', 'b')"),
    ("import os as o\no.remove('x')", "`os.remove`", "import os as o\no.path.join('a', 'b')"),
    ("import os.path as osp\nosp.os.remove('x')", "`os.path.os.remove`", "import os.path as osp\nosp.splitext('x.png')"),
    # processes and signals
    ("import subprocess\nsubprocess.run(['ls'])", "`subprocess`", "import math\nmath.floor(2.5)"),
    ("import subprocess as sp\nsp.check_output('id')", "`subprocess`", "import numpy as np\nnp.zeros(3)"),
    ("from subprocess import Popen", "`subprocess`", "from collections import Counter"),
    ("import os\nos.system('rm -rf /')", "`os.system`", "import os\nprint(os.getcwd())"),
    ("import os\nos.popen('ls').read()", "`os.popen`", "import os\nprint(os.sep)"),
    ("import os\nos.execv('/bin/sh', ['sh'])", "`os.execv`", "import os\nprint(os.path.isdir('.'))"),
    ("import os\nos.fork()", "`os.fork`", "import os\nprint(os.cpu_count())"),
    ("import os\nos.kill(1, 9)", "`os.kill`", "import os\nprint(os.getpid())"),
    ("import signal\nsignal.alarm(0)", "`signal`", "signal = [0.1, 0.2]\nprint(sum(signal))"),
    ("import multiprocessing", "`multiprocessing`", "import itertools"),
    # network
    ("import socket\nsocket.socket()", "`socket` uses the network", "import struct\nstruct.pack('i', 1)"),
    ("import urllib.request\nurllib.request.urlopen('http://x')", "`urllib.request`", "import json\njson.dumps({})"),
    ("import requests", "`requests`", "import re"),
    ("from http.client import HTTPConnection", "`http.client`", "from html import escape"),
    # native code, dynamic code
    ("import ctypes\nctypes.CDLL(None)", "`ctypes`", "import array\narray.array('i')"),
    ("import importlib\nimportlib.import_module('os')", "`importlib`", "import functools"),
    ("__import__('os').remove('x')", "`__import__`", "print(__name__)"),
    ("exec('print(1)')", "`exec` runs or imports code", "print(1)"),
    ("x = eval('1 + 1')", "`eval`", "x = int('1') + 1"),
    ("c = compile('1', 'f', 'eval')", "`compile`", "import re\nc = re.compile('1')"),
    ("run = exec\nrun('1')", "`exec`", "from re import compile\nc = compile('x')"),
    ("import builtins\nbuiltins.exec('1')", "`builtins.exec`", "import builtins\nprint(builtins.len('ab'))"),
    # ending the interpreter
    ("import sys\nsys.exit(0)", "`sys.exit` would end", "import sys\nprint(sys.version_info.major)"),
    ("exit()", "`exit`", "print('done')"),
    ("quit(1)", "`quit`", "result = 'quit'\nprint(result)"),
    ("import os\nos._exit(0)", "`os._exit`", "import os\nprint(os.name)"),
    ("raise SystemExit(1)", "`raise SystemExit`", "raise ValueError('bad crop')"),
    # permissions and links
    ("import os\nos.chmod('a', 0o777)", "`os.chmod` changes file permissions", "import os\nprint(os.stat('.').st_mode)"),
    ("import os\nos.chown('a', 0, 0)", "`os.chown`", "import os\nprint(os.path.getsize('.'))"),
    ("import os\nos.symlink('/etc/passwd', 'out.png')", "`os.symlink`", "import os\nprint(os.path.islink('out.png'))"),
    ("from pathlib import Path\nPath('o.png').symlink_to('/etc/passwd')", "`.symlink_to`",
     "from pathlib import Path\nprint(Path('o.png').suffix)"),
    # writing outside the output folder
    ("open('/etc/passwd', 'w').write('x')", "`open(..., 'w') to /etc/passwd` writes outside",
     "data = open('/etc/hostname').read()"),
    ("with open('../../escape.txt', 'a') as f:\n    f.write('x')", "to ../../escape.txt",
     "with open('notes.txt', 'a') as f:\n    f.write('x')"),
    ("f = open(file='/root/.bashrc', mode='w+')", "to /root/.bashrc", f"f = open(file='{OUT}/a.txt', mode='w+')"),
    ("from pathlib import Path\nPath('/usr/lib/x.py').write_text('x')", "`Path.write_text to /usr/lib/x.py`",
     "from pathlib import Path\nPath('result.txt').write_text('x')"),
    ("import os\nfd = os.open('/etc/x', os.O_WRONLY | os.O_CREAT)", "`os.open to /etc/x`",
     "import os\nfd = os.open('/etc/hostname', os.O_RDONLY)"),
    ("open(f'/home/{user}/x', 'w')", "to /home/", "open(f'/mnt/data/temp_processed_images/{n}.txt', 'w')"),
    ("open('~/.ssh/authorized_keys', 'a')", "to ~/.ssh", "open('crop_info.json', 'w')"),
    # hidden names: getattr, built strings, dict lookups
    ("import os\ngetattr(os, 'rem' + 'ove')('x')", "`getattr(..., 'remove')`", "import cv2\nflag = getattr(cv2, 'COLOR_' + 'BGR2GRAY')"),
    ("import os\ngetattr(os, ''.join(['un', 'link']))('x')", "`getattr(..., 'unlink')`", "print(''.join(['un', 'link']).upper() * 0)"),
    ("import os\ngetattr(os, 'evomer'[::-1])('x')", "`getattr(..., 'remove')`", "print('evomer'[::-1].title() * 0 + 'ok')"),
    ("import os\nname = 'sys' + 'tem'\ngetattr(os, name)('id')", "`system` starts", "name = 'sys' + 'tem-info'\nprint(name)"),
    ("import os\nf = getattr(os, chr(114) + 'emove')", "'remove'", "import math\nf = getattr(math, 'sqrt')"),
    ("import os\nattr = input()\ngetattr(os, attr)", "`getattr(os, <computed name>)`", "import cv2\nattr = 'INTER_CUBIC'\ngetattr(cv2, attr)"),
    ("import operator, os\noperator.methodcaller('remove', 'x')(os)", "`methodcaller(..., 'remove')`",
     "import operator\nkey = operator.itemgetter(1)"),
    ("import os\nos.__dict__['remove']('x')", "`['remove']` deletes", "class A:\n    pass\nprint(A().__dict__)"),
    ("globals()['__builtins__']", "__builtins__", "print(globals().get('image_path'))"),
    ("().__class__.__bases__[0].__subclasses__()", "`.__subclasses__` reaches", "print(type(()).__name__)"),
    ("def f(): pass\nf.__globals__['os']", "`.__globals__`", "def f(): pass\nprint(f.__name__)"),
    ("import sys\nsys.modules['os'].remove('x')", "`sys.modules`", "import sys\nprint(sys.maxsize > 0)"),
    ("from os import *\nremove('x')", "`from os import *` imports every name", "from math import *\nprint(sqrt(4))"),
    # unicode look-alikes (Python folds identifiers with NFKC)
    ("import os\nｏｓ.remove('x')", "`os.remove`", "import os\nｏｓ.path.join('a')"),
    ("import os\nos.ｒｅｍｏｖｅ('x')", "`os.remove`", "import os\nos.ｇｅｔｃｗｄ()"),
    ("import 𝐬𝐮𝐛𝐩𝐫𝐨𝐜𝐞𝐬𝐬", "`subprocess`", "import 𝐦𝐚𝐭𝐡"),
    ("import os\ngetattr(os, 'ｒｅｍｏｖｅ')", "'remove'", "import os\ngetattr(os, 'ｓｅｐ')"),
    ("import os as оs\nоs.remove('x')", "`os.remove`", "оs = [1]\nоs.remove(1)"),  # Cyrillic о alias
]


@pytest.mark.parametrize("blocked, named, allowed", PAIRS, ids=[p[1] for p in PAIRS])
def test_refused_and_allowed_neighbour(blocked, named, allowed):
    message = scan_code(blocked, output_dir=OUT)
    assert message is not None, blocked
    assert named in message
    assert message.startswith("Refused by the sandbox's safety scan (line ")
    assert scan_code(allowed, output_dir=OUT) is None, scan_code(allowed, output_dir=OUT)


def test_there_are_enough_pairs():
    assert len(PAIRS) >= 30


def test_message_says_where_why_and_what_instead():
    message = scan_code("import cv2\nimg = cv2.imread(image_path)\nimport os\nos.remove(image_path)\n")
    assert message == (
        "Refused by the sandbox's safety scan (line 4): `os.remove` deletes, moves or renames files, "
        "which the sandbox does not allow; write results to new files in the output folder instead.")


def test_every_kind_of_refusal_is_exercised_and_gives_advice():
    messages = [scan_code(blocked, output_dir=OUT) for blocked, _, _ in PAIRS]
    for kind, reason in REFUSAL_REASONS.items():
        assert any(m and m.endswith(reason + ".") for m in messages), f"no test refuses kind {kind!r}"
        assert ";" in reason  # what is not allowed; then what to do instead


def test_first_problem_in_source_order_is_reported():
    message = scan_code("x = 1\nimport socket\nimport subprocess\n")
    assert "(line 2)" in message and "`socket`" in message


@pytest.mark.parametrize("code", [
    # The released Thyme models' typical code, and ordinary image work.
    textwrap.dedent("""\
        import cv2
        import os
        import numpy as np
        image_path = "/mnt/data/images/x.jpg"
        image = cv2.imread(image_path)
        h, w = image.shape[:2]
        x1, y1, x2, y2 = 10, 20, 300, 400
        cropped = image[y1:y2, x1:x2]
        os.makedirs("/mnt/data/temp_processed_images/", exist_ok=True)
        processed_path = os.path.join("/mnt/data/temp_processed_images/", "crop.png")
        cv2.imwrite(processed_path, cropped)
        print(processed_path)
        """),
    textwrap.dedent("""\
        from PIL import Image, ImageEnhance
        img = Image.open(image_path).convert("RGB")
        img = img.rotate(90, expand=True)
        img = ImageEnhance.Contrast(img).enhance(1.8)
        img.save(f"{OUT}/rotated.png")
        """).replace("{OUT}", OUT),
    textwrap.dedent("""\
        import json, math
        with open("meta.json", "w") as f:
            json.dump({"area": math.pi * 2 ** 2}, f)
        with open(image_path, "rb") as f:
            header = f.read(8)
        items = ["a", "b"]
        items.remove("a")
        text = "a-b".replace("-", "+")
        """),
    "import numpy as np\nmodel_eval = np.mean([1, 2])\nprint(model_eval)",
    "import glob\nfor p in sorted(glob.glob('*.png')):\n    print(p)",
    "import time\nstart = time.time()\nprint(round(time.time() - start))",
    "out = open(path, 'w')  # path unknown before running: left to the sandbox",
    "import os\nos.makedirs(os.path.join(output_dir, 'crops'), exist_ok=True)",
    "import tempfile\nprint(tempfile.gettempdir())",
    "class Box:\n    def crop(self):\n        return self\nBox().crop()",
    "label = 'remove the noise, then rename the file'\nprint(label)",
])
def test_ordinary_image_code_passes(code):
    assert scan_code(code, output_dir=OUT) is None


def test_write_paths_depend_on_the_output_folder():
    code = f"open('{OUT}/x.txt', 'w')"
    assert scan_code(code, output_dir=OUT) is None
    assert "writes outside" in scan_code(code, output_dir="/elsewhere")
    assert scan_code(code, writable_dirs=[OUT]) is None
    assert scan_code("open('/mnt/data/temp_processed_images/a.txt', 'w')") is None


def test_code_that_does_not_parse_is_still_checked_for_plain_patterns():
    assert "`subprocess`" in scan_code("import subprocess\nx = (")
    assert "`os.remove`" in scan_code("```python\nimport os\nos.remove('a')\n```")
    assert "`os.remove`" in scan_code("import os\nｏｓ.remove('a'\n")
    assert scan_code("x = (") is None  # nothing dangerous: the executor reports the SyntaxError


@pytest.mark.parametrize("code", [
    "", "\x00", "(" * 300 + ")" * 300, "'" * 3, "getattr()", "getattr(os)", "open()", "open(1, 2, 3)",
    "chr(10**9)", "'a'[::0]", "x = 'a' * 10**6", "f'{x!r:>{width}}'",
])
def test_odd_input_never_crashes(code):
    result = scan_code(code)
    assert result is None or isinstance(result, str)


def test_aliases_from_earlier_rounds_are_known():
    earlier = ["import os as o\nimport cv2", "from shutil import copy as cp"]
    assert "`os.remove`" in scan_code("o.remove('x.png')", earlier_code=earlier)
    assert scan_code("o.path.join('a', 'b')\ncp('a.png', 'b.png')", earlier_code=earlier) is None
    # A name this round rebinds is this round's own.
    assert scan_code("o = [1]\no.remove(1)", earlier_code=earlier) is None


@pytest.mark.parametrize("code", [
    "import cv2\ncv2.imwrite('/etc/cron.d/x.png', img)",
    "img.save('/usr/share/x.png')",
    "import shutil\nshutil.copy('a.png', '/bin/ls')",
])
def test_image_writes_outside_the_output_folder_are_refused(code):
    assert "writes outside the output folder" in scan_code(code, output_dir=OUT)


@pytest.mark.parametrize("code", [
    f"import cv2\ncv2.imwrite('{OUT}/x.png', img)",
    "import cv2\ncv2.imwrite('/mnt/data/temp_processed_images/x.png', img)",
    "img.save('crop.png')",
    "img.save(processed_path)",
    "import shutil\nshutil.copy(image_path, 'copy.png')",
])
def test_image_writes_inside_the_output_folder_pass(code):
    assert scan_code(code, output_dir=OUT) is None


@pytest.mark.parametrize("code, named", [
    ("import os\no = os\no.remove('x')", "`os.remove`"),
    ("import os\no = os\nr = o\nr.unlink('x')", "`os.unlink`"),
    ("import os\nf = os.__dict__.get('remove')", "`os.__dict__`"),
    ("import os\ngetattr(os, '%s' % 'remove')('x')", "`getattr(os, <computed name>)`"),
    ("import os\nlist(map(os.remove, ['a', 'b']))", "`os.remove`"),
    ("import functools, os\nrm = functools.partial(os.unlink)", "`os.unlink`"),
    ("from os import path\npath.os.remove('x')", "`os.path.os.remove`"),
    ("class A:\n    def __reduce__(self):\n        import os\n        return (os.system, ('id',))", "`os.system`"),
    ("class A:\n    def __del__(self):\n        import os\n        os._exit(0)", "`os._exit`"),
    ("mode = 'w'\ntarget = '/etc/passwd'\nopen(target, mode)", "to /etc/passwd"),
    ("import os\nos.posix_spawnp('sh', ['sh'], {})", "`os.posix_spawnp`"),
    ("import asyncio\nasyncio.create_subprocess_shell('id')", "`asyncio.create_subprocess_shell`"),
    ("f = (lambda: 0).__code__", "`.__code__`"),
    ("import os\nos.__getattribute__('remove')", "`.__getattribute__`"),
    ("import os\nvars(os)['remove']", "remove"),
    ("import ｓｈｕｔｉｌ\nｓｈｕｔｉｌ.ｒｍｔｒｅｅ('/')", "`shutil.rmtree`"),
])
def test_more_evasions_are_seen(code, named):
    message = scan_code(code, output_dir=OUT)
    assert message is not None and named in message, message


def test_mutated_code_never_crashes_the_scan():
    import random

    base = ("import os\nimport cv2\nimg = cv2.imread(image_path)\nname = 'rem' + 'ove'\n"
            "getattr(os, name)\nopen('/etc/x', 'w')\nfrom pathlib import Path\nPath('a').unlink()\n")
    rng = random.Random(99)
    for _ in range(400):
        text = base
        for _ in range(rng.randint(1, 4)):
            i, j = sorted(rng.randrange(len(text) + 1) for _ in range(2))
            text = text[:i] + rng.choice(["", "(", ")", "'", "\n  ", ".", "[::-1]", "+", "ｏ", "\\"]) + text[j:]
        result = scan_code(text, output_dir=OUT)
        assert result is None or result.startswith("Refused by the sandbox's safety scan (line ")


@pytest.mark.parametrize("code", [
    # Dictionary keys and labels that happen to be names of refused things are data.
    "prices = {'open': 1.0, 'close': 2.0}\nprint(prices['open'])",
    "row = {'code': 3, 'signal': 0.5, 'requests': 2, 'eval': 0.9}\nprint(row['code'], row['signal'], row['eval'])",
    "status = {'remove': 1}\nprint(status['remove'])",
    "word = 'op' + 'en'\nkey = f'{\"re\"}place'\nprint(word, key)",
    "metrics = {}\nmetrics['exit'] = 0\nmetrics['move'] = 1",
])
def test_data_that_names_refused_things_passes(code):
    assert scan_code(code, output_dir=OUT) is None


@pytest.mark.parametrize("code, named", [
    ("globals()['exec']('1')", "['exec']"),
    ("import sys\nsys.modules['os'].__dict__['system']('id')", "`['system']`"),
    ("__builtins__['eval']('1')", "`['eval']`"),
    ("locals()['__import__']('os')", "__import__"),
])
def test_namespace_lookups_are_refused(code, named):
    message = scan_code(code, output_dir=OUT)
    assert message is not None and named in message, message


@pytest.mark.parametrize("code", [
    "print(signal.mean())",           # `signal`, `code`: variables from an earlier round
    "print(code.upper(), len(code))",
    "print(http.status, socket.x)",
])
def test_unbound_names_of_refused_modules_are_earlier_variables(code):
    assert scan_code(code, output_dir=OUT) is None


def test_repaired_thyme_code_passes_the_scan_with_its_output_folder():
    from envs.sandbox.repair import repair_code

    code = textwrap.dedent("""\
        <code>
        ```python
        import cv2, os
        image_path = "/mnt/data/images/photo.jpg"
        img = cv.imread(image_path)
        bbox = (-5, 0, 9000, 400)
        crop = img[bbox[1]:bbox[3], bbox[0]:bbox[2]]
        os.makedirs("/mnt/data/temp_processed_images", exist_ok=True)
        processed_path = f"/mnt/data/temp_processed_images/crop_{bbox[2]}.png"
        cv2.imwrite(processed_path, crop)
        with open("/mnt/data/temp_processed_images/box.txt", "w") as f:
            f.write(str(bbox))
        print(processed_path)
        ```
        </code>""")
    repaired = repair_code(code, image_size=(640, 480), image_path="/in/x.png", output_dir=OUT)
    assert repaired.error is None and f"open('{OUT}/box.txt'" in repaired.code.replace('"', "'")
    assert scan_code(repaired.code, output_dir=OUT) is None
    # Without being told the output folder, the mapped absolute path is outside the default one.
    assert "writes outside the output folder" in scan_code(repaired.code, output_dir="/elsewhere")


# Class 2 of the adversarial review: the scan runs in the caller's own process (a rollout worker), so
# no input may cost it more than linear time. These shapes once cost cubic or quadratic time (a 6 KB
# `os.os.os...` chain took 87 s) or blew the recursion limit (and were then waved through).
ADVERSARIAL_SHAPES = {
    "attribute_chain": lambda n: "a" + ".b" * n,
    "module_chain": lambda n: "os" + ".os" * n + ".remove('x')",
    "path_call_chain": lambda n: "from pathlib import Path\np = Path('x')\np" + ".joinpath('a')" * n + ".unlink()",
    "path_division": lambda n: "from pathlib import Path\np = Path('x')\nq = p" + " / 'a'" * n + "\nq.unlink()",
    "string_sum": lambda n: "x = " + " + ".join(["'a'"] * n),
    "subscripts": lambda n: "x" + "[0]" * n,
    "dict_lookups": lambda n: "x = os.__dict__" + "['a']" * n,
    "many_aliases": lambda n: "".join(f"import os as o{i}\n" for i in range(n // 4)) + "o1.remove('x')",
}


@pytest.mark.parametrize("shape", sorted(ADVERSARIAL_SHAPES))
def test_hostile_scan_is_linear_in_the_code_size(shape):
    import time

    build = ADVERSARIAL_SHAPES[shape]
    n = 1
    while len(build(n * 2)) < 60 * 1024:  # the largest instance under the 64 KB cap
        n *= 2
    code = build(n)
    started = time.process_time()
    scan_code(code, output_dir=OUT)
    spent = time.process_time() - started
    assert spent < 2.0, f"{shape}: {len(code)} bytes took {spent:.1f} s of CPU"
    if shape in ("module_chain", "path_call_chain", "path_division", "many_aliases"):
        # Still found (at a depth Python can compile; deeper code cannot run at all).
        assert "Refused" in (scan_code(build(400), output_dir=OUT) or ""), shape


def test_hostile_scan_refuses_code_over_its_size_cap():
    message = scan_code("x = 1\n" * 12000)
    assert message is not None and "over the scan's 65536-byte limit" in message
    assert scan_code("x = 1\n" * 10, max_bytes=30) is not None
    assert scan_code("x = 1\n" * 10) is None
