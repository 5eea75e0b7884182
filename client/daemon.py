"""The client daemon an edge device runs: join, pull tasks, train, stream updates, repeat.

It dials out (devices sit behind NAT) and survives a server that is not up
yet, restarts or drops calls (``fedsqueeze.federation_link``): transient
failures are retried with exponential backoff and jitter; an unknown session
(the server restarted) means Join again.
``stop()`` may be called from another thread: it cancels the call in flight
and interrupts training between batches.

A client that cannot do its part (a model it cannot build, data that does not
fit the model, a trainer that raises) tells the server with ReportFailure, so
the round goes on without it at once, then leaves and exits with code 2 and
one log line saying why.
"""

from __future__ import annotations

import copy
import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import NoReturn

import grpc
import numpy as np
import torch

from fedsqueeze.client.task_runner import TaskError, TaskRunner
from fedsqueeze.client.trainers import Stopped, Trainer
from fedsqueeze.config import ClientConfig
from fedsqueeze.data.datasets import Dataset
from fedsqueeze.evaluation import evaluate
from fedsqueeze.federation_link import POLL_WAIT_MS, FatalError, FederationLink
from fedsqueeze.models import build_model, is_regression
from fedsqueeze.tensors import float_state, model_spec
from fedsqueeze.v1 import federation_pb2 as pb
from fedsqueeze.wire import ExpectedTensor, expect_all, receive_model

log = logging.getLogger(__name__)

__all__ = ["ClientDaemon", "FatalError", "POLL_WAIT_MS"]


