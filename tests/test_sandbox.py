"""The sandbox's behaviour for ordinary and broken code: state across rounds, presets, released-Thyme
code, output detection, errors with line numbers, bad inputs, time limits, the decode cache,
concurrency, recovery from a dead server, the isolation fallback, config validation and the CLI."""
from __future__ import annotations

import json
import re
import os
import struct
import subprocess
import sys
import threading
import time
import warnings
import zlib

import cv2
import numpy as np
import psutil
import pytest
from PIL import Image

from envs.sandbox import EpisodeClosedError, InputImageError, Sandbox, SandboxStartError, load_sandbox_config
from envs.sandbox import isolation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _png_header_only(path, width, height):
    """A PNG whose header claims width x height (a decompression bomb's first bytes)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("sandbox-images")
    rng = np.random.default_rng(0)
    photo = cv2.GaussianBlur((rng.random((300, 400, 3)) * 255).astype(np.uint8), (5, 5), 2)
    paths = {"jpg": str(root / "photo.jpg"), "png": str(root / "gray.png"), "corrupt": str(root / "corrupt.jpg"),
             "bomb": str(root / "bomb.png"), "truncated": str(root / "truncated.jpg"), "text": str(root / "note.txt")}
    cv2.imwrite(paths["jpg"], photo)
    Image.fromarray(photo[:, :, 0]).save(paths["png"])
    with open(paths["corrupt"], "wb") as f:
        f.write(os.urandom(4096))
    _png_header_only(paths["bomb"], 60000, 60000)
    with open(paths["jpg"], "rb") as f:
        data = f.read()
    with open(paths["truncated"], "wb") as f:
        f.write(data[: len(data) // 3])
    with open(paths["text"], "w") as f:
        f.write("not an image")
    return paths


@pytest.fixture(scope="module")
def sb():
    with Sandbox(timeout_s=5.0) as sandbox:
        yield sandbox


def test_state_persists_within_an_episode_and_never_across(sb, images):
    with sb.episode(images=[images["jpg"]]) as ep:
        assert ep.run("import statistics as st\ndef area(w, h):\n    return w * h\nx = 7").ok
        r = ep.run("print(area(x, 3), st.mean([1, 3]))")
        assert r.ok and r.stdout == "21 2\n"
    with sb.episode(images=[images["jpg"]]) as other:
        r = other.run("print(x)")
        assert not r.ok and "NameError" in r.error and "line 1" in r.error


def test_presets(sb, images):
    with sb.episode(images=[images["jpg"], images["png"]]) as ep:
        r = ep.run("print(os.path.basename(image_path), [os.path.basename(p) for p in image_paths])\n"
                   "print(image_width, image_height, image_size, os.getcwd() == output_dir)\n"
                   "print(cv2.__name__, np.__name__, Image.__name__, math.pi > 3)")
        assert r.ok, r
        assert r.stdout.splitlines() == ["photo.jpg ['photo.jpg', 'gray.png']", "400 300 (400, 300) True",
                                         "cv2 numpy PIL.Image True"]


def test_released_thyme_code_runs_unchanged(sb, images):
    """Released models load a training-set path and save under /mnt/data/temp_processed_images/."""
    round1 = """<code>
