"""`--dataset folder`: the user's own images, one sub-folder per class, through train, eval, export,
predict and serve; and every kind of bad folder as one line, exit 2. Real images: MNIST test digits
and CIFAR-10 test records written as PNG/JPEG/BMP/WebP files, some RGB, some of odd sizes."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convzoo.data import formats

from conftest import CIFAR_DIR, need, run_cli
from test_deploy import mnist_test, png_bytes, serving

pytestmark = pytest.mark.real_data

N_DIGITS = 2000


def write_digits(root: Path, count: int) -> list[tuple[Path, int]]:
    """`count` real MNIST test digits as files under root/<digit>/: mostly grey PNG, some RGB, some
    JPEG, some resized to 40x37, some with upper-case extensions; plus files to be skipped."""
    images, labels = mnist_test(count)
    written = []
    for i, (image, label) in enumerate(zip(images[:, 0], labels)):
        img = Image.fromarray(image)
        if i % 5 == 1:
            img = img.convert("RGB")
        if i % 11 == 2:
            img = img.resize((40, 37), Image.Resampling.BILINEAR)
        suffix = {3: ".jpg", 4: ".PNG", 5: ".JPEG"}.get(i % 7, ".png")
        path = root / str(label) / f"{i:05d}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, format="JPEG" if "jp" in suffix.lower() else "PNG", quality=95)
        written.append((path, int(label)))
    (root / "3" / ".DS_Store").write_bytes(b"\0\1junk")  # hidden: skipped
    (root / "3" / "notes.txt").write_text("not an image")  # not an image extension: skipped
    return written


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("users") / "digits"
    return root, write_digits(root, N_DIGITS)


@pytest.fixture(scope="module")
def digits_run(digits, tmp_path_factory):
    """LeNet-5 trained 2 epochs on the digit folder (80/20 split, images decoded at 28x28 and padded)."""
    root, _ = digits
    work = tmp_path_factory.mktemp("run")
    env = {"CONVZOO_CACHE": str(work / "cache")}
    proc = run_cli("train", "--model", "lenet5", "--dataset", "folder", "--data-path", root, "--image-size", 28,
                   "--channels", 1, "--epochs", 2, "--batch-size", 32, "--optimizer", "adamw", "--lr", 0.003,
                   "--schedule", "onecycle", "--threads", 1, "--output-dir", work / "run", env=env, check=0)
    best = float(re.search(r"best test accuracy ([\d.]+)", proc.stdout)[1])
    return work, env, best, proc.stdout


def accuracy_line(stdout: str) -> float:
    return float(re.search(r"'Accuracy': ([\d.]+)", stdout)[1])


def test_train_on_folder_and_eval_reproduces(digits, digits_run):
    from convzoo.engine.checkpoint import load_checkpoint

    root, written = digits
    work, env, best, out = digits_run
    assert f"({int(N_DIGITS * 0.8)} train / {int(N_DIGITS * 0.2)} test)" in out, out
    assert best >= 0.85, out  # 10 classes: chance is 0.1
    ckpt = load_checkpoint(work / "run" / "best.pt")
    assert ckpt["dataset"] == "folder" and ckpt["class_names"] == [str(d) for d in range(10)]
    rule = {k: v for k, v in ckpt["data"].items() if k != "split"}
    assert rule == {"image_size": 28, "channels": 1, "test_split": 0.2, "seed": 0, "path": str(root)}
    assert ckpt["data"]["split"]["test_files"] == int(N_DIGITS * 0.2)  # and a sha256 of their paths
    assert ckpt["input"]["channels"] == 1 and ckpt["input"]["size"] == 32 and ckpt["input"]["fit"] == "pad"
    # mean/std are the training images' own (MNIST's are 0.1307 / 0.3081; the JPEGs and resizes shift them a bit)
    assert abs(ckpt["input"]["mean"][0] - 0.1307) < 0.02 and abs(ckpt["input"]["std"][0] - 0.3081) < 0.03
    # The checkpoint says where and how to read the folder: no --data-path, the same test split.
    assert accuracy_line(run_cli("eval", "--ckpt", work / "run" / "best.pt", env=env, check=0).stdout) == best


def test_export_predict_and_serve(digits, digits_run):
    import httpx

    root, written = digits
    work, env, best, _ = digits_run
    onnx_path = work / "model.onnx"
    run_cli("export", "--ckpt", work / "run" / "best.pt", "--output", onnx_path, env=env, check=0)
    assert accuracy_line(run_cli("eval", "--model", onnx_path, env=env, check=0).stdout) == pytest.approx(best,
                                                                                                         abs=0.005)
    # Users' own files straight from the folder (RGB, JPEG and 40x37 ones among them).
    sample = written[-60:]
    proc = run_cli("predict", "--model", onnx_path, "--json", *[p for p, _ in sample], env=env, check=0)
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["file"] for r in results] == [str(p) for p, _ in sample]
    assert np.mean([r["class"] == str(label) for r, (_, label) in zip(results, sample)]) >= 0.8
    # The test split again, from the ONNX file's metadata, and through a checkpoint's cached export.
    for model in (onnx_path, work / "run" / "best.pt"):
        proc = run_cli("predict", "--model", model, "--from-test", 25, "--grid", work / "grid.png", env=env, check=0)
        rows = re.findall(r"test\[\d+\]: (\S+) \([\d.]+\), true (\S+)", proc.stdout)
        assert len(rows) == 25 and sum(p == t for p, t in rows) >= 18 and len({t for _, t in rows}) >= 5, proc.stdout
    path, label = next((p, y) for p, y in reversed(written) if p.suffix == ".png")
    with serving(onnx_path, log=work / "serve.log") as (url, _):
        r = httpx.post(url + "/v1/predict", files={"file": ("d.png", path.read_bytes(), "image/png")}, timeout=60)
        assert r.status_code == 200 and r.json()["class"] == str(label), r.text


def write_cifar(root: Path, per_class: int = 60) -> None:
    """Three CIFAR-10 test classes as train/ + test/ folders of PNG, BMP and WebP files, some 50x45."""
    images, labels = formats.read_cifar_batch(need(CIFAR_DIR) / "cifar-10-batches-bin" / "test_batch.bin")
    names = {0: "airplane", 1: "automobile", 6: "frog"}
    for label, name in names.items():
        for i, index in enumerate(np.flatnonzero(labels == label)[:per_class]):
            img = Image.fromarray(images[index].transpose(1, 2, 0))
            if i % 4 == 1:
                img = img.resize((50, 45), Image.Resampling.BICUBIC)
            suffix = (".png", ".bmp", ".webp")[i % 3]
            path = root / ("test" if i % 3 == 0 else "train") / name / f"{index}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            img.save(path, lossless=True) if suffix == ".webp" else img.save(path)


def test_rgb_folder_with_train_and_test_folders(tmp_path):
    import torch

    from convzoo.data.catalog import FolderRule
    from convzoo.data.tensors import load_dataset
    from convzoo.engine.checkpoint import load_checkpoint

    write_cifar(tmp_path / "cifar")
    env = {"CONVZOO_CACHE": str(tmp_path / "cache")}
    proc = run_cli("train", "--model", "lenet5", "--dataset", "folder", "--data-path", tmp_path / "cifar",
                   "--channels", 3, "--epochs", 1, "--batch-size", 16, "--threads", 1, "--output-dir", tmp_path / "run",
                   env=env, check=0)
    assert "(120 train / 60 test)" in proc.stdout, proc.stdout
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["class_names"] == ["airplane", "automobile", "frog"]
    assert ckpt["input"]["channels"] == 3 and ckpt["data"]["channels"] == 3 and ckpt["data"]["image_size"] == 32
    train, test, located = load_dataset("folder", tmp_path / "cifar", folder=FolderRule(channels=3))
    assert train.images.shape == (120, 3, 32, 32) and train.images.dtype == torch.uint8 and len(test) == 60
    assert ckpt["input"]["mean"] == list(located.spec.mean) and ckpt["input"]["std"] == list(located.spec.std)
    # The 32x32 PNG/BMP/lossless-WebP files decode to exactly the CIFAR records they came from.
    records, _ = formats.read_cifar_batch(CIFAR_DIR / "cifar-10-batches-bin" / "test_batch.bin")
    _, files = formats.list_folder(tmp_path / "cifar", FolderRule(channels=3))
    exact = [i for i, (p, _) in enumerate(files["train"]) if Image.open(p).size == (32, 32)]
    assert len(exact) > 50
    for i in exact:
        assert np.array_equal(train.images[i].numpy(), records[int(files["train"][i][0].stem)])
    last = float(re.search(r"last test accuracy ([\d.]+)", proc.stdout)[1])
    assert accuracy_line(run_cli("eval", "--ckpt", tmp_path / "run" / "last.pt", env=env, check=0).stdout) == last
    one = next((tmp_path / "cifar" / "test" / "frog").iterdir())
    proc = run_cli("predict", "--model", tmp_path / "run" / "last.pt", "--json", one, env=env, check=0)
    assert json.loads(proc.stdout)["class"] in ckpt["class_names"]


# ---------------------------------------------------------------- bad folders: one line, exit 2


def cli(capsys, *args) -> tuple[int, str]:
    from convzoo.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def one_error(code: int, err: str, *fragments: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("convzoo: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def digit_png(index: int = 0) -> bytes:
    return png_bytes(mnist_test(index + 1)[0][index, 0])


def bad_folders(tmp: Path) -> dict[str, tuple[Path, list[str]]]:
    """name -> (folder, fragments its one error line must hold)."""
    cases = {}
    cases["missing"] = (tmp / "nowhere", [str(tmp / "nowhere"), "no such folder"])
    (tmp / "empty").mkdir()
    cases["empty"] = (tmp / "empty", [str(tmp / "empty"), "no class folders"])
    (tmp / "one" / "cat").mkdir(parents=True)
    (tmp / "one" / "cat" / "a.png").write_bytes(digit_png())
    cases["one class"] = (tmp / "one", [str(tmp / "one"), "only one class folder ('cat')"])
    for name in ("no images", "hidden and broken"):
        (tmp / name / "a").mkdir(parents=True)
        (tmp / name / "a" / "a.png").write_bytes(digit_png())
        (tmp / name / "b").mkdir()
    (tmp / "no images" / "b" / "readme.txt").write_text("hello")
    cases["no images"] = (tmp / "no images", [str(tmp / "no images" / "b"), "no image files"])
    # A hidden image, a broken link and a link loop count for nothing.
    (tmp / "hidden and broken" / "b" / ".x.png").write_bytes(digit_png())
    (tmp / "hidden and broken" / "b" / "link.png").symlink_to(tmp / "nowhere.png")
    (tmp / "hidden and broken" / "b" / "loop.png").symlink_to("loop.png")
    cases["hidden and broken"] = (tmp / "hidden and broken", [str(tmp / "hidden and broken" / "b"),
                                                                "no image files"])
    png = digit_png()
    for name, payload, message in (("corrupt", png[:50] + b"\xff" * 20 + png[70:], "corrupt or truncated image"),
                                   ("not an image", b"just text", "not an image"),
                                   ("truncated", png[:-30], "corrupt or truncated image")):
        for c in ("a", "b"):
            (tmp / name / c).mkdir(parents=True)
            for i in range(3):
                (tmp / name / c / f"{i}.png").write_bytes(digit_png(i))
        (tmp / name / "b" / "1.png").write_bytes(payload)
        cases[name] = (tmp / name, [str(tmp / name / "b" / "1.png"), message])
    for c in ("a", "b"):  # a class of one image trains; with every class so, nothing is left to test on
        (tmp / "single images" / c).mkdir(parents=True)
        (tmp / "single images" / c / "0.png").write_bytes(digit_png())
    cases["single images"] = (tmp / "single images", [str(tmp / "single images"), "no test images"])
    (tmp / "split" / "train" / "a").mkdir(parents=True)
    (tmp / "split" / "train" / "b").mkdir()
    (tmp / "split" / "test" / "c").mkdir(parents=True)
    for c in ("train/a", "train/b", "test/c"):
        (tmp / "split" / c / "0.png").write_bytes(digit_png())
    cases["unknown test class"] = (tmp / "split", [str(tmp / "split" / "test" / "c"), "train/ does not have"])
    return cases


def test_bad_folders_one_line_exit_2(tmp_path, capsys):
    for name, (folder, fragments) in bad_folders(tmp_path).items():
        code, err = cli(capsys, "train", "--dataset", "folder", "--data-path", folder, "--epochs", 1, "--threads", 1,
                        "--output-dir", tmp_path / "runs" / name)
        one_error(code, err, *fragments)
    code, err = cli(capsys, "train", "--dataset", "folder", "--output-dir", tmp_path / "runs" / "no path")
    one_error(code, err, "--dataset folder reads your own images: pass --data-path FOLDER")
    for flags, message in (
        (["--image-size", 4], "--image-size must be in 8..512, got 4"),
        (["--channels", 2], "--channels must be 1 or 3"),
        (["--test-split", 1.0], "--test-split must be in (0, 1)"),
    ):
        one_error(*cli(capsys, "train", "--dataset", "folder", "--data-path", tmp_path, *flags), message)


def test_fifos_devices_and_broken_links_are_skipped(tmp_path):
    """A FIFO named *.png (reading it would block), a link to a device and a broken link inside a class
    folder are skipped like hidden files: `data info` and `train` read only the six real images."""
    root = tmp_path / "fold"
    for i in range(6):
        (root / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        (root / "ab"[i % 2] / f"{i}.png").write_bytes(digit_png(i))
    os.mkfifo(root / "b" / "fifo.png")
    (root / "a" / "zero.png").symlink_to("/dev/zero")  # a link to a device: no regular file
    for odd in ("fifo", "broken link"):
        if odd == "broken link":
            (root / "a" / "dangling.png").symlink_to(root / "a" / "nowhere.png")
        info = json.loads(run_cli("data", "info", "folder", "--data-path", root, "--json", timeout=60, check=0).stdout)
        assert info["counts"] == {"train": 4, "test": 2}
    proc = run_cli("train", "--model", "lenet5", "--dataset", "folder", "--data-path", root, "--epochs", 1,
                   "--batch-size", 2, "--threads", 1, "--output-dir", tmp_path / "run", timeout=120, check=0)
    assert "(4 train / 2 test)" in proc.stdout and (tmp_path / "run" / "last.pt").is_file()


def test_links_to_images_and_class_folders_elsewhere_are_read(tmp_path, capsys):
    """A split made of links into one pool of images (a class folder linking to a folder elsewhere, image
    files linking to files elsewhere), as torchvision's ImageFolder reads it: the links leaving the folder
    were skipped without a word (48 of 72 images: "only one class folder ('2')" for a folder of three).
    Two links in two classes to one image are refused, naming both."""
    pool, root = tmp_path / "pool", tmp_path / "split"
    for i in range(12):
        (pool / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        (pool / "ab"[i % 2] / f"{i}.png").write_bytes(digit_png(i))
    (root / "c").mkdir(parents=True)
    for i in range(4):
        (root / "c" / f"{i}.png").write_bytes(digit_png(12 + i))
    (root / "a").symlink_to(pool / "a", target_is_directory=True)
    (root / "b").mkdir()
    for i in range(1, 12, 2):
        (root / "b" / f"link{i}.png").symlink_to(pool / "b" / f"{i}.png")
    info = json.loads(run_cli("data", "info", "folder", "--data-path", root, "--json").stdout)
    assert info["classes"] == ["a", "b", "c"] and info["class_counts"] == {"train": [5, 5, 3], "test": [1, 1, 1]}, info
    # outputs in a folder a class folder links to would become its images: refused as inside the data set
    one_error(*cli(capsys, "train", "--model", "lenet5", "--dataset", "folder", "--data-path", root, "--output-dir",
                   pool / "a" / "run"), f"{pool / 'a' / 'run'}: output folder is inside the image folder {root}")
    one_error(*cli(capsys, "data", "sample", "folder", "--data-path", root, "--output", pool / "a" / "s"),
              f"{pool / 'a' / 's'}: is inside the data set's folder {root}")
    assert sorted(p.name for p in (pool / "a").iterdir()) == [f"{i}.png" for i in (0, 10, 2, 4, 6, 8)]
    # a link loop beside the class folders, or inside one, is skipped (beside them it was an error)
    (root / "loop.png").symlink_to("loop.png")
    (root / "c" / "loop.png").symlink_to("loop.png")
    assert json.loads(run_cli("data", "info", "folder", "--data-path", root, "--json").stdout)["counts"]["test"] == 3
    # a linked folder inside a class folder is not entered (os.walk's way): said, it was left out unsaid
    (root / "c" / "more").symlink_to(pool / "b", target_is_directory=True)
    info = run_cli("data", "info", "folder", "--data-path", root, "--json")
    assert json.loads(info.stdout)["counts"] == {"train": 13, "test": 3}, info.stdout
    assert f"warning: {root}: 1 linked folder inside class folders (c/more): not entered" in info.stderr, info.stderr
    (root / "c" / "twin.png").symlink_to(pool / "b" / "1.png")
    one_error(*cli(capsys, "data", "info", "folder", "--data-path", root), f"{root}/c/twin.png: links to",
              "which a link in class folder 'b' links to as well", "two classes ('c' and 'b')")


def test_too_much_to_decode_is_refused_before_decoding(tmp_path, capsys, monkeypatch):
    for c in ("a", "b"):
        (tmp_path / "f" / c).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "f" / c / f"{i}.png").write_bytes(b"never decoded")  # corrupt: the size check comes first
    monkeypatch.setattr(formats, "MAX_DECODED_BYTES", 5 * 3 * 64 * 64)
    code, err = cli(capsys, "train", "--dataset", "folder", "--data-path", tmp_path / "f", "--channels", 3,
                    "--image-size", 64, "--threads", 1, "--output-dir", tmp_path / "run")
    one_error(code, err, str(tmp_path / "f"), "6 images of 3 x 64 x 64 would decode to", "--image-size")


def test_split_is_seeded_stratified_and_stable(tmp_path):
    from convzoo.data.catalog import FolderRule

    for c, n in (("a", 10), ("b", 7), ("c", 1)):
        (tmp_path / c).mkdir()
        for i in range(n):
            (tmp_path / c / f"{i}.png").write_bytes(b"")
    rule = FolderRule()
    classes, files = formats.list_folder(tmp_path, rule)
    assert classes == ("a", "b", "c")
    test = sorted((p.parent.name, p.name) for p, _ in files["test"])
    assert [c for c, _ in test].count("a") == 2 and [c for c, _ in test].count("b") == 1  # 20% of each, >= 1
    assert len(files["train"]) + len(files["test"]) == 18 and "c" not in dict(test)  # one image: train only
    assert formats.list_folder(tmp_path, rule)[1] == files  # the same every time
    (tmp_path / "d").mkdir()
    for i in range(5):
        (tmp_path / "d" / f"{i}.png").write_bytes(b"")
    again = sorted((p.parent.name, p.name) for p, _ in formats.list_folder(tmp_path, rule)[1]["test"])
    assert [t for t in again if t[0] != "d"] == test  # a new class leaves the others' split alone


def test_eval_warns_once_when_the_folder_split_is_not_the_trained_one(tmp_path, capsys):
    """Images added to a class redraw its split, moving training images into the test split: eval
    still scores the folder but says, in one line, that this is not the run's test split. The same
    files again: silent. A checkpoint made before the split was recorded: silent."""
    import torch

    images, labels = mnist_test(300)
    root = tmp_path / "imgs"
    picked = {c: np.flatnonzero(labels == c)[:15] for c in (0, 1)}
    for c, rows in picked.items():
        (root / str(c)).mkdir(parents=True)
        for i in rows[:12]:
            Image.fromarray(images[i, 0]).save(root / str(c) / f"{i}.png")
    code, err = cli(capsys, "train", "--model", "lenet5", "--dataset", "folder", "--data-path", root,
                    "--image-size", 28, "--epochs", 1, "--batch-size", 8, "--threads", 1,
                    "--output-dir", tmp_path / "run")
    assert code == 0, err
    best = tmp_path / "run" / "best.pt"

    model = tmp_path / "m.onnx"  # the fingerprint travels in the ONNX metadata too
    assert cli(capsys, "export", "--ckpt", best, "--output", model)[0] == 0

    def split_warnings(ckpt=best, flag="--ckpt") -> list[str]:
        code, err = cli(capsys, "eval", flag, ckpt)
        assert code == 0 and "Traceback" not in err, err
        return [line for line in err.splitlines() if "test split" in line]

    assert split_warnings() == [] and split_warnings(model, "--model") == []
    added = [root / "0" / f"{i}.png" for i in picked[0][12:]]
    for i, path in zip(picked[0][12:], added):
        Image.fromarray(images[i, 0]).save(path)
    [line] = split_warnings()
    assert line.startswith(f"warning: {root}: not the test split {best} was tested with (5 test files now, 4 then"), line
    [line] = split_warnings(model, "--model")
    assert line.startswith(f"warning: {root}: not the test split {model} was tested with (5 test files now"), line
    old = torch.load(best, weights_only=True)  # as written before the split was recorded
    del old["data"]["split"]
    torch.save(old, tmp_path / "old.pt")
    assert split_warnings(tmp_path / "old.pt") == []
    for path in added:
        path.unlink()
    assert split_warnings() == []

    # The folder moved: it said "--data-path is not a folder" though none was given.
    moved = root.rename(tmp_path / "moved")
    code, err = cli(capsys, "eval", "--ckpt", best)
    assert code == 2 and err.count("\n") == 1 and f"{root}: the image folder {best} was trained on is not there" in err
    code, err = cli(capsys, "eval", "--ckpt", best, "--data-path", moved)
    assert code == 0 and "test split" not in err, err
    # `data verify folder` printed nothing and exited 0: a folder has no official files to check.
    code, err = cli(capsys, "data", "verify", "folder", "--data-path", moved)
    assert code == 2 and "no official files to verify" in err, err


def test_data_without_the_models_classes_is_refused_first_naming_the_command(tmp_path, capsys, monkeypatch):
    """A cat/dog/bird folder model: `eval --dataset mnist` downloaded MNIST (or read it) only to refuse it,
    now refused before anything is located (the catalog names its classes); on a folder of other classes,
    eval warned of "0 test files now" before refusing, and export --int8's refusal named eval."""
    from convzoo.data import tensors

    images = mnist_test(30)[0][:, 0]
    folders = [("mine", c) for c in ("cat", "dog", "bird")] + [("other", c) for c in ("ant", "bee", "cow")]
    for k, (root, c) in enumerate(folders):  # distinct digits: copies across the split get a warning of their own
        (tmp_path / root / c).mkdir(parents=True)
        for i in range(5):
            (tmp_path / root / c / f"{i}.png").write_bytes(png_bytes(images[5 * k + i]))
    code, err = cli(capsys, "train", "--model", "lenet5", "--dataset", "folder", "--data-path", tmp_path / "mine",
                    "--epochs", 1, "--batch-size", 4, "--threads", 1, "--output-dir", tmp_path / "run")
    assert code == 0, err
    best = tmp_path / "run" / "best.pt"

    missing = "the model's classes 'bird', 'cat', 'dog' are not in this data set"
    with monkeypatch.context() as m:  # (eval --model FILE reads the data through the same function)
        m.setattr(tensors, "locate", lambda *a, **k: pytest.fail("the data set was located"))
        one_error(*cli(capsys, "eval", "--ckpt", best, "--dataset", "mnist"), f"{best}: {missing} (0, 1, 2,",
                  "eval needs images of the model's classes")
    code, err = cli(capsys, "eval", "--ckpt", best, "--data-path", tmp_path / "other")
    one_error(code, err, f"{missing} (ant, bee, cow): eval needs")
    assert "test split" not in err, err  # it said "0 test files now": the model's classes are not there
    code, err = cli(capsys, "export", "--ckpt", best, "--int8", "--data-path", tmp_path / "other", "--output",
                    tmp_path / "q.onnx")
    one_error(code, err, f"{missing} (ant, bee, cow): export --int8 needs")
    assert "test split" not in err and not (tmp_path / "q.onnx").exists(), err


