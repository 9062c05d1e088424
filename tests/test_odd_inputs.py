"""Odd inputs a user sends: a symlink loop and a ~1,000-level deep tree in an image folder, an
empty image argument, a caller's PIL image with EXIF orientation, class names holding the list's
separator, and train() arguments given as pathlib.Path or numpy integers. Real MNIST digits written
as files, the real CLI (in this process) and the real API."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convzoo.data import formats
from convzoo.data.catalog import FolderRule

from conftest import MNIST_DIR, assert_user_error, cli_error, need, run_cli

pytestmark = pytest.mark.real_data

DEPTH = 1000  # os.walk, Path.rglob and Path.glob('**') recursed once per level: RecursionError here


@pytest.fixture(scope="module")
def digits():
    images = formats.read_idx_images(need(MNIST_DIR) / "t10k-images-idx3-ubyte.gz")[:40]
    labels = formats.read_idx_labels(MNIST_DIR / "t10k-labels-idx1-ubyte.gz", 10)[:40]
    return images[:, 0], labels


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def shared_cache(model_cache, monkeypatch):
    """One cache for this module: lenet5:mnist is exported to ONNX once, not once per test."""
    monkeypatch.setenv("CONVZOO_CACHE", str(model_cache))


def write_folder(root: Path, digits, classes=("a", "b"), per_class: int = 4) -> None:
    images, _ = digits
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(images[k * per_class + i]).save(root / name / f"{i}.png")


def cli_ok(capsys, *args) -> str:
    from convzoo.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def remove_flat(top: Path) -> None:
    """shutil.rmtree recurses once per level too (and pytest's cleanup of old temp folders with it)."""
    dirs, stack = [], [str(top)]
    while stack:
        here = stack.pop()
        dirs.append(here)
        for entry in os.scandir(here):
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
            else:
                os.unlink(entry.path)
    for here in reversed(dirs):  # children come after their parent in `dirs`
        os.rmdir(here)


@pytest.fixture
def deep_folder(tmp_path, digits):
    """An image folder whose class 'a' holds a DEPTH-level chain of folders with a digit at the bottom."""
    root = tmp_path / "deep"
    write_folder(root, digits)
    bottom = str(root / "a")
    try:
        for _ in range(DEPTH):
            bottom = os.path.join(bottom, "d")
            os.mkdir(bottom)  # not os.makedirs: it recurses once per level
        Image.fromarray(digits[0][30]).save(os.path.join(bottom, "bottom.png"))
        yield root
    finally:
        remove_flat(root)


def test_symlink_loop_in_image_folder_is_skipped(tmp_path, digits, capsys):
    """A link to itself (Python 3.11's resolve() raises RuntimeError, not OSError, for it) is skipped as
    links are: `data info` and the folder's reader work, and see only the real images."""
    root = tmp_path / "loop"
    write_folder(root, digits)
    (root / "a" / "self.png").symlink_to("self.png")
    (root / "b" / "loop1.png").symlink_to("loop2.png")
    (root / "b" / "loop2.png").symlink_to("loop1.png")
    info = json.loads(cli_ok(capsys, "data", "info", "folder", "--data-path", root, "--json"))
    assert info["classes"] == ["a", "b"] and sum(info["counts"].values()) == 8
    classes, files = formats.list_folder(root, FolderRule())
    assert sorted(p.name for s in files.values() for p, _ in s) == sorted(["0.png", "1.png", "2.png", "3.png"] * 2)


def test_deep_folder_tree_is_walked_without_recursion(deep_folder, capsys, shared_cache):
    """The folder data set, `predict FOLDER` and `predict 'FOLDER/**/x.png'` find the image at the
    bottom of a 1,000-level tree instead of failing with RecursionError."""
    info = json.loads(cli_ok(capsys, "data", "info", "folder", "--data-path", deep_folder, "--json"))
    assert info["class_counts"]["train"][0] + info["class_counts"]["test"][0] == 5  # 4 + the bottom one
    out = cli_ok(capsys, "predict", "--model", "lenet5:mnist", "--threads", 1, deep_folder)
    assert len(out.splitlines()) == 9 and "bottom.png: " in out
    out = cli_ok(capsys, "predict", "--model", "lenet5:mnist", "--threads", 1, f"{deep_folder}/**/bottom.png")
    assert len(out.splitlines()) == 1 and out.split(":")[0].endswith("/d/bottom.png")
    # '**' also matches no folder; hidden folders and non-matching names stay out, as with pathlib's glob
    out = cli_ok(capsys, "predict", "--model", "lenet5:mnist", "--threads", 1, f"{deep_folder}/**/0.png")
    assert [line.split(":")[0] for line in out.splitlines()] == [f"{deep_folder}/a/0.png", f"{deep_folder}/b/0.png"]
    out = cli_ok(capsys, "predict", "--model", "lenet5:mnist", "--threads", 1, f"{deep_folder}/*/**/*.png")
    assert len(out.splitlines()) == 9
    # a final '**' is every file below, as bash's globstar (pathlib's matched folders only: nothing)
    out = cli_ok(capsys, "predict", "--model", "lenet5:mnist", "--threads", 1, f"{deep_folder}/**")
    assert len(out.splitlines()) == 9
    # a pattern matching folders reads their images, as the same folders given by the shell's expansion
    # would be ('FOLDER/*' was "no files match": only files counted); a folder without images is passed over
    (deep_folder / "empty").mkdir(exist_ok=True)
    by_pattern = cli_ok(capsys, "predict", "--model", "lenet5:mnist", "--threads", 1, f"{deep_folder}/*")
    by_shell = cli_ok(capsys, "predict", "--model", "lenet5:mnist", "--threads", 1, deep_folder / "a", deep_folder / "b")
    assert by_pattern == by_shell and len(by_pattern.splitlines()) == 9
    (deep_folder / "empty").rmdir()


def test_unlistable_subfolder_is_one_line(tmp_path, digits, capsys, shared_cache):
    """A folder below a class folder that cannot be listed (here: its path is longer than PATH_MAX) is
    one line naming it, not a silent skip (os.walk and rglob dropped its images) nor a traceback."""
    root = tmp_path / "long"
    write_folder(root, digits)
    fd, length = os.open(root / "a", os.O_RDONLY), len(str(root / "a"))
    try:
        while length <= os.pathconf("/", "PC_PATH_MAX"):  # made relative to a descriptor: no path limit
            os.mkdir("x" * 200, dir_fd=fd)
            fd, parent = os.open("x" * 200, os.O_RDONLY, dir_fd=fd), fd
            os.close(parent)
            length += 201
        cli_error(capsys, "data", "info", "folder", "--data-path", root, fragments=("cannot read folder",))
        cli_error(capsys, "predict", "--model", "lenet5:mnist", "--threads", 1, root,
                  fragments=("cannot read folder",))
    finally:
        os.close(fd)
        remove_long(root / "a")


def remove_long(top: Path) -> None:
    """Remove a tree whose paths exceed PATH_MAX, by descriptors (it is ~20 levels deep)."""
    def clear(fd):
        for entry in os.scandir(fd):
            if entry.is_dir(follow_symlinks=False):
                child = os.open(entry.name, os.O_RDONLY, dir_fd=fd)
                try:
                    clear(child)
                finally:
                    os.close(child)
                os.rmdir(entry.name, dir_fd=fd)
            else:
                os.unlink(entry.name, dir_fd=fd)

    fd = os.open(top, os.O_RDONLY)
    try:
        clear(fd)
    finally:
        os.close(fd)


def test_empty_image_argument_is_refused(tmp_path, digits, capsys, shared_cache, monkeypatch):
    """"" (an unset shell variable) was Path('') = the current folder: every image under it predicted."""
    import convzoo
    from convzoo.data.images import ImageError

    Image.fromarray(digits[0][0]).save(tmp_path / "x.png")
    (tmp_path / "sub").mkdir()
    Image.fromarray(digits[0][1]).save(tmp_path / "sub" / "photo.png")
    monkeypatch.chdir(tmp_path)
    cli_error(capsys, "predict", "--model", "lenet5:mnist", "", fragments=("'': empty image path",))
    cli_error(capsys, "predict", "--model", "lenet5:mnist", "x.png", "", fragments=("empty image path",))
    for images in ("", ["x.png", ""]):
        with pytest.raises(ImageError, match="empty image path"):
            convzoo.predict("lenet5:mnist", images)
    assert len(convzoo.predict("lenet5:mnist", ".")) == 2  # the current folder, when asked for by name


def test_pil_image_with_exif_orientation_is_turned_upright(tmp_path, digits, shared_cache):
    """A phone photo: a 7 stored sideways with EXIF Orientation 6. By path it was turned upright, as a
    PIL image it was not (another class): both now get the same preprocessing."""
    import convzoo

    images, labels = digits
    index = int(np.flatnonzero(labels == 7)[0])
    seven = Image.fromarray(255 - images[index]).resize((280, 280), Image.Resampling.BILINEAR)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    seven.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "seven.jpg", exif=exif, quality=95)
    model = convzoo.load("lenet5:mnist")
    by_path = convzoo.predict(model, str(tmp_path / "seven.jpg"))[0]
    with Image.open(tmp_path / "seven.jpg") as photo:
        assert photo.getexif()[0x0112] == 6
        as_image = convzoo.predict(model, photo)[0]
        batch = model.preprocess(photo)
    assert by_path["class"] == as_image["class"] == "7"
    assert by_path["probability"] == pytest.approx(as_image["probability"], abs=1e-6)
    np.testing.assert_array_equal(batch, model.preprocess(str(tmp_path / "seven.jpg")))