```python
import cv2
import os
image_path = "/mnt/data/datasets/hr_bench/images/000123.jpg"
img = cv2.imread(image_path)
x1, y1, x2, y2 = -20, 10, 250, 5000
crop = img[y1:y2, x1:x2] if x1 >= 0 else img[y1:y2, 0:x2]
os.makedirs("/mnt/data/temp_processed_images/", exist_ok=True)
processed_path = "/mnt/data/temp_processed_images/cropped_000123.png"
cv2.imwrite(processed_path, crop)
print(processed_path)
```
</code>"""
    with sb.episode(images=[images["jpg"]]) as ep:
        r = ep.run(round1)
        assert r.ok, r
        assert len(r.images) == 1 and r.images[0].startswith(ep.out_dir)
        assert cv2.imread(r.images[0]).shape[:2] == (290, 250)
        assert r.fixes, "the repairs (path mapping, clamping) are reported"
        r2 = ep.run("img2 = cv2.imread(processed_path)\nprint(img2.shape)\nbig = cv2.resize(img2, None, fx=2, fy=2)\n"
                    "processed_path = os.path.join('/mnt/data/temp_processed_images/', 'zoom.png')\n"
                    "cv2.imwrite(processed_path, big)")
        assert r2.ok, r2
        assert r2.stdout == "(290, 250, 3)\n"
        assert [os.path.basename(p) for p in r2.images] == ["002_zoom.png"]


def test_an_input_path_under_the_reference_output_folder_is_the_input(sb, images):
    """The released SFT data stored rotated inputs under /mnt/data/temp_processed_images/: such an
    image_path that names no file the episode wrote loads the input (it used to load as None); once
    the episode wrote that file, the same line loads it."""
    code = ("image_path = '/mnt/data/temp_processed_images/rotated_7.jpg'\nimg = cv2.imread(image_path)\n"
            "print(img.shape)")
    with sb.episode(images=[images["jpg"]]) as ep:
        r = ep.run(code)
        assert r.ok and r.stdout == "(300, 400, 3)\n", r
        assert "pointed image_path at the input image" in r.fixes
        assert ep.run("cv2.imwrite('rotated_7.jpg', cv2.imread(image_path)[:50, :60])").ok
        r = ep.run(code)
        assert r.ok and r.stdout == "(50, 60, 3)\n", r


def test_the_callers_image_path_reads_the_input(sb, images):
    """The prompt shows the caller's path; code that reads it directly gets the input."""
    with sb.episode(images=[images["jpg"]]) as ep:
        r = ep.run(f"a = cv2.imread({images['jpg']!r})\nb = Image.open({images['jpg']!r})\nprint(a.shape, b.size)")
        assert r.ok and r.stdout == "(300, 400, 3) (400, 300)\n", r


def test_output_detection(sb, images):
    with sb.episode(images=[images["jpg"]]) as ep:
        r = ep.run("img = cv2.imread(image_path)\n"
                   "cv2.imwrite('a.png', img[:50, :50])\n"                          # a new file, not mentioned
                   "Image.fromarray(img[:, :, ::-1]).save('b.jpg')\n"
                   "os.makedirs('sub', exist_ok=True)\ncv2.imwrite('sub/c.png', img)\n"
                   "open('notes.txt', 'w').write('not an image')\n"
                   "open('fake.png', 'w').write('not an image either')\n"
                   "data = open('a.png', 'rb').read()\nopen('truncated.png', 'wb').write(data[: len(data) // 2])\n"
                   "jpg = open('b.jpg', 'rb').read()\nopen('truncated.jpg', 'wb').write(jpg[: len(jpg) // 3])\n"
                   "processed_path = ['b.jpg', 'sub/c.png']\nprint('a.png')")
        assert r.ok, r
        names = sorted(os.path.basename(p).split("_", 1)[1] for p in r.images)
        assert names == ["a.png", "b.jpg", "c.png"]
        assert os.path.basename(r.images[0]).endswith("b.jpg")  # processed_path comes first
        again = ep.run("print('nothing new')")
        assert again.images == []


def test_failed_imwrite_is_an_error(sb, images):
    with sb.episode(images=[images["jpg"]]) as ep:  # the inputs' folder is read-only for the episode
        r = ep.run("img = cv2.imread(image_path)\nok = cv2.imwrite(os.path.dirname(image_path) + '/x.png', img)\n"
                   "print('unreached')")
        assert not r.ok and "cv2.imwrite could not write" in r.error and "line 2" in r.error
        assert "unreached" not in r.stdout


def test_saving_into_a_missing_folder_creates_it(sb, images):
    """Released models save to relative paths in folders they never made: the image is saved inside
    the work dir and returned (cv2.imwrite and PIL's save alike)."""
    with sb.episode(images=[images["jpg"]]) as ep:
        r = ep.run("img = cv2.imread(image_path)\ncv2.imwrite('results/crop.png', img[:40, :50])\n"
                   "Image.open(image_path).crop((0, 0, 30, 20)).save('pil/deeper/zoom.png')\nprint('saved')")
        assert r.ok and r.stdout == "saved\n", r
        assert sorted(os.path.basename(p).split("_", 1)[1] for p in r.images) == ["crop.png", "zoom.png"]
        assert os.path.isfile(os.path.join(ep.work_dir, "results", "crop.png"))
        sizes = sorted(Image.open(p).size for p in r.images)
        assert sizes == [(30, 20), (50, 40)]


