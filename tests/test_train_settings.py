"""`train`'s settings from files and flags: --config files (alias bombs, duplicate keys, flag spellings),
the batch-size check whatever --steps-per-epoch says, and what --resume lets differ from the run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import MNIST_DIR, assert_user_error, cli_error, need, run_cli, start_cli

MNIST = ["--data-path", MNIST_DIR]


def alias_bomb(levels: int) -> str:
    """A YAML flow list of `levels` nested aliases, 9 wide: 9^levels values once expanded."""
    value, previous = '[&a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]', "a0"
    for i in range(1, levels):
        value += f", &a{i} [" + ",".join([f"*{previous}"] * 9) + "]"
        previous = f"a{i}"
    return value + f", *{previous}]"


@pytest.mark.parametrize("key", ["lr", "classes", "freeze", "model", "restore_exclude"])
def test_an_alias_bomb_in_a_config_file_is_refused_at_once(tmp_path, key):
    """Under a known key it ran for minutes growing to GBs (it was checked, then printed, in full); it is
    refused by the cap `report` applies to a run's config.yaml, before any value is looked at."""
    path = tmp_path / "abomb.yaml"
    path.write_text(("" if key == "model" else "model: lenet5\n") + f"dataset: mnist\n{key}: {alias_bomb(9)}\n")
    proc = run_cli("train", "--config", path, "--output-dir", tmp_path / "run", timeout=60)
    assert_user_error(proc, "abomb.yaml", "expands to over 100,000 values (YAML aliases)")
    assert not (tmp_path / "run").exists()


