"""onnxruntime sessions and batched inference, in one place (predict, serve, export checks, int8
reports). numpy only: serving imports it without torch."""

from __future__ import annotations

import numpy as np


def ort_session(path, threads: int = 1):
    """A CPU onnxruntime session with `threads` intra-op threads and full graph optimisation."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def session_runner(session):
    """x -> the session's first output for input x (the graph has one input)."""
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def run_batched(run, x: np.ndarray, rows: int) -> np.ndarray:
    """run(x) computed `rows` at a time, so memory stays bounded whatever len(x) is."""
    return np.concatenate([run(x[i: i + rows]) for i in range(0, len(x), rows)])