class ClientDaemon:
    def __init__(self, config: ClientConfig, data: Dataset, client_id: str, capabilities: pb.Capabilities,
                 held_out: Callable[[], Dataset] | None = None) -> None:
        """``held_out`` loads this device's evaluation split when the server first asks for an evaluation."""
        self.config = config
        self.data = data
        self._load_held_out = held_out
        self._held_out: Dataset | None = None
        self.client_id = client_id
        self.capabilities = capabilities
        self.rounds_done = 0
        self.instance_id = secrets.token_hex(8)
        self._model_spec: pb.ModelSpec | None = None
        self._model: torch.nn.Module | None = None
        self._runner: TaskRunner | None = None   # trains and encodes; rebuilt with the model
        self._link = FederationLink(config.server, config.insecure, config.root_certificates, config.token_file,
                                    config.client_cert, config.client_key, config.chunk_bytes, config.max_backoff)

    # ------------------------------------------------------------------ control

    def stop(self) -> None:
        """Ask the daemon to finish: cancels the call in flight; safe from any thread."""
        self._link.stop()

    def run(self) -> int:
        """Loop until the federation finishes (0), ``stop()`` (0) or a fatal refusal (2)."""
        try:
            while not self._link.stopping:
                try:
                    if self._link.session is None:
                        self._join()
                    task = self._link.poll()
                    kind = task.WhichOneof("kind")
                    if kind == "finished":
                        log.info("federation finished (%s) after %d rounds here", task.finished.reason,
                                 self.rounds_done)
                        self._leave("federation finished")
                        return 0
                    if kind == "train":
                        self._run_task(task.train)
                    elif kind == "evaluate":
                        self._run_evaluation(task.evaluate)
                    self._link.succeeded()
                except grpc.RpcError as exc:
                    if self._link.stopping:
                        break
                    self._link.recover(exc)
                except Stopped:
                    break
            log.info("stopping after %d rounds", self.rounds_done)
            self._leave("client stopped")
            return 0
        except FatalError as exc:
            log.error("%s", exc)
            self._leave(f"client error: {exc}")
            return 2
        finally:
            self._link.close()

    # ------------------------------------------------------------------- calls

    def _join(self) -> None:
        reply = self._link.join(pb.JoinRequest(
            client_id=self.client_id, capabilities=self.capabilities, uplink_codec=self.config.uplink or "",
            downlink_codec=self.config.downlink or "", instance_id=self.instance_id))
        if reply.model != self._model_spec:
            self._set_model(reply.model)

    def _set_model(self, spec: pb.ModelSpec) -> None:
        try:
            model = build_model(spec)
            expected_shape = tuple(json.loads(spec.config_json)["input_shape"])
        except Exception as exc:   # whatever a model builder raises, this client cannot take part
            self._fail(None, f"cannot build the federation's model {spec.name!r}: {type(exc).__name__}: {exc}")
        if self.data.input_shape != expected_shape:
            self._fail(None, f"this client's data has input shape {self.data.input_shape}, the federation's "
                             f"model expects {expected_shape}: check --data")
        if self.data.regression != is_regression(spec):
            self._fail(None, f"this client's data is a {'regression' if self.data.regression else 'classification'}"
                             f" task, the federation's model is not: check --data")
        self._model_spec = spec
        self._model = model
        self._runner = TaskRunner(model, self.data, self.client_id)

    def _trainer(self, task: pb.TrainTask) -> Trainer:
        """The client half of the task's method (refused for good if this client cannot load it)."""
        assert self._runner is not None
        try:
            return self._runner.trainer(task.method)
        except TaskError as exc:
            self._fail(task, str(exc))

    def _download(self, task_id: str, expected: dict[str, ExpectedTensor]) -> dict[str, np.ndarray]:
        return receive_model(self._link.download(task_id), expected)

    def _fail(self, task: pb.TrainTask | pb.EvaluateTask | None, reason: str) -> NoReturn:
        """Tell the server this client cannot do ``task`` (or any task), then stop for good (FatalError)."""
        reason = " ".join(reason.split())[:500]   # one line
        self._link.report_failure(task.task_id if task else "", reason)
        raise FatalError(reason)

    def _run_task(self, task: pb.TrainTask) -> None:
        trainer = self._trainer(task)
        assert self._runner is not None
        started = time.monotonic()
        try:
            downloaded = self._download(task.task_id, trainer.expected_download(task))
            download_seconds = time.monotonic() - started
            hyperparameters = self._hyperparameters(task.hyperparameters)
            log.info("round %d: downloaded the model in %.1f s; training", task.round, download_seconds)
            result = self._runner.run(task, downloaded, hyperparameters, lambda: self._link.stopping)
        except (grpc.RpcError, Stopped):
            raise
        except Exception as exc:   # the task cannot be done here: say so rather than leave the round waiting
            self._fail(task, f"round {task.round}: {task.method} task failed: {type(exc).__name__}: {exc}")
        uploading = time.monotonic()
        self._link.submit(pb.UpdateHeader(task_id=task.task_id, round=task.round, num_examples=result.num_examples,
                                          metrics=result.metrics), result.update)
        self.rounds_done += 1
        log.info("round %d: trained on %d examples (loss %.4f), sent %d payload bytes; download %.1f s, "
                 "training %.1f s, encoding %.1f s, upload %.1f s", task.round, result.num_examples,
                 result.metrics.get("train_loss", float("nan")), result.update.payload_size, download_seconds,
                 result.train_seconds, result.encode_seconds, time.monotonic() - uploading)

    def _run_evaluation(self, task: pb.EvaluateTask) -> None:
        """Download the global model, evaluate it on this device's held-out split, send the metrics."""
        assert self._model is not None
        try:
            if self._held_out is None:
                if self._load_held_out is None:
                    raise ValueError("this client has no held-out split to evaluate on")
                self._held_out = self._load_held_out()
            model = copy.deepcopy(self._model)   # the trainers' model keeps its own state
            downloaded = self._download(task.task_id, expect_all(model_spec(float_state(model)), task.downlink_codec))
            model.load_state_dict({n: torch.from_numpy(v) for n, v in downloaded.items()}, strict=False)
            accuracy, loss = evaluate(model, self._held_out)
        except (grpc.RpcError, Stopped):
            raise
        except Exception as exc:   # cannot evaluate here: say so rather than leave the evaluation waiting
            self._fail(task, f"round {task.round}: evaluation failed: {type(exc).__name__}: {exc}")
        metrics = {"loss": loss} if self._held_out.regression else {"accuracy": accuracy, "loss": loss}
        self._link.submit_evaluation(pb.EvaluationReport(task_id=task.task_id, round=task.round,
                                                         num_examples=len(self._held_out), metrics=metrics))
        log.info("round %d: evaluated the global model on %d held-out examples: accuracy %.4f, loss %.4f",
                 task.round, len(self._held_out), accuracy, loss)

    def _hyperparameters(self, given: pb.Hyperparameters) -> pb.Hyperparameters:
        """The server's hyperparameters with this device's overrides."""
        chosen = pb.Hyperparameters()
        chosen.CopyFrom(given)
        if self.config.epochs is not None:
            chosen.epochs = self.config.epochs
        if self.config.batch_size is not None:
            chosen.batch_size = self.config.batch_size
        if self.config.lr is not None:
            chosen.learning_rate = self.config.lr
        return chosen

    def _leave(self, reason: str) -> None:
        self._link.leave(reason)
