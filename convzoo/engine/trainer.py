"""The training loop: data on the device, one readable loop, checkpoints that resume at the exact step.

Works as one process or under torchrun (DistributedDataParallel): each rank takes a disjoint shard
of every global batch, and only rank 0 logs and writes the run directory.
"""

from __future__ import annotations

import hashlib
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import RESUME_SAME, TrainConfig, flag_name
from ..data.catalog import DatasetSpec, FolderRule, get_spec
from ..data.formats import split_fingerprint, within_data_set
from ..data.tensors import (InputSpec, Split, alternating_flips, batches, load_dataset, select_classes,
                            split_validation, step_generator, steps_per_epoch, to_model_input)
from ..errors import CheckpointError, ConfigError, DataError, Terminated, first_line
from ..metadata import check_model_meta
from ..models.registry import ModelInfo, create_model, get_model_info, norm_biases
from . import distributed, rundir
from .checkpoint import (check_model_name, check_optimizer_state, check_resume_state, freeze, load_checkpoint,
                         load_strict, restore_weights, save_checkpoint)
from .evaluate import evaluate
from .loggers import Loggers, check_loggers, open_loggers
from .lookahead import Lookahead
from .runtime import (configure_threads, default_threads, resolve_amp, resolve_device, rng_state, seed_everything,
                      set_rng_state)
from .schedule import lr_at, set_lr


def train(cfg: TrainConfig, *, resume: bool = False, exist_ok: bool = False, json_lines: bool = False,
          quiet: bool = False) -> dict:
    """Train per `cfg` in this process (engine/launch.train also handles --procs); returns the final
    metrics. The run directory ends with best.pt and last.pt."""
    return TrainingRun(cfg, resume=resume, exist_ok=exist_ok, json_lines=json_lines, quiet=quiet).fit()