def test_a_huge_value_is_never_written_out_whole_for_an_error():
    """A value of 9^9 shared items given through the API: its error message was made from str(value)
    (minutes, GBs) before being cut to 60 characters."""
    code = ("import convzoo\nfrom convzoo.errors import ConfigError\nv = ['lol'] * 9\n"
            "for _ in range(8): v = [v] * 9\n"
            "try:\n    convzoo.train(lr=v)\nexcept ConfigError as exc:\n    print(exc)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "lr must be a finite number" in proc.stdout and len(proc.stdout) < 200, proc


def test_a_key_given_twice_names_the_key_and_line(tmp_path, capsys):
    """YAML keeps the last of two `epochs:` lines: the run trained for an epoch count the user had
    perhaps meant to replace. Refused by the loader `report` shares."""
    path = tmp_path / "twice.yaml"
    path.write_text("model: lenet5\nepochs: 1\nlr: 0.1\nepochs: 2\n")
    cli_error(capsys, "train", "--config", path, "--output-dir", tmp_path / "run",
              fragments=("twice.yaml", "key 'epochs' is given twice", "line 4"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.csv").write_text("epoch,train_loss,train_acc,val_acc,test_acc,lr,epoch_time_s,"
                                                 "images_per_s\n1,0.3,0.9,,0.95,0.1,3.5,120\n")
    (tmp_path / "run" / "config.yaml").write_text("model: lenet5\nmodel: lenet5-keras\n")
    cli_error(capsys, "report", tmp_path / "run", fragments=("config.yaml", "key 'model' is given twice"))
    from convzoo import yamlfile

    # a merge key's values may be overridden: that is what it is for
    merged = yamlfile.load_settings("base: &b {epochs: 1, lr: 0.1}\nrun:\n  <<: *b\n  epochs: 2\n")
    assert merged["run"] == {"epochs": 2, "lr": 0.1}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 1-epoch run (constant schedule: --resume --epochs 2 continues it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    run_cli("train", "--model", "lenet5", "--data-path", need(MNIST_DIR), "--train-limit", "640", "--test-limit",
            "200", "--epochs", "1", "--threads", "1", "--output-dir", out, "--quiet", check=0)
    return out


def run_files(run) -> dict:
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}


@pytest.mark.real_data
@pytest.mark.parametrize("extra", [
    ["--train-limit", "10", "--steps-per-epoch", "3"],
    ["--val-split", "0.5", "--train-limit", "100", "--batch-size", "60", "--steps-per-epoch", "3"],
    ["--procs", "2", "--train-limit", "10", "--steps-per-epoch", "3"],
])
def test_a_batch_larger_than_the_training_set_is_refused_whatever_the_steps(tmp_path, finished_run, extra):
    """With --steps-per-epoch the check was skipped: a ZeroDivisionError in the first step, after the
    run folder was created (and, with --exist-ok, after a finished run's files were deleted)."""
    base = ["train", "--model", "lenet5", *MNIST, "--epochs", "1", "--threads", "1", *extra]
    assert_user_error(run_cli(*base, "--output-dir", tmp_path / "new"), "--batch-size", "is larger than the")
    assert not (tmp_path / "new").exists()
    before = run_files(finished_run)
    assert {"best.pt", "last.pt", "metrics.csv", "summary.json", "curves.png"} <= set(before)
    assert_user_error(run_cli(*base, "--output-dir", finished_run, "--exist-ok"), "is larger than the")
    assert run_files(finished_run) == before


@pytest.mark.real_data
def test_the_api_refuses_a_batch_larger_than_the_training_set(tmp_path):
    import convzoo

    with pytest.raises(convzoo.ConfigError, match="--batch-size 5000 is larger than the 640 training images"):
        convzoo.train(model="lenet5", data_path=need(MNIST_DIR), train_limit=640, batch_size=5000,
                      steps_per_epoch=2, epochs=1, output_dir=tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_every_setting_has_a_resume_rule():
    """Each TrainConfig field is held to the run's value on --resume, checked on its own, or free: a new
    field must be placed (settings that changed the run were taken silently)."""
    import dataclasses

    from convzoo.config import RESUME_FREE, RESUME_OWN_CHECK, RESUME_SAME, TrainConfig

    placed = [*RESUME_SAME, *RESUME_OWN_CHECK, *RESUME_FREE]
    assert sorted(placed) == sorted(f.name for f in dataclasses.fields(TrainConfig))


@pytest.mark.real_data
@pytest.mark.parametrize("flags, fragment", [
    (["--train-limit", "1000"], "--train-limit 1000 differs from the run's 640"),
    (["--lr", "0.5"], "--lr 0.5 differs from the run's 0.01"),
    (["--augment", "shift"], "--augment shift differs from the run's none"),
    (["--momentum", "0.5"], "--momentum 0.5 differs from the run's 0.9"),
    (["--label-smoothing", "0.3"], "--label-smoothing 0.3 differs from the run's 0.0"),
    (["--weight-decay", "0.1"], "--weight-decay 0.1 differs from the run's 0.0"),
    (["--amp", "bf16"], "--amp bf16 differs from the run's none"),
    (["--warmup-epochs", "0.5"], "--warmup-epochs 0.5 differs from the run's 0.0"),
    (["--test-limit", "300"], "--test-limit 300 differs from the run's 200"),
    (["--freeze", "conv1.*"], "--freeze conv1.* differs from the run's (not set)"),
    (["--restore", "other.pt"], "--restore other.pt does not go with --resume"),
    # these blamed the run: "checkpoint was trained with a 1-epoch onecycle schedule" (the run's is constant)
    (["--schedule", "onecycle"], "--schedule onecycle differs from the run's constant"),
    (["--config", "lenet5-mnist"], "--batch-size 128 differs from the run's 64"),
    # a target the run had met before it was set: the time recorded was a later evaluation's
    (["--target-acc", "0.1"], "so --target-acc 0.1 was met before this resume"),
])
def test_resume_refuses_settings_that_change_the_run(finished_run, tmp_path, capsys, flags, fragment):
    """Each was taken with rc 0 and written into config.yaml as if the whole run had used it (--restore was
    ignored; --freeze failed on the optimizer's state in internal words)."""
    before = run_files(finished_run)
    cli_error(capsys, "train", "--resume", "--output-dir", finished_run, "--epochs", "2", *MNIST, *flags,
              fragments=("last.pt", fragment))
    assert run_files(finished_run) == before


@pytest.mark.real_data
def test_resume_compares_the_training_images_not_their_path(finished_run, tmp_path, capsys):
    """The same files elsewhere resume; other training images (recorded count and fingerprint) do not."""
    import shutil

    import torch

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["train_data"]["images"] == 640
    for forged, fragment in (({"images": 700}, "the run trained on 700 images, this one would on 640"),
                             ({"fingerprint": "0" * 16}, "the 640 training images are not the run's")):
        torch.save({**state, "train_data": {**state["train_data"], **forged}}, run / "last.pt")
        cli_error(capsys, "train", "--resume", "--output-dir", run, "--epochs", "2", *MNIST,
                  fragments=("last.pt", fragment, "resume needs the same data"))
    torch.save(state, run / "last.pt")
    copy = shutil.copytree(MNIST_DIR, tmp_path / "mnist-copy")
    run_cli("train", "--resume", "--output-dir", run, "--epochs", "2", "--data-path", copy, "--quiet", check=0)


@pytest.mark.real_data
def test_a_target_new_on_resume_is_taken_when_the_run_never_met_it(finished_run, tmp_path):
    """The other side of refusing a --target-acc the run had met before the resume (parametrized above):
    one it never met is a target like any other, timed from the run's start."""
    import json
    import shutil

    run = shutil.copytree(finished_run, tmp_path / "run")
    run_cli("train", "--resume", "--output-dir", run, "--epochs", "2", *MNIST, "--target-acc", "0.9999", "--quiet",
            check=0)
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["epoch"], summary["target_acc"], summary["reached"]) == (2, 0.9999, None)


@pytest.mark.real_data
def test_a_run_that_reached_its_target_is_not_resumed(tmp_path, capsys):
    """It resumed at the next epoch (skipping the rest of the one it stopped in), trained on and wrote
    over summary.json's `reached`."""
    out = tmp_path / "run"
    run_cli("train", "--model", "lenet5", *MNIST, "--train-limit", "3200", "--test-limit", "500", "--epochs", "3",
            "--lr", "0.05", "--target-acc", "0.5", "--eval-every-steps", "10", "--threads", "1", "--output-dir", out,
            "--quiet", check=0)
    before = run_files(out)
    assert '"reached": {' in before["summary.json"].decode()
    cli_error(capsys, "train", "--resume", "--output-dir", out, *MNIST,
              fragments=("last.pt", "run already reached its target accuracy 0.5", "nothing to resume"))
    assert run_files(out) == before


def test_config_file_keys_may_be_spelt_as_the_flags(tmp_path, capsys):
    """README and --help say "keys as the flags", yet eval_every_steps, lr_step_size, lr_gamma and
    batch-size were unknown keys (only the internal eval_steps, step_size, gamma worked)."""
    from convzoo.config import build_config

    path = tmp_path / "k.yaml"
    path.write_text("model: lenet5\neval_every_steps: 5\nlr_step_size: 3\nlr-gamma: 0.5\nbatch-size: 32\n"
                    "learning_rate: 0.02\n")
    cfg = build_config(str(path), {})
    assert (cfg.eval_steps, cfg.step_size, cfg.gamma, cfg.batch_size, cfg.lr) == (5, 3, 0.5, 32, 0.02)
    path.write_text("model: lenet5\nepochs: 1\nepoch_size: 2\n")
    cli_error(capsys, "train", "--config", path, fragments=("k.yaml", "gives epochs twice (as epochs and epoch_size)"))
    # the same on the command line: argparse kept the last spelling without a word (2 epochs were trained)
    from convzoo.cli import main

    for args, said in ((["train", "--epochs", "1", "--epoch_size=2"], "train: --epochs and --epoch_size are one "
                        "setting, given twice; keep one"),
                       (["eval", "--ckpt", "lenet5:mnist", "--ckpt_path", "x"], "--ckpt and --ckpt_path are one setting"),
                       (["train", "--epochs", "1", "--epoch_s", "2"], "--epochs and --epoch_size are one setting"),
                       (["train", "-b64", "--batch-size", "32"], "--batch-size and -b are one setting"),
                       (["train", "--lr=0.1", "--learning_rate=1"], "--lr and --learning_rate are one setting")):
        with pytest.raises(SystemExit) as stop:  # argparse's exit, as for any flag it refuses
            main(args)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.startswith("convzoo: error: ") and said in err and err.count("\n") == 1, err
    path.write_text("model: lenet5\neval_every_step: 5\nfoo: 1\n")
    cli_error(capsys, "train", "--config", path,
              fragments=("k.yaml has unknown keys: eval_every_step (did you mean 'eval_every_steps'?), foo",))


def test_config_files_take_exponent_numbers_and_name_their_keys_in_range_errors(tmp_path, capsys):
    """`lr: 1e-3` (PyYAML reads YAML 1.1, where a float needs a dot) was refused as "lr must be a finite
    number, got '1e-3'"; and `batch_size: 0` in a file was "--batch-size must be >= 1", a flag the user
    never typed, without the file's name."""
    import convzoo
    from convzoo.config import build_config

    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-3\nweight_decay: 5E-4\nmomentum: 9.0e-1\nlabel_smoothing: 1.e-1\n")
    cfg = build_config(str(path), {})
    assert (cfg.lr, cfg.weight_decay, cfg.momentum, cfg.label_smoothing) == (0.001, 0.0005, 0.9, 0.1)
    from convzoo.yamlfile import dump_settings, load_settings

    record = {"output_dir": "1e3", "lr": 1e-05}  # a run's config.yaml: text that reads as a number is quoted
    assert load_settings(dump_settings(record)) == record
    for text, said in (("batch_size: 0", "batch_size must be >= 1, got 0"), ("lr: -1", "lr must be in (0, 10000]"),
                       ("seed: -1", "seed must be in 0..4294967295")):
        path.write_text(text + "\n")
        cli_error(capsys, "train", "--config", path, fragments=(f"{path}: {said}",))
    cli_error(capsys, "train", "--config", path, "--seed", "-2", fragments=("--seed must be in",))  # the flag's own
    with pytest.raises(convzoo.ConvzooError, match=r"train\(\)'s config: batch_size must be >= 1"):
        convzoo.train({"model": "lenet5", "batch_size": 0})


@pytest.mark.parametrize("flag", ["--freeze", "--restore-exclude"])
@pytest.mark.parametrize("text", ["", " ", ","])
def test_an_empty_list_option_is_refused_like_any_empty_option(capsys, flag, text):
    """`--freeze ""` (an unset shell variable) was taken as "freeze nothing" with rc 0: its parsed value
    is a list, which the empty-option check did not look at."""
    cli_error(capsys, "train", flag, text, fragments=(f"argument {flag}: must not be empty",))


def test_an_empty_appended_option_is_refused(capsys):
    cli_error(capsys, "data", "download", "mnist", "--mirror", "", fragments=("argument --mirror: must not be empty",))


@pytest.mark.real_data
def test_a_folder_another_train_is_writing_is_named_as_such_first(tmp_path):
    """A second train into a folder whose run is in its first epoch was told that the folder 'holds a run
    that saved no checkpoint ...; pass --exist-ok' (only --exist-ok found the lock)."""
    import time

    out = tmp_path / "run"
    common = ["--model", "lenet5", "--data-path", need(MNIST_DIR), "--train-limit", "6400", "--batch-size", "16",
              "--threads", "1", "--print-freq", "0", "--output-dir", out]
    first = start_cli("train", *common, "--epochs", "1000")
    try:
        deadline = time.monotonic() + 120
        while not (out / "config.yaml").exists():  # training, holding the folder; no last.pt yet
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        for extra in ([], ["--resume"]):
            assert_user_error(run_cli("train", *common, "--epochs", "1", *extra),
                              "another convzoo train is writing this output folder")
    finally:
        first.kill()
        first.wait()
    line = assert_user_error(run_cli("train", *common, "--epochs", "1"), "output folder")  # its own reason now
    assert "another convzoo train" not in line


def test_a_bare_config_name_that_is_also_a_file_here_is_ambiguous(tmp_path, capsys, monkeypatch):
    """`--config lenet5-fast` beside a file named lenet5-fast trained the preset without a word."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lenet5-fast").write_text("model: lenet5\nepochs: 1\n")
    cli_error(capsys, "train", "--config", "lenet5-fast",
              fragments=("--config lenet5-fast is both a shipped preset and a file in this folder",
                         "write ./lenet5-fast"))
    from convzoo.config import load_preset

    assert load_preset("./lenet5-fast") == {"model": "lenet5", "epochs": 1}
    (tmp_path / "lenet5-mnist").mkdir()  # a run folder of that name is no config file: the preset
    assert load_preset("lenet5-mnist")["model"] == "lenet5"
    (tmp_path / "recipe").write_text("epochs: 1\n")
    cli_error(capsys, "train", "--config", "recipe", fragments=("not a preset but a file", "./recipe"))


@pytest.mark.real_data
def test_the_api_resumes_with_the_runs_own_settings(finished_run, tmp_path):
    """convzoo.train(resume=True) starts from the run's saved settings as --resume does: given only where
    the run is (and more epochs), it continues; before, every setting not given was the default, so a run
    trained with any other value (here --train-limit 640, --test-limit 200) could not be resumed."""
    import shutil

    import convzoo

    run = shutil.copytree(finished_run, tmp_path / "run")
    result = convzoo.train(resume=True, output_dir=str(run), epochs=2, data_path=str(MNIST_DIR), quiet=True)
    assert result["epoch"] == 2 and len(run_files(run)) >= 4
    with pytest.raises(convzoo.ConvzooError, match="--lr 0.5 differs from the run's 0.01"):
        convzoo.train(resume=True, output_dir=str(run), epochs=3, lr=0.5, data_path=str(MNIST_DIR), quiet=True)


@pytest.mark.real_data
def test_resume_finds_the_run_named_by_its_config_file(finished_run, tmp_path, capsys):
    """`train --config RUN/config.yaml --resume` (the README's way to repeat a run) looked for last.pt in
    the default runs/lenet5-mnist, not in the output_dir the file names."""
    import shutil

    import yaml

    run = shutil.copytree(finished_run, tmp_path / "run")
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "output_dir": str(run)}))
    run_cli("train", "--config", run / "config.yaml", "--resume", "--epochs", "2", *MNIST, "--quiet",
            cwd=tmp_path, check=0)
    assert "2" in (run / "metrics.csv").read_text().splitlines()[-1].split(",")[0]


@pytest.mark.parametrize("flags, fragment", [
    (["--augment", "none", "--shift-pad", "2"],
     "--shift-pad 2 applies to --augment shift, shift-flip or shift-altflip; --augment none makes no shifts"),
    (["--augment", "flip", "--shift-pad", "2"], "--augment flip makes no shifts"),
    (["--augment", "altflip", "--shift-pad", "2"], "--augment altflip makes no shifts"),
    (["--optimizer", "adam", "--momentum", "0.5"], "--momentum 0.5 applies to --optimizer sgd; adam has no momentum"),
    (["--optimizer", "adamw", "--nesterov"], "--nesterov applies to --optimizer sgd; adamw has no momentum"),
    (["--nesterov", "--momentum", "0"], "--nesterov is a kind of momentum; --momentum 0 has none"),
    (["--lr-gamma", "0.5"], "--lr-gamma 0.5 applies to --schedule step; --schedule constant does not decay in steps"),
    (["--schedule", "cosine", "--lr-step-size", "3", "--lr-gamma", "0.5"],
     "--lr-step-size 3 and --lr-gamma 0.5 apply to --schedule step"),
    (["--schedule", "triangle", "--warmup-epochs", "1"], "--warmup-epochs 1 does not apply to --schedule triangle"),
    (["--bias-lr-scale", "64"], "--bias-lr-scale 64 applies to BatchNorm biases; lenet5 has no BatchNorm layers"),
    (["--config", "lenet5-keras", "--momentum", "0.8"], "--momentum 0.8 applies to --optimizer sgd; adam has"),
])
def test_a_flag_that_does_not_apply_is_refused_not_ignored(tmp_path, capsys, flags, fragment):
    """Each trained without it, rc 0: `--optimizer adam --momentum 0.5` was plain Adam, `--augment none
    --shift-pad 2` no shifts, `--bias-lr-scale 64` on a model without BatchNorm scaled nothing. One line,
    before any data are read (none are in reach here) or the run folder is made."""
    empty = tmp_path / "empty"
    empty.mkdir()
    cli_error(capsys, "train", "--model", "lenet5", "--data-path", empty, "--output-dir", tmp_path / "run", *flags,
              fragments=(fragment,))
    assert not (tmp_path / "run").exists()


def test_the_api_refuses_a_flag_that_does_not_apply_but_not_a_presets_value(tmp_path):
    """As the CLI: a keyword given counts; what a preset (or a resumed run) sets and another setting leaves
    unused does not (README: `--config lenet5-mnist --augment none`, the preset's shift_pad 2 unused)."""
    import convzoo
    from convzoo.config import build_config

    with pytest.raises(convzoo.ConvzooError, match=r"^--momentum 0\.5 applies to --optimizer sgd; adamw has"):
        convzoo.train(optimizer="adamw", momentum=0.5, output_dir=str(tmp_path / "run"))
    with pytest.raises(convzoo.ConvzooError, match=r"^--shift-pad 3 applies to --augment shift"):
        convzoo.train("lenet5-mnist", augment="none", shift_pad=3, output_dir=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    assert build_config("lenet5-mnist", {"augment": "none"}).shift_pad == 2
    assert build_config("lenet5-mnist", {"optimizer": "adam", "schedule": "cosine"}).nesterov  # the preset's, unused
    assert build_config("airbench-cifar", {"model": "lenet5"}).bias_lr_scale == 64
    # a run's settings passed back whole hold the defaults of the flags it did not use
    assert build_config(None, build_config(None, {"optimizer": "adam"}).to_dict()).optimizer == "adam"
    # given where they apply, they are taken
    assert build_config(None, {"model": "lenet-quant", "bias_lr_scale": 64.0}).bias_lr_scale == 64
    assert build_config(None, {"schedule": "step", "gamma": 0.5, "step_size": 2}).gamma == 0.5
    assert build_config(None, {"augment": "shift-altflip", "shift_pad": 2}).shift_pad == 2


def test_a_users_own_recipe_warns_of_a_setting_it_does_not_use(tmp_path, capsys):
    """A YAML file, the API's dict and a TrainConfig are the user's recipe, treated alike: a setting the
    run does not use is one `warning:` line naming it (a run's config.yaml passed back holds its preset's
    unused values, so it is not refused); the flags given on top are refused as ever. A dict's settings
    were checked as keywords while a file's and a TrainConfig's were not looked at."""
    import convzoo
    from convzoo.config import TrainConfig, build_config

    recipe = tmp_path / "adam.yaml"
    recipe.write_text("model: lenet5\noptimizer: adam\nmomentum: 0.5\nshift_pad: 3\nbias_lr_scale: 4\n")
    cfg = build_config(str(recipe), {})
    assert (cfg.optimizer, cfg.momentum, cfg.shift_pad) == ("adam", 0.5, 3)
    warnings = capsys.readouterr().err.splitlines()
    assert warnings == [f"warning: {recipe}: --shift-pad 3 applies to --augment shift, shift-flip or shift-altflip; "
                        "--augment none makes no shifts (unused)",
                        f"warning: {recipe}: --momentum 0.5 applies to --optimizer sgd; adam has no momentum setting "
                        "(unused)",
                        f"warning: {recipe}: --bias-lr-scale 4 applies to BatchNorm biases; lenet5 has no BatchNorm "
                        "layers (unused)"], warnings
    values = {"model": "lenet5", "optimizer": "adam", "momentum": 0.5}
    for config in (values, TrainConfig(**values).to_dict()):
        build_config(config, {})
        assert capsys.readouterr().err == ("warning: train()'s config: --momentum 0.5 applies to --optimizer sgd; "
                                           "adam has no momentum setting (unused)\n")
    build_config(str(recipe), {"augment": "shift"})  # used now: no word about it
    assert "--shift-pad" not in capsys.readouterr().err
    build_config("lenet5-mnist", {"augment": "none"})  # a shipped preset's unused value: silent, as before
    assert capsys.readouterr().err == ""
    with pytest.raises(convzoo.ConvzooError, match=r"^--momentum 0\.7 applies to --optimizer sgd"):
        build_config(values, {"momentum": 0.7})
    with pytest.raises(convzoo.ConvzooError, match=r"^--momentum 0\.7 applies to --optimizer sgd"):
        convzoo.train(TrainConfig(**values), momentum=0.7, output_dir=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_the_api_takes_the_flags_other_spellings(tmp_path):
    """train(learning_rate=...) was an unknown option although the docstring spells keywords as the CLI's
    flags (--learning_rate is one) and a YAML file takes the key; ckpt_path= was 'did you mean data_path'."""
    import convzoo

    with pytest.raises(convzoo.ConvzooError, match=r"^--lr: lr must be a finite number, got 'fast'$"):
        convzoo.train(learning_rate="fast")
    with pytest.raises(convzoo.ConvzooError, match=r"^train\(\) was given lr twice \(lr= and learning_rate=\)"):
        convzoo.train(lr=0.1, learning_rate=0.1)
    with pytest.raises(convzoo.ConvzooError, match=r"output_dir twice"):
        convzoo.train(output_dir=str(tmp_path / "a"), ckpt_path=str(tmp_path / "b"))
    with pytest.raises(convzoo.ConvzooError, match=r"^train\(\)'s config: lr must be a finite number, got 'fast'$"):
        convzoo.train({"learning_rate": "fast"})


@pytest.mark.real_data
def test_a_run_whose_preset_leaves_a_setting_unused_resumes(tmp_path, capsys):
    """`--config lenet5-mnist --augment none` records the preset's shift_pad 2 beside augment none (and
    Nesterov beside Adam): --resume takes the run's own settings, which are not flags given; such a flag
    given to the resumed run is refused as it would be to a new one."""
    out = tmp_path / "run"
    common = ["--threads", "1", "--output-dir", out, "--quiet", *MNIST]
    run_cli("train", "--config", "lenet5-mnist", "--augment", "none", "--optimizer", "adam", "--schedule", "constant",
            "--tta", "none", "--train-limit", "256", "--test-limit", "100", "--epochs", "1", *common, check=0)
    run_cli("train", "--resume", "--epochs", "2", *common, check=0)
    assert (out / "metrics.csv").read_text().splitlines()[-1].startswith("2,")
    cli_error(capsys, "train", "--resume", "--epochs", "3", "--shift-pad", "3", *common,
              fragments=("--shift-pad 3 applies to --augment shift",))


def test_a_mistyped_api_keyword_lists_every_keyword_train_takes():
    """`convzoo.train(test_limt=5)`'s "choose from" list left out train()'s own keywords."""
    import convzoo

    with pytest.raises(convzoo.ConvzooError, match="did you mean 'test_limit'") as caught:
        convzoo.train(test_limt=5)
    choices = str(caught.value).split("choose from: ")[1].split(", ")
    assert {"config", "exist_ok", "quiet", "resume", "test_limit", "shift_pad"} <= set(choices)