def test_data_info_quotes_class_names_holding_separators(tmp_path, digits, capsys):
    """`classes      a,b, c d` read as three classes; a newline split the line in two."""
    root = tmp_path / "u"
    write_folder(root, digits, classes=("a,b", "c d", "x\ny", "it's", "plain"), per_class=2)
    out = cli_ok(capsys, "data", "info", "folder", "--data-path", root)
    line = next(line for line in out.splitlines() if line.lstrip().startswith("classes"))
    assert line.split(None, 1)[1] == "'a,b', c d, \"it's\", plain, 'x\\ny'"
    assert json.loads(cli_ok(capsys, "data", "info", "folder", "--data-path", root, "--json"))["classes"] == [
        "a,b", "c d", "it's", "plain", "x\ny"]


def test_eval_table_escapes_control_characters_in_class_names(tmp_path, digits, capsys):
    """Class folders 'a\\nb' and 'tab\\tc' were printed raw in eval's table, a row split over two lines
    (and in predict --from-test's and data sample's lines); now escaped as predict writes file names."""
    from convzoo.cli import main

    root = tmp_path / "u"
    write_folder(root, digits, classes=("a\nb", "tab\tc"), per_class=4)
    assert main(["train", "--model", "lenet5", "--dataset", "folder", "--data-path", str(root), "--epochs", "1",
                 "--batch-size", "4", "--threads", "1", "--output-dir", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    table = cli_ok(capsys, "eval", "--ckpt", tmp_path / "run" / "last.pt").splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("class "))
    rows = table[header + 1:header + 3]
    assert [row.split()[0] for row in rows] == ["a\\nb", "tab\\tc"], table
    assert all(len(row.split()) == 4 and row.split()[3] == "1" for row in rows), table  # name, acc, correct, total
    # predict --from-test's lines and data sample's file names carried them raw too
    lines = cli_ok(capsys, "predict", "--model", tmp_path / "run" / "last.pt", "--from-test", 2,
                   "--grid", tmp_path / "grid.png").splitlines()
    assert len(lines) == 3 and all("\\nb" in line or "\\tc" in line for line in lines[:2]), lines
    assert Image.open(tmp_path / "grid.png").size == (320, 260)  # one row of two, not a 5x5 grid (800 x 900)
    lines = cli_ok(capsys, "data", "sample", "folder", "--data-path", root, "--count", 2,
                   "--output", tmp_path / "samples").splitlines()
    assert [line.rsplit("-", 1)[1] for line in lines] == ["a\\nb.png", "tab\\tc.png"], lines


def test_train_api_takes_paths_and_numpy_integers(tmp_path):
    """train() refused output_dir=pathlib.Path(...) and epochs=np.int64(1) while evaluate, export and
    predict take a Path and numpy integers. It also leaves the caller's own Ctrl-C handler in place (it
    put Python's default back)."""
    import signal

    import convzoo
    from convzoo.errors import ConfigError

    need(MNIST_DIR)

    def own_handler(signum, frame):
        pass

    before = signal.signal(signal.SIGINT, own_handler)
    try:
        result = convzoo.train(model="lenet5", dataset="mnist", data_path=MNIST_DIR, output_dir=tmp_path / "run",
                               epochs=np.int64(1), batch_size=np.int32(64), train_limit=np.int64(256),
                               test_limit=np.int16(100), lr=np.float32(0.01), classes=[np.int64(0), 1, np.int8(2)],
                               threads=1, quiet=True)
        assert signal.getsignal(signal.SIGINT) is own_handler
    finally:
        signal.signal(signal.SIGINT, before)
    assert result["output_dir"] == str(tmp_path / "run") and Path(result["checkpoint"]).is_file()
    assert result["epoch"] == 1
    with pytest.raises(ConfigError, match="epochs"):  # still a range- and type-checked value
        convzoo.train(model="lenet5", epochs=np.float64(1.5), output_dir=tmp_path / "x")
    with pytest.raises(ConfigError, match="epochs"):
        convzoo.train(model="lenet5", epochs=np.bool_(True), output_dir=tmp_path / "x")
    # a tuple or an array of classes is read as the list it means (refused as a type before), here
    # reaching the one-class check; float32 values as written
    for one in ((3,), np.array([3])):
        with pytest.raises(ConfigError, match=r"--classes needs at least two classes, got \[3\]"):
            convzoo.train(model="lenet5", classes=one, output_dir=tmp_path / "x")
    assert convzoo._plain(np.float32(0.01)) == 0.01 and convzoo._plain((np.int8(1), 2)) == [1, 2]


def long_name(rng, suffix: str) -> str:
    """A file name over the file system's 255-byte limit, of seeded length and letters."""
    return "n" + "".join(rng.choice(list("abcxyz_-"), size=int(rng.integers(256, 400)))) + suffix


@pytest.mark.parametrize("seed", range(2))
def test_paths_no_file_can_have_are_one_line(tmp_path, capsys, shared_cache, monkeypatch, seed):
    """A name over 255 bytes in any path a command takes was `OSError: [Errno 36] File name too long`
    and a traceback from wherever it was first used (predict, eval, export, train, report, summary,
    convert, data info ...); an output path that is a link to itself was pathlib's RuntimeError. Both
    are one line naming the path, from the CLI and the API."""
    import convzoo
    from convzoo.cli import main as cli_main
    from convzoo.errors import ConfigError, PathError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONVZOO_DATA", str(need(MNIST_DIR).parent))
    rng = np.random.default_rng(seed)
    Image.new("L", (28, 28)).save("digit.png")
    commands = [["predict", "--model", "lenet5:mnist", long_name(rng, ".png")],
                ["predict", "--model", long_name(rng, ".onnx"), "digit.png"],
                ["eval", "--ckpt", long_name(rng, ".pt")],
                ["export", "--ckpt", "lenet5:mnist", "--output", long_name(rng, ".onnx")],
                ["train", "--model", "lenet5", "--data-path", long_name(rng, "")],
                ["report", long_name(rng, "")],
                ["summary", "--model", long_name(rng, ".pt")],
                ["data", "info", "folder", "--data-path", long_name(rng, "")],
                ["convert", long_name(rng, ".pt"), "--model", "lenet5", "--dataset", "mnist", "--output", "w.pt"]]
    for args in commands:
        cli_error(capsys, *args, fragments=("file name too long",))
    Path("loop.onnx").symlink_to("loop.onnx")
    cli_error(capsys, "export", "--ckpt", "lenet5:mnist", "--output", "loop.onnx",
              fragments=("loop.onnx", "symbolic link loop"))
    # read, a loop was "model file not found", "no such folder", and a run's looping last.pt "start it over
    # with --exist-ok"; a link to nothing, "not found"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("model: lenet5\n")
    (tmp_path / "run" / "last.pt").symlink_to("last.pt")
    Path("gone.pt").symlink_to("nowhere.pt")
    Path("loop.yaml").symlink_to("loop.yaml")
    for args, path in ((["predict", "--model", "loop.onnx", "digit.png"], "loop.onnx"),
                       (["train", "--config", "loop.yaml"], "loop.yaml"),
                       (["eval", "--ckpt", "lenet5:mnist", "--data-path", "loop.onnx"], "loop.onnx"),
                       (["eval", "--ckpt", tmp_path / "run" / "last.pt"], tmp_path / "run" / "last.pt")):
        cli_error(capsys, *args, fragments=(f"{path}: a symbolic link loop",))
    cli_error(capsys, "eval", "--ckpt", "gone.pt", fragments=("gone.pt: a broken link (to nowhere.pt, which is not there)",))
    # a name from an old Latin-1 archive: train made half a run folder and traced back, export traced back in
    # onnxruntime, predict said "not a loadable ONNX model"
    latin = os.fsdecode(b"caf\xe9")
    for args, flag in ((["train", "--model", "lenet5", "--output-dir", latin], "--output-dir"),
                       (["export", "--ckpt", "lenet5:mnist", "--output", latin + ".onnx"], "--output"),
                       (["predict", "--model", latin + ".onnx", "digit.png"], "--model"),
                       (["eval", "--ckpt", latin + ".pt"], "--ckpt")):
        cli_error(capsys, *args, fragments=(f"argument {flag}: caf\\xe9", "holds bytes that are not UTF-8"))
    with pytest.raises(ConfigError, match="output: caf.xe9.onnx holds bytes that are not UTF-8"):
        convzoo.export("lenet5:mnist", latin + ".onnx")
    # a data set only read may sit in such a folder: scored as before
    os.mkdir(latin)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(need(MNIST_DIR) / name, os.path.join(latin, name))
    capsys.readouterr()
    assert cli_main(["eval", "--ckpt", "lenet5:mnist", "--data-path", latin, "--test-limit", "50", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] >= 0.9
    for call in (lambda: convzoo.predict("lenet5:mnist", long_name(rng, ".png")),
                 lambda: convzoo.load(long_name(rng, ".onnx")),
                 lambda: convzoo.export("lenet5:mnist", long_name(rng, ".onnx"))):
        with pytest.raises(PathError, match="file name too long"):
            call()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([latin, "digit.png", "gone.pt", "loop.onnx", "loop.yaml", "run"])
