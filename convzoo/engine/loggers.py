"""Experiment tracking for `--logger tensorboard|mlflow`: the trainer hands each epoch's metrics row
(the one metrics.csv gets) to `Loggers.epoch` and closes them once the run ends.

Both back ends are optional (`pip install 'convzoo[tracking]'`); a missing one, or an MLflow server
that does not answer, is a one-line error from `check_loggers` before the run folder is created or
changed. Only rank 0 opens loggers, and everything lands in the run directory unless
MLFLOW_TRACKING_URI points elsewhere. Once the run has started, a logger that fails (a tracking server
gone down, a full disk) is dropped with one warning line: training goes on, metrics.csv keeps every epoch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from ..config import logger_names
from ..errors import ConfigError

# metrics.csv column -> TensorBoard tag; the prefixes group train/val/test accuracy on one card.
TB_TAGS = {"train_loss": "loss/train", "train_acc": "accuracy/train", "val_acc": "accuracy/val",
           "test_acc": "accuracy/test", "lr": "lr", "epoch_time_s": "speed/epoch_time_s",
           "images_per_s": "speed/images_per_s"}
ARTIFACTS = ("config.yaml", "metrics.csv", "train.log", "curves.png", "best.pt")
RUN_TAG = "convzoo.run_dir"
PROBE_TIMEOUT_S = 5  # one request to a remote tracking server before the run folder is touched
# MLflow retries a failed request 7 times with backoff (about 4 minutes of silence for a server that is
# down); while a run is set up, one try with a short timeout, unless the user set these themselves.
SETUP_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# During training, two retries: a server that went down costs seconds once, not minutes every epoch; the
# upload at the end keeps MLflow's 120 s timeout (a large best.pt through a proxying server).
RUN_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
UPLOAD_HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "120"}


class Loggers:
    """The open loggers of one run (none on ranks other than 0)."""

    def __init__(self, items=()):
        self.items = list(items)

    def epoch(self, row: dict) -> None:
        for item in list(self.items):
            if not self._call(item, "epoch", row):
                self.items.remove(item)
                with contextlib.suppress(Exception), quick_http():  # its file handle, its run marked ended: one try
                    item.close(False)

    def close(self, ok: bool) -> None:
        """Upload the run's files (on success) and mark the run ended; safe to call twice."""
        items, self.items = self.items, []
        for item in items:
            self._call(item, "close", ok)

    @staticmethod
    def _call(item, method: str, arg) -> bool:
        """item.method(arg); False, with one warning line, when it fails: tracking is a copy of what the
        run folder records, never a reason to lose the training."""
        try:
            with quick_http(UPLOAD_HTTP_ENV if method == "close" else RUN_HTTP_ENV):
                getattr(item, method)(arg)
            return True
        except Exception as exc:  # noqa: BLE001 - MLflow, requests, SQLite and the OS raise many types
            after = ("the run folder has them" if method == "close" else
                     "it is off for the rest of the run; training goes on, the run folder records every epoch")
            print(f"warning: {item.NAME} {'upload of the run files' if method == 'close' else 'logging'} failed "
                  f"({reason(exc, timeout=None)}); {after}", file=sys.stderr, flush=True)
            return False


def open_loggers(spec: str | None, out: Path, config: dict, *, resumed_epoch: int | None = None) -> Loggers:
    """`resumed_epoch`: epochs already done when continuing a run (its later events are dropped)."""
    makers = {"tensorboard": TensorBoardLogger, "mlflow": MLflowLogger}
    return Loggers(makers[name](Path(out), config, resumed_epoch) for name in logger_names(spec))


def check_loggers(spec: str | None) -> None:
    """What `--logger` needs, checked before the run folder is created or changed: its packages, and
    for MLflow with an http(s) MLFLOW_TRACKING_URI, a server that answers (one request, no retries)."""
    names = logger_names(spec)
    if "tensorboard" in names:
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError as exc:
            raise missing("tensorboard", exc) from None
    if "mlflow" in names:
        try:
            import mlflow  # noqa: F401
            if not os.environ.get("MLFLOW_TRACKING_URI"):  # the local store in the run directory
                import alembic  # noqa: F401
                import sqlalchemy  # noqa: F401
        except ImportError as exc:
            raise missing("mlflow", exc) from None
        uri = os.environ.get("MLFLOW_TRACKING_URI", "")
        if urlsplit(uri).scheme.lower() in ("http", "https"):
            probe_server(uri)


def experiment_name() -> str:
    """The MLflow experiment a run is logged under: $MLFLOW_EXPERIMENT_NAME, else convzoo."""
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or "convzoo"


def probe_server(uri: str) -> None:
    """One request to the MLflow server at `uri` (its experiment lookup, with the user's credentials and
    TLS settings), PROBE_TIMEOUT_S seconds and no retries: a server that is down, refuses, times out or
    answers with an error is one line naming the URI."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    name = experiment_name()
    try:
        response = http_request(get_default_host_creds(uri), "/api/2.0/mlflow/experiments/get-by-name", "GET",
                                params={"experiment_name": name}, max_retries=0, backoff_factor=0,
                                timeout=PROBE_TIMEOUT_S, raise_on_status=False, retry_timeout_seconds=PROBE_TIMEOUT_S)
    except (MlflowException, OSError, ValueError) as exc:  # refused, unreachable, timed out, a bad URL
        raise ConfigError(f"MLflow tracking server at {uri} cannot be reached ({reason(exc)}); start it, fix "
                          "MLFLOW_TRACKING_URI, or train without --logger mlflow") from None
    if response.status_code == 200:
        return
    try:
        error = response.json()
    except ValueError:
        error = {}
    error = error if isinstance(error, dict) else {}
    if response.status_code == 404 and error.get("error_code") == "RESOURCE_DOES_NOT_EXIST":
        return  # the experiment is created at setup
    detail = (str(error.get("message") or response.reason or "").splitlines() or [""])[0][:200]
    raise ConfigError(f"MLflow tracking server at {uri} answered HTTP {response.status_code}"
                      f"{f' ({detail})' if detail else ''}; fix the server or MLFLOW_TRACKING_URI, or train without "
                      "--logger mlflow")


def reason(exc: Exception, timeout: float | None = PROBE_TIMEOUT_S) -> str:
    """The cause at the end of a requests/urllib3 error chain ([Errno 111] Connection refused)."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "timed out" in text or "Timeout" in text:
        return f"no answer within {timeout:g} s" if timeout else "no answer in time"
    for marker in ("[Errno", "Failed to resolve", "Name or service"):
        if marker in text:
            return text[text.index(marker):].rstrip("')\"")[:200]
    return text[:200]