class TrainingRun:
    """One training run: set up in __init__ (device, data, model, optimizer, resumed state), then fit()."""

    def __init__(self, cfg: TrainConfig, *, resume: bool, exist_ok: bool, json_lines: bool, quiet: bool):
        cfg.validate()
        self.cfg = cfg
        info = get_model_info(cfg.model)
        data_spec = get_spec(cfg.dataset)
        device = resolve_device(cfg.device)
        self.amp_dtype = resolve_amp(cfg.amp, device)
        distributed.setup(device)
        self.device = device = distributed.local_device(device)
        distributed.check_batch(cfg.batch_size)
        self.main = main = distributed.is_main()
        threads = configure_threads(cfg.threads or default_threads(info.default_threads), device)
        seed_everything(cfg.seed, cfg.deterministic)

        self.out = out = Path(cfg.run_dir())
        state = None
        if resume:
            state = load_checkpoint(out / "last.pt")
            rundir.check_resumed_checkpoint(out, state)
            check_model_name(state, cfg.model, out / "last.pt")  # the likelier mistake, named first
            check_resume_state(state, out / "last.pt")
            check_resumable(state, cfg, out / "last.pt")
        if main:
            rundir.check(out, resume=resume, exist_ok=exist_ok)  # the folder is written only once all is checked
            check_loggers(cfg.logger)  # its packages, and a remote MLflow server that answers
        if data_spec.folder and cfg.data_path and within_data_set(out, cfg.data_path):
            # Its files would become a class: the next run on the folder read runs/ (its curves.png) as one.
            raise ConfigError(f"output folder is inside the image folder {cfg.data_path} (or a folder its class folders "
                              "link to), whose sub-folders are its classes; pass an --output-dir outside it", out)
        notes = []  # (line, event) for train.log, which is opened only then

        folder = FolderRule(cfg.image_size, cfg.channels or info.in_channels, cfg.test_split)  # --dataset folder only
        check_input_fit(info, data_spec, cfg.image_size)
        train_split, test_split, located = load_dataset(cfg.dataset, cfg.data_path, quiet=not main, folder=folder)
        data_spec = located.spec  # an image folder's classes, mean and std are found in it
        every_class = train_split.classes
        train_split, test_split = select_classes(train_split, cfg.classes), select_classes(test_split, cfg.classes)
        if cfg.classes and data_spec.folder:  # indices into folder names sorted as text: 10 is not folder 10/
            notes.append((chosen_classes_line(cfg.classes, train_split.classes, len(every_class)),
                          {"event": "classes", "indices": list(cfg.classes), "classes": list(train_split.classes)}))
        if cfg.train_limit:
            train_split = train_split.subset(slice(0, cfg.train_limit))
        if cfg.test_limit:
            test_split = test_split.subset(slice(0, cfg.test_limit))
        kept = len(train_split)
        train_split, val_split = split_validation(train_split, cfg.val_split)
        if cfg.val_split and not len(train_split):  # else the batch size would be blamed below
            raise ConfigError(f"--val-split {cfg.val_split:g} of {kept} training images leaves no training images")
        self.spec = spec = input_spec(info, data_spec)
        split = None
        if data_spec.folder:
            check_class_names(train_split.classes, cfg.model, spec, located.root)
            split = split_fingerprint(located.root, data_spec.folder, train_split.classes)
            if state is not None:
                check_same_split(state, split, located.root)
        self.train_data = train_identity(train_split)
        # --data-path as an absolute path: config.yaml keeps it as given, and --resume from another folder
        # finds the data by this (rundir.saved_config)
        self.resolved_data_path = str(Path(cfg.data_path).resolve()) if cfg.data_path else None
        if state is not None:  # another --data-path holding the same files is the same run
            check_same_train_data(state, self.train_data, out / "last.pt")
        natural = steps_per_epoch(len(train_split), cfg.batch_size, drop_last=True)
        if natural == 0:  # whatever --steps-per-epoch asks: its steps are passes of full batches too
            raise ConfigError(f"--batch-size {cfg.batch_size} is larger than the {len(train_split)} training images")

        self.model = model = create_model(cfg.model, num_classes=len(train_split.classes), in_channels=spec.channels)
        check_fits(model, to_model_input(train_split.subset(slice(0, 2)).images, spec), cfg.model, data_spec.title)
        if cfg.sync_bn:
            check_has_batchnorm(model, cfg.model)
        if state is not None:  # here, before the run folder is touched: a mismatch changes nothing
            load_strict(model, state["state_dict"], out / "last.pt", "cannot resume: its weights do not fit the model")
        if cfg.restore and not resume:
            report = restore_weights(model, cfg.restore, cfg.restore_exclude)
            notes.append((format_restore(report, cfg.restore),
                          {"event": "restore", "path": str(cfg.restore), "restore": report}))
        elif hasattr(model, "init_from_data") and not resume:  # e.g. airbench's whitening conv, set from data
            sample = train_split.subset(slice(0, 5000)).images
            model.init_from_data(to_model_input(sample, spec))
        frozen = freeze(model, cfg.freeze, cfg.model) if cfg.freeze else []
        if frozen:
            if not any(p.requires_grad for p in model.parameters()):
                raise ConfigError(f"--freeze {','.join(cfg.freeze)} matches every parameter of {cfg.model}: "
                                  "nothing is left to train")
            notes.append((f"frozen: {', '.join(frozen)}", {"event": "frozen", "frozen": frozen}))
        model.to(device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(cfg, model)
        if state is not None:  # each saved optimizer tensor against its own parameter, before anything is written
            check_optimizer_state(state.get("optimizer", {}), out / "last.pt", self.optimizer)
        self.lookahead = Lookahead(model) if cfg.lookahead else None
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")

        world = distributed.world_size()
        self.natural = natural  # steps in one pass over the training set
        self.spe = spe = cfg.steps_per_epoch or natural
        self.total_steps = cfg.epochs * spe
        self.start_epoch, self.start_step, self.history, self.best, self.epoch_acc = 0, 0, [], -1.0, None
        self.resumed_wall = 0.0  # seconds of training before this process (last.pt's wall_s)
        self.reached = None  # the evaluation that first met --target-acc
        self.loggers = Loggers()
        if main:
            before = rundir.snapshot(out)
            rundir.prepare(out, resume=resume, exist_ok=exist_ok, clear=False)
            # --logger: opened in the prepared folder (MLflow's local store and TensorBoard's events live there)
            # before anything else is written to it, so a logger that fails leaves the folder as it was
            try:
                self.loggers = open_loggers(cfg.logger, out, cfg.to_dict(),
                                            resumed_epoch=state["epoch"] if state else None)
            except BaseException:
                rundir.rollback(before)
                raise
        try:  # a start that fails from here on leaves no open tracking run
            if main and exist_ok and not resume:
                rundir.clear_outputs(out)  # the old run's files go only now that the start cannot fail on a logger
            if main and not resume:
                (out / "evals.csv").unlink(missing_ok=True)  # an overwritten run's evaluations are not this one's
            if main and state is not None:  # the evaluations after last.pt are done again
                rundir.trim_evals(out, state["epoch"], state["step"])
            self.show_bar = main and not quiet and not json_lines
            self.log = log = rundir.RunLog(out if main else None, json_lines=json_lines, quiet=quiet or not main)
            for text, event in notes:
                log.line(text, **event)

            if state is not None:
                self._load_state(state)
            self.ddp_model = wrap_ddp(model, device, sync_bn=cfg.sync_bn)
            self.frozen_norms = frozen_norms(model, frozen)  # after wrap_ddp: SyncBatchNorm replaces them
            self.train_split, self.test_split = train_split.to(device), test_split.to(device)
            self.val_split = val_split.to(device) if val_split is not None else None

            self.base = describe_model(cfg.model, train_split.classes, data_spec, spec, cfg.to_dict(), located.root,
                                       split)
            if main:
                rundir.write_config(out, {**cfg.to_dict(), "threads": threads, "world_size": world,
                                          "device": str(device), "data_found_in": str(located.root),
                                          "data_verified": located.verified if data_spec.reader.official else None})
        except BaseException:
            self.loggers.close(ok=False)
            raise
        val_part = f" / {len(val_split)} val" if val_split is not None else ""
        # Passes are of full batches (a BatchNorm net cannot train on a batch of one): say what a small folder loses
        left = len(train_split) - natural * cfg.batch_size if world == 1 and not cfg.steps_per_epoch else 0
        left_part = (f" ({left} of the {len(train_split)} images left out of each pass, the last partial batch, "
                     "a different one each epoch)") if left else ""
        log.line(f"convzoo train: {cfg.model} on {data_spec.title} ({len(train_split)} train / {len(test_split)} test"
                 f"{val_part}), device {device}, threads {threads}, world size {world}"
                 f"{' (BatchNorm synchronised)' if cfg.sync_bn and world > 1 else ''}, {cfg.epochs} epochs x {spe} "
                 f"steps, batch {cfg.batch_size}{left_part}, output {out}",
                 event="start", model=cfg.model, dataset=data_spec.name, device=str(device), threads=threads,
                 world_size=world, epochs=cfg.epochs, steps_per_epoch=spe, output_dir=str(out))
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    def fit(self) -> dict:
        self.position = (self.start_epoch, self.start_step)
        # Wall clock of training, for time to accuracy: a resumed run goes on from the time last.pt recorded
        # (the steps after that checkpoint are redone; the time between the two processes is not counted).
        self.wall_start = time.perf_counter() - self.resumed_wall
        stop = interrupt_flag()  # the first Ctrl-C or SIGTERM: finish the step, write last.pt, stop
        try:
            return self._fit(stop)
        finally:
            # only now: a Ctrl-C once the last epoch ended only sets the flag, so summary.json, curves.png and
            # the loggers' close are written whole (it cut them off, MLflow's run left RUNNING, not resumable);
            # _fit then raises it
            stop.restore()

    def _fit(self, stop: "InterruptFlag") -> dict:
        cfg, out, log = self.cfg, self.out, self.log
        try:
            for epoch in range(self.start_epoch, cfg.epochs):
                first = self.start_step if epoch == self.start_epoch else 0
                try:
                    meter = self._train_epoch(epoch, first, stop)
                except TargetReached as reached:
                    meter = reached.meter  # stop mid-epoch: the partial epoch is the run's last row
                self._end_epoch(epoch, meter)
                self.start_step = 0
                if self.reached:
                    break
                if stop.is_set() and epoch + 1 < cfg.epochs:
                    raise stop.interruption()  # this epoch's last.pt is complete
        except KeyboardInterrupt:
            epoch, step = self.position
            log.line(f"interrupted at epoch {epoch + 1}, step {step}; {out / 'last.pt'} holds the state to --resume from",
                     event="interrupted", epoch=epoch + 1, step=step, path=str(out / "last.pt"))
            log.close()
            self.loggers.close(ok=False)
            raise
        except Exception:
            log.close()
            self.loggers.close(ok=False)
            raise
        finally:
            distributed.cleanup()
        final = self.history[-1] if self.history else {}
        summary = {"best_acc": self.best, **final, "target_acc": cfg.target_acc or None, "reached": self.reached,
                   "output_dir": str(out)}
        if self.main:
            finish_run(out, summary)
        if self.reached:
            log.line(f"target accuracy {cfg.target_acc:.4f} reached: {self.reached['split']} accuracy "
                     f"{self.reached['accuracy']:.4f} after {self.reached['wall_s']:.1f} s of training (epoch "
                     f"{self.reached['epoch']}, step {self.reached['step']})", event="target_reached", **self.reached)
        split_name = "val" if self.val_split is not None else "test"
        log.line(f"done: best {split_name} accuracy {self.best:.4f}, last test accuracy "
                 f"{final.get('test_acc', float('nan')):.4f}; run directory {out}", event="done", best_acc=self.best,
                 test_acc=final.get("test_acc"), output_dir=str(out))
        if stop.is_set():  # pressed while the run's files were written: they are whole, and the command says so
            log.line("interrupted once the run had ended: its files are complete", event="interrupted_at_end")
        log.close()
        self.loggers.close(ok=True)  # after curves.png and the last log line: they are uploaded
        if stop.is_set():
            raise stop.interruption()  # exit 130 (143), as README promises: `train && export` stops there
        return summary

    def _train_epoch(self, epoch: int, first: int, stop: threading.Event) -> "EpochMeter":
        """Steps `first`..spe of one epoch, with the progress bar, step log lines, mid-epoch
        checkpoints and Ctrl-C handled after each step, outside the optimisation itself."""
        cfg, spe = self.cfg, self.spe
        self.finite_at = (epoch, first)  # the loss is finite up to here (a resumed state was saved finite)
        meter = EpochMeter.start(self.epoch_acc, self.device, lr=self.optimizer.param_groups[0]["lr"], first=first)
        self.epoch_acc = None
        bar = progress(spe, first, f"epoch {epoch + 1}/{cfg.epochs}", enabled=self.show_bar)
        self.log.write_hook = bar.write if bar else None
        world, rank = distributed.world_size(), distributed.rank()

        def model_input(images, step, index):
            gen = step_generator(cfg.seed, epoch, step, self.device) if cfg.augment != "none" else None
            flips = None
            if "altflip" in cfg.augment:  # passes, not epochs, alternate: --steps-per-epoch may hold several
                passes = epoch * -(-spe // self.natural) + step // self.natural
                flips = alternating_flips(index, cfg.seed, passes, len(self.train_split))
            x = to_model_input(images, self.spec, augment=cfg.augment, generator=gen, shard=(rank, world),
                               shift_pad=cfg.shift_pad, flips=flips)
            return x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x

        def after_step(step, loss):
            done = step + 1
            # counted over the whole run, so an --eval-every-steps or --save-every N beyond one epoch's steps
            # still fires (it never did); epoch ends evaluate and save anyway
            step_of_run = epoch * spe + done
            self.position = (epoch, done)
            if self.lookahead:
                self.lookahead.after_step(self.model, step_of_run, self.total_steps)
            if bar:
                bar.update(1)
            logged = (cfg.print_freq and done % cfg.print_freq == 0) or done == spe
            evaluated = cfg.eval_steps and step_of_run % cfg.eval_steps == 0 and done != spe
            interrupted = stop.is_set() and done != spe
            due = cfg.save_every and step_of_run % cfg.save_every == 0 and done != spe
            saved = due or interrupted
            if logged or evaluated or due:  # steps that every rank reaches alike: a collective check
                self._check_finite(epoch, done, meter)
            elif interrupted:  # this rank's Ctrl-C: its own check, as only rank 0 saves
                self._check_finite(epoch, done, meter, collective=False)
            if logged:
                elapsed, cur, avg = meter.elapsed() * 1000, loss.item(), meter.avg_loss()
                self.log.line(f"Epoch: [{epoch + 1:2d}/{cfg.epochs:2d}], step: [{done:4d}/{spe:4d}], loss: [{cur:.4f}], "
                              f"avg loss: [{avg:.4f}], time: [{elapsed:.4f}ms]", event="step", epoch=epoch + 1,
                              step=done, loss=cur, avg_loss=avg, lr=meter.lr, time_ms=elapsed)
            if evaluated:
                self._check_target(epoch, done, meter)
            if saved:
                self._checkpoint(epoch, done, meter.to_dict())
            if interrupted:
                raise stop.interruption()

        self._train_mode()
        try:
            train_one_epoch(self.ddp_model, epoch_batches(self.train_split, cfg, epoch, first, spe), model_input,
                            self.optimizer, self.scaler, self.criterion, meter, amp_dtype=self.amp_dtype,
                            lr_at_step=lambda step: lr_at(epoch * spe + step, self.total_steps, spe, cfg),
                            after_step=after_step)
        finally:  # also when --target-acc stops the epoch early
            if bar:
                bar.close()
                self.log.write_hook = None
        return meter

    def _end_epoch(self, epoch: int, meter: "EpochMeter") -> None:
        """All-reduce the epoch's metrics, evaluate when due, log, write best.pt/last.pt and metrics.csv."""
        cfg, log, lr = self.cfg, self.log, meter.lr
        epoch_time = meter.elapsed()
        stats = torch.stack([meter.loss_sum, meter.correct.double(),
                             torch.tensor(float(meter.seen), dtype=torch.float64, device=self.device)])
        distributed.all_reduce_sum(stats)
        train_loss, train_acc = float(stats[0] / stats[2]), float(stats[1] / stats[2])
        if not math.isfinite(train_loss):  # every rank sees the summed loss: all stop here, nothing saved
            self._diverged(epoch, self.position[1], train_loss)
        steps_run = max(meter.steps, 1)  # the steps epoch_time covers (before a resume too)
        log.line(f"Epoch time: {epoch_time * 1000:.3f}, per step time: {epoch_time * 1000 / steps_run:.3f}, "
                 f"avg loss: {train_loss:.3f}", event="epoch_time", epoch=epoch + 1, epoch_time_s=epoch_time,
                 step_ms=epoch_time * 1000 / steps_run, avg_loss=train_loss)
        evaluated = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs or self.reached is not None
        val = self._evaluate(self.val_split) if evaluated and self.val_split is not None else None
        test = self._evaluate(self.test_split) if evaluated else None
        row = {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
               "val_acc": val.accuracy if val else None, "test_acc": test.accuracy if test else None, "lr": lr,
               "epoch_time_s": epoch_time, "images_per_s": float(stats[2]) / epoch_time,
               "wall_s": time.perf_counter() - self.wall_start}
        self.history.append(row)
        log.line(f"Epoch: [{epoch + 1:2d}/{cfg.epochs:2d}] train acc: {train_acc:.4f}"
                 + (f", val acc: {val.accuracy:.4f}" if val else "")
                 + (f", test acc: {test.accuracy:.4f}" if test else "")
                 + f", lr: {lr:.6f}, {row['images_per_s']:.0f} img/s", event="epoch", **row)
        score = (val or test).accuracy if evaluated else -1.0
        if evaluated and not self.reached:
            self._record_eval(epoch, self.spe, "val" if val else "test", score)
        if score > self.best:
            self.best = score
            self._checkpoint(epoch + 1, 0, None, "best.pt")
        self._checkpoint(epoch + 1, 0, None)
        if self.main:
            rundir.write_metrics(self.out, self.history)
        self.loggers.epoch(row)

    def _check_finite(self, epoch: int, step: int, meter: "EpochMeter", *, collective: bool = True) -> None:
        """Stop with a one-line error once the loss is NaN or inf: the epoch's loss sum (kept on the
        device) carries any non-finite step loss, so one look per logged, evaluated or saved step
        (after the step's loss line syncs anyway) finds it before NaN weights reach a checkpoint. With
        `collective`, summed over the ranks, so every rank stops at the same step."""
        bad = (~torch.isfinite(meter.loss_sum)).double()
        if collective:
            distributed.all_reduce_sum(bad)
        if bad.item():
            self._diverged(epoch, step, float(meter.loss_sum) / max(meter.seen, 1))
        self.finite_at = (epoch, step)

    def _diverged(self, epoch: int, step: int, loss: float):
        """The one-line error for a loss that went NaN or inf; best.pt and last.pt keep what they held."""
        last = self.finite_at[1] if self.finite_at[0] == epoch else 0
        steps = f"step {step}" if step - last <= 1 else f"within steps {last + 1}-{step} (--print-freq 1 names the step)"
        kept = (f"the checkpoints in {self.out} are from before it" if (self.out / "last.pt").is_file()
                else "no checkpoint was written")
        kind = "nan" if math.isnan(loss) else "inf"
        raise ConfigError(f"training diverged: the loss became {kind} at epoch {epoch + 1}, {steps}; try a lower "
                          f"--lr (it is {self.cfg.lr:g}); {kept}")

    def _train_mode(self) -> None:
        """Training mode, but a BatchNorm that --freeze fixed keeps its running statistics (in training mode
        they moved with every batch: the "frozen" layers computed something else after the run)."""
        self.ddp_model.train()
        for norm in self.frozen_norms:
            norm.eval()

    def _check_target(self, epoch: int, step: int, meter: "EpochMeter") -> None:
        """A mid-epoch evaluation (--eval-every-steps): record it, and stop once --target-acc is met."""
        split, name = (self.val_split, "val") if self.val_split is not None else (self.test_split, "test")
        accuracy = self._evaluate(split).accuracy
        self._train_mode()
        if self._record_eval(epoch, step, name, accuracy):
            raise TargetReached(meter)

    def _record_eval(self, epoch: int, step: int, split: str, accuracy: float) -> bool:
        """Log one evaluation on the wall clock (evals.csv: accuracy against seconds, for time-to-accuracy
        plots); True when it meets --target-acc for the first time."""
        wall = time.perf_counter() - self.wall_start
        point = {"wall_s": wall, "epoch": epoch + 1, "step": step, "split": split, "accuracy": accuracy}
        if self.main:
            rundir.append_eval(self.out, point)
        if self.cfg.target_acc and accuracy >= self.cfg.target_acc and not self.reached:
            self.reached = point
            return True
        return False

    def _evaluate(self, split: Split):
        return evaluate(self.model, split, self.spec, amp_dtype=self.amp_dtype, tta=self.cfg.tta,
                        channels_last=self.cfg.channels_last)

    def _checkpoint(self, epoch: int, step: int, meter: dict | None, name: str = "last.pt") -> None:
        if self.main:
            save_checkpoint(self.out / name, {
                **self.base, "state_dict": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "epoch": epoch, "step": step,
                "global_step": epoch * self.spe + step, "rng": rng_state(), "history": self.history,
                "best_acc": self.best, "epoch_accumulators": meter, "wall_s": time.perf_counter() - self.wall_start,
                "train_data": self.train_data, "reached": self.reached, "resolved_data_path": self.resolved_data_path,
                **({"lookahead": self.lookahead.state_dict()} if self.lookahead else {}),
                "scheduler": {"name": self.cfg.schedule, "total_steps": self.total_steps}})

    def _load_state(self, state: dict) -> None:
        """Continue from last.pt: optimizer, scaler, position, history and RNG."""
        try:  # the weights were loaded in __init__, before the run folder was touched
            self.optimizer.load_state_dict(state["optimizer"])
            if "scaler" in state:
                self.scaler.load_state_dict(state["scaler"])
            if self.lookahead and "lookahead" in state:
                self.lookahead.load_state_dict(state["lookahead"], self.out / "last.pt")
            elif self.lookahead:  # a run resumed with --lookahead added: average from the resumed weights
                self.lookahead = Lookahead(self.model)
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:  # the file's states, not our bug
            raise CheckpointError(f"cannot resume: {first_line(exc)}", self.out / "last.pt") from None
        self.start_epoch, self.start_step = state["epoch"], state["step"]
        self.history, self.best = list(state.get("history", [])), state.get("best_acc", -1.0)
        self.epoch_acc = state.get("epoch_accumulators")
        self.resumed_wall = resumed_wall(state)
        set_rng_state(state["rng"])
        self.log.line(f"resumed from {self.out / 'last.pt'} at epoch {self.start_epoch + 1}, step {self.start_step}",
                      event="resumed", epoch=self.start_epoch + 1, step=self.start_step, path=str(self.out / "last.pt"),
                      wall_s=self.resumed_wall)


def train_one_epoch(model, batches, model_input, optimizer, scaler, criterion, meter: "EpochMeter", *, amp_dtype,
                    lr_at_step, after_step) -> None:
    """The optimisation: for each batch, set the learning rate, forward, loss, backward, step."""
    for step, images, labels, index in batches:
        meter.lr = set_lr(optimizer, lr_at_step(step))
        x = model_input(images, step, index)
        with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
            loss = criterion(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        meter.update(loss, logits, labels)
        after_step(step, loss)


@dataclass
class EpochMeter:
    """One epoch's running loss, correct predictions, images seen, wall clock and last learning rate.
    Saved mid-epoch in last.pt (to_dict), so a resumed epoch reports the same totals."""

    loss_sum: torch.Tensor  # kept on the device: no host sync per step
    correct: torch.Tensor
    seen: int
    started: float  # time.perf_counter() at the epoch's (virtual, when resumed) start
    lr: float
    steps: int = 0  # steps the epoch's time covers, those before a resume included (for the per-step time)

    @classmethod
    def start(cls, saved: dict | None, device, *, lr: float, first: int = 0) -> "EpochMeter":
        """A new epoch, or one resumed at step `first` with last.pt's totals (`saved`); totals saved
        before "steps" was recorded covered the `first` steps."""
        saved = saved or {"loss_sum": 0.0, "correct": 0, "seen": 0, "time": 0.0, "steps": 0}
        return cls(torch.tensor(saved["loss_sum"], dtype=torch.float64, device=device),
                   torch.tensor(saved["correct"], dtype=torch.long, device=device), saved["seen"],
                   time.perf_counter() - saved["time"], lr, saved.get("steps", first))

    def update(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.loss_sum += loss.detach() * len(labels)
        self.correct += (logits.detach().argmax(1) == labels).sum()
        self.seen += len(labels)
        self.steps += 1

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def avg_loss(self) -> float:
        return float(self.loss_sum) / max(self.seen, 1)

    def to_dict(self) -> dict:
        return {"loss_sum": float(self.loss_sum), "correct": int(self.correct), "seen": self.seen,
                "time": self.elapsed(), "steps": self.steps}


class InterruptFlag(threading.Event):
    """Set by the first Ctrl-C or SIGTERM; `signum` says which."""

    signum = signal.SIGINT
    previous: dict = {}

    def interruption(self) -> KeyboardInterrupt:
        return Terminated() if self.signum == signal.SIGTERM else KeyboardInterrupt()

    def restore(self) -> None:
        """The handlers from before the run: a caller's own stays its own (None: one not set from Python)."""
        for signum, handler in self.previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def interrupt_flag() -> InterruptFlag:
    """The first Ctrl-C or SIGTERM sets a flag the loop checks after each step (so last.pt is written
    between steps, never mid-update) on every rank; a second one interrupts (or kills) at once."""
    flag = InterruptFlag()
    if threading.current_thread() is threading.main_thread():
        flag.previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum, frame):
            flag.signum = signum
            flag.set()
            signal.signal(signum, flag.previous[signum] or signal.SIG_DFL)  # a second one: as before

        for signum in flag.previous:
            signal.signal(signum, handler)
    return flag


def finish_run(out: Path, summary: dict) -> None:
    """Post-training extras: summary.json (final metrics, time to target) and the run's curves."""
    from ..report.plots import plot_curves

    rundir.write_summary(out, summary)
    plot_curves(rundir.read_metrics(out), out / "curves.png")


class TargetReached(Exception):
    """Raised after the step whose evaluation met --target-acc; carries the partial epoch's meter."""

    def __init__(self, meter: "EpochMeter"):
        super().__init__("target accuracy reached")
        self.meter = meter


def epoch_batches(split: Split, cfg: TrainConfig, epoch: int, first: int, spe: int):
    """`spe` training batches (step, images, labels, sample positions) for `epoch`, starting at step
    `first`; when a preset asks for more steps than one pass gives (Ascend TF's 1000 steps), further
    seeded passes follow."""
    world, rank = distributed.world_size(), distributed.rank()
    natural = steps_per_epoch(len(split), cfg.batch_size, drop_last=True)
    step = first
    while step < spe:
        sub, offset = divmod(step, natural)
        for s, images, labels, index in batches(split, cfg.batch_size, shuffle=True, seed=cfg.seed + 7919 * sub,
                                                epoch=epoch, start_step=offset, drop_last=True, rank=rank,
                                                world_size=world, with_index=True):
            if sub * natural + s >= spe:
                return
            yield sub * natural + s, images, labels, index
        step = (sub + 1) * natural


def check_class_names(classes, model: str, spec: InputSpec, folder: Path) -> None:
    """An image folder's class names by the rule every checkpoint is read with: a name that eval,
    predict and --resume would refuse (over 200 characters) stops training before it starts."""
    try:
        check_model_meta({"model": model, "class_names": list(classes), "num_classes": len(classes),
                          "input": spec.to_dict()}, None)
    except CheckpointError as exc:
        raise DataError(f"class folder names cannot be saved as the model's class names: {exc}; rename the "
                        "folder", folder) from None


def check_input_fit(info: ModelInfo, data_spec: DatasetSpec, image_size: int) -> None:
    """A model that takes images as they are (fit 'none') gets images of its input size: it would
    train on others (the net takes any size), and its checkpoint could not be read back."""
    if info.fit == "none" and data_spec.folder and image_size != info.input_size:
        raise ConfigError(f"{info.name} takes {info.input_size}x{info.input_size} images as they are: "
                          f"use --image-size {info.input_size}")
    if info.fit == "none" and not data_spec.folder and data_spec.image_shape[-1] != info.input_size:
        side = data_spec.image_shape[-1]
        raise ConfigError(f"{info.name} takes {info.input_size}x{info.input_size} images as they are; "
                          f"{data_spec.name}'s are {side}x{side}: choose another model for it")


def input_spec(info: ModelInfo, data_spec: DatasetSpec) -> InputSpec:
    """How the data set's images become the model's input."""
    return InputSpec(data_spec.image_shape[0], info.input_size, info.fit, data_spec.mean, data_spec.std)


def describe_model(model: str, classes, data_spec: DatasetSpec, spec: InputSpec, config: dict | None = None,
                   root: Path | None = None, split: dict | None = None) -> dict:
    """What a checkpoint says about its model (best.pt's and last.pt's, and `convzoo convert`'s, which
    has no run config): metadata.check_model_meta reads it back. An image folder's reading rule, path
    and test split too, so eval and predict --from-test read the folder again the same way."""
    base = dict(model=model, num_classes=len(classes), class_names=list(classes), dataset=data_spec.name,
                input=spec.to_dict())
    if config is not None:
        base["config"] = config
    if data_spec.folder:
        base["data"] = {**data_spec.folder.to_dict(), "path": str(root), "split": split}
    return base


def check_fits(model: nn.Module, x: torch.Tensor, name: str, data_title: str) -> None:
    """One forward pass on two real training inputs, before anything is written: a model that cannot
    take the data set's images (AlexNet's 32x32 RGB layers on 28x28 digits) is one line, not a crash
    in the first step."""
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(x)
    except RuntimeError as exc:
        raise ConfigError(f"model {name} cannot take {data_title}'s images (input {list(x.shape[1:])}): "
                          f"{first_line(exc)}") from None
    finally:
        model.train(was_training)


def check_has_batchnorm(model: nn.Module, name: str) -> None:
    """--sync-bn on a model it would not change."""
    if not any(type(m) is nn.BatchNorm2d for m in model.modules()):
        raise ConfigError(f"--sync-bn: model {name} has no BatchNorm layers, so there are no statistics to "
                          "synchronise; drop the flag")


def build_optimizer(cfg: TrainConfig, model: nn.Module):
    """The optimizer over the trainable parameters; with --bias-lr-scale, BatchNorm biases form their
    own group (lr x scale, weight decay / scale)."""
    scaled = {id(b) for b in norm_biases(model)} if cfg.bias_lr_scale != 1 else set()
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if id(p) not in scaled]}]
    if scaled:
        groups.append({"params": [p for p in trainable if id(p) in scaled], "lr_scale": cfg.bias_lr_scale,
                       "weight_decay": cfg.weight_decay / cfg.bias_lr_scale})
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def check_same_split(state: dict, split: dict, folder: Path) -> None:
    """An image folder that gained or lost images redraws its test split: a resumed run would be tested
    on images it trained on, and record the new split so that eval no longer warns. Refused; last.pt
    keeps the split the run began with."""
    recorded = (state.get("data") or {}).get("split")
    if recorded and recorded != split:
        raise DataError(f"its test split changed since the run began ({recorded['test_files']} test images then, "
                        f"{split['test_files']} now: images added, removed or renamed), so the resumed run would be "
                        "tested on images it trained on; start a new run (--restore LAST.PT to keep the weights), "
                        "or restore the folder", folder)