def test_syntax_error_empty_and_oversized_code(sb, images):
    with sb.episode(images=[images["jpg"]]) as ep:
        r = ep.run("x = 1\ny = (2 +\nprint(x)")
        assert not r.ok and "SyntaxError" in r.error and re.search(r"line \d", r.error)
        r = ep.run("   \n\n")
        assert not r.ok and "empty code" in r.error
        r = ep.run("x = 1\n" * 20000)
        assert not r.ok and "limit is 65536 bytes" in r.error
        assert ep.run("<code>```python\nprint(3)\n```</code>").stdout == "3\n"


def test_bad_input_images_fail_at_episode_start(sb, images):
    with pytest.raises(InputImageError, match="does not exist"):
        sb.episode(images=["/nonexistent/image.jpg"])
    with pytest.raises(InputImageError, match="not a readable image"):
        sb.episode(images=[images["corrupt"]])
    with pytest.raises(InputImageError, match="not a readable image"):
        sb.episode(images=[images["text"]])
    with pytest.raises(InputImageError, match="decompression bomb"):
        sb.episode(images=[images["bomb"]])
    with pytest.raises(InputImageError, match="not a readable image"):
        sb.episode(images=[images["truncated"]])
    with sb.episode(images=[images["jpg"]]) as ep:  # the sandbox is fine afterwards
        assert ep.run("print(1)").ok


def test_timeout_is_reported_and_the_episode_goes_on(sb, images):
    with sb.episode(images=[images["jpg"]]) as ep:
        assert ep.run("kept = 1").ok
        started = time.monotonic()
        r = ep.run("while True:\n    pass", timeout_s=1.0)
        assert r.timed_out and not r.ok and "TimeoutError" in r.error and "1 s" in r.error
        assert time.monotonic() - started < 5
        r = ep.run("print('again')")
        assert r.ok and r.stdout == "again\n" and "timed out" in (r.error or "")


def test_output_is_capped_with_a_marker(sb):
    with sb.episode() as ep:
        r = ep.run("print('x' * 100000)")
        assert r.ok and len(r.stdout) < 17000 and "output truncated" in r.stdout


def test_decode_cache_is_shared_and_copied(sb, images):
    before = sb.stats()[0]
    expected = cv2.imread(images["png"])
    with sb.episode(images=[images["png"]]) as first, sb.episode(images=[images["png"]]) as second:
        assert first.images == second.images  # the same staged copy: one decode for both
        r = first.run("a = cv2.imread(image_path)\na[:] = 0\nb = cv2.imread(image_path)\n"
                      "print(int(b.sum()), b.shape, b.dtype)\nim = Image.open(image_path)\n"
                      "print(im.mode, im.size, im.format)\ng = cv2.imread(image_path, cv2.IMREAD_GRAYSCALE)\nprint(g.shape)")
        assert r.ok, r
        lines = r.stdout.splitlines()
        assert lines[0] == f"{int(expected.sum())} {expected.shape} uint8"
        assert lines[1] == "L (400, 300) PNG" and lines[2] == "(300, 400)"
        assert second.run("print(int(cv2.imread(image_path).sum()))").stdout.strip() == str(int(expected.sum()))
    after = sb.stats()[0]
    assert after["cache_hits"] >= before["cache_hits"] + 1
    assert not os.path.exists(first.images[0]), "the staged copy goes when no live episode uses it"


def test_concurrent_episodes_keep_their_own_state(sb, images):
    results = {}

    def worker(i):
        with sb.episode(images=[images["jpg"]]) as ep:
            ep.run(f"mine = {i}\nimport time\ntime.sleep(1.0)")
            results[i] = ep.run("print(mine)").stdout.strip()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: str(i) for i in range(6)}
    assert time.monotonic() - started < 4.5  # side by side: one after another would take over 6 s


