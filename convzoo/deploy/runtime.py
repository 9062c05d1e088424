"""Inference runtimes, in one place (predict, serve, eval of ONNX files, export checks, int8 reports):
onnxruntime, always installed, and OpenVINO, the optional [openvino] extra. Both are used through
`open_runner(path, threads, runtime)`: a function x -> logits. No torch: serving imports it. numpy
and the runtimes are imported where used, as the CLI's parser reads RUNTIMES."""

from __future__ import annotations

import queue

from ..errors import ConfigError

RUNTIMES = ("auto", "onnxruntime", "openvino")
QUANTIZED_OPS = {"QuantizeLinear", "QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "ConvInteger"}


def open_runner(path, threads: int = 1, runtime: str = "auto", **options):
    """x -> the model's first output, in `runtime` (see pick_runtime for 'auto'); `options` go to
    the runtime's own runner (session options for onnxruntime, hint for OpenVINO)."""
    chosen = pick_runtime(runtime, path)
    return (openvino_runner if chosen == "openvino" else ort_runner)(path, threads, **options)


def pick_runtime(runtime: str, model) -> str:
    """'auto' is OpenVINO for int8 graphs where it is installed (its int8 kernels are the fastest
    convzoo measured, benchmarks/quant.py), else onnxruntime (the fastest for fp32 graphs).
    model: the ONNX file's path or its loaded onnx.ModelProto."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}; choose from: {', '.join(RUNTIMES)}")
    if runtime != "auto":
        return runtime
    return "openvino" if is_quantized(model) and openvino_installed() else "onnxruntime"


def is_quantized(model) -> bool:
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    return any(node.op_type in QUANTIZED_OPS for node in model.graph.node)


def openvino_installed() -> bool:
    try:  # an import, not a look-up: a broken or blocked install counts as not installed
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def import_openvino():
    """The openvino module, or the one-line error that says how to install it."""
    try:
        import openvino
    except ImportError:
        raise ConfigError("--runtime openvino needs OpenVINO, which is not installed; install it with: "
                          "pip install 'convzoo[openvino]'") from None
    return openvino


# ---------------------------------------------------------------- onnxruntime


def ort_session(path, threads: int = 1, *, spinning: bool = True, level: str = "all"):
    """A CPU onnxruntime session with `threads` intra-op threads and full graph optimisation
    ('extended' skips the NCHWc/NHWC layout transformers; `spinning` False parks idle threads)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Fatal only: a graph that fails to load or run raises, and convzoo reports it as one line; onnxruntime's
    # own coloured [W:onnxruntime]/[E:onnxruntime] lines on stderr would only repeat it, over several lines.
    options.log_severity_level = 4
    options.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}[level]
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def session_runner(session):
    """x -> the session's first output for input x (the graph has one input)."""
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def ort_runner(path, threads: int = 1, **options):
    return session_runner(ort_session(path, threads, **options))


# ---------------------------------------------------------------- OpenVINO


def openvino_runner(path, threads: int = 1, *, hint: str = "THROUGHPUT"):
    """OpenVINO on the CPU. THROUGHPUT: `threads` streams of one thread each, a batch split between
    them (faster on LeNet-sized layers than `threads` threads sharing each layer); LATENCY: one
    stream of `threads` threads. Safe to call from several threads at once (the server does)."""
    import numpy as np

    ov = import_openvino()
    core = ov.Core()
    # No pinning: each process would pin its threads without knowing of the others (`serve --workers`),
    # and pinned threads cannot move away from the other jobs of a shared machine.
    # f32: on CPUs with AVX512-BF16 or AMX, OpenVINO's default runs an fp32 model's float ops in bf16
    # (LeNet-5's logits moved by up to 0.008 on a Xeon with AVX512-BF16; 4e-7 in f32), silently.
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {
        "PERFORMANCE_HINT": hint, "INFERENCE_NUM_THREADS": threads, "ENABLE_CPU_PINNING": False,
        "INFERENCE_PRECISION_HINT": "f32"})
    # An infer request runs one call at a time: a pool of them, one per stream, shared by all callers.
    idle = queue.SimpleQueue()
    for _ in range(max(1, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))):
        idle.put(compiled.create_infer_request())

    # A graph with a fixed batch size takes exactly that many rows a call: never split between requests.
    fixed = compiled.input(0).get_partial_shape()[0].is_static

    def run(x):
        requests, started = take_requests(idle, 1 if fixed else len(x)), []
        try:
            parts = np.array_split(x, len(requests))
            for request, part in zip(requests, parts):
                request.start_async({0: part}, share_inputs=True)
                started.append(request)
            outputs = []
            for request in requests:
                request.wait()
                outputs.append(request.get_output_tensor(0).data.copy())  # the request reuses its buffer
            return np.concatenate(outputs)
        finally:
            for request in started:  # after an error: no request goes back to the pool still running
                try:
                    request.wait()
                except Exception:  # noqa: BLE001 - its error was raised above already
                    pass
            for request in requests:
                idle.put(request)

    return run


def take_requests(idle: queue.SimpleQueue, rows: int) -> list:
    """One idle request (waiting for it if need be), plus as many more as are idle now, at most one
    per row: a caller never waits holding some, so concurrent callers cannot deadlock."""
    requests = [idle.get()]
    while len(requests) < rows:
        try:
            requests.append(idle.get_nowait())
        except queue.Empty:
            break
    return requests


def run_batched(run, x, rows: int):
    """run(x) computed `rows` at a time, so memory stays bounded whatever len(x) is."""
    import numpy as np

    return np.concatenate([run(x[i: i + rows]) for i in range(0, len(x), rows)])


def in_fixed_batches(run, rows: int):
    """run for a graph that takes exactly `rows` images a call: any number of inputs run `rows` at a
    time, the last group padded with zeros whose outputs are dropped."""
    import numpy as np

    def fixed(x):
        outputs = []
        for start in range(0, len(x), rows):
            part = x[start: start + rows]
            if len(part) < rows:
                part = np.concatenate([part, np.zeros((rows - len(part), *part.shape[1:]), part.dtype)])
            outputs.append(run(part)[: len(x) - start])
        return np.concatenate(outputs)

    return fixed
