"""Experiment tracking for `--logger tensorboard|mlflow`: the trainer hands each epoch's metrics row
(the one metrics.csv gets) to `Loggers.epoch` and closes them once the run ends.

Both back ends are optional (`pip install 'convzoo[tracking]'`); a missing one is a one-line error
before the first step. Only rank 0 opens loggers, and everything lands in the run directory unless
MLFLOW_TRACKING_URI points elsewhere.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from ..config import logger_names
from ..errors import ConfigError

# metrics.csv column -> TensorBoard tag; the prefixes group train/val/test accuracy on one card.
TB_TAGS = {"train_loss": "loss/train", "train_acc": "accuracy/train", "val_acc": "accuracy/val",
           "test_acc": "accuracy/test", "lr": "lr", "epoch_time_s": "speed/epoch_time_s",
           "images_per_s": "speed/images_per_s"}
ARTIFACTS = ("config.yaml", "metrics.csv", "train.log", "curves.png", "best.pt")
RUN_TAG = "convzoo.run_dir"


class Loggers:
    """The open loggers of one run (none on ranks other than 0)."""

    def __init__(self, items=()):
        self.items = list(items)

    def epoch(self, row: dict) -> None:
        for item in self.items:
            item.epoch(row)

    def close(self, ok: bool) -> None:
        """Upload the run's files (on success) and mark the run ended; safe to call twice."""
        items, self.items = self.items, []
        for item in items:
            item.close(ok)


def open_loggers(spec: str | None, out: Path, config: dict, *, resumed_epoch: int | None = None) -> Loggers:
    """`resumed_epoch`: epochs already done when continuing a run (its later events are dropped)."""
    makers = {"tensorboard": TensorBoardLogger, "mlflow": MLflowLogger}
    return Loggers(makers[name](Path(out), config, resumed_epoch) for name in logger_names(spec))


def missing(package: str, exc: ImportError) -> ConfigError:
    return ConfigError(f"--logger needs the {package} package ({exc}); install it with pip install 'convzoo[tracking]'")


class TensorBoardLogger:
    """Event files in the run directory itself, so `tensorboard --logdir runs` lists every run."""

    def __init__(self, out: Path, config: dict, resumed_epoch: int | None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise missing("tensorboard", exc) from None
        # On resume, purge_step drops events the interrupted run wrote past its checkpoint.
        self.writer = SummaryWriter(str(out), purge_step=resumed_epoch + 1 if resumed_epoch is not None else None)
        if resumed_epoch is None:
            text = "\n".join(f"    {k}: {v}" for k, v in config.items())  # indented: markdown code block
            self.writer.add_text("config", text, 0)

    def epoch(self, row: dict) -> None:
        for key, tag in TB_TAGS.items():
            if row.get(key) is not None:
                self.writer.add_scalar(tag, row[key], row["epoch"])
        self.writer.flush()  # a live `tensorboard` sees each epoch as it ends

    def close(self, ok: bool) -> None:
        self.writer.close()


class MLflowLogger:
    """One MLflow run: the config as params, metrics.csv's columns per epoch, the run's files as
    artifacts. Default store: SQLite in the run directory (mlflow.db, artifacts in mlartifacts/)."""

    def __init__(self, out: Path, config: dict, resumed_epoch: int | None):
        try:
            from mlflow import MlflowClient
            from mlflow.entities import Param
            from mlflow.exceptions import MlflowException
        except ImportError as exc:
            raise missing("mlflow", exc) from None
        for name in ("mlflow", "alembic"):  # schema migrations and run URLs are logged at INFO
            logging.getLogger(name).setLevel(logging.WARNING)
        self.out = out.resolve()
        local = not os.environ.get("MLFLOW_TRACKING_URI")
        uri = f"sqlite:///{self.out / 'mlflow.db'}" if local else os.environ["MLFLOW_TRACKING_URI"]
        try:
            self.client = client = MlflowClient(tracking_uri=uri)
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "convzoo"
            experiment = client.get_experiment_by_name(name)
            exp_id = experiment.experiment_id if experiment else client.create_experiment(
                name, artifact_location=(self.out / "mlartifacts").as_uri() if local else None)
            previous = client.search_runs([exp_id], f"tags.`{RUN_TAG}` = '{self.out}'", max_results=1,
                                          order_by=["attributes.start_time DESC"]) if resumed_epoch is not None else []
            if previous:  # --resume continues the same MLflow run
                self.run_id = previous[0].info.run_id
                client.update_run(self.run_id, status="RUNNING")
            else:
                self.run_id = client.create_run(exp_id, run_name=out.name, tags={RUN_TAG: str(self.out)}).info.run_id
                params = [Param(k, str(v)[:6000]) for k, v in config.items()]
                client.log_batch(self.run_id, params=params)
        except ImportError as exc:  # the SQLite store needs sqlalchemy and alembic
            raise missing("mlflow", exc) from None
        except (MlflowException, OSError) as exc:  # a bad URI or an unreachable server is the user's to fix
            raise ConfigError(f"MLflow tracking at {uri} failed: {str(exc).splitlines()[0][:200]}") from None

    def epoch(self, row: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, int(row["epoch"])) for k, v in row.items()
                   if k != "epoch" and v is not None]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, ok: bool) -> None:
        if ok:
            for name in ARTIFACTS:
                if (self.out / name).is_file():
                    self.client.log_artifact(self.run_id, str(self.out / name))
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "KILLED")