def test_episode_processes_are_gone_when_it_ends(sb):
    ep = sb.episode()
    # Straight to the server (the scan would refuse os.fork): a detached grandchild that sleeps.
    reply = ep.server.request({"op": "run", "ep": ep.id, "timeout": 5, "code":
                               "import time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                               "        time.sleep(300)\n    os._exit(0)\ntime.sleep(0.3)\nprint('spawned')"}, timeout=20)
    assert reply["ok"], reply
    uid = ep.uid
    if uid is None:
        pytest.skip("per-episode uids need root")  # not a gap: the process-group kill is covered elsewhere
    assert any(p.info["uids"].real == uid for p in psutil.process_iter(["uids"]))
    ep.close()
    sb.wait_idle()  # the uid sweep has run; killed processes may need a moment to be reaped

    def left():
        return [p.pid for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == uid]
    deadline = time.monotonic() + 5
    while left() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left() == [], "a detached process outlived its episode"
    with pytest.raises(EpisodeClosedError):
        ep.run("print(1)")


def test_a_dead_server_is_restarted_and_the_episode_reported_failed(images):
    with Sandbox(timeout_s=5.0) as sandbox:
        ep = sandbox.episode(images=[images["jpg"]])
        assert ep.run("x = 1").ok
        old = sandbox.servers[0].proc.pid
        os.killpg(old, 9)  # the server dies (as if the kernel's OOM killer took it)
        time.sleep(0.2)
        r = ep.run("print('hello')")
        assert not r.ok and "restarted" in r.error
        assert sandbox.servers[0].proc.pid != old
        r = ep.run("print('hello')")  # the episode starts again on the new server
        assert r.ok and r.stdout == "hello\n" and "restarted" in r.error
        with sandbox.episode(images=[images["jpg"]]) as fresh:
            assert fresh.run("print(2)").stdout == "2\n"
        ep.close()


def test_isolation_modes(monkeypatch, tmp_path, images):
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on this PATH
    isolation.bwrap_problem.cache_clear()
    try:
        with pytest.raises(SandboxStartError, match="bubblewrap"):
            Sandbox(isolation="bwrap")
        import envs.sandbox.sandbox as sandbox_module
        monkeypatch.setattr(sandbox_module, "_warned_fallback", False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sandbox = Sandbox(isolation="auto", timeout_s=5.0)
        assert sandbox.isolation == "process"
        assert any("falling back to process-level isolation" in str(w.message) for w in caught)
    finally:
        isolation.bwrap_problem.cache_clear()
    canary = tmp_path / "canary.txt"
    canary.write_text("canary")
    with sandbox:  # process isolation alone still contains the code (own uid, limits, seccomp)
        with sandbox.episode(images=[images["jpg"]]) as ep:
            assert ep.run("print(image_size)").stdout == "(400, 300)\n"
            r = ep.server.request({"op": "run", "ep": ep.id, "timeout": 5,
                                   "code": f"open({str(canary)!r}, 'w').write('pwned')"}, timeout=20)
            assert not r["ok"] and "Permission denied" in r["error"]
    assert canary.read_text() == "canary"


def test_config_is_validated():
    cfg = load_sandbox_config(["timeout_s=3", "n_servers=2"])
    assert cfg.timeout_s == 3.0 and cfg.n_servers == 2
    with pytest.raises(ValueError, match="isolation must be one of"):
        load_sandbox_config({"isolation": "docker"})
    with pytest.raises(ValueError, match="timeout_s must be a positive number"):
        load_sandbox_config({"timeout_s": 0})
    with pytest.raises(Exception, match="bogus"):
        load_sandbox_config({"bogus": 1})


def test_hydra_compose_gives_the_same_config():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=os.path.join(REPO, "conf", "sandbox"), version_base=None):
        node = compose(config_name="default", overrides=["timeout_s=4"])
    from omegaconf import OmegaConf

    from envs.sandbox.config import config_from_dict
    cfg = config_from_dict(OmegaConf.to_container(node))
    assert cfg.timeout_s == 4 and cfg.isolation == "auto"


def test_cli(tmp_path, images):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("x = 3\nprint(x * 2, image_size)")
    b.write_text("print(x + 1)\nraise ValueError('bad')")
    cmd = [sys.executable, "-m", "envs.sandbox", "--image", images["jpg"], "--timeout", "5"]
    done = subprocess.run(cmd + [str(a), str(b)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["file"] for r in rows] == [str(a), str(b)]
    assert rows[0]["ok"] and rows[0]["stdout"] == "6 (400, 300)\n"
    assert not rows[1]["ok"] and "NameError" in rows[1]["error"]  # separate episodes
    assert set(rows[0]) == {"ok", "stdout", "error", "images", "timed_out", "fixes", "duration_s", "file"}
    done = subprocess.run(cmd + ["--same-episode", str(a), str(b)], capture_output=True, text=True, cwd=REPO, timeout=120)
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 0 and rows[1]["stdout"] == "4\n" and "ValueError: bad" in rows[1]["error"]
    # The output images it prints outlive the command (the sandbox's own folders do not).
    c = tmp_path / "c.py"
    c.write_text("cv2.imwrite('crop.png', cv2.imread(image_path)[:20, :30])\nprint('crop.png')")
    kept = tmp_path / "kept"
    for extra in ([], ["--outputs", str(kept)]):
        done = subprocess.run(cmd + extra + [str(c), str(c)], capture_output=True, text=True, cwd=REPO, timeout=120)
        rows = [json.loads(line) for line in done.stdout.splitlines()]
        images = [p for r in rows for p in r["images"]]
        assert len(images) == 2 and len(set(images)) == 2, rows
        assert all(cv2.imread(p).shape == (20, 30, 3) for p in images)
        folder = os.path.dirname(images[0])
        assert f"output images are kept in {folder}" in done.stderr
        assert folder == str(kept) if extra else os.path.basename(folder).startswith("thyme-sandbox-outputs-")
    bad = subprocess.run([sys.executable, "-m", "envs.sandbox", "--timeout", "x", str(a)], capture_output=True,
                         text=True, cwd=REPO, timeout=60)
    assert bad.returncode == 2 and "--timeout" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "envs.sandbox", str(tmp_path / "missing.py")], capture_output=True,
                         text=True, cwd=REPO, timeout=60)
    assert bad.returncode == 2 and "does not exist" in bad.stderr


def test_disk_quota_removes_the_episode_files():
    with Sandbox(max_episode_disk_mb=5, max_episode_files=50, timeout_s=5.0) as sandbox:
        with sandbox.episode() as ep:
            r = ep.run("keep = 1\nopen('a.bin', 'wb').write(b'x' * (8 * 2**20))\nprint('wrote')")
            assert not r.ok and r.stdout == "wrote\n" and "DiskQuotaError" in r.error and "5 MB" in r.error
            r = ep.run("print(os.listdir('.'), 'keep' in globals())")
            assert r.stdout == "[] False\n" and "disk quota" in r.error
            r = ep.run("for i in range(60):\n    open('f%d.txt' % i, 'w').write('x')")
            assert not r.ok and "more than 50 files" in r.error
            assert ep.run("print(len(os.listdir('.')))").stdout == "0\n"


def test_a_thread_forging_replies_between_runs_is_stopped(sb):
    with sb.episode() as ep:
        code = ("import threading, time, struct, json\n"
                "def chatter():\n    time.sleep(0.3)\n    for fd in range(3, 64):\n        try:\n"
                "            body = json.dumps(dict(ok=True, stdout='forged')).encode()\n"
                "            os.write(fd, struct.pack('>I', len(body)) + body)\n        except OSError:\n            pass\n"
                "threading.Thread(target=chatter, daemon=True).start()\nsecret = 1")
        reply = ep.server.request({"op": "run", "ep": ep.id, "code": code, "timeout": 5}, timeout=20)  # no scan
        assert reply["ok"], reply
        time.sleep(1.0)
        r = ep.run("print('real')")
        assert r.stdout == "real\n" and "variables from earlier runs were lost" in r.error
        assert "forged" not in r.stdout


def test_many_concurrent_episodes_with_hostile_code_mixed_in(sb, images):
    """Threads running ordinary and hostile code side by side: every run gets an answer, ordinary
    code gets the right one, and the servers survive."""
    codes = ["print(1+1)", "while True:\n    pass", "x = bytearray(8 * 1024**3)", "exit()",
             "img = cv2.imread(image_path)\ncv2.imwrite('o.png', img[:10, :10])\nprint('o.png')", "raise ValueError('v')"]
    problems, answered = [], []

    def worker(k):
        try:
            for e in range(2):
                with sb.episode(images=[images["jpg"]]) as ep:
                    for i in range(3):
                        code = codes[(k + e + i) % len(codes)]
                        r = ep.run(code, timeout_s=1.0)
                        answered.append(r)
                        if code == "print(1+1)" and r.stdout != "2\n":
                            problems.append(r)
                        if code.startswith("img") and len(r.images) != 1:
                            problems.append(r)
        except Exception as exc:  # noqa: BLE001
            problems.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not problems, problems[:3]
    assert len(answered) == 48 and any(r.timed_out for r in answered)
    assert all(s.alive() for s in sb.servers)
