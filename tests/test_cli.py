"""The command line at its edges: shipped weights wherever a checkpoint goes, damaged run folders in
`report`, output piped into a reader that leaves early."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from PIL import Image

from conftest import MNIST_DIR, ROOT, assert_user_error, cli_env, cli_error, need, run_cli


@pytest.mark.real_data
def test_pretrained_name_and_safetensors_work_as_checkpoints(tmp_path):
    """`lenet5:mnist` and the shipped .safetensors file export to a verified ONNX, evaluate, and seed a
    new run through --restore, exactly as a .pt checkpoint does."""
    from convzoo.models.pretrained import pretrained_path

    proc = run_cli("export", "--ckpt", "lenet5:mnist", "--json", cwd=tmp_path, check=0)
    result = json.loads(proc.stdout)
    assert result["path"] == "lenet5-mnist.onnx" and result["max_abs_diff"] <= 1e-4
    meta = json.loads(onnx.load(str(tmp_path / "lenet5-mnist.onnx")).metadata_props[0].value)
    assert meta["model"] == "lenet5" and meta["preprocess"] == "digit" and len(meta["class_names"]) == 10

    shipped = pretrained_path("lenet5:mnist")
    out = tmp_path / "from-file.pt2"
    run_cli("export", "--ckpt", shipped, "--format", "pt2", "--output", out, check=0)
    assert out.stat().st_size > 200_000

    acc = json.loads(run_cli("eval", "--ckpt", "lenet5:mnist", "--data-path", need(MNIST_DIR), "--json",
                             "--confusion", tmp_path / "c.png", check=0).stdout)["accuracy"]
    assert acc >= 0.99

    run = tmp_path / "run"
    proc = run_cli("train", "--model", "lenet5", "--data-path", MNIST_DIR, "--train-limit", "256", "--epochs", "1",
                   "--restore", "lenet5:mnist", "--restore-exclude", "fc3.*", "--output-dir", run, check=0)
    assert "restored from lenet5:mnist: loaded 8 tensors" in proc.stdout


@pytest.mark.real_data
def test_a_class_with_no_test_images_has_no_accuracy(capsys, monkeypatch):
    """`eval --test-limit 3` (digits 7, 2, 1) scored the seven digits with no test image 0.0 ("0 correct of
    0") beside an accuracy of 1.0: now null in --json, n/a in the table, None in the API's per_class."""
    import convzoo
    from convzoo.cli import main

    monkeypatch.setenv("CONVZOO_DATA", str(need(MNIST_DIR).parent))
    capsys.readouterr()
    assert main(["eval", "--ckpt", "lenet5:mnist", "--test-limit", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"] == 1.0 and result["per_class"] == {
        str(d): 1.0 if d in (1, 2, 7) else None for d in range(10)}, result["per_class"]
    assert main(["eval", "--ckpt", "lenet5:mnist", "--test-limit", "3"]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows["0"] == ["n/a", "0", "0"] and rows["7"] == ["1.0000", "1", "1"], rows
    assert convzoo.evaluate("lenet5:mnist", test_limit=3, threads=1).per_class[:3] == [None, 1.0, 1.0]


def test_safetensors_weights_are_read_whatever_their_file_name(tmp_path):
    """safetensors weights renamed weights.pt (or .SAFETENSORS) were handed to torch.load, which called
    them an unsafe pickle; the content decides, and a torch checkpoint named .safetensors is one line."""
    import shutil

    import torch

    from convzoo.engine.checkpoint import load_checkpoint
    from convzoo.errors import CheckpointError
    from convzoo.models.pretrained import pretrained_path

    shipped = load_checkpoint(pretrained_path("lenet5:mnist"))
    for name in ("weights.pt", "W.SAFETENSORS", "noext"):
        shutil.copy(pretrained_path("lenet5:mnist"), tmp_path / name)
        loaded = load_checkpoint(tmp_path / name)
        assert loaded["model"] == shipped["model"] and loaded["class_names"] == shipped["class_names"], name
        assert all(torch.equal(loaded["state_dict"][k], v) for k, v in shipped["state_dict"].items()), name
    torch.save({"format": "convzoo-checkpoint"}, tmp_path / "torch.safetensors")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(tmp_path / "torch.safetensors")


@pytest.mark.real_data
def test_predict_from_a_checkpoint_reuses_its_cached_onnx_and_remakes_a_damaged_one(tmp_path):
    """The first prediction from a checkpoint exports it to ONNX in the cache; the next ones load that
    file; a cache entry damaged on disk is exported again, not reported as the user's error."""
    from convzoo.models.pretrained import pretrained_path

    from convzoo.data import formats

    digit = tmp_path / "seven.png"  # the first real MNIST test image, a 7
    Image.fromarray(formats.read_idx_images(need(MNIST_DIR) / "t10k-images-idx3-ubyte.gz")[0, 0]).save(digit)
    cache = tmp_path / "cache"
    env = {"CONVZOO_CACHE": str(cache)}
    first = run_cli("predict", "--model", "lenet5:mnist", digit, "--json", env=env, check=0).stdout
    [cached] = (cache / "onnx").glob("*.onnx")
    assert cached.stem == hashlib.sha256(pretrained_path("lenet5:mnist").read_bytes()).hexdigest()
    recorded = (cache / "onnx" / f"{cached.name}.sha256").read_text()  # the export's own digest, checked each time
    assert recorded == hashlib.sha256(cached.read_bytes()).hexdigest()
    assert json.loads(first)["class"] == "7"
    made = cached.stat().st_mtime_ns
    assert run_cli("predict", "--model", "lenet5:mnist", digit, "--json", env=env, check=0).stdout == first
    assert cached.stat().st_mtime_ns == made  # loaded, not exported again
    cached.write_bytes(cached.read_bytes()[:5000])  # cut short
    assert run_cli("predict", "--model", "lenet5:mnist", digit, "--json", env=env, check=0).stdout == first
    assert onnx.load(str(cached)).metadata_props[0].key == "convzoo"  # a whole export again


def write_run(folder, rows: bytes):
    folder.mkdir()
    (folder / "metrics.csv").write_bytes(rows)


def test_report_on_impossible_metrics_and_a_bom(tmp_path, capsys):
    """NaN accuracy was chosen as the best epoch, 1e308 or inf printed and plotted (with numpy overflow
    warnings); a UTF-8 BOM (Excel's) made 'epoch' an unknown column. A diverged run's NaN loss still reads."""
    from convzoo.cli import main

    header = b"epoch,train_loss,train_acc,val_acc,test_acc,lr,epoch_time_s,images_per_s\n"
    for row, fragment in [(b"2,2.3,0.15,,nan,0.01,0.3,7303", "line 3: test_acc 'nan' is not in 0..1"),
                          (b"2,2.3,0.15,,1e308,0.01,0.3,7303", "line 3: test_acc '1e308' is not in 0..1"),
                          (b"2,2.3,0.15,,0.5,0.01,-5,7303", "line 3: epoch_time_s '-5' is not in 0..1e+09"),
                          (b"2,2.3,0.15,,0.5,0.01,0.3,inf", "line 3: images_per_s 'inf' is not in 0..1e+12"),
                          (b"2,1.7e308,0.15,,0.5,0.01,0.3,7303", "line 3: train_loss '1.7e308' is not in 0..1e+30")]:
        folder = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        write_run(folder, header + b"1,2.1,0.3,,0.5,0.01,0.3,7303\n" + row + b"\n")
        cli_error(capsys, "report", folder, fragments=("metrics.csv", fragment))
    write_run(tmp_path / "bom", b"\xef\xbb\xbf" + header + b"1,nan,0.1,,0.1,0.01,0.3,7303\n2,inf,0.8,,0.8,0.01,0.3,7303\n")
    assert main(["report", str(tmp_path / "bom")]) == 0
    assert "Best test acc at epoch 2: test accuracy 0.8000" in (tmp_path / "bom" / "report.md").read_text()


@pytest.mark.parametrize("content,fragment", [
    (b"epoch,train_loss,train_acc,val_acc,test_acc,lr,epoch_time_s,images_per_s\n1,abc,0.5,,0.9,0.1,3,100\n",
     "line 2 holds a value that is not a number"),
    (b"epoch,train_loss\n\xff\xfe\x00garbage\n", "cannot read metrics"),
    (b"epoch,loss\n1,2\n", "lacks the columns train_loss, train_acc"),
    (b"", "holds no logged step"),
    (b"\x00garbage;;;\n", "holds no logged step (an empty file, or a header alone)"),
    (b"epoch,train_loss,train_acc,val_acc,test_acc,lr,epoch_time_s,images_per_s\nnan,1,0.5,,0.9,0.1,3,100\n",
     "line 2: epoch 'nan' is not an epoch number"),
    (b"epoch,train_loss,train_acc,val_acc,test_acc,lr,epoch_time_s,images_per_s\n-inf,1,0.5,,0.9,0.1,3,100\n",
     "line 2: epoch '-inf' is not an epoch number"),
])
def test_report_on_damaged_metrics(tmp_path, content, fragment):
    write_run(tmp_path / "run", content)
    assert_user_error(run_cli("report", tmp_path / "run"), "metrics.csv", fragment)


def test_report_on_a_run_whose_last_epoch_is_not_scored(tmp_path):
    """--eval-every 2 stopped after epoch 3 (or `report` while it trains): the last row has no accuracy,
    which crashed the report (TypeError formatting None); and the best epoch is chosen by val_acc when any
    epoch has one, not only when the last has."""
    from convzoo.cli import main

    header = b"epoch,train_loss,train_acc,val_acc,test_acc,lr,epoch_time_s,images_per_s\n"
    write_run(tmp_path / "run", header + b"1,0.9,0.6,,,0.1,3,100\n2,0.5,0.8,0.81,0.8,0.1,3,100\n3,0.4,0.85,,,0.1,3,100\n")
    assert main(["report", str(tmp_path / "run")]) == 0
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Best val acc at epoch 2: test accuracy 0.8000; last epoch: -;" in report, report


def test_report_on_hostile_config_yaml(tmp_path, capsys):
    """A 464-byte alias bomb hung `report` with memory growing without end; a value holding a newline
    added a heading of its own to report.md."""
    header = b"epoch,train_loss,train_acc,val_acc,test_acc,lr,epoch_time_s,images_per_s\n"
    write_run(tmp_path / "bomb", header + b"1,0.3,0.9,,0.95,0.1,3.5,120\n")
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    (tmp_path / "bomb" / "config.yaml").write_text("\n".join(lines) + "\nmodel: lenet5\n")
    cli_error(capsys, "report", tmp_path / "bomb", fragments=("config.yaml", "expands to over 100,000 values"))
    # A 5,000-digit integer (Python's int-to-string limit) and a base-60 one (minutes of CPU at 1 MB).
    for number in ("1" * 5000, "1" + ":30" * 3000):
        (tmp_path / "bomb" / "config.yaml").write_text(f"model: lenet5\nx: {number}\n")
        cli_error(capsys, "report", tmp_path / "bomb", fragments=("config.yaml", "integer of over 100 characters"))

    write_run(tmp_path / "odd", header + b"1,0.3,0.9,,0.95,0.1,3.5,120\n")
    (tmp_path / "odd" / "config.yaml").write_text('model: "lenet5\\n# injected"\nbatch_size: {a: [1, 2]}\n')
    from convzoo.cli import main

    assert main(["report", str(tmp_path / "odd")]) == 0
    report = (tmp_path / "odd" / "report.md").read_text()
    assert "\n# injected" not in report and "model=lenet5\\n# injected" in report


def test_report_eval_and_predict_never_write_over_their_inputs(tmp_path, capsys):
    """`report run --output run/metrics.csv`, `eval --confusion best.pt`, `predict --grid model.onnx`
    replaced the file with markdown or a PNG and exited 0."""
    import shutil

    from convzoo.models.pretrained import pretrained_path

    header = b"epoch,train_loss,train_acc,val_acc,test_acc,lr,epoch_time_s,images_per_s\n"
    write_run(tmp_path / "run", header + b"1,0.3,0.9,,0.95,0.1,3.5,120\n")
    weights = tmp_path / "run" / "best.pt"
    shutil.copy(pretrained_path("lenet5:mnist"), weights)
    before = {f.name: f.read_bytes() for f in (tmp_path / "run").iterdir()}
    for name in ("metrics.csv", "best.pt"):
        cli_error(capsys, "report", tmp_path / "run", "--output", tmp_path / "run" / name,
                  fragments=(name, "is also the input"))
    cli_error(capsys, "report", tmp_path / "run", "--output", tmp_path / "r.html", "--html",
              fragments=("r.html", "written to this one file"))
    for name in ("r.png", "r.html", "report"):  # markdown under another kind's name: a broken image or page
        cli_error(capsys, "report", tmp_path / "run", "--output", tmp_path / name,
                  fragments=(name, "the report is markdown: choose an --output ending in .md"))
        assert not (tmp_path / name).exists()
    cli_error(capsys, "eval", "--ckpt", weights, "--confusion", weights, fragments=("best.pt", "is also the input"))
    cli_error(capsys, "eval", "--ckpt", weights, "--confusion", tmp_path / "run" / "metrics.csv",
              fragments=("metrics.csv", "must end in .png"))
    cli_error(capsys, "predict", "--model", weights, "--from-test", "4", "--grid", weights,
              fragments=("best.pt", "is also the input"))
    assert {f.name: f.read_bytes() for f in (tmp_path / "run").iterdir()} == before


def folder_state(folder) -> dict:
    """Each file's bytes, inode and mtime: a file rewritten with the same bytes shows too."""
    return {f.name: (f.read_bytes(), f.stat().st_ino, f.stat().st_mtime_ns) for f in sorted(folder.iterdir())}


def test_report_with_output_elsewhere_leaves_the_run_folder_untouched(tmp_path):
    """`report run --output elsewhere/r.md` still wrote the run's own curves.png (replacing it, or
    failing on a read-only run folder with no report); its curves now go beside the report, which
    links them, and the run folder is left as it was."""
    from convzoo.report.plots import plot_kind

    header = b"epoch,train_loss,train_acc,val_acc,test_acc,lr,epoch_time_s,images_per_s\n"
    run = tmp_path / "run"
    write_run(run, header + b"1,0.9,0.6,,0.7,0.1,3,100\n2,0.5,0.8,,0.8,0.1,3,100\n")
    run_cli("report", run, check=0)  # the run's own report.md and curves.png, as `train` leaves them
    before = folder_state(run)
    assert {"report.md", "curves.png"} <= set(before)
    out = tmp_path / "elsewhere" / "r.md"
    out.parent.mkdir()
    run_cli("report", run, "--output", out, "--html", check=0)
    assert folder_state(run) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["r-curves.png", "r.html", "r.md"]
    assert plot_kind(out.parent / "r-curves.png") == "curves"
    assert "![curves](r-curves.png)" in out.read_text()
    run_cli("report", run, "--output", out, check=0)  # its own earlier curves are replaced
    assert folder_state(run) == before


def test_report_of_several_runs_never_writes_over_a_users_files(tmp_path, capsys, monkeypatch):
    """`report a b --html` wrote ./report.md, ./report.html and ./report-curves.png over a user's own
    files of those names; it refuses them now, and still replaces its own earlier report."""
    from convzoo.cli import main

    header = b"epoch,train_loss,train_acc,val_acc,test_acc,lr,epoch_time_s,images_per_s\n"
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        write_run(run, header + b"1,0.3,0.9,,0.95,0.1,3.5,120\n")
    report = ("report", *runs, "--html")
    for name in ("report.md", "report.html", "report-curves.png"):
        user = tmp_path / name.replace(".", "-")
        user.mkdir()
        if name.endswith(".png"):
            Image.new("RGB", (8, 8), "red").save(user / name)  # a photo: a PNG convzoo did not write
        else:
            (user / name).write_text("my own thesis notes\n")
        mine = (user / name).read_bytes()
        monkeypatch.chdir(user)
        cli_error(capsys, *report, fragments=(name, "convzoo did not write"))
        assert [p.name for p in user.iterdir()] == [name] and (user / name).read_bytes() == mine  # nothing written
    monkeypatch.chdir(tmp_path)
    assert main([str(a) for a in report]) == 0
    first = (tmp_path / "report.md").read_text()
    assert "# 2 runs compared" in first and (tmp_path / "report.html").is_file()
    assert main([str(a) for a in report]) == 0  # its own earlier report is replaced
    assert (tmp_path / "report.md").read_text() == first
    (tmp_path / "notes.md").write_text("mine\n")
    cli_error(capsys, "report", runs[0], "--output", "notes.md", fragments=("notes.md", "did not write"))
    assert (tmp_path / "notes.md").read_text() == "mine\n"


def test_error_text_stays_on_one_line_and_off_the_terminal_controls():
    from convzoo.errors import ConfigError, printable

    assert printable("a\nb\r\x1b[31m\x9b31m\u2028\x85 ü 名") == "a\\nb\\r\\x1b[31m\\x9b31m\\u2028\\x85 ü 名"
    assert printable("cat\u202egod\u2066") == "cat\\u202egod\\u2066"  # bidirectional overrides
    assert str(ConfigError("not an image", "bad\nname.png")) == "bad\\nname.png: not an image"


def test_predict_patterns_do_not_follow_symlinked_folders(tmp_path):
    """glob.glob's `**` followed a link to a parent folder and ran forever; a name holding a newline
    split the one-line error in two."""
    folder = tmp_path / "lp" / "a"
    folder.mkdir(parents=True)
    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(folder / "16.png")
    (folder / "up").symlink_to("..")
    (folder / "self").symlink_to(".")
    proc = run_cli("predict", "--model", "lenet5:mnist", "lp/**/16.png", cwd=tmp_path, timeout=120, check=0)
    assert proc.stdout.splitlines()[0].startswith("lp/a/16.png: ") and len(proc.stdout.splitlines()) == 1
    (folder / "bad\nname.png").write_bytes(b"garbage")
    line = assert_user_error(run_cli("predict", "--model", "lenet5:mnist", folder / "bad\nname.png", timeout=120))
    assert "bad\\nname.png" in line
    assert_user_error(run_cli("predict", "--model", "lenet5:mnist", "lp/a**.png", cwd=tmp_path, timeout=120),
                      "lp/a**.png", "invalid pattern")


def test_report_on_damaged_config(tmp_path):
    header = b"epoch,train_loss,train_acc,val_acc,test_acc,lr,epoch_time_s,images_per_s\n"
    write_run(tmp_path / "run", header + b"1,0.3,0.9,,0.95,0.1,3.5,120\n")
    (tmp_path / "run" / "config.yaml").write_bytes(b"model: [unclosed\n\xff")
    assert_user_error(run_cli("report", tmp_path / "run"), "cannot read config.yaml")


def test_a_path_that_does_not_exist_is_said_not_to(tmp_path, capsys):
    """`--data-path nonexist_dir` said "is not a folder", `report nonexist` "not a run directory (no
    metrics.csv)": a mistyped path is named as missing; a file, or a folder holding no run, keep their words."""
    gone = tmp_path / "nowhere"
    cli_error(capsys, "report", gone, fragments=[f"{gone}: no such folder"])
    cli_error(capsys, "report", tmp_path, fragments=[f"{tmp_path}: not a run directory (no metrics.csv)"])
    for command in (["data", "info", "mnist"], ["eval", "--ckpt", "lenet5:mnist"],
                    ["train", "--dataset", "folder", "--output-dir", tmp_path / "run"]):
        cli_error(capsys, *command, "--data-path", gone, fragments=[f"{gone}: no such folder (--data-path)"])
    (tmp_path / "notes.txt").write_text("a file")
    cli_error(capsys, "data", "info", "mnist", "--data-path", tmp_path / "notes.txt",
              fragments=[f"{tmp_path / 'notes.txt'}: --data-path is not a folder"])
    assert not (tmp_path / "run").exists()


@pytest.mark.real_data
def test_predict_into_a_closed_pipe_ends_quietly(tmp_path):
    """`convzoo predict ... --json | head -1`: no BrokenPipeError traceback when the reader leaves."""
    from convzoo.data import formats

    digits = formats.read_idx_images(need(MNIST_DIR) / "t10k-images-idx3-ubyte.gz")[:300, 0]
    for i, d in enumerate(digits):
        Image.fromarray(d).save(tmp_path / f"{i:03d}.png")
    command = f"{sys.executable} -m convzoo predict --model lenet5:mnist --json {tmp_path} | head -1"
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=300,
                          env=cli_env())
    assert json.loads(proc.stdout)["class"] == "7"
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 141), proc.returncode


def test_first_line_cuts_long_messages_at_a_word():
    """Runtimes' messages (onnxruntime's are one long line of paths) are cut for a one-line error
    at a word's end, marked with '...', never mid-word."""
    from convzoo.errors import first_line

    long = RuntimeError("Load model from /tmp/x.onnx failed: " + "opset 999 is not supported by this build " * 8 + "\nmore")
    cut = first_line(long)
    assert len(cut) <= 160 and cut.endswith("...") and long.args[0].startswith(cut[:-3])
    assert long.args[0][len(cut) - 3] == " "  # the cut falls between words
    assert first_line(ValueError("short\nsecond")) == "short" and first_line(KeyError()) == "KeyError"


def test_outputs_that_would_destroy_an_input_or_cannot_be_written(tmp_path, capsys):
    """`export --ckpt best.pt --output best.pt` replaced the weights with ONNX and exited 0, and
    `quantize --ckpt qat.pt --output-dir .` replaced its own input; a path through a file, a folder
    that is a file and a mirror that is not a URL were tracebacks. Each is one line now, and the
    input is unchanged."""
    from convzoo.cli import main
    from convzoo.engine.checkpoint import load_checkpoint, save_checkpoint
    from convzoo.models.pretrained import pretrained_path

    weights = tmp_path / "w.safetensors"
    weights.write_bytes(pretrained_path("lenet5:mnist").read_bytes())
    (tmp_path / "q").mkdir()
    own_qat = tmp_path / "q" / "qat.pt"  # a float checkpoint named as quantize names its own output
    save_checkpoint(own_qat, load_checkpoint(weights))
    saved = own_qat.read_bytes()
    (tmp_path / "afile").write_text("x")
    before = weights.read_bytes()
    cases = [
        (["export", "--ckpt", weights, "--output", weights], "is also the input"),
        (["export", "--ckpt", weights, "--output", tmp_path / "." / "w.safetensors", "--int8"], "is also the input"),
        (["export", "--ckpt", weights, "--format", "pt2", "--output", weights], "is also the input"),
        (["export", "--ckpt", weights, "--output", tmp_path / "w.txt"], "must end in .onnx"),
        (["export", "--ckpt", weights, "--output", tmp_path / ".onnx"], "needs a name before .onnx (e.g. model.onnx)"),
        (["export", "--ckpt", weights, "--format", "pt2", "--int8", "--output", tmp_path / "w.pt2"], "--int8 makes an ONNX"),
        (["export", "--ckpt", weights, "--output", ""], "argument --output: must not be empty"),
        (["export", "--ckpt", weights, "--output", weights / "x.onnx"], "cannot create this folder"),
        (["quantize", "--ckpt", own_qat, "--output-dir", tmp_path / "q"], "is also the input"),
        (["quantize", "--ckpt", weights, "--output-dir", tmp_path / "afile"], "--output-dir is a file"),
        (["quantize", "--ckpt", weights, "--output-dir", tmp_path / "afile" / "sub"], "cannot create this folder"),
        (["data", "download", "mnist", "--data-path", tmp_path / "dl", "--mirror", "not a url"], "--mirror must be"),
    ]
    for argv, fragment in cases:
        assert main([str(a) for a in argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("convzoo: error:") and fragment in err, (argv, err)
    assert weights.read_bytes() == before and own_qat.read_bytes() == saved
    assert not (tmp_path / "dl").exists() and not (tmp_path / "w.txt").exists()


def test_export_replaces_an_existing_file_only_with_exist_ok(tmp_path, capsys):
    """`export --output notes.onnx` silently replaced a user's file (a text file, another tool's model);
    it is refused now, as convert's output is, and --exist-ok overwrites it. The line printed is for
    people; --json gives the dict."""
    from convzoo.cli import main

    for name, args in (("notes.onnx", []), ("theirs.pt2", ["--format", "pt2"]), ("theirs-int8.onnx", ["--int8"])):
        taken = tmp_path / name
        taken.write_text("my notes\n")
        cli_error(capsys, "export", "--ckpt", "lenet5:mnist", "--output", taken, *args,
                  fragments=(name, "already exists", "--exist-ok"))
        assert taken.read_text() == "my notes\n"
    notes = tmp_path / "notes.onnx"
    assert main(["export", "--ckpt", "lenet5:mnist", "--output", str(notes), "--exist-ok"]) == 0
    line = capsys.readouterr().out
    assert line.startswith(f"wrote {notes}: checked in onnxruntime, max |logit difference| vs PyTorch ")
    assert line.count("\n") == 1 and onnx.load(str(notes)).metadata_props[0].key == "convzoo"
    assert main(["export", "--ckpt", "lenet5:mnist", "--output", str(notes), "--exist-ok", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["path"] == str(notes) and result["max_abs_diff"] <= 1e-4
    # convzoo's own earlier export is kept too without --exist-ok, as convert's output is
    cli_error(capsys, "export", "--ckpt", "lenet5:mnist", "--output", notes, fragments=("already exists",))


@pytest.mark.real_data
def test_weights_must_be_float16_to_float64(tmp_path, capsys):
    """float8 weights crashed predict, eval, train --restore and convzoo.load with a traceback ('isfinite'
    not implemented for 'Float8_e4m3fn'); integer, bool and uint16/uint32 ones were cast silently (uint16
    weights gave 0.1 for every class). Each is one line naming the tensor and its dtype; float16, bfloat16
    and float64 weights load, and BatchNorm's int64 num_batches_tracked is still allowed."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    import convzoo
    from convzoo.engine.checkpoint import FORMAT, load_checkpoint
    from convzoo.errors import CheckpointError
    from convzoo.models.pretrained import pretrained_path

    shipped = pretrained_path("lenet5:mnist")
    with safe_open(str(shipped), framework="pt") as f:
        meta = f.metadata()
    good = load_checkpoint(shipped)
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "digit.png")

    def forged(dtype, suffix):
        state = {**good["state_dict"], "fc1.weight": good["state_dict"]["fc1.weight"].to(dtype)}
        path = tmp_path / f"{str(dtype).removeprefix('torch.')}{suffix}"
        if suffix == ".safetensors":
            save_file(state, path, metadata=meta)
        else:
            torch.save({"format": FORMAT, "version": 1, **good, "state_dict": state}, path)
        return path

    bad = [torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.float8_e5m2, torch.int8, torch.uint16, torch.uint32,
           torch.bool, torch.int64]
    for dtype in bad:
        name = str(dtype).removeprefix("torch.")
        for suffix in (".pt", ".safetensors") if dtype != torch.float8_e4m3fnuz else (".pt",):
            path = forged(dtype, suffix)
            fragments = (path.name, f"tensor 'fc1.weight' is {name}", "float16, bfloat16, float32 or float64")
            cli_error(capsys, "predict", "--model", path, tmp_path / "digit.png", fragments=fragments)
            cli_error(capsys, "eval", "--ckpt", path, "--data-path", need(MNIST_DIR), fragments=fragments)
            with pytest.raises(CheckpointError, match=f"is {name};"):
                convzoo.load(path)
    f8 = tmp_path / "float8_e4m3fn.safetensors"  # the reported case, through the real command line
    assert_user_error(run_cli("predict", "--model", f8, tmp_path / "digit.png"), "is float8_e4m3fn")
    assert_user_error(run_cli("train", "--model", "lenet5", "--data-path", MNIST_DIR, "--train-limit", "64",
                              "--epochs", "1", "--restore", f8, "--output-dir", tmp_path / "run"), "is float8_e4m3fn")
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        assert load_checkpoint(forged(dtype, ".safetensors"))["state_dict"]["fc1.weight"].dtype == dtype
    from convzoo.engine.checkpoint import load_weights
    from convzoo.models.registry import create_model

    save_file(create_model("airbench", in_channels=3).state_dict(), tmp_path / "airbench.safetensors")
    norm = load_weights(tmp_path / "airbench.safetensors")["groups.0.norm1.num_batches_tracked"]
    assert norm.dtype == torch.int64  # BatchNorm's counter is the one integer tensor allowed


def test_an_image_or_other_file_given_as_the_model(tmp_path, capsys):
    import convzoo

    """Swapped arguments (`predict --model digit.png x.png`) said 'refused to load: the file needs
    arbitrary unpickling, which could run code (Unsupported operand 80)': the file's kind is named now."""
    digit = Image.fromarray(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28))
    digit.save(tmp_path / "digit.png")
    digit.save(tmp_path / "photo.jpg", quality=90)
    (tmp_path / "notes.pt").write_text("my notes\n")
    png, jpg = tmp_path / "digit.png", tmp_path / "photo.jpg"
    assert_user_error(run_cli("predict", "--model", png, png), f"{png}: not a checkpoint or model: a PNG image")
    assert_user_error(run_cli("eval", "--ckpt", jpg), f"{jpg}: not a checkpoint or model: a JPEG image")
    cli_error(capsys, "predict", "--model", jpg, png, fragments=("photo.jpg", "a JPEG image"))
    cli_error(capsys, "eval", "--ckpt", png, fragments=("digit.png", "a PNG image"))
    cli_error(capsys, "export", "--ckpt", png, "--output", tmp_path / "m.onnx", fragments=("digit.png", "a PNG image"))
    cli_error(capsys, "eval", "--ckpt", tmp_path / "notes.pt", fragments=("notes.pt", "unrecognised format"))
    # a folder or a pipe is named as such (it was "model file not found", which the user could see was wrong)
    (tmp_path / "run.onnx").mkdir()
    os.mkfifo(tmp_path / "pipe.pt")
    for path in (tmp_path / "run.onnx", tmp_path / "pipe.pt"):
        cli_error(capsys, "predict", "--model", path, png, fragments=(path.name, "not a regular file (a folder"))
    cli_error(capsys, "eval", "--ckpt", tmp_path, fragments=(str(tmp_path), "not a regular file (a folder"))
    for bad in (None, 3, b"lenet5:mnist", ""):  # the API: a named ConfigError, not 'None: checkpoint not found'
        with pytest.raises(convzoo.ConfigError, match="^model must be a file path or a NAME:DATASET name, got "):
            convzoo.load(bad)


def test_version_flag():
    """`convzoo --version` was "unrecognized arguments" (and named convzoo twice)."""
    from importlib.metadata import version

    proc = run_cli("--version", check=0)
    assert proc.stdout.strip() == f"convzoo {version('convzoo')}"


def help_text(capsys, *args) -> str:
    """`convzoo ARGS --help`'s text, its lines joined (argparse wraps them at any word)."""
    from convzoo.cli import main

    with pytest.raises(SystemExit) as exited:
        main([*args, "--help"])
    assert exited.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_help_shows_train_defaults_and_what_each_flag_applies_to(capsys):
    """`train --help` showed no defaults (they are TrainConfig's, the parser's being None), `--shift-pad`
    named --augment shift alone, `data` left out `sample`, and `export --output`'s default did not say
    where a shipped name's file goes."""
    import dataclasses

    from convzoo.cli import build_parser
    from convzoo.config import TrainConfig

    text = help_text(capsys, "train")
    for flag, shown in (("--lr", "peak learning rate (default: 0.01)"), ("--epochs", "epochs (default: 10)"),
                        ("--batch-size", "global batch size (default: 64)"), ("--augment", "(default: none)"),
                        ("--shift-pad", "for --augment shift, shift-flip and shift-altflip (default: 4)"),
                        ("--model", "(default: lenet5)"),
                        ("--lr-gamma", "decay factor (--schedule step) (default: 0.1)")):
        assert shown in text, (flag, text)
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    helps = {a.dest: a.help for a in train._actions}
    for f in dataclasses.fields(TrainConfig):  # each one with a value to show (not an on/off flag) shows it
        if f.default in (None, dataclasses.MISSING) or isinstance(f.default, bool):
            continue
        shown = f"{f.default:g}" if isinstance(f.default, float) else f.default
        assert helps[f.name].endswith(f"(default: {shown})"), f.name
    assert "(default: runs/MODEL-DATASET)" in text and "(default: found in $CONVZOO_DATA" in text
    assert "a --config preset or file replaces them with its settings" in text
    assert "download | verify | info | sample a data set" in help_text(capsys)
    assert "for a shipped NAME:DATASET, in the current folder: lenet5:mnist -> ./lenet5-mnist.onnx" in \
        help_text(capsys, "export")


def test_an_unknown_command_is_named_once(capsys):
    """The top level's own argparse errors had the program's name twice: `convzoo: error: convzoo: ...`."""
    from convzoo.cli import main

    for args, start in ((["models"], "convzoo: error: argument COMMAND: invalid choice: 'models'"),
                        (["eval", "--runtime", "x"], "convzoo: error: eval: argument --runtime: invalid choice")):
        with pytest.raises(SystemExit) as exit_:  # the parser's own line
            main(args)
        error = capsys.readouterr().err
        assert exit_.value.code == 2 and error.count("\n") == 1 and error.startswith(start), error


def test_summary_refuses_one_class_as_train_does(capsys):
    """`summary --model lenet5 --num-classes 1` printed a one-output fc3, a model train refuses to make."""
    from convzoo.cli import main

    with pytest.raises(SystemExit) as exit_:  # the parser's range, as for every number flag
        main(["summary", "--model", "lenet5", "--num-classes", "1"])
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and "--num-classes: 1 is outside 2..10000" in error, error

    assert main(["summary", "--model", "lenet5", "--num-classes", "2"]) == 0
    assert "fc3" in capsys.readouterr().out


def test_the_api_takes_a_path_object_as_config_and_model_is_made_by_load(tmp_path, monkeypatch):
    """convzoo.train(Path("my.yaml")) said 'config must be a preset name, a TrainConfig or a dict, not
    PosixPath' while the str worked; a Path without a .yaml suffix is the file too, not a preset's name.
    convzoo.Model("lenet5:mnist") was a bare TypeError and Model("a", "b") an AttributeError: a
    ConvzooError saying to use convzoo.load, which still makes one."""
    from pathlib import Path

    import convzoo

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "d" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(tmp_path / "d" / c / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    recipe = "model: lenet5\ndataset: folder\ndata_path: d\nepochs: 1\nbatch_size: 2\nthreads: 1\n"
    for name in ("my.yaml", "recipe"):  # 'recipe' alone would be looked up as a shipped preset's name
        Path(name).write_text(recipe + f"output_dir: run-{name}\n")
        result = convzoo.train(Path(name), quiet=True)
        assert Path(result["checkpoint"]) == Path(f"run-{name}") / "best.pt" and Path(result["checkpoint"]).is_file()
    for args in (("lenet5:mnist",), ("a", "b"), ()):
        with pytest.raises(convzoo.ConvzooError, match=r"^a Model is made by convzoo.load\(PATH_OR_NAME\)"):
            convzoo.Model(*args)
    model = convzoo.load("lenet5:mnist")
    assert isinstance(model, convzoo.Model) and model.name == "lenet5" and len(model.classes) == 10


def test_ctrl_c_after_the_command_is_over_prints_no_traceback(tmp_path):
    """A Ctrl-C in the second or two the interpreter takes to tear torch down after the command's last
    line printed 'Exception ignored in atexit callback ... KeyboardInterrupt' with a traceback. The
    SIGINT is sent by an atexit callback registered before the command runs, so it lands during the
    teardown; both ways the command is started (the console script, python -m) go through cli.run."""
    import tomllib

    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"] == {"convzoo": "convzoo.cli:run"}
    assert "run()" in (ROOT / "convzoo" / "__main__.py").read_text()
    for start in ("from convzoo.cli import run; sys.exit(run())",  # what the console script does
                  "runpy.run_module('convzoo', run_name='__main__', alter_sys=True)"):
        code = ("import atexit, os, runpy, signal, sys\n"
                "atexit.register(lambda: os.kill(os.getpid(), signal.SIGINT))\n"
                "sys.argv = ['convzoo', 'data', 'info', 'mnist', '--data-path', sys.argv[1], '--json']\n" + start)
        proc = subprocess.run([sys.executable, "-c", code, need(MNIST_DIR)], cwd=ROOT, env=cli_env(),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and json.loads(proc.stdout)["counts"]["test"] == 10_000, proc.stderr
        assert "KeyboardInterrupt" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