def train_identity(split: Split) -> dict:
    """What --resume compares the training images by: their number and a hash of every label and pixel,
    in order (CIFAR-10's 150 MB in about 0.15 s: a sample of images missed a changed one)."""
    digest = hashlib.sha256(np.ascontiguousarray(split.labels.cpu().numpy()))
    digest.update(np.ascontiguousarray(split.images.cpu().numpy()))
    return {"images": len(split), "fingerprint": digest.hexdigest()[:16]}


def check_same_train_data(state: dict, now: dict, path) -> None:
    """The run's training images (last.pt's record; older checkpoints have none) against those read now."""
    then = state.get("train_data")
    if not isinstance(then, dict) or then == now:
        return
    if then.get("images") != now["images"]:
        raise CheckpointError(f"the run trained on {then.get('images')} images, this one would on {now['images']} "
                              "(another --data-path, or its files changed); resume needs the same data", path)
    raise CheckpointError(f"the {now['images']} training images are not the run's (another --data-path, or its files "
                          "changed); resume needs the same data", path)


def resumed_wall(state: dict) -> float:
    """Seconds of training before last.pt was written; a last.pt from before it recorded them: the last
    finished epoch's wall_s (exact for a checkpoint written at the end of an epoch), else 0."""
    if state.get("wall_s") is not None:
        return float(state["wall_s"])
    history = state.get("history") or []
    return float(history[-1].get("wall_s") or 0.0) if history else 0.0