@contextlib.contextmanager
def quick_http(env: dict = SETUP_HTTP_ENV):
    """MLflow's requests with fewer retries and a shorter timeout than its own (about 4 minutes for a
    server that is down): `env`, unless the user set those variables; restored afterwards."""
    added = {k: v for k, v in env.items() if not os.environ.get(k)}  # empty reads as unset
    previous = {k: os.environ.get(k) for k in added}
    os.environ.update(added)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def missing(package: str, exc: ImportError) -> ConfigError:
    return ConfigError(f"--logger needs the {package} package ({exc}); install it with pip install 'convzoo[tracking]'")


class TensorBoardLogger:
    """Event files in the run directory itself, so `tensorboard --logdir runs` lists every run."""

    NAME = "TensorBoard"

    def __init__(self, out: Path, config: dict, resumed_epoch: int | None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise missing("tensorboard", exc) from None
        # On resume, purge_step drops events the interrupted run wrote past its checkpoint.
        self.writer = SummaryWriter(str(out), purge_step=resumed_epoch + 1 if resumed_epoch is not None else None)
        # A resume writes the settings it continues with at its first epoch (resumed_epoch + 1, where the
        # purge begins): --epochs may have grown, and a --logger tensorboard first given on resume had no
        # config text at all.
        text = "\n".join(f"    {k}: {v}" for k, v in config.items())  # indented: markdown code block
        self.writer.add_text("config", text, 0 if resumed_epoch is None else resumed_epoch + 1)

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

    NAME = "MLflow"
    URL_SYNTAX = ("#", "?", "%")

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
        if local and set(str(self.out)) & set(self.URL_SYNTAX):
            # in the store's sqlite:/// URL '#' and '?' begin a fragment or query (the database went to
            # `runs/x#`, beside the run) and '%' an escape; percent-encoded, MLflow made folders named so
            raise ConfigError(f"--logger mlflow keeps its store in the run folder, whose path may not hold "
                              f"{' or '.join(map(repr, self.URL_SYNTAX))} (a URL's syntax there); choose another "
                              "--output-dir or set MLFLOW_TRACKING_URI", self.out)
        uri = f"sqlite:///{self.out / 'mlflow.db'}" if local else os.environ["MLFLOW_TRACKING_URI"]
        self.run_id = None
        try:
            with quick_http():
                self._start(MlflowClient(tracking_uri=uri), config, resumed_epoch, local, Param)
        except ImportError as exc:  # the SQLite store needs sqlalchemy and alembic
            raise missing("mlflow", exc) from None
        except (MlflowException, OSError) as exc:  # a bad URI or an unreachable server is the user's to fix
            self._abandon()
            raise ConfigError(f"MLflow tracking at {uri} failed: {str(exc).splitlines()[0][:200]}") from None

    def _start(self, client, config: dict, resumed_epoch: int | None, local: bool, Param) -> None:
        """The experiment, then the run: a new one, or on --resume the run of this folder."""
        self.client = client
        name = experiment_name()
        experiment = client.get_experiment_by_name(name)
        exp_id = experiment.experiment_id if experiment else client.create_experiment(
            name, artifact_location=(self.out / "mlartifacts").as_uri() if local else None)
        previous = client.search_runs([exp_id], f"tags.`{RUN_TAG}` = '{self.out}'", max_results=1,
                                      order_by=["attributes.start_time DESC"]) if resumed_epoch is not None else []
        if previous:  # --resume continues the same MLflow run
            self.run_id = previous[0].info.run_id
            client.update_run(self.run_id, status="RUNNING")
            # a param cannot change in MLflow: a setting the resume changed (--epochs, --threads) is a tag
            # `resumed.KEY` (config.yaml, uploaded at the end, holds them all)
            logged, tags = previous[0].data.params, previous[0].data.tags
            for key, value in config.items():
                tag = f"resumed.{key}"
                if key in logged and logged[key] != str(value)[:6000]:
                    client.set_tag(self.run_id, tag, str(value)[:5000])
                elif tag in tags:  # set back to the run's first value by this resume
                    client.delete_tag(self.run_id, tag)
            new = [Param(k, str(v)[:6000]) for k, v in config.items() if k not in logged]  # settings newer than the run
            if new:
                client.log_batch(self.run_id, params=new)
        else:
            self.run_id = client.create_run(exp_id, run_name=self.out.name, tags={RUN_TAG: str(self.out)}).info.run_id
            params = [Param(k, str(v)[:6000]) for k, v in config.items()]
            client.log_batch(self.run_id, params=params)

    def _abandon(self) -> None:
        """A run this setup created (or reopened) and could not finish setting up is marked failed, if
        the server still answers (one quick try)."""
        if self.run_id is None:
            return
        with contextlib.suppress(Exception), quick_http():
            self.client.set_terminated(self.run_id, "FAILED")

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
