"""Image folders as users really get them: names from old archives, train/ + val/ and other split
spellings, look-alike Unicode names, macOS zips, test images copied from the training ones. Each
is read right, refused in one line (exit 2) or warned about in one line; small PNGs made here."""

from __future__ import annotations

import json
import os
import shutil
import unicodedata
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import cli_error


def write_pngs(folder: Path, count: int, seed: int) -> list[Path]:
    """`count` distinct 12x12 grey noise PNGs in `folder`."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i}.png" for i in range(count)]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(path)
    return paths


def info(capsys, folder: Path) -> tuple[dict, str]:
    """`convzoo data info folder --json` on `folder`: (its JSON, its stderr); exit 0."""
    from convzoo.cli import main

    capsys.readouterr()
    code = main(["data", "info", "folder", "--data-path", str(folder), "--json"])
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in err, err
    return json.loads(out), err


def test_a_class_folder_named_in_latin1_is_refused_in_one_line(tmp_path, capsys):
    """'caf\\xe9/' (Latin-1, from an old zip) crashed data info and train with UnicodeEncodeError: now
    one line naming the folder as its bytes read; a file so named inside a class folder still loads."""
    root = tmp_path / "d"
    write_pngs(root / "plain", 4, 0)
    os.makedirs(os.fsencode(root) + b"/caf\xe9")
    write_pngs(Path(os.fsdecode(os.fsencode(root) + b"/caf\xe9")), 4, 1)
    for args in (["data", "info", "folder"], ["train", "--epochs", "1", "--threads", "1", "--output-dir",
                                              str(tmp_path / "run"), "--dataset", "folder"]):
        cli_error(capsys, *args, "--data-path", root, fragments=(str(root), "'caf\\xe9'", "not valid utf-8",
                                                                  "rename it to utf-8"))
    assert not (tmp_path / "run").exists()

    good = tmp_path / "good"
    write_pngs(good / "a", 4, 2)
    write_pngs(good / "b", 3, 3)
    (good / "b" / "0.png").rename(os.fsdecode(os.fsencode(good) + b"/b/x\xff.png"))
    data, _ = info(capsys, good)
    assert data["classes"] == ["a", "b"] and sum(data["counts"].values()) == 7


def test_a_class_name_too_long_for_a_checkpoint_is_named_before_training(tmp_path, capsys):
    """A class folder named with over 200 characters (the model-description schema's limit) trained, then
    its checkpoints were refused by eval, predict, export and --resume. train refuses it before training,
    naming the folder, with nothing written, unless --classes leaves it out; data info, which listed it
    without a word, warns of it."""
    from convzoo.cli import main

    root = tmp_path / "d"
    write_pngs(root / "plain", 4, 0)
    write_pngs(root / "other", 4, 2)
    write_pngs(root / ("x" * 250), 4, 1)
    data, err = info(capsys, root)
    assert data["classes"][:2] == ["other", "plain"], data
    assert f"warning: {root}: class folder '{'x' * 40}...' has a name of 250 characters: a checkpoint holds at " \
        "most 200 a class, so train refuses it unless --classes leaves it out" in err, err
    train = ["train", "--epochs", "1", "--threads", "1", "--batch-size", "2", "--dataset", "folder", "--data-path", root]
    cli_error(capsys, *train, "--output-dir", tmp_path / "run",
              fragments=(str(root), "cannot be saved as the model's class names", "1..200 characters"))
    assert not (tmp_path / "run").exists()
    assert main([*map(str, train), "--classes", "0,1", "--output-dir", str(tmp_path / "two")]) == 0


def test_a_macos_zips_metadata_folder_is_skipped(tmp_path, capsys):
    """A folder unzipped from a macOS zip holds __MACOSX/<class>/._N.png (AppleDouble metadata): it
    failed as a class with no image files; now skipped like hidden files, at the top and inside a class."""
    root = tmp_path / "d"
    for c, seed in (("a", 0), ("b", 1)):
        write_pngs(root / c, 3, seed)
        (root / "__MACOSX" / c).mkdir(parents=True)
        for i in range(3):
            (root / "__MACOSX" / c / f"._{i}.png").write_bytes(b"\0\5\26\7\0\2\0\0Mac OS X        ")
    write_pngs(root / "a" / "__MACOSX", 2, 2)  # even should it hold decodable files
    data, _ = info(capsys, root)
    assert data["classes"] == ["a", "b"] and data["counts"] == {"train": 4, "test": 2}


def test_class_names_alike_but_for_unicode_normalisation_are_refused(tmp_path, capsys):
    """'café' typed (NFC) and 'café' from macOS (NFD) were two classes that print alike; now one line
    naming both. 'Cat' and 'cat' are told apart by Linux and by eye: still two classes."""
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    root = tmp_path / "d"
    write_pngs(root / nfc, 3, 0)
    write_pngs(root / nfd, 3, 1)
    cli_error(capsys, "data", "info", "folder", "--data-path", root,
              fragments=(str(root), ascii(nfc), ascii(nfd), "unicode normalisation"))
    split = tmp_path / "split"  # train/ says it one way, test/ the other
    write_pngs(split / "train" / nfc, 3, 0)
    write_pngs(split / "train" / "tea", 3, 1)
    write_pngs(split / "test" / nfd, 2, 2)
    cli_error(capsys, "data", "info", "folder", "--data-path", split,
              fragments=(str(split / "test" / nfd), ascii(nfc), "unicode normalisation"))
    cased = tmp_path / "cased"
    write_pngs(cased / "Cat", 3, 0)
    write_pngs(cased / "cat", 3, 1)
    assert info(capsys, cased)[0]["classes"] == ["Cat", "cat"]


def split_by_hand(root: Path, train: str, test: str, classes=("a", "b")) -> Path:
    for i, c in enumerate(classes):
        write_pngs(root / train / c, 4, 2 * i)
        write_pngs(root / test / c, 2, 2 * i + 1)
    return root


def test_train_and_val_folders_are_the_training_and_test_splits(tmp_path, capsys):
    """train/ + val/ (and Train/ + Test/, training/ + testing/, train/ + valid/ or validation/) were
    taken for two classes named after the splits; now the splits, whose folder data info names.
    test/ beside val/ is the test split; a lone split folder holding classes is refused."""
    for train, test in (("train", "val"), ("Train", "Test"), ("training", "testing"), ("train", "valid"),
                        ("TRAIN", "Validation")):
        data, _ = info(capsys, split_by_hand(tmp_path / f"{train}-{test}", train, test))
        assert data["classes"] == ["a", "b"] and data["counts"] == {"train": 8, "test": 4}, (train, test)
        assert data["test_split"].startswith(f"{test}/"), data["test_split"]
    three = split_by_hand(tmp_path / "three", "train", "val")
    write_pngs(three / "test" / "a", 3, 9)
    data, _ = info(capsys, three)
    assert data["test_split"].startswith("test/") and data["counts"] == {"train": 8, "test": 3}

    from convzoo.cli import main
    from convzoo.engine.checkpoint import load_checkpoint

    capsys.readouterr()
    assert main(["train", "--model", "lenet5", "--dataset", "folder", "--data-path", str(tmp_path / "train-val"),
                 "--epochs", "1", "--batch-size", "4", "--threads", "1", "--output-dir", str(tmp_path / "run")]) == 0
    assert "(8 train / 4 test)" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "run" / "last.pt")["class_names"] == ["a", "b"]
    # An explicit --test-split on a folder split by hand was ignored without a word: one line, no run
    cli_error(capsys, "train", "--model", "lenet5", "--dataset", "folder", "--data-path", tmp_path / "train-val",
              "--test-split", "0.5", "--output-dir", tmp_path / "run2",
              fragments=(str(tmp_path / "train-val"), "--test-split 0.5 does not apply", "(val/ beside train/)"))
    assert not (tmp_path / "run2").exists()

    lone = tmp_path / "lone"
    for c in ("a", "b"):
        write_pngs(lone / "train" / c, 3, 0)
    write_pngs(lone / "c", 3, 1)  # a class beside it: train/ would have been a class of no images of its own
    cli_error(capsys, "data", "info", "folder", "--data-path", lone,
              fragments=(str(lone), "train/ holds class folders", "no test folder", "val/"))
    (lone / "train").rename(lone / "Val")
    cli_error(capsys, "data", "info", "folder", "--data-path", lone,
              fragments=("Val/ holds class folders", "no training folder (train/ or training/)"))
    twice = split_by_hand(tmp_path / "twice", "train", "test")
    write_pngs(twice / "Training" / "a", 2, 5)
    cli_error(capsys, "data", "info", "folder", "--data-path", twice, fragments=("train/ and Training/ would both be the training split", "keep one"))
    flat = tmp_path / "flat"  # no split names: --test-split of each class, as before
    write_pngs(flat / "valid", 5, 0)
    write_pngs(flat / "invalid", 5, 1)
    data, _ = info(capsys, flat)
    assert data["classes"] == ["invalid", "valid"] and data["test_split"].startswith("20% of each class folder")


def byte_copy_warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if "byte-identical" in line]


def test_test_images_copied_from_training_images_are_warned_about_once(tmp_path, capsys):
    """test/ a byte copy of train/ scored training images as test ones, silently: one warning line with
    the count, in data info and train; a photo saved many times in a class folder of a folder split
    by --test-split too. Distinct images: silent."""
    import shutil

    from convzoo.cli import main

    root = split_by_hand(tmp_path / "copied", "train", "test")
    shutil.rmtree(root / "test")
    shutil.copytree(root / "train", root / "test")
    _, err = info(capsys, root)
    assert byte_copy_warnings(err) == [f"warning: {root}: 8 of 8 test images are byte-identical to training images; "
                                       "the test accuracy measures memory"], err
    assert main(["train", "--model", "lenet5", "--dataset", "folder", "--data-path", str(root), "--epochs", "1",
                 "--batch-size", "4", "--threads", "1", "--output-dir", str(tmp_path / "run")]) == 0
    assert len(byte_copy_warnings(capsys.readouterr().err)) == 1

    flat = tmp_path / "flat"
    [one] = write_pngs(flat / "a", 1, 0)
    for i in range(1, 10):
        shutil.copy(one, flat / "a" / f"copy{i}.png")
    write_pngs(flat / "b", 10, 1)
    [line] = byte_copy_warnings(info(capsys, flat)[1])
    assert line.startswith(f"warning: {flat}: 2 of 4 test images are byte-identical"), line
    assert byte_copy_warnings(info(capsys, split_by_hand(tmp_path / "distinct", "train", "val"))[1]) == []


def test_an_unlabelled_test_folder_beside_val_is_passed_over(tmp_path, capsys):
    """Kaggle's layout: train/ and val/ hold class folders, test/ holds loose unlabelled images. test/
    outranked val/ and the folder was refused ('no image files in any class folder' on test/, val/ never
    named); now val/ is the test split and data info says test/ was not used. train/ beside an unlabelled
    test/ alone is refused saying why."""
    root = split_by_hand(tmp_path / "kaggle", "train", "val")
    write_pngs(root / "test", 5, 9)
    data, err = info(capsys, root)
    assert data["classes"] == ["a", "b"] and data["counts"] == {"train": 8, "test": 4}, data
    assert data["test_split"].startswith("val/ (training images: train/") and "test/ holds no class folders" \
        in data["test_split"], data["test_split"]
    (root / "val").rename(tmp_path / "val")
    cli_error(capsys, "data", "info", "folder", "--data-path", root,
              fragments=(str(root / "test"), "no class folders", "unlabelled"))


def test_data_info_names_the_images_it_does_not_read(tmp_path, capsys):
    """A labelled valid/ beside train/ + test/ (a Roboflow export), image files loose beside the class
    folders at the top and in train/, and loose beside a flat layout's class folders: all passed over
    without a word. data info now says what is not read, and train warns of loose images."""
    root = split_by_hand(tmp_path / "three", "train", "test")
    write_pngs(root / "valid" / "a", 2, 40)
    write_pngs(root / "valid" / "b", 2, 41)
    write_pngs(root, 1, 42)
    write_pngs(root / "train", 2, 43)
    data, err = info(capsys, root)
    assert data["counts"] == {"train": 8, "test": 4}, data
    assert f"warning: {root}: 1 image file directly in three/: in no class folder, not used; 2 image files " \
        "directly in train/" in err, err
    said = data["test_split"]
    assert said.startswith("test/ (training images: train/") and "valid/ (labelled) not used" in said, said
    assert "1 image file directly in three/: in no class folder, not used" in said, said
    assert "2 image files directly in train/" in said, said
    flat = tmp_path / "flat"
    for i, c in enumerate("ab"):
        write_pngs(flat / c, 4, 50 + i)
    write_pngs(flat, 3, 52)
    assert "3 image files directly in flat/" in info(capsys, flat)[0]["test_split"]
    # the plain listing said it twice: in its test split line and in the warning
    from convzoo.cli import main

    assert main(["data", "info", "folder", "--data-path", str(flat)]) == 0
    out, err = capsys.readouterr()
    assert (out + err).count("3 image files directly in flat/") == 1 and "warning" in err, (out, err)
    assert "test split   20% of each class folder" in out, out
    # train said nothing of the images it left out: one warning line, the run goes on
    assert main(["train", "--model", "lenet5", "--dataset", "folder", "--data-path", str(flat), "--epochs", "1",
                 "--batch-size", "4", "--threads", "1", "--output-dir", str(tmp_path / "run")]) == 0
    out, err = capsys.readouterr()
    warned = [line for line in err.splitlines() if "in no class folder" in line]
    assert warned == [f"warning: {flat}: 3 image files directly in flat/: in no class folder, not used"], warned
    # 6 training images at batch 4: one step a pass, and the start line says what it leaves out
    assert "1 epochs x 1 steps, batch 4 (2 of the 6 images left out of each pass" in out, out

def test_class_folders_beside_the_split_folders_are_refused(tmp_path, capsys):
    """a/ and b/ (6 images each) beside train/ + test/ were left out without a word ("train 2 images");
    now one line naming the folder, the split folders and the class folders, in data info and train.
    Folders the loader skips (hidden, __MACOSX, a folder without images) beside the splits still read."""
    root = tmp_path / "ds"
    for i, c in enumerate(("a", "b")):
        write_pngs(root / c, 6, i)
        write_pngs(root / "train" / c, 1, 10 + i)
        write_pngs(root / "test" / c, 1, 20 + i)
    for args in (["data", "info", "folder"], ["train", "--epochs", "1", "--threads", "1", "--output-dir",
                                              str(tmp_path / "run"), "--dataset", "folder"]):
        cli_error(capsys, *args, "--data-path", root,
                  fragments=(f"{root}: ambiguous: class folders a/, b/ (12 images)", "split folders train/ and test/",
                             "ignored", "move them into train/"))
    assert not (tmp_path / "run").exists()
    for c in ("a", "b"):
        shutil.rmtree(root / c)
    write_pngs(root / ".cache", 2, 30)
    write_pngs(root / "__MACOSX" / "a", 2, 31)
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("no images here")
    data, _ = info(capsys, root)
    assert data["classes"] == ["a", "b"] and data["counts"] == {"train": 2, "test": 2}, data


def test_a_test_only_read_hashes_no_training_file(tmp_path, capsys, monkeypatch):
    """`data sample` (and eval) read only the test split: with no training digests remembered, every
    training file of a test file's size was read and hashed (all of them for fixed-size images); now
    none is, and the byte-copy warning stays with reads of both splits."""
    import shutil

    from convzoo.cli import main
    from convzoo.data import formats

    root = split_by_hand(tmp_path / "copied", "train", "test")
    shutil.rmtree(root / "test")
    shutil.copytree(root / "train", root / "test")
    formats._TRAIN_DIGESTS.clear()
    read = []
    real = formats.image_files.read_image_file
    monkeypatch.setattr(formats.image_files, "read_image_file", lambda path: read.append(path) or real(path))
    capsys.readouterr()
    assert main(["data", "sample", "folder", "--data-path", str(root), "--count", "1",
                 "--output", str(tmp_path / "samples")]) == 0
    assert [p for p in read if "train" in p.parts] == [] and len(read) == 8, read
    assert byte_copy_warnings(capsys.readouterr().err) == []
    assert len(byte_copy_warnings(info(capsys, root)[1])) == 1  # both splits read: warned


def test_a_class_folder_linked_to_another_is_refused(tmp_path, capsys):
    """`kitty -> cat` inside the data set made the same images two classes (only the test-overlap
    warning said anything): one line naming both, in a plain folder and in a train/ + test/ one."""
    flat = tmp_path / "flat"
    write_pngs(flat / "cat", 3, 0)
    write_pngs(flat / "dog", 3, 1)
    (flat / "kitty").symlink_to(flat / "cat", target_is_directory=True)
    cli_error(capsys, "data", "info", "folder", "--data-path", flat,
              fragments=(str(flat), "class folders 'cat' and 'kitty' are the same folder (a link", "remove the link"))
    split = split_by_hand(tmp_path / "split", "train", "test", classes=("cat", "dog"))
    (split / "train" / "kitty").symlink_to("cat", target_is_directory=True)  # a relative link
    cli_error(capsys, "data", "info", "folder", "--data-path", split,
              fragments=(str(split / "train"), "'cat' and 'kitty' are the same folder"))
    (split / "train" / "kitty").unlink()
    (flat / "kitty").unlink()
    # A link to the data set itself, or into another class's sub-folder: all / kitty lie inside the others
    write_pngs(flat / "cat" / "sub", 3, 0)
    (flat / "all").symlink_to(".", target_is_directory=True)
    cli_error(capsys, "data", "info", "folder", "--data-path", flat,
              fragments=(str(flat), "class folders 'all' and 'cat' are one inside the other"))
    (flat / "all").unlink()
    (split / "train" / "kitty").symlink_to(split / "train" / "cat" / "sub", target_is_directory=True)
    (split / "train" / "cat" / "sub").mkdir()
    cli_error(capsys, "data", "info", "folder", "--data-path", split,
              fragments=(str(split / "train"), "'cat' and 'kitty' are one inside the other"))
    (split / "train" / "kitty").unlink()
    for folder in (flat, split):  # without the links, both read
        assert info(capsys, folder)[0]["classes"] == ["cat", "dog"]


def test_eval_table_lines_up_wide_class_names():
    """Class folders named in Chinese or Japanese (two terminal columns per character) pushed their rows'
    numbers out of line in eval's table: each row's accuracy now ends in the header's column."""
    import torch
    from tqdm.utils import disp_len

    from convzoo.engine.evaluate import EvalResult

    classes = ("猫", "dog", "ショートヘアの猫", "café")
    table = EvalResult(0.5, 1.0, torch.tensor([[3, 1, 0, 0], [0, 2, 0, 0], [1, 0, 5, 0], [0, 0, 0, 1]]),
                       classes).table().splitlines()
    header, rows = table[0], table[1:]
    ends = {disp_len(line[:line.index(number) + len(number)])
            for line, number in zip(rows, ("0.7500", "1.0000", "0.8333", "1.0000"))}
    assert ends == {disp_len(header[:header.index("accuracy") + len("accuracy")])}, table
    assert [row.split()[0] for row in rows] == list(classes)


def test_a_file_link_into_another_class_folder_is_refused(tmp_path, capsys):
    """a/link.png -> ../b/0.png put one image in classes a and b with only the byte-identical warning,
    while a class folder linking to another was refused for exactly this. A link within its own class
    (test/cat/x.png -> train/cat/0.png) is a copy, warned about as before."""
    flat = tmp_path / "flat"
    for name, seed in (("a", 1), ("b", 2)):
        write_pngs(flat / name, 3, seed)
    (flat / "a" / "link.png").symlink_to(Path("..") / "b" / "0.png")
    cli_error(capsys, "data", "info", "folder", "--data-path", flat,
              fragments=(f"{flat}/a/link.png: links to {flat}/b/0.png in class folder 'b'", "two classes ('a' and 'b')"))
    split = tmp_path / "split"
    for name, seed in (("cat", 3), ("dog", 4)):
        write_pngs(split / "train" / name, 3, seed)
        write_pngs(split / "test" / name, 2, seed + 10)
    (split / "test" / "cat" / "x.png").symlink_to(split / "train" / "cat" / "0.png")
    _, err = info(capsys, split)
    assert "1 of 5 test images are byte-identical" in err
    (split / "test" / "dog" / "y.png").symlink_to(split / "train" / "cat" / "1.png")
    cli_error(capsys, "data", "info", "folder", "--data-path", split,
              fragments=(f"{split}/test/dog/y.png: links to", "two classes ('dog' and 'cat')"))


def test_a_test_class_folder_linking_into_another_training_class_is_refused(tmp_path, capsys):
    """test/dog -> ../train/cat labelled three cat images 'dog' (only the byte-identical warning): the
    folder-level link crosses classes as a file link does. test/cat -> ../train/cat stays a copy."""
    split = tmp_path / "split"
    for name, seed in (("cat", 3), ("dog", 4)):
        write_pngs(split / "train" / name, 3, seed)
    (split / "test").mkdir()
    (split / "test" / "cat").symlink_to(Path("..") / "train" / "cat")
    write_pngs(split / "test" / "dog", 2, 14)
    _, err = info(capsys, split)
    assert "byte-identical" in err
    shutil.rmtree(split / "test" / "dog")
    (split / "test" / "dog").symlink_to(Path("..") / "train" / "cat")
    cli_error(capsys, "data", "info", "folder", "--data-path", split,
              fragments=("test class folder 'dog' and training class folder 'cat' are the same images",))


def test_classes_on_an_image_folder_names_the_class_folders_picked(tmp_path, capsys):
    """--classes 10,11 on folders 1..12 picks by position in the names sorted as text (1, 10, 11, 12, 2,
    ...): it trained '8' and '9' without a word. The run now names the folders its indices picked."""
    from convzoo.cli import main
    from convzoo.engine.checkpoint import load_checkpoint

    root = tmp_path / "num"
    for c in range(1, 13):
        write_pngs(root / str(c), 2, c)
    common = ["train", "--model", "lenet5", "--dataset", "folder", "--data-path", str(root), "--epochs", "1",
              "--batch-size", "2", "--threads", "1"]
    capsys.readouterr()
    assert main([*common, "--classes", "10,11", "--output-dir", str(tmp_path / "run")]) == 0
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("classes:")]
    assert said == ["classes: --classes picks the class folders 10 = '8', 11 = '9' (positions in the 12 folder "
                    "names sorted as text)"], said
    assert load_checkpoint(tmp_path / "run" / "last.pt")["class_names"] == ["8", "9"]
    assert main([*common, "--classes", "0,1,2,3,4,5,6,7", "--output-dir", str(tmp_path / "many")]) == 0
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("classes:")]
    assert said == ["classes: --classes picks the class folders 0 = '1', 1 = '10', 2 = '11', 3 = '12', 4 = '2', "
                    "5 = '3' and 2 more (positions in the 12 folder names sorted as text)"], said
    assert main([*common, "--output-dir", str(tmp_path / "all")]) == 0  # no --classes: no line
    assert "classes:" not in capsys.readouterr().out