def check_resumable(state: dict, cfg: TrainConfig, path) -> None:
    """What a resume refuses, the reasons there is nothing to resume first, then a setting that would
    change the run (a preset given on resume: its onecycle over a constant run is named, not the run)."""
    old = state.get("config", {})
    if state.get("reached"):  # its summary.json says so; continuing would train past it and redo the timing
        reached = state["reached"]
        raise CheckpointError(f"run already reached its target accuracy {old.get('target_acc')} ({reached.get('split')} "
                              f"accuracy {reached.get('accuracy')} in epoch {reached.get('epoch')}); nothing to "
                              "resume; start a new run with --restore", path)
    if state["epoch"] >= cfg.epochs:
        raise CheckpointError(f"run already finished its {state['epoch']} epochs; ask for more with a constant "
                              "schedule, or start a new run with --restore", path)
    for key in RESUME_SAME:  # config.py says why these, and not the others
        if key in old and old[key] != getattr(cfg, key):
            raise CheckpointError(f"{flag_name(key)} {setting(getattr(cfg, key))} differs from the run's "
                                  f"{setting(old[key])}; resume needs the same setting", path)
    if old.get("epochs") != cfg.epochs and cfg.schedule != "constant":
        raise CheckpointError(f"checkpoint was trained with a {old.get('epochs')}-epoch {cfg.schedule} schedule; "
                              f"--resume cannot stretch it to {cfg.epochs} epochs (start a new run with --restore)", path)
    if cfg.target_acc and cfg.target_acc != old.get("target_acc"):
        check_target_not_met(state, cfg, path)
    if cfg.restore and cfg.restore != old.get("restore"):  # the weights come from last.pt: another start is ignored
        raise CheckpointError(f"--restore {setting(cfg.restore)} does not go with --resume, which continues from the "
                              "run's last.pt; start a new run to begin from other weights", path)


