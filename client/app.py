"""Run the client daemon as a process: load this device's data, measure it, serve until done or signalled."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from types import FrameType

import torch

from fedsqueeze.client.capabilities import measure_capabilities
from fedsqueeze.client.daemon import ClientDaemon
from fedsqueeze.config import ClientConfig
from fedsqueeze.data.datasets import Dataset, load_split
from fedsqueeze.data.partition import partition
from fedsqueeze.limits import MAX_CHUNK_BYTES, MIN_CHUNK_BYTES

log = logging.getLogger(__name__)


def load_partition(config: ClientConfig) -> Dataset:
    """This client's share of the train split; the other shares never become tensors."""
    if not 0 <= config.partition_index < config.num_partitions:
        raise SystemExit(f"--partition-index must be in [0, {config.num_partitions}), not {config.partition_index}")
    raw = load_split(config.data, "train")
    parts = partition(raw.labels, config.partition, config.num_partitions, config.seed)
    return raw.select(parts[config.partition_index])


def load_held_out(config: ClientConfig) -> Dataset:
    """This client's share of the test split (an IID share, whatever the training partition): what it evaluates
    the global model on when the server holds no data."""
    raw = load_split(config.data, "test")
    return raw.select(partition(raw.labels, "iid", config.num_partitions, config.seed)[config.partition_index])


def run_client(config: ClientConfig) -> int:
    """Run the daemon in a worker thread; SIGTERM/SIGINT stop it cleanly (a second one exits at once)."""
    if not MIN_CHUNK_BYTES <= config.chunk_bytes <= MAX_CHUNK_BYTES:
        raise SystemExit(f"--chunk-bytes must be in [{MIN_CHUNK_BYTES}, {MAX_CHUNK_BYTES}], not {config.chunk_bytes}")
    if config.threads:
        torch.set_num_threads(config.threads)
    client_id = config.client_id or socket.gethostname()
    data = load_partition(config)
    capabilities = measure_capabilities(config.compute_budget)
    log.info("client %s: %d training examples (%s, partition %d of %d); %d cores, %.0f samples/s",
             client_id, len(data), config.partition, config.partition_index, config.num_partitions,
             capabilities.cpu_cores, capabilities.train_samples_per_second)
    daemon = ClientDaemon(config, data, client_id, capabilities, held_out=lambda: load_held_out(config))

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if daemon_done.is_set() or stopping.is_set():
            os._exit(128 + signum)
        log.info("%s received: finishing", signal.Signals(signum).name)
        stopping.set()
        daemon.stop()

    stopping, daemon_done = threading.Event(), threading.Event()
    result: list[int] = []
    worker = threading.Thread(target=lambda: (result.append(daemon.run()), daemon_done.set()), name="daemon")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker.start()
    while worker.is_alive():
        worker.join(0.5)
    return result[0] if result else 1