def test_data_info_and_sample_read_a_folder_as_train_would(tmp_path, capsys):
    """data info/sample refused --test-split, --image-size and --channels ('unrecognized arguments'), so
    they described the default split and shape only; data sample --count 100 of 4 test images wrote 4
    without a word; data download folder said 'already present and verified'; data info --json called a
    user's folder verified."""
    from convzoo.cli import main

    root = tmp_path / "d"
    write_pngs(root / "a", 10, 0)
    write_pngs(root / "b", 10, 1)
    base = ["data", "info", "folder", "--data-path", str(root), "--json"]
    data, _ = info(capsys, root)
    assert data["counts"] == {"train": 16, "test": 4} and data["image_shape"] == [1, 32, 32]
    assert data["verified"] is None  # no official checksums: neither verified nor failed
    assert main([*base, "--test-split", "0.5", "--image-size", "16", "--channels", "3"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["counts"] == {"train": 10, "test": 10} and data["image_shape"] == [3, 16, 16], data
    assert data["test_split"].startswith("50% of each class folder (--test-split 0.5")
    # checked as train checks them
    cli_error(capsys, *base, "--test-split", "1.5", fragments=("--test-split must be in (0, 1), got 1.5",))
    cli_error(capsys, *base, "--image-size", "4", fragments=("--image-size must be in 8..512",))
    cli_error(capsys, *base, "--channels", "2", fragments=("--channels must be 1 or 3",))
    for action in ("info", "sample"):  # a catalog data set: refused before anything is located
        cli_error(capsys, "data", action, "mnist", "--data-path", tmp_path / "none", "--test-split", "0.5",
                  fragments=("--test-split applies to --dataset folder", "mnist has its own test split"))
    split = split_by_hand(tmp_path / "split", "train", "test")
    cli_error(capsys, "data", "info", "folder", "--data-path", split, "--test-split", "0.5",
              fragments=("--test-split 0.5 does not apply", "folder is split by hand"))

    out = tmp_path / "samples"
    assert main(["data", "sample", "folder", "--data-path", str(root), "--count", "100", "--output", str(out),
                 "--image-size", "16"]) == 0
    err = capsys.readouterr().err
    assert "warning: only 4 test images: writing 4 of the 100 asked for" in err, err
    written = sorted(out.iterdir())
    assert len(written) == 4 and Image.open(written[0]).size == (16, 16)
    assert main(["data", "sample", "folder", "--data-path", str(root), "--count", "2", "--output", str(out)]) == 0
    assert "only" not in capsys.readouterr().err

    cli_error(capsys, "data", "download", "folder", "--data-path", root,
              fragments=("folder reads your own images", "no official files to download"))


def test_every_extension_pillow_registers_for_a_read_format_is_read(tmp_path, capsys):
    """.jpe, .dib and .apng files (JPEG, BMP and PNG, which convzoo reads) were skipped without a word: the
    scan's extensions were a hand list. Now Pillow's own, but for editors' source files (.psd beside the
    PNG exported from it would be a training image twice), which data info and train now count instead of
    passing over in silence, and SGI's .rgb/.bw, which raw pixel dumps use too (read, one failed the folder)."""
    from PIL import Image as PILImage

    from convzoo.cli import main
    from convzoo.data.images import RAW_DUMP_SUFFIXES, SOURCE_FORMATS, image_suffixes, readable_formats

    registered = {ext for ext, fmt in PILImage.registered_extensions().items()
                  if fmt in readable_formats() and fmt not in SOURCE_FORMATS} - set(RAW_DUMP_SUFFIXES)
    assert set(image_suffixes()) == registered
    assert {".jpe", ".dib", ".apng", ".sgi", ".jpc", ".icb"} <= registered
    assert not {".psd", ".dds", ".icns", ".rgb", ".bw"} & registered

    rng = np.random.default_rng(0)
    root = tmp_path / "d"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for suffix, fmt in ((".jpe", "JPEG"), (".DIB", "DIB"), (".apng", "PNG"), (".SGI", "SGI"), (".png", "PNG")):
            PILImage.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root / c / f"x{suffix}", fmt)
    (root / "a" / "x.psd").write_bytes((root / "a" / "x.png").read_bytes())  # the editor's file beside its PNG
    (root / "b" / "dump.rgb").write_bytes(rng.integers(0, 256, 28 * 28 * 3, dtype=np.uint8).tobytes())  # raw pixels
    data, err = info(capsys, root)
    assert sum(data["counts"].values()) == 10, data
    note = "1 editors' source file (.psd) in the class folders: not read (export them as PNG to train on them)"
    assert note in data["test_split"] and note in err, (data, err)
    assert main(["train", "--model", "lenet5", "--dataset", "folder", "--data-path", str(root), "--epochs", "1",
                 "--batch-size", "2", "--threads", "1", "--output-dir", str(tmp_path / "run")]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "editors'" in line]
    assert warned == [f"warning: {root}: {note}"], warned


def test_an_image_folder_given_for_a_catalog_data_set_is_refused_before_any_download(tmp_path, capsys):
    """`train --data-path small` (class folders of images, no --dataset: MNIST) tried to download MNIST into
    the user's folder (and with a network would have trained on MNIST). Refused in one line, naming
    --dataset folder, by every command that locates a catalog data set; nothing is created there."""
    small = tmp_path / "small"
    write_pngs(small / "a", 3, 0)
    write_pngs(small / "b", 3, 1)
    split = split_by_hand(tmp_path / "split", "train", "test")
    fragments = ("holds class folders of images and none of MNIST's files", "--dataset folder")
    for root in (small, split):
        before = sorted(root.rglob("*"))
        cli_error(capsys, "train", "--model", "lenet5", "--data-path", root, "--epochs", "1", "--threads", "1",
                  "--output-dir", tmp_path / "run", fragments=(str(root), *fragments))
        cli_error(capsys, "data", "info", "mnist", "--data-path", root, fragments=fragments)
        cli_error(capsys, "data", "download", "mnist", "--data-path", root, "--mirror", "http://127.0.0.1:9/",
                  fragments=fragments)
        assert sorted(root.rglob("*")) == before and not (tmp_path / "run").exists()
    other = tmp_path / "other"  # no images in it: the catalog's own message, as before
    (other / "notes").mkdir(parents=True)
    (other / "notes" / "readme.txt").write_text("x")
    cli_error(capsys, "data", "info", "mnist", "--data-path", other, fragments=("MNIST not found",))
    write_pngs(other / "samples", 3, 2)  # a shared data folder: `data sample`'s output beside a data set's folder
    cli_error(capsys, "data", "info", "mnist", "--data-path", other, fragments=("MNIST not found",))
    write_pngs(other / "photos", 3, 3)
    cli_error(capsys, "data", "info", "mnist", "--data-path", other, fragments=("MNIST not found",))
