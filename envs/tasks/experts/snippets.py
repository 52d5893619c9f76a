"""Code the experts write, in two styles (OpenCV and PIL). Each function returns source text that
runs in the sandbox with `image_path` preset; comments vary a little, as people's code does."""
from __future__ import annotations


def crop_cv2(box, zoom: float, out: str, *, load: str = "", reuse: bool = False, show_print: bool = True,
             comment: str = "crop the region of interest with a margin") -> str:
    x1, y1, x2, y2 = box
    lines = [load.rstrip("\n")] if load else []
    if not reuse:
        lines.append("image = cv2.imread(image_path)")
    lines += [
        f"# {comment}",
        f"x1, y1, x2, y2 = {x1}, {y1}, {x2}, {y2}",
        "region = image[y1:y2, x1:x2]",
    ]
    if zoom == 1:
        lines.append("zoomed = region")
    else:
        interp = "cv2.INTER_CUBIC" if zoom > 1 else "cv2.INTER_AREA"
        lines.append(f"zoomed = cv2.resize(region, None, fx={zoom}, fy={zoom}, interpolation={interp})")
    lines += [f'processed_path = "{out}"', "cv2.imwrite(processed_path, zoomed)"]
    if show_print:
        lines.append("print(processed_path)")
    return "\n".join(line for line in lines if line)


def crop_pil(box, zoom: float, out: str, *, load: str = "", reuse: bool = False, show_print: bool = True,
             comment: str = "crop the region of interest with a margin") -> str:
    x1, y1, x2, y2 = box
    lines = [load.rstrip("\n")] if load else []
    if not reuse:
        lines.append("img = Image.open(image_path).convert('RGB')")
    lines += [
        f"# {comment}",
        f"crop_box = ({x1}, {y1}, {x2}, {y2})",
        "region = img.crop(crop_box)",
    ]
    if zoom != 1:
        lines.append(f"region = region.resize((round(region.width * {zoom}), round(region.height * {zoom})), Image.LANCZOS)")
    lines += [f'processed_path = "{out}"', "region.save(processed_path)"]
    if show_print:
        lines.append("print(processed_path)")
    return "\n".join(line for line in lines if line)


def rotate_right_angle_cv2(angle: int, out: str, *, load: str = "") -> str:
    # The content was turned `angle` degrees counter-clockwise; turning clockwise by the same undoes it.
    flag = {90: "cv2.ROTATE_90_CLOCKWISE", 180: "cv2.ROTATE_180", 270: "cv2.ROTATE_90_COUNTERCLOCKWISE"}[angle]
    return "\n".join(line for line in [
        load.rstrip("\n"),
        "image = cv2.imread(image_path)",
        f"upright = cv2.rotate(image, {flag})",
        f'processed_path = "{out}"',
        "cv2.imwrite(processed_path, upright)",
        "print(processed_path)",
    ] if line)


def rotate_pil(angle: float, out: str, *, load: str = "") -> str:
    # PIL turns counter-clockwise for positive angles, so the correction is the negative angle.
    return "\n".join(line for line in [
        load.rstrip("\n"),
        "img = Image.open(image_path).convert('RGB')",
        "corner = img.getpixel((0, 0))  # fill the new corners with the background colour",
        f"upright = img.rotate({-angle}, resample=Image.BICUBIC, expand=True, fillcolor=corner)",
        f'processed_path = "{out}"',
        "upright.save(processed_path)",
        "print(processed_path)",
    ] if line)


