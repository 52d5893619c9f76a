"""repair_code: each repair, its report, and that repaired code still means what the model wrote."""
import ast
import math
import textwrap

import cv2
import numpy as np
import pytest
from PIL import Image

from envs.sandbox.repair import RepairResult, repair_code

W, H = 2048, 1536
SIZE = (W, H)
OUT = "/work/ep-7/out"


def repair(code, **kwargs):
    result = repair_code(code, **kwargs)
    assert isinstance(result, RepairResult)
    if result.error is None:
        ast.parse(result.code)  # whatever was repaired, the result is Python
    return result


def run(code, image_path):
    """exec code the way the sandbox presets it: cv2, np, Image, math and image_path."""
    namespace = {"cv2": cv2, "np": np, "Image": Image, "math": math, "image_path": image_path}
    exec(compile(code, "<model>", "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    """A real 64x48 image whose pixels encode their coordinates (crops are checkable exactly)."""
    ys, xs = np.mgrid[0:48, 0:64]
    pixels = np.stack([xs * 3, ys * 5, (xs + ys) % 256], axis=-1).astype(np.uint8)
    path = tmp_path_factory.mktemp("img") / "in.png"
    assert cv2.imwrite(str(path), pixels)
    return str(path), pixels


# --- extraction ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, fixes", [
    ("```python\nprint(1)\n```", ["removed ```python fence"]),
    ("```py\nprint(1)\n```", ["removed ```python fence"]),
    ("```\nprint(1)\n```", ["removed ```python fence"]),
    ("```python\nprint(1)", ["removed ```python fence"]),  # never closed
    ("print(1)\n```", ["removed ```python fence"]),  # only the closing fence
    ("Here is my code:\n```python\nprint(1)\n```\nIt prints one.", ["removed ```python fence"]),
    ("<code>print(1)</code>", ["extracted code from <code> block"]),
    ("<code>\n```python\nprint(1)\n```\n</code>", ["extracted code from <code> block", "removed ```python fence"]),
    ("<code>```python\nprint(1)\n```", ["extracted code from <code> block", "removed ```python fence"]),
    ("print(1)\n</code>", ["extracted code from <code> block"]),
    ("python\nprint(1)", ["removed stray `python` line"]),
    ("print(1)", []),
])
def test_extraction_variants(text, fixes):
    result = repair(text)
    assert result.error is None
    assert result.code.strip() == "print(1)"
    assert result.fixes == fixes


def test_last_code_block_of_a_trajectory_is_taken():
    text = ("<think>zoom</think><code>```python\nprint('first')\n```</code>"
            "<sandbox_output>first</sandbox_output><code>```python\nprint('second')\n```</code>")
    assert repair(text).code.strip() == "print('second')"


def test_tags_inside_strings_of_valid_code_are_data():
    code = 'print("<code>x</code>")'
    result = repair(code)
    assert result.code == code and result.fixes == []


def test_dedent():
    result = repair("    import math\n    x = math.sqrt(16)\n    print(x)\n")
    assert result.fixes == ["dedented"]
    assert result.code == "import math\nx = math.sqrt(16)\nprint(x)\n"


def test_empty_code_is_an_error():
    for text in ("", "   \n ", "<code></code>", "```python\n```"):
        result = repair(text)
        assert result.error and "empty" in result.error


def test_windows_newlines_are_normalised():
    result = repair("x = 1\r\nprint(x)\r\n")
    assert result.error is None and "\r" not in result.code


# --- autopep8 and syntax errors ---------------------------------------------------------------------

def test_autopep8_repairs_unexpected_indentation(image_file):
    path, pixels = image_file
    code = "img = cv2.imread(image_path)\n    h, w = img.shape[:2]\n    print(h, w)\n"
    result = repair(code)
    assert result.fixes == ["autopep8: fixed indentation"]
    assert result.code.splitlines() == ["img = cv2.imread(image_path)", "h, w = img.shape[:2]", "print(h, w)"]
    namespace = run(result.code, path)
    assert (namespace["h"], namespace["w"]) == pixels.shape[:2]


def test_autopep8_repairs_tabs_mixed_with_spaces():
    code = "def f(x):\n\ty = x * 2\n        return y\nprint(f(3))\n"
    result = repair(code)
    assert result.fixes == ["autopep8: fixed indentation"]
    assert run(result.code, "")["f"](3) == 6


def test_autopep8_does_not_run_on_valid_code():
    code = "x=1\nif x :\n      y=[1,\n   2]\n"  # ugly but valid: left exactly as written
    result = repair(code)
    assert result.code == code and result.fixes == []


@pytest.mark.parametrize("text, message", [
    ("x = 1\ny = (2,\nprint(x)", "SyntaxError: '(' was never closed (line 2)"),
    ("```python\nx = 1\nprint(x))\n```", "SyntaxError: unmatched ')' (line 2)"),
    ("<code>\n```python\nfor i in range(3):\nprint(i)\n```\n</code>",
     "SyntaxError: expected an indented block after 'for' statement on line 1 (line 2)"),
    ("if True:\n    a = 1\n  b = 2\n", "SyntaxError: unindent does not match any outer indentation level (line 3)"),
    ("x = '\x00'", "SyntaxError: source code string cannot contain null bytes"),
])
def test_syntax_errors_keep_the_models_line_numbers(text, message):
    result = repair(text)
    assert result.error == message
    assert result.code == text and result.fixes == []


# --- cv -> cv2 --------------------------------------------------------------------------------------

def test_cv_alias_renamed_and_runs(image_file):
    path, pixels = image_file
    code = "img = cv.imread(image_path)\ngray = cv.cvtColor(img, cv.COLOR_BGR2GRAY)\n"
    result = repair(code)
    assert result.fixes == ["renamed cv -> cv2"]
    assert result.code == "img = cv2.imread(image_path)\ngray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)\n"
    gray = run(result.code, path)["gray"]
    assert np.array_equal(gray, cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY))


def test_upper_case_cv_alias_renamed():
    result = repair("x = CV.INTER_CUBIC")
    assert result.code == "x = cv2.INTER_CUBIC" and result.fixes == ["renamed CV -> cv2"]


@pytest.mark.parametrize("code", [
    "import cv2 as cv\nimg = cv.imread(image_path)",
    "cv = {'mean': 1}\nprint(cv.get('mean'))",
    "def f(cv):\n    return cv.imread('x')",
    "print(cv.not_an_opencv_function)",  # cv from an earlier round, not OpenCV
    "for cv in []:\n    cv.imread('x')",
])
def test_cv_left_alone_when_defined_or_not_opencv(code):
    result = repair(code)
    assert result.code == code and result.fixes == []


# --- image_path and the output folder ------------------------------------------------------------------

def test_image_path_pointed_at_the_real_input(image_file):
    path, pixels = image_file
    code = 'image_path = "/mnt/data/images/sample_001.jpg"\nimg = cv2.imread(image_path)\n'
    result = repair(code, image_path=path)
    assert result.fixes == ["pointed image_path at the input image"]
    assert result.code == f"image_path = {path!r}\nimg = cv2.imread(image_path)\n"
    assert np.array_equal(run(result.code, "nowhere")["img"], pixels)


@pytest.mark.parametrize("literal", [
    "/in/real.png",                                     # already right
    "/in/second.png",                                   # another real input of the episode
    f"{OUT}/crop_1.png",                                # a processed image printed earlier
])
def test_image_path_left_alone(literal):
    code = f"image_path = {literal!r}\n"
    result = repair(code, image_path="/in/real.png", image_paths=["/in/real.png", "/in/second.png"],
                    output_dir=OUT)
    assert result.code == code and result.fixes == []


def test_image_path_to_an_earlier_output_maps_to_the_output_folder():
    code = "image_path: str = '/mnt/data/temp_processed_images/crop.png'\n"
    result = repair(code, image_path="/in/real.png", output_dir=OUT)
    assert result.code == f"image_path: str = '{OUT}/crop.png'\n"
    assert result.fixes == ["mapped /mnt/data/temp_processed_images/ to the output folder"]


def test_output_folder_mapped_in_every_kind_of_literal():
    code = textwrap.dedent('''\
        import os
        out_dir = "/mnt/data/temp_processed_images/"
        made = os.path.normpath('/mnt/data/temp_processed_images')
        a = f"/mnt/data/temp_processed_images/crop_{1 + 1}.png"
        b = os.path.join("/mnt/data/temp_processed_images", "b.png")
        c = os.path.join("/mnt/data", "temp_processed_images", "c.png")
        d = r'/mnt/data/temp_processed_images/d.png'
        e = """/mnt/data/temp_processed_images/e.png"""
        keep1 = "/mnt/data/temp_processed_images_v2/x.png"
        keep2 = b"/mnt/data/temp_processed_images/x.png"
        keep3 = "see /mnt/data/temp_processed_images/"
        ''')
    result = repair(code, output_dir=OUT + "/")
    assert result.fixes == ["mapped /mnt/data/temp_processed_images/ to the output folder"]
    namespace = {}
    exec(result.code, namespace)
    assert namespace["out_dir"] == OUT + "/"
    assert namespace["made"] == OUT
    assert namespace["a"] == f"{OUT}/crop_2.png"
    assert namespace["b"] == f"{OUT}/b.png"
    assert namespace["c"] == f"{OUT}/c.png"
    assert namespace["d"] == f"{OUT}/d.png"
    assert namespace["e"] == f"{OUT}/e.png"
    assert namespace["keep1"] == "/mnt/data/temp_processed_images_v2/x.png"
    assert namespace["keep2"] == b"/mnt/data/temp_processed_images/x.png"
    assert namespace["keep3"] == "see /mnt/data/temp_processed_images/"
    assert len(result.code.splitlines()) == len(code.splitlines())


def test_output_dir_with_quotes_is_refused_by_the_caller_contract():
    with pytest.raises(ValueError, match="quote"):
        repair_code("print(1)", output_dir="/tmp/it's")


# --- crop clamping ---------------------------------------------------------------------------------------

LOAD = "img = cv2.imread(image_path)\n"
USE = "\npatch = img[{1}:{3}, {0}:{2}]"


def _use(names):
    return USE.format(*names.split(", "))


@pytest.mark.parametrize("code, expected, fix", [
    (LOAD + "bbox = (-10, 5, 3000, 900)", LOAD + "bbox = (0, 5, 2048, 900)",
     "clamped box `bbox` (-10, 5, 3000, 900) -> (0, 5, 2048, 900)"),
    (LOAD + "crop_box = [100, -1, 200, 1600]", LOAD + "crop_box = [100, 0, 200, 1536]",
     "clamped box `crop_box` (100, -1, 200, 1600) -> (100, 0, 200, 1536)"),
    (LOAD + "COORDS = (-5, -5, 10, 10)", LOAD + "COORDS = (0, 0, 10, 10)",
     "clamped box `COORDS` (-5, -5, 10, 10) -> (0, 0, 10, 10)"),
    (LOAD + "region_crop: tuple = (0, 0, 9999, 20)", LOAD + "region_crop: tuple = (0, 0, 2048, 20)",
     "clamped box `region_crop` (0, 0, 9999, 20) -> (0, 0, 2048, 20)"),
    (LOAD + "box = (10.5, -3.0, 3000.0, 40.25)", LOAD + "box = (10.5, 0.0, 2048.0, 40.25)",
     "clamped box `box` (10.5, -3.0, 3000.0, 40.25) -> (10.5, 0.0, 2048.0, 40.25)"),
    (LOAD + "boxes = [(0, 0, 10, 10), (-4, 0, 10, 10)]", LOAD + "boxes = [(0, 0, 10, 10), (0, 0, 10, 10)]",
     "clamped box `boxes[1]` (-4, 0, 10, 10) -> (0, 0, 10, 10)"),
    ("x1, y1, x2, y2 = 10, -5, 5000, 300" + _use("x1, y1, x2, y2"),
     "x1, y1, x2, y2 = 10, 0, 2048, 300" + _use("x1, y1, x2, y2"),
     "clamped box `x1, y1, x2, y2` (10, -5, 5000, 300) -> (10, 0, 2048, 300)"),
    ("left, top, right, bottom = -1, -2, 3000, 2000\nc = im.crop((left, top, right, bottom))",
     "left, top, right, bottom = 0, 0, 2048, 1536\nc = im.crop((left, top, right, bottom))",
     "clamped box `left, top, right, bottom` (-1, -2, 3000, 2000) -> (0, 0, 2048, 1536)"),
    ("(x_min, y_min, x_max, y_max) = [-3, 4, 7, 8]" + _use("x_min, y_min, x_max, y_max"),
     "(x_min, y_min, x_max, y_max) = [0, 4, 7, 8]" + _use("x_min, y_min, x_max, y_max"),
     "clamped box `x_min, y_min, x_max, y_max` (-3, 4, 7, 8) -> (0, 4, 7, 8)"),
    ("left = -5\ntop = 0\nright = 3000\nbottom = 900" + _use("left, top, right, bottom"),
     "left = 0\ntop = 0\nright = 2048\nbottom = 900" + _use("left, top, right, bottom"),
     "clamped box `left, top, right, bottom` (-5, 0, 3000, 900) -> (0, 0, 2048, 900)"),
    ("crop_x1 = 10\ncrop_y1 = -3\ncrop_x2 = 99999\ncrop_y2 = 20" + _use("crop_x1, crop_y1, crop_x2, crop_y2"),
     "crop_x1 = 10\ncrop_y1 = 0\ncrop_x2 = 2048\ncrop_y2 = 20" + _use("crop_x1, crop_y1, crop_x2, crop_y2"),
     "clamped box `crop_x1, crop_y1, crop_x2, crop_y2` (10, -3, 99999, 20) -> (10, 0, 2048, 20)"),
    ("img = cv2.imread(image_path)\npatch = img[100:5000, -20:300]",
     "img = cv2.imread(image_path)\npatch = img[100:1536, 0:300]",
     "clamped slice `img[100:5000, -20:300]` -> `img[100:1536, 0:300]`"),
    ("im = Image.open(image_path)\nc = im.crop((-5, 0, 99999, 10))",
     "im = Image.open(image_path)\nc = im.crop((0, 0, 2048, 10))",
     "clamped box `.crop(...)` (-5, 0, 99999, 10) -> (0, 0, 2048, 10)"),
    ("c = Image.open(image_path).convert('RGB').crop(box=[0, -9, 10, 10])",
     "c = Image.open(image_path).convert('RGB').crop(box=[0, 0, 10, 10])",
     "clamped box `.crop(...)` (0, -9, 10, 10) -> (0, 0, 10, 10)"),
    (LOAD + 's = "ü"; bbox = (-1, 0, 5, 5)  # é', LOAD + 's = "ü"; bbox = (0, 0, 5, 5)  # é',
     "clamped box `bbox` (-1, 0, 5, 5) -> (0, 0, 5, 5)"),
])
def test_clamp_forms(code, expected, fix):
    result = repair(code, image_size=SIZE)
    assert result.error is None
    assert result.code == expected
    assert result.fixes == [fix]


@pytest.mark.parametrize("code", [
    "bbox = (10, 10, 12, 11)",                 # tiny but valid: never enlarged to a minimum size
    "bbox = (0, 0, 2048, 1536)",              # the whole image
    "bbox = (0.1, 0.2, 0.9, 0.8)",            # normalised
    "bbox = (100, 200, 50, 60)",              # not corners as written (x, y, w, h?)
    "x, y, w, h = -5, 0, 100, 100",           # not corner names
    "box_color = (0, 0, 3000, 3000)",         # a colour, not a box
    "bbox = (x0, 5, 3000, 900)",              # not all literals
    "box = (1, 2, 3)",                        # not four values
    "patch = other[100:5000, 0:300]",         # not an image loaded here (maybe resized earlier)
    "img = cv2.imread(image_path)\nb = img[-100:, :]\nc = img[-100:-10, 5:90]",  # numpy from-the-end
    "img = cv2.imread(image_path)\nimg = cv2.resize(img, None, fx=4, fy=4)\np = img[3000:5000, 0:10]",
    "small = Image.open(image_path).resize((4000, 4000))\nc = small.crop((0, 0, 3500, 3500))",
    "img = Image.open(image_path)\nimg = img.rotate(90, expand=True)\nbbox = (0, 0, 3000, 3000)",
    "canvas = np.zeros((3000, 3000, 3))\nbbox = (2100, 10, 2300, 50)",  # a new canvas, not the input
])
def test_clamp_leaves_alone(code):
    result = repair(code, image_size=SIZE)
    assert result.error is None
    assert result.code == code and result.fixes == []


@pytest.mark.parametrize("code", [
    # Pure computation: corner-like numbers that are not a crop.
    "coords = (-3, -2, 5, 4)\nprint(math.dist(coords[:2], coords[2:]))",
    "x1, y1, x2, y2 = -3, -2, 5000, 4\nlength = math.hypot(x2 - x1, y2 - y1)",
    "x1 = -3\ny1 = -2\nx2 = 5000\ny2 = 4\nslope = (y2 - y1) / (x2 - x1)",
])
def test_numbers_that_are_not_a_crop_are_left_alone(code):
    result = repair(code, image_size=SIZE)
    assert result.code == code and result.fixes == []


def test_no_clamping_without_an_image_size():
    code = "bbox = (-10, 5, 3000, 900)"
    assert repair(code).code == code


def test_clamped_box_is_not_enlarged():
    result = repair(LOAD + "bbox = (2040, 10, 3000, 12)", image_size=SIZE)
    assert result.code == LOAD + "bbox = (2040, 10, 2048, 12)"  # 8x2 px: kept, no 64 px minimum


@pytest.mark.parametrize("code, error", [
    (LOAD + "bbox = (2100, 10, 2300, 50)",
     "crop box `bbox` (2100, 10, 2300, 50) lies outside the 2048x1536 image after clamping; "
     "use 0 <= x < 2048, 0 <= y < 1536"),
    ("x1, y1, x2, y2 = -50, 0, -10, 100" + _use("x1, y1, x2, y2"),
     "crop box `x1, y1, x2, y2` (-50, 0, -10, 100) lies outside the 2048x1536 image after clamping; "
     "use 0 <= x < 2048, 0 <= y < 1536"),
    ("img = cv2.imread(image_path)\np = img[2000:2100, 0:10]",
     "slice `img[2000:2100, 0:10]` selects no rows of the 2048x1536 image (y runs from 0 to 1535); "
     "use 0 <= x < 2048, 0 <= y < 1536"),
    ("im = Image.open(image_path)\nc = im.crop((10, 1600, 20, 1700))",
     "crop box `.crop(...)` (10, 1600, 20, 1700) lies outside the 2048x1536 image after clamping; "
     "use 0 <= x < 2048, 0 <= y < 1536"),
])
def test_box_empty_after_clamping_is_an_error(code, error):
    result = repair(code, image_size=SIZE)
    assert result.error == error
    assert result.code == code and result.fixes == []


# --- meaning preserved: exec on a real image -----------------------------------------------------------------

def test_clamped_numpy_crop_equals_the_in_bounds_crop(image_file):
    path, pixels = image_file
    code = textwrap.dedent("""\
        img = cv2.imread(image_path)
        bbox = (-10, 5, 300, 40)
        x1, y1, x2, y2 = bbox
        crop = img[y1:y2, x1:x2]
        """)
    result = repair(code, image_size=(64, 48), image_path=path)
    assert result.fixes == ["clamped box `bbox` (-10, 5, 300, 40) -> (0, 5, 64, 40)"]
    assert np.array_equal(run(result.code, path)["crop"], pixels[5:40, 0:64])
    # Unrepaired, numpy reads -10 from the end: the last 10 columns, not the box the model meant.
    assert np.array_equal(run(code, path)["crop"], pixels[5:40, 54:64])


def test_clamped_pil_crop_has_no_black_padding(image_file):
    path, pixels = image_file
    code = "im = Image.open(image_path)\npatch = np.array(im.crop((-8, 40, 70, 60)))\n"
    result = repair(code, image_size=(64, 48))
    patch = run(result.code, path)["patch"]
    assert patch.shape == (8, 64, 3)
    assert np.array_equal(patch, pixels[40:48, :, ::-1])  # PIL is RGB, the file was written BGR


def test_repair_without_changes_runs_identically(image_file):
    path, _ = image_file
    body = textwrap.dedent("""\
        img = cv.imread(image_path)
        h, w = img.shape[:2]
        bbox = (4, 4, 40, 30)
        patch = img[bbox[1]:bbox[3], bbox[0]:bbox[2]]
        big = cv.resize(patch, None, fx=2, fy=2, interpolation=cv.INTER_CUBIC)
        means = [float(c) for c in cv.mean(big)[:3]]
        """)
    model_text = "<code>\n```python\n" + textwrap.indent(body, "    ") + "```\n</code>"
    result = repair(model_text, image_size=(64, 48), image_path=path)
    assert result.fixes == ["extracted code from <code> block", "removed ```python fence", "dedented",
                            "renamed cv -> cv2"]
    got = run(result.code, path)
    reference = run(body.replace("cv.", "cv2."), path)
    assert np.array_equal(got["big"], reference["big"]) and got["means"] == reference["means"]


def test_released_thyme_style_code_runs_here(image_file, tmp_path):
    path, pixels = image_file
    code = textwrap.dedent("""\
        ```python
        import cv2
        import os
        image_path = "/mnt/data/user_uploads/photo_4711.jpg"
        image = cv2.imread(image_path)
        x1, y1, x2, y2 = -12, 8, 200, 30
        cropped = image[y1:y2, x1:x2]
        zoomed = cv2.resize(cropped, None, fx=2, fy=2)
        os.makedirs("/mnt/data/temp_processed_images/", exist_ok=True)
        processed_path = os.path.join("/mnt/data/temp_processed_images/", "zoom_1.png")
        cv2.imwrite(processed_path, zoomed)
        print(processed_path)
        ```""")
    result = repair(code, image_size=(64, 48), image_path=path, output_dir=str(tmp_path / "out"))
    assert result.error is None
    assert result.fixes == [
        "removed ```python fence",
        "pointed image_path at the input image",
        "mapped /mnt/data/temp_processed_images/ to the output folder",
        "clamped box `x1, y1, x2, y2` (-12, 8, 200, 30) -> (0, 8, 64, 30)",
    ]
    namespace = run(result.code, "unused")
    written = cv2.imread(namespace["processed_path"])
    assert namespace["processed_path"] == str(tmp_path / "out" / "zoom_1.png")
    assert np.array_equal(written, cv2.resize(pixels[8:30, 0:64], None, fx=2, fy=2))


# --- robustness and speed --------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "(" * 500 + ")" * 500,
    "x = 1 +",
    "<code>",
    "</code>",
    "```",
    "\ufeffprint(1)",
    "def f(:\n",
    "lambda: (yield)",
    "match x:\n    case [a, b]:\n        pass\n",
    "bbox = (1e400, 0, -1e400, 5)",
    "bbox = (True, 0, 5, 5)",
    "img = cv2.imread(p)\nz = img[::2, 5:1e9]",
])
def test_odd_input_never_crashes(text):
    result = repair_code(text, image_size=SIZE, image_path="/in.png", output_dir=OUT)
    assert isinstance(result, RepairResult)
    assert result.error is None or isinstance(result.error, str)


def test_typical_snippet_gets_every_fix():
    code = textwrap.dedent("""\
        <code>
        ```python
        import cv2
        import os
        image_path = "/mnt/data/images/img_001.jpg"
        img = cv.imread(image_path)
        h, w = img.shape[:2]
        bbox = (-10, 5, 3000, 900)
        x1, y1, x2, y2 = bbox
        crop = img[y1:y2, x1:x2]
        crop = cv2.resize(crop, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
        gray = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
        enhanced = cv2.equalizeHist(gray)
        os.makedirs("/mnt/data/temp_processed_images/", exist_ok=True)
        processed_path = f"/mnt/data/temp_processed_images/crop_{w}.png"
        cv2.imwrite(processed_path, enhanced)
        print(processed_path)
        ```
        </code>""")
    result = repair_code(code, image_size=SIZE, image_path="/in.png", output_dir=OUT)
    assert result.error is None
    assert result.fixes == [
        "extracted code from <code> block",
        "removed ```python fence",
        "renamed cv -> cv2",
        "pointed image_path at the input image",
        "mapped /mnt/data/temp_processed_images/ to the output folder",
        "clamped box `bbox` (-10, 5, 3000, 900) -> (0, 5, 2048, 900)",
    ]


@pytest.mark.parametrize("code", [
    # Iterative zoom: round 2 loads round 1's output; its boxes are in the zoomed image's pixels.
    "image_path = '/mnt/data/temp_processed_images/zoom_1.png'\nimg = Image.open(image_path)\n"
    "bbox = (1500, 1000, 3000, 2000)\nc = img.crop(bbox)",
    "img = cv2.imread(processed_path)\nx1, y1, x2, y2 = 2500, 0, 3000, 100\np = img[y1:y2, x1:x2]",
    f"img = cv2.imread('{OUT}/zoom_1.png')\np = img[2000:2100, 0:10]",
    "img = cv2.imread(f'/mnt/data/temp_processed_images/zoom_{1}.png')\nbbox = (2100, 10, 2300, 50)",
])
def test_boxes_on_an_earlier_output_are_not_clamped_to_the_input(code):
    result = repair(code, image_size=SIZE, output_dir=OUT)
    assert result.error is None
    assert "clamped" not in " ".join(result.fixes)


def test_line_numbers_count_from_the_first_line_after_the_code_tag():
    result = repair("<code>\nx = 1\ny = (\n</code>")
    assert result.error == "SyntaxError: '(' was never closed (line 2)"


THYME_SNIPPETS = [
    "import cv2\nimage = cv2.imread(image_path)\nx1, y1, x2, y2 = -12, 8, 3000, 900\n"
    "cropped = image[y1:y2, x1:x2]\nprocessed_path = '/mnt/data/temp_processed_images/c.png'\n"
    "cv2.imwrite(processed_path, cropped)\nprint(processed_path)\n",
    "from PIL import Image\nimg = Image.open(image_path)\nbbox = [10, -4, 9000, 40]\n"
    "zoom = img.crop(bbox).resize((400, 80))\nzoom.save(f'/mnt/data/temp_processed_images/z_{1}.png')\n",
    "<code>\n```python\n    img = cv.imread(image_path)\n    g = cv.cvtColor(img, cv.COLOR_BGR2GRAY)\n"
    "    print(g.mean())\n```\n</code>",
]


def test_mutated_snippets_never_crash_and_always_give_python_or_an_error():
    import random

    rng = random.Random(1234)
    for _ in range(400):
        text = rng.choice(THYME_SNIPPETS)
        for _ in range(rng.randint(1, 4)):
            i, j = sorted(rng.randrange(len(text) + 1) for _ in range(2))
            piece = rng.choice(["", "(", ")", "\n    ", "-", "```", "<code>", "</code>", "\t", "9999",
                                "bbox = (", "img[", ":", ",", "'", "é"])
            text = text[:i] + piece + text[j:]
        result = repair(text, image_size=SIZE, image_path="/in.png", output_dir=OUT)
        assert (result.error is None) or (result.code == text and result.fixes == [])


def test_image_paths_list_pointed_at_the_inputs_in_order():
    code = "image_paths = ['/mnt/data/a.jpg', '/in/2.png', '/mnt/data/c.jpg']\n"
    result = repair(code, image_path="/in/1.png", image_paths=["/in/1.png", "/in/2.png", "/in/3.png"])
    assert result.code == "image_paths = ['/in/1.png', '/in/2.png', '/in/3.png']\n"
    assert result.fixes == ["pointed image_paths at the input images"]
    # A list of another length is not a list of the inputs: left alone.
    code = "image_paths = ['/mnt/data/a.jpg']\n"
    assert repair(code, image_path="/in/1.png", image_paths=["/in/1.png", "/in/2.png"]).code == code


def test_image_path_under_the_reference_folder_naming_no_output_is_the_input():
    """The released SFT data stored rotated inputs under /mnt/data/temp_processed_images/: an
    `image_path` literal there that names no file the episode wrote is the input, not an output."""
    code = "image_path = '/mnt/data/temp_processed_images/rotated_17.jpg'\nimg = cv2.imread(image_path)\n" \
           "bbox = (-5, 0, 5000, 90)\ncrop = img[0:90, 0:5000]\n" \
           "cv2.imwrite('/mnt/data/temp_processed_images/crop.png', crop)"
    written = set()
    result = repair(code, image_size=SIZE, image_path="/in/real.png", output_dir=OUT,
                    output_exists=written.__contains__)
    assert result.error is None
    assert "image_path = '/in/real.png'" in result.code
    assert f"cv2.imwrite('{OUT}/crop.png', crop)" in result.code  # outputs are still mapped
    assert "pointed image_path at the input image" in result.fixes
    assert any(f.startswith("clamped") for f in result.fixes)  # the boxes are the input's again
    # Once the episode has written that file, the same line loads the earlier output.
    written.add(f"{OUT}/rotated_17.jpg")
    again = repair(code, image_size=SIZE, image_path="/in/real.png", output_dir=OUT, output_exists=written.__contains__)
    assert f"image_path = '{OUT}/rotated_17.jpg'" in again.code
    assert "pointed image_path at the input image" not in again.fixes
    assert not any(f.startswith("clamped") for f in again.fixes)