def check_target_not_met(state: dict, cfg: TrainConfig, path) -> None:
    """A --target-acc new to a resumed run must not have been met by an evaluation before last.pt (each
    epoch's in its history, mid-epoch ones in evals.csv): the time recorded would be a later one's."""
    split = "val" if cfg.val_split else "test"
    points = [(row.get("epoch"), None, row.get(f"{split}_acc")) for row in state.get("history") or []
              if isinstance(row, dict)]
    points += [(epoch, step, accuracy) for epoch, step, name, accuracy in
               rundir.evals_before(Path(path).parent, state["epoch"], state["step"]) if name == split]
    for epoch, step, accuracy in points:
        if isinstance(accuracy, float) and accuracy >= cfg.target_acc:
            when = f"epoch {epoch}" + (f", step {step}" if step is not None else "")
            raise CheckpointError(f"the run's {split} accuracy was already {accuracy:.4f} in {when}, so --target-acc "
                                  f"{cfg.target_acc} was met before this resume and its time cannot be recorded now; "
                                  "start a new run with --target-acc", path)


def setting(value) -> str:
    """A setting as it is written on the command line (--classes 3,5), or '(not set)'."""
    if value is None or value == []:
        return "(not set)"
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def frozen_norms(model: nn.Module, frozen: list[str]) -> list[nn.Module]:
    """The BatchNorm layers left with nothing to train, one of their parameters by --freeze (names as
    `frozen` lists them; airbench's BatchNorm weights are fixed by the model itself)."""
    frozen = set(frozen)
    norms = []
    for name, module in model.named_modules():
        params = dict(module.named_parameters(prefix=name, recurse=False))
        if (isinstance(module, nn.modules.batchnorm._BatchNorm) and frozen & params.keys()
                and not any(p.requires_grad for p in params.values())):
            norms.append(module)
    return norms