def test_a_digit_model_scores_a_folder_of_photos_as_predict_reads_them(tmp_path):
    """`eval --model lenet5:mnist --dataset folder` on a folder of digit photos (dark ink on white paper,
    84 px) read the files by a plain resize, not as predict reads photos: a user's 200 clear digits
    scored 0.175 while predict read every one right. The folder is now read as predict reads photos."""
    import convzoo
    from PIL import ImageOps

    images, labels = mnist_test(300)
    root = tmp_path / "photos"
    for i, (image, label) in enumerate(zip(images[:, 0], labels)):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        photo = ImageOps.invert(Image.fromarray(image).resize((84, 84), Image.Resampling.BILINEAR))
        photo.save(root / str(label) / f"{i:03d}.png")
    result = convzoo.evaluate("lenet5:mnist", dataset="folder", data_path=root)
    # every image: the model was trained on none of them (it scored a 20% share, 60 images)
    assert int(result.confusion.sum()) == 300 and result.accuracy >= 0.95, result.accuracy
    test_files = sorted(p for p in root.rglob("*.png"))
    predicted = [r["class"] for r in convzoo.predict("lenet5:mnist", test_files)]
    agree = np.mean([p == f.parent.name for p, f in zip(predicted, test_files)])
    assert agree >= 0.95, agree


