"""predict's flags: conflicting ones refused, the default grid never written over a file that is not a grid."""

from __future__ import annotations

import pytest
from PIL import Image

from conftest import MNIST_DIR, cli_env, cli_error, need
from test_deploy import pretrained_onnx  # noqa: F401 - a fixture


@pytest.mark.real_data
def test_predict_refuses_conflicting_flags_and_keeps_a_foreign_grid_png(tmp_path, capsys, monkeypatch):
    """Image files with --from-test, or --grid without it, were silently ignored; the default grid.png
    replaced whatever file had that name. An earlier grid (a PNG) is still written over."""
    from convzoo.cli import main
    from convzoo.data import formats

    monkeypatch.chdir(tmp_path)
    digit = tmp_path / "seven.png"
    Image.fromarray(formats.read_idx_images(need(MNIST_DIR) / "t10k-images-idx3-ubyte.gz")[0, 0]).save(digit)
    cli_error(capsys, "predict", "--model", "lenet5:mnist", "--from-test", "2", digit, fragments=["not both"])
    cli_error(capsys, "predict", "--model", "lenet5:mnist", "--grid", "g.png", digit,
              fragments=["--grid goes with --from-test"])
    with pytest.raises(SystemExit):  # `--from-test 0 --grid` blamed --grid; 0 test images is the mistake
        main(["predict", "--model", "lenet5:mnist", "--from-test", "0", "--grid", "g.png"])
    assert "argument --from-test: 0 is outside 1..100000" in capsys.readouterr().err
    (tmp_path / "grid.png").write_text("my notes")
    test_set = ["--from-test", "2", "--data-path", MNIST_DIR]
    cli_error(capsys, "predict", "--model", "lenet5:mnist", *test_set, fragments=["grid.png", "not a PNG"])
    assert (tmp_path / "grid.png").read_text() == "my notes" and not (tmp_path / "g.png").exists()
    (tmp_path / "grid.png").unlink()

    for _ in range(2):  # written, then an earlier grid written over
        assert main(["predict", "--model", "lenet5:mnist", *map(str, test_set)]) == 0
        assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
    # more test images than the set holds quietly gave the 10,000 it has
    cli_error(capsys, "predict", "--model", "lenet5:mnist", "--from-test", "20000", "--data-path", MNIST_DIR,
              fragments=["--from-test 20000 is more than the 10,000 test images"])


def test_data_path_without_from_test_is_refused(tmp_path, capsys):
    """`predict --data-path /nonexistent mine.png` predicted the image and exited 0: --data-path names where
    --from-test's images come from, and IMAGE files need none (as `export --data-path` without --int8)."""
    image = tmp_path / "mine.png"
    Image.new("L", (28, 28)).save(image)
    for images in ([image], []):
        cli_error(capsys, "predict", "--model", "lenet5:mnist", "--data-path", tmp_path / "nowhere", *images,
                  fragments=["--data-path goes with --from-test N"])


@pytest.mark.real_data
def test_topk_beyond_the_classes_lists_all_of_them(tmp_path):
    """`--topk 11` on a 10-class model lists its 10 classes, best first, exit 0 and nothing on stderr
    (documented: a clamp, as Hugging Face's pipeline does), and 1001 is refused by the parser."""
    import json

    from conftest import assert_user_error, run_cli
    from convzoo.data import formats

    digit = tmp_path / "seven.png"
    Image.fromarray(formats.read_idx_images(need(MNIST_DIR) / "t10k-images-idx3-ubyte.gz")[0, 0]).save(digit)
    proc = run_cli("predict", "--model", "lenet5:mnist", "--json", "--topk", "11", digit, check=0)
    [result] = [json.loads(line) for line in proc.stdout.splitlines()]
    probabilities = [t["probability"] for t in result["topk"]]
    assert sorted(t["class"] for t in result["topk"]) == list("0123456789") and result["class"] == "7"
    assert probabilities == sorted(probabilities, reverse=True) and proc.stderr == "", proc.stderr
    assert_user_error(run_cli("predict", "--model", "lenet5:mnist", "--topk", "1001", digit), "--topk")


@pytest.mark.real_data
def test_grid_path_that_is_a_fifo_or_in_an_unwritable_folder_is_refused_first(tmp_path):
    """`--grid ff.png` on a FIFO hung for ever (the "earlier grid?" check opened it); `--grid
    /proc/self/x.png` failed only after every prediction was printed. Both: one line, before predicting."""
    import os

    from conftest import assert_user_error, run_cli

    fifo = tmp_path / "ff.png"
    os.mkfifo(fifo)
    test_set = ["predict", "--model", "lenet5:mnist", "--from-test", "4", "--data-path", need(MNIST_DIR)]
    proc = run_cli(*test_set, "--grid", fifo, timeout=120)
    assert_user_error(proc, f"{fifo}: not a regular file")
    proc = run_cli(*test_set, "--grid", "/proc/self/x.png", timeout=120)
    assert_user_error(proc, "/proc/self/x.png: cannot write in /proc/self")
    assert proc.stdout == ""  # refused before the first prediction


@pytest.mark.real_data
@pytest.mark.parametrize("args", [["predict", "--model", "lenet5:mnist", "IMAGE"],
                                  ["predict", "--model", "lenet5:mnist", "--json", "IMAGE"],
                                  ["predict", "--model", "lenet5:mnist", "--from-test", "3", "--grid", "GRID"],
                                  ["data", "info", "mnist"]],
                         ids=["text", "json", "from-test", "data-info"])