def wrap_ddp(model: nn.Module, device: torch.device, *, sync_bn: bool = False) -> nn.Module:
    """`model` in DistributedDataParallel when there are several ranks; with `sync_bn` its BatchNorm2d
    layers become SyncBatchNorm2d first, in place (the same tensors: `model` is what is saved, evaluated
    and optimised, and its state_dict is a plain model's)."""
    if distributed.world_size() == 1:
        return model
    if sync_bn:
        distributed.sync_batchnorm(model)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def progress(total: int, initial: int, desc: str, *, enabled: bool):
    if not (enabled and sys.stdout.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)


def format_restore(report: dict, path) -> str:
    parts = [f"restored from {path}: loaded {len(report['loaded'])} tensors ({', '.join(report['loaded']) or '-'})"]
    if report["excluded"]:
        parts.append(f"excluded {', '.join(report['excluded'])}")
    if report["shape_mismatch"]:
        parts.append(f"skipped (shape) {', '.join(report['shape_mismatch'])}")
    parts.append(f"newly initialised {', '.join(report['new']) or '-'}")
    return "; ".join(parts)


def chosen_classes_line(indices: list[int], names, count: int, shown: int = 6) -> str:
    """--classes on an image folder: the class folder each index picked (the first `shown` of them), by
    position among the `count` folder names sorted as text (1, 10, 11, 12, 2, ...)."""
    # repr: a name with a newline or a comma stays one name on this line
    picked = ", ".join(f"{i} = {name!r}" for i, name in zip(indices[:shown], names[:shown]))
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return (f"classes: --classes picks the class folders {picked}{more} (positions in the {count} folder names "
            "sorted as text)")