def test_a_digit_model_scores_a_folder_of_some_of_its_classes(tmp_path, capsys):
    """A folder of 1s and 7s (or of 7s alone) scored by the MNIST model was refused ("the model's classes
    '0', '2', ... are not in this data set (1, 7): eval needs a data set whose class names the model
    shares"), and a class holding one photo was never scored. Now every image of the folder is scored, the
    model's other classes n/a; a class the model does not have is refused, named."""
    import convzoo

    images, labels = mnist_test(200)
    picked = [i for i in range(200) if labels[i] in (1, 7)][:21]
    for i in picked:
        (tmp_path / "some" / str(labels[i])).mkdir(parents=True, exist_ok=True)
        (tmp_path / "some" / str(labels[i]) / f"{i}.png").write_bytes(png_bytes(images[i, 0]))
    result = convzoo.evaluate("lenet5:mnist", dataset="folder", data_path=tmp_path / "some", threads=1)
    counts = result.confusion.sum(1).tolist()
    assert sum(counts) == 21 and [k for k, n in enumerate(counts) if n] == [1, 7], counts
    assert result.accuracy >= 0.9 and result.per_class[0] is None, result
    seven = next(i for i in picked if labels[i] == 7)
    (tmp_path / "one" / "7").mkdir(parents=True)
    (tmp_path / "one" / "7" / "a.png").write_bytes(png_bytes(images[seven, 0]))
    assert convzoo.evaluate("lenet5:mnist", dataset="folder", data_path=tmp_path / "one").confusion[7, 7] == 1
    (tmp_path / "some" / "cat").mkdir()
    (tmp_path / "some" / "cat" / "a.png").write_bytes(png_bytes(images[0, 0]))
    one_error(*cli(capsys, "eval", "--model", "lenet5:mnist", "--dataset", "folder", "--data-path", tmp_path / "some"),
              "the data set's classes 'cat' are not among the model's (0, 1, 2,", "eval scores images of the model's")
    for digit in range(10):  # every class of the model and one more: the extra one's images were dropped unsaid
        i = int(np.flatnonzero(labels == digit)[0])
        (tmp_path / "ten" / str(digit)).mkdir(parents=True)
        (tmp_path / "ten" / str(digit) / f"{i}.png").write_bytes(png_bytes(images[i, 0]))
    shutil.copytree(tmp_path / "some" / "cat", tmp_path / "ten" / "cat")
    one_error(*cli(capsys, "eval", "--model", "lenet5:mnist", "--dataset", "folder", "--data-path", tmp_path / "ten"),
              "the data set's classes 'cat' are not among the model's")


def test_eval_of_a_folder_model_with_dataset_folder_keeps_its_split(tmp_path, capsys):
    """`eval --ckpt RUN/best.pt --dataset folder --data-path F` of a model trained with --test-split 0.5
    --image-size 28 read F by the default rule (20% split, 32 px): training images scored as test ones,
    without the split-changed warning. --dataset naming the model's own data set now changes nothing."""
    import convzoo
    from convzoo.cli import main

    digits = tmp_path / "digits"
    write_digits(digits, 120)
    run = tmp_path / "run"
    assert main(["train", "--model", "lenet5", "--dataset", "folder", "--data-path", str(digits), "--test-split", "0.5",
                 "--image-size", "28", "--epochs", "1", "--batch-size", "16", "--threads", "1", "--output-dir", str(run),
                 "--quiet"]) == 0
    own = convzoo.evaluate(run / "best.pt", threads=1)
    named = convzoo.evaluate(run / "best.pt", dataset="folder", data_path=digits, threads=1)
    assert int(own.confusion.sum()) >= 55 and own.confusion.tolist() == named.confusion.tolist()
    assert "not the test split" not in capsys.readouterr().err