def test_output_that_cannot_be_written_is_one_line(tmp_path, args):
    """`> /dev/full` was a traceback ending in `print(...)` / OSError: [Errno 28], exit 1 (or, for
    output short enough to stay buffered, Python's own complaint at exit): one line, exit 2."""
    from conftest import ROOT, assert_user_error, run_cli
    from convzoo.data import formats

    digit = tmp_path / "seven.png"
    Image.fromarray(formats.read_idx_images(need(MNIST_DIR) / "t10k-images-idx3-ubyte.gz")[0, 0]).save(digit)
    args = [str(digit) if a == "IMAGE" else str(tmp_path / "grid.png") if a == "GRID" else a for a in args]
    proc = run_cli(*args, cwd=ROOT, env={"CONVZOO_DATA": str(MNIST_DIR.parent)}, stdout="/dev/full", timeout=120)
    assert_user_error(proc, "cannot write the output: No space left on device")



@pytest.mark.parametrize("args", [["--help"], ["--version"], ["train", "--help"], ["summary", "--model", "lenet5"]])
@pytest.mark.parametrize("stdout", ["full", "closed"])
def test_help_version_and_closed_stdout_are_one_line(tmp_path, args, stdout):
    """`--help`/`--version` > /dev/full exited 0 in silence (argparse ignores a failed write); with stdout
    closed (`>&-`) every printing command was two chained tracebacks (AttributeError on None), exit 1."""
    import os
    import subprocess
    import sys

    from conftest import ROOT, assert_user_error

    env = cli_env()
    command = [sys.executable, "-m", "convzoo", *args]
    if stdout == "full":
        with open("/dev/full", "w") as full:
            proc = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
                                  timeout=120)
    else:
        proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
                              timeout=120, preexec_fn=lambda: os.close(1))
    proc.stdout = ""
    assert_user_error(proc, "cannot write the output: No space left on device" if stdout == "full"
                      else "cannot write the output: standard output is closed")


def test_a_file_opened_with_stdout_closed_gets_no_prints(tmp_path):
    """Started with fd 1 closed, the first file opened took fd 1; the children and prints that write to
    fd 1 would write into it. The CLI holds 0-2 with /dev/null first, so a run's files stay its own."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    code = ("import os, sys; from convzoo.cli import keep_standard_streams_taken; keep_standard_streams_taken(); "
            f"fd = os.open({str(tmp_path / 'ckpt')!r}, os.O_WRONLY | os.O_CREAT); os.write(1, b'stray'); "
            "sys.exit(0 if fd > 2 else 1)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=60, preexec_fn=lambda: os.close(1))
    assert proc.returncode == 0 and (tmp_path / "ckpt").read_bytes() == b""

@pytest.mark.real_data
def test_json_names_a_non_utf8_file_as_the_text_line_does(tmp_path):
    """A file named b'\\xff\\xfebad.png' came out of --json as "\\udcff\\udcfebad.png": lone surrogates,
    which no strict UTF-8 JSON reader accepts. Now the text line's escaped form, \\xff\\xfebad.png."""
    import json
    import os

    from conftest import run_cli
    from convzoo.data import formats

    digit = os.fsdecode(os.fsencode(tmp_path) + b"/\xff\xfebad.png")
    Image.fromarray(formats.read_idx_images(need(MNIST_DIR) / "t10k-images-idx3-ubyte.gz")[0, 0]).save(digit)
    text = run_cli("predict", "--model", "lenet5:mnist", digit, check=0).stdout
    line = run_cli("predict", "--model", "lenet5:mnist", "--json", digit, check=0).stdout
    name = json.loads(line)["file"]
    name.encode("utf-8")  # no lone surrogates
    assert name == f"{tmp_path}/\\xff\\xfebad.png" and text.startswith(f"{name}: 7 (")


@pytest.mark.parametrize("command", [["predict", "--model", "MODEL", "IMAGE"], ["eval", "--model", "MODEL"]])
def test_a_sigterm_inside_a_c_extensions_import_is_terminated(tmp_path, pretrained_onnx, command):
    """A SIGTERM landing while onnxruntime's C extension initialises comes out of the import as
    ImportError("initialization failed") (pybind11 turns whatever its init raised into that): predict
    blamed the model ("not a loadable ONNX model (initialization failed)", exit 2) and export printed a
    traceback. The signal cannot be timed into the real import, so a stand-in onnxruntime does what its
    extension does: receives the SIGTERM while initialising and raises that ImportError."""
    import os
    import signal
    import subprocess
    import sys

    from conftest import ROOT

    fake = tmp_path / "site" / "onnxruntime"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "import os, signal, time\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(5)\n"
        "except BaseException:\n"
        "    raise ImportError('initialization failed') from None\n")
    image = tmp_path / "one.png"
    Image.new("L", (28, 28)).save(image)
    argv = [str(pretrained_onnx) if a == "MODEL" else str(image) if a == "IMAGE" else a for a in command]
    env = cli_env({"PYTHONPATH": str(tmp_path / "site")})
    proc = subprocess.run([sys.executable, "-m", "convzoo", *argv], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM and proc.stderr.strip() == "convzoo: terminated", proc.stderr