def rotate_cv2_affine(angle: float, out: str, *, load: str = "") -> str:
    return "\n".join(line for line in [
        load.rstrip("\n"),
        "image = cv2.imread(image_path)",
        "h, w = image.shape[:2]",
        f"M = cv2.getRotationMatrix2D((w / 2, h / 2), {-angle}, 1.0)",
        "# enlarge the canvas so no corner of the rotated picture is cut off",
        "cos, sin = abs(M[0, 0]), abs(M[0, 1])",
        "new_w, new_h = int(round(h * sin + w * cos)), int(round(h * cos + w * sin))",
        "M[0, 2] += new_w / 2 - w / 2",
        "M[1, 2] += new_h / 2 - h / 2",
        "fill = tuple(int(v) for v in image[0, 0])",
        "upright = cv2.warpAffine(image, M, (new_w, new_h), flags=cv2.INTER_CUBIC, borderValue=fill)",
        f'processed_path = "{out}"',
        "cv2.imwrite(processed_path, upright)",
        "print(processed_path)",
    ] if line)


def contrast_pil(factor: float, out: str, *, load: str = "") -> str:
    return "\n".join(line for line in [
        load.rstrip("\n"),
        "from PIL import ImageEnhance",
        "img = Image.open(image_path).convert('L')",
        f"enhanced = ImageEnhance.Contrast(img).enhance({factor})",
        f'processed_path = "{out}"',
        "enhanced.save(processed_path)",
        "print(processed_path)",
    ] if line)


def contrast_cv2(factor: float, out: str, *, load: str = "") -> str:
    return "\n".join(line for line in [
        load.rstrip("\n"),
        "gray = cv2.imread(image_path, cv2.IMREAD_GRAYSCALE)",
        "background = float(np.median(gray))",
        f"alpha = {factor}",
        "# stretch around the background level so the faint strokes move far away from it",
        "enhanced = cv2.convertScaleAbs(gray, alpha=alpha, beta=128 - alpha * background)",
        f'processed_path = "{out}"',
        "cv2.imwrite(processed_path, enhanced)",
        "print(processed_path)",
    ] if line)


def contrast_numpy(factor: float, out: str, *, load: str = "") -> str:
    return "\n".join(line for line in [
        load.rstrip("\n"),
        "gray = np.asarray(Image.open(image_path).convert('L'), dtype=np.float32)",
        "background = np.median(gray)",
        f"stretched = np.clip((gray - background) * {factor} + 128, 0, 255).astype(np.uint8)",
        f'processed_path = "{out}"',
        "Image.fromarray(stretched).save(processed_path)",
        "print(processed_path)",
    ] if line)


# ---- measuring instead of looking (direct questions, envs.tasks config direct.measure_share) ----------
# Everything that differs from the background (the corner pixel) by more than this sum of channel
# differences is part of a shape; the shapes are saturated colours on a near-white background.
SHAPE_MASK = "mask = (np.abs(img.astype(int) - img[0, 0].astype(int)).sum(axis=2) > 60).astype(np.uint8)"


def centre_colour(palette: dict[str, tuple[int, int, int]], *, load: str = "") -> str:
    """Read the centre pixel and print the nearest named colour (so the answer is a word to copy)."""
    return "\n".join(line for line in [
        load.rstrip("\n"),
        "img = Image.open(image_path).convert('RGB')",
        "# the circle sits in the middle: read the pixel there and name the nearest colour",
        "pixel = img.getpixel((img.width // 2, img.height // 2))",
        f"palette = {palette}",
        "print(min(palette, key=lambda name: sum((a - b) ** 2 for a, b in zip(palette[name], pixel))))",
    ] if line)


def _shape_mask(load: str) -> list[str]:
    return [load.rstrip("\n"), "img = cv2.imread(image_path)", SHAPE_MASK]


def count_blobs(*, load: str = "") -> str:
    return "\n".join(line for line in [
        *_shape_mask(load),
        "n, _ = cv2.connectedComponents(mask)",
        "print(n - 1)  # component 0 is the background",
    ] if line)


def fill_ratio(*, load: str = "") -> str:
    """Name the shape from the share of its bounding box it fills: square 1.0, circle 0.79, triangle 0.5."""
    return "\n".join(line for line in [
        *_shape_mask(load),
        "ys, xs = np.nonzero(mask)",
        "fill = mask.sum() / ((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))",
        'print("square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle")',
    ] if line)
