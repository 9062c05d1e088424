"""Seeded fuzzing of the data readers through the real entry point.

Hundreds of mutated MNIST (gzipped and raw IDX) and CIFAR-10 (binary and Python pickle) files, each
read by `convzoo data info` -- locate, verify, decode both splits -- in one interpreter that runs
under an address-space limit, so a reader that allocates what a header or a gzip bomb claims dies
with MemoryError instead of exhausting the machine. Every case must end in exit 0 (the mutation
left a valid file) or exit 2 with exactly one `convzoo: error:` line; any other exception, a
traceback, or a mutation that must be refused but was accepted is a failure, reported with the
seed and case index that reproduce it:

    CONVZOO_FUZZ_SEED=<seed> CONVZOO_FUZZ_CASE=<index> .venv/bin/python tests/test_fuzz_data.py
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import pickle
import random
import resource
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pytest

from conftest import CIFAR_DIR, MNIST_DIR, ROOT, cli_env, need

SEED = int(os.environ.get("CONVZOO_FUZZ_SEED", "1337"))
IDX_CASES, CIFAR_CASES = 220, 130
ADDRESS_SPACE = 3 << 30  # torch imports in ~0.7 GB of address space; the data here need a few MB
MAX_RSS = 1 << 30
MAX_CASE_S = 10.0


@pytest.mark.real_data
def test_fuzz_data_files(tmp_path):
    need(MNIST_DIR), need(CIFAR_DIR)

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    proc = subprocess.run([sys.executable, __file__, str(SEED), str(tmp_path)], preexec_fn=limit, cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          # one thread, few malloc arenas: the address space then measures the data, not the cores
                          env=cli_env({"CONVZOO_FUZZ_CASE": "", "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}))
    assert proc.returncode == 0, f"fuzz worker died (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["cases"] >= 300 and report["refused"] >= 200 and report["accepted"] >= 20, report
    assert not report["failures"], f"{len(report['failures'])} failing cases:\n\n" + "\n\n".join(report["failures"][:8])
    assert report["peak_rss"] < MAX_RSS, f"peak RSS {report['peak_rss']:,} bytes"


# ---------------------------------------------------------------- the worker (run as a script, under the limit)

IDX_NAMES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz"]
CIFAR_NAMES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
OFFICIAL_COUNT = {"train": 60000, "t10k": 10000}


def idx_bytes(array: np.ndarray, code: int = 8, dtype=">u1") -> bytes:
    return bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes() + array.astype(dtype).tobytes()


def header(code, *dims) -> bytes:
    return bytes([0, 0, code, len(dims)]) + np.asarray(dims, ">u4").tobytes()


def flip_bits(data: bytes, rng: random.Random, count: int) -> bytes:
    out = bytearray(data)
    for _ in range(count):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


_ZEROS_MEMBER = {}


def bomb(prefix: bytes, total: int) -> bytes:
    """`prefix` then `total` zero bytes as concatenated gzip members (~1000:1)."""
    member = _ZEROS_MEMBER.get("m")
    if member is None:
        member = _ZEROS_MEMBER["m"] = gzip.compress(bytes(64 << 20), compresslevel=9, mtime=0)
    return gzip.compress(prefix, mtime=0) + member * max(1, total // (64 << 20))


def idx_case(rng: random.Random, base: dict[str, bytes]) -> tuple[str, bytes, str, str]:
    """(file name, new content, what was done, expectation: 'fail' | 'pass' | 'any')."""
    name = rng.choice(IDX_NAMES)
    raw = base[name]
    images = "images" in name
    count = int.from_bytes(raw[4:8], "big")
    official = OFFICIAL_COUNT[name.split("-")[0]]
    gz = rng.random() < 0.6
    pack = (lambda b: gzip.compress(b, mtime=0)) if gz else (lambda b: b)
    kind = rng.choice(["flip_raw", "flip_gz", "truncate", "truncate_gz", "dtype", "ndim", "dim", "overflow",
                       "append", "append_gz", "bomb", "bomb_small", "members", "typed_labels", "flat_images",
                       "swap", "empty", "junk", "valid"])
    if kind == "flip_raw":
        n = rng.choice([1, 2, 8, 64])
        return name, pack(flip_bits(raw, rng, n)), f"{n} bit flips, gz={gz}", "any"
    if kind == "flip_gz":
        n = rng.choice([1, 2, 8])
        return name, flip_bits(gzip.compress(raw, mtime=0), rng, n), f"{n} bit flips in the gzip stream", "any"
    if kind == "truncate":
        cut = rng.randrange(len(raw))
        return name, pack(raw[:cut]), f"raw cut at {cut} of {len(raw)}, gz={gz}", "fail"
    if kind == "truncate_gz":
        data = gzip.compress(raw, mtime=0)
        cut = rng.randrange(len(data))
        return name, data[:cut], f"gzip cut at {cut} of {len(data)}", "fail"
    if kind == "dtype":
        code = rng.choice([0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0x07, 0xFF])
        return name, pack(raw[:2] + bytes([code]) + raw[3:]), f"type code 0x{code:02X}, gz={gz}", "fail"
    if kind == "ndim":
        ndim = rng.choice([d for d in (0, 1, 2, 3, 4, 65, 255) if d != raw[3]])
        return name, pack(raw[:3] + bytes([ndim]) + raw[4:]), f"{ndim} dimensions, gz={gz}", "fail"
    if kind == "dim":
        i = rng.randrange(raw[3])
        old = int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big")
        new = rng.choice([v for v in (0, 1, 27, 29, 784, count - 1, count + 1, official, official + 1, 2**31,
                                      2**32 - 1, rng.randrange(2**32)) if v != old])
        data = raw[: 4 + 4 * i] + new.to_bytes(4, "big") + raw[8 + 4 * i :]
        return name, pack(data), f"dimension {i} {old} -> {new}, gz={gz}", "fail"
    if kind == "overflow":
        dims = rng.choice([(2**31, 2**31, 4), (2**32 - 1,) * 3, (2**32 - 1,), (2**16, 2**16, 2**16, 2**16)])
        return name, pack(header(8, *dims) + raw[4 + 4 * raw[3] :]), f"dims {dims}, gz={gz}", "fail"
    if kind == "append":
        n = rng.choice([1, 7, 784, 100_000])
        return name, pack(raw + rng.randbytes(n)), f"{n} bytes appended, gz={gz}", "fail"
    if kind == "append_gz":
        n = rng.choice([1, 8, 1000])
        extra = b"\xff" + rng.randbytes(n - 1)  # not zero padding, which gzip readers skip
        return name, gzip.compress(raw, mtime=0) + extra, f"{n} bytes after the gzip stream", "fail"
    if kind == "bomb":
        claim = rng.choice([count, official])
        head = header(8, claim, 28, 28) if images else header(8, claim)
        size = rng.choice([1, 4, 10]) << 30
        return name, bomb(head, size), f"gzip bomb: header says {claim}, then {size >> 30} GB of zeros", "fail"
    if kind == "bomb_small":
        data = gzip.compress(raw + bytes(rng.choice([1, 64]) << 20), mtime=0)
        return name, data, "one gzip member: the file then 1-64 MB of zeros", "fail"
    if kind == "members":
        cut = rng.randrange(1, len(raw))
        data = gzip.compress(raw[:cut], mtime=0) + gzip.compress(raw[cut:], mtime=0)
        return name, data, f"two gzip members split at {cut}", "pass"
    if kind == "typed_labels":
        values = np.frombuffer(raw[8:], np.uint8) if not images else np.arange(count) % 10
        code, dtype = rng.choice([(0x0D, ">f4"), (0x0C, ">i4"), (0x0E, ">f8"), (0x0B, ">i2")])
        values = values.astype(dtype)
        if dtype[1] == "f" and len(values) > 1:
            values[0], values[1] = 3.7, np.nan
        label_name = name.replace("images-idx3", "labels-idx1")
        return label_name, pack(idx_bytes(values, code, dtype)), f"labels stored as {dtype}, gz={gz}", "fail"
    if kind == "flat_images":
        shape = rng.choice([(count, 1, 784), (count, 784), (1, count * 784), (count, 28, 28, 1)])
        head = header(8, *shape)
        image_name = name.replace("labels-idx1", "images-idx3")
        body = base[image_name][16:]
        return image_name, pack(head + body), f"images as {shape}, gz={gz}", "fail"
    if kind == "swap":
        other = name.replace("images-idx3", "LABELS").replace("labels-idx1", "images-idx3").replace("LABELS",
                                                                                                      "labels-idx1")
        return name, pack(base[other]), f"content of {other}, gz={gz}", "fail"
    if kind == "empty":
        return name, rng.choice([b"", gzip.compress(b"", mtime=0), b"\x1f\x8b"]), "empty", "fail"
    if kind == "junk":
        return name, rng.randbytes(rng.choice([3, 100, 5000])), "random bytes", "fail"
    return name, pack(raw), f"unchanged, gz={gz}", "pass"


class Reduces:
    """Pickles to a call of `func(*args)` (how a hostile pickle names any callable)."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def cifar_case(rng: random.Random, base_bin: dict[str, bytes], py: bool) -> tuple[str, bytes, str, str]:
    name = rng.choice(CIFAR_NAMES)
    raw = base_bin[name]
    records = np.frombuffer(raw, np.uint8).reshape(-1, 3073)
    images, labels = records[:, 1:].copy(), records[:, 0].astype(int).tolist()
    if py:
        name = name.removesuffix(".bin")
        kind = rng.choice(["flip", "truncate", "short_labels", "long_labels", "ragged", "nested", "float_labels",
                           "str_labels", "big_label", "negative", "bad_data", "no_data", "no_labels", "not_dict",
                           "code", "huge_reconstruct", "ndarray_call", "object_dtype", "codec", "array_labels",
                           "valid"])
        batch = {"batch_label": "fuzz", "labels": labels, "data": images, "filenames": ["x.png"] * len(labels)}
        expect = "fail"
        if kind == "short_labels":
            batch["labels"] = labels[: rng.randrange(len(labels))]
        elif kind == "long_labels":
            batch["labels"] = labels + [1] * rng.randrange(1, 50)
        elif kind == "ragged":
            batch["labels"] = labels[:-1] + [[1, 2]]
        elif kind == "nested":
            level = [0] * 1000
            for _ in range(2):
                level = [level] * 1000
            batch["labels"] = level
        elif kind == "float_labels":
            batch["labels"] = [3.7] + labels[1:]
        elif kind == "str_labels":
            batch["labels"] = "0123456789" * 2
        elif kind == "big_label":
            batch["labels"] = labels[:-1] + [2**rng.choice([63, 64, 200, 100_000])]
        elif kind == "negative":
            batch["labels"] = [-1] + labels[1:]
        elif kind == "bad_data":
            batch["data"] = rng.choice([images[:, :1024], images.astype(np.int16), images.reshape(-1, 3, 32, 32),
                                        images.tolist()[:3], b"bytes"])
        elif kind == "no_data":
            del batch["data"]
        elif kind == "no_labels":
            batch["fine_labels"] = batch.pop("labels")
        elif kind == "not_dict":
            batch = rng.choice([[images, labels], images, "text", None])
        elif kind == "code":
            batch["data"] = Reduces(os.system, "echo fuzz-ran-code > /dev/null")
        elif kind == "huge_reconstruct":
            batch["data"] = Reduces(np.zeros(1).__reduce__()[0], np.ndarray, (1 << 40,), b"B")
        elif kind == "ndarray_call":
            batch["data"] = Reduces(np.ndarray, (1 << 40,), "u1")
        elif kind == "object_dtype":
            batch["data"] = images.astype(object)
        elif kind == "codec":
            batch["data"] = Reduces(__import__("codecs").encode, "x" * 100, rng.choice(["rot13", "zlib_codec"]))
        elif kind == "array_labels":
            batch["labels"], expect = np.asarray(labels, rng.choice([np.int64, np.uint8, np.int32])), "pass"
        elif kind == "valid":
            expect = "pass"
        data = pickle.dumps(batch, protocol=2)
        if kind == "flip":
            n = rng.choice([1, 4, 32])
            return name, flip_bits(data, rng, n), f"pickle with {n} bit flips", "any"
        if kind == "truncate":
            cut = rng.randrange(len(data))
            return name, data[:cut], f"pickle cut at {cut} of {len(data)}", "fail"
        return name, data, f"pickle: {kind}", expect
    kind = rng.choice(["flip", "truncate", "append", "label", "gz", "gz_truncate", "bomb", "too_many", "empty",
                       "valid"])
    if kind == "flip":
        n = rng.choice([1, 8, 200])
        return name, flip_bits(raw, rng, n), f"{n} bit flips", "any"
    if kind == "truncate":
        cut = rng.randrange(len(raw))
        return name, raw[:cut], f"cut at {cut} of {len(raw)}", "pass" if cut and cut % 3073 == 0 else "fail"
    if kind == "append":
        n = rng.choice([1, 3072, 3073, 3074])
        return name, raw + bytes([rng.randrange(10)]) + rng.randbytes(n - 1), f"{n} bytes appended", \
            "any" if n % 3073 == 0 else "fail"
    if kind == "label":
        i, v = rng.randrange(len(records)), rng.choice([10, 11, 255])
        data = bytearray(raw)
        data[i * 3073] = v
        return name, bytes(data), f"label {v} at record {i}", "fail"
    if kind == "gz":
        return name, gzip.compress(raw, mtime=0), "gzipped", "pass"
    if kind == "gz_truncate":
        data = gzip.compress(raw, mtime=0)
        cut = rng.randrange(len(data))
        return name, data[:cut], f"gzip cut at {cut}", "fail"
    if kind == "bomb":
        size = rng.choice([1, 10]) << 30
        return name, bomb(raw, size), f"gzip bomb of {size >> 30} GB", "fail"
    if kind == "too_many":
        return name, None, "10,001 zero records (sparse)", "fail"
    if kind == "empty":
        return name, b"", "empty", "fail"
    return name, raw, "unchanged", "pass"


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_case(argv: list[str]) -> tuple[int | None, str, str | None]:
    """(exit code, stderr, traceback of anything but a clean exit) of one in-process CLI call."""
    from convzoo.cli import main

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
    except BaseException:  # MemoryError, any bug: a failure, reported with its traceback
        return None, err.getvalue(), traceback.format_exc()
    return code, err.getvalue(), None


def judge(code, err, tb, expect) -> str | None:
    if tb is not None:
        return "raised instead of a one-line error:\n" + tb[-3000:]
    if "Traceback" in err:
        return "printed a traceback:\n" + err[-3000:]
    if code not in (0, 2):
        return f"exit {code}"
    if code == 2:
        lines = [line for line in err.splitlines() if line.startswith("convzoo: error:")]
        if len(lines) != 1:
            return f"exit 2 with {len(lines)} error lines:\n{err[-2000:]}"
    if expect == "fail" and code == 0:
        return "accepted a file that must be refused"
    if expect == "pass" and code != 0:
        return f"refused a valid file: {err.strip()[-500:]}"
    return None


def worker(seed: int, root: Path, only: int | None = None) -> dict:
    mnist = root / "mnist"
    cifar_bin, cifar_py = root / "cifar" / "cifar-10-batches-bin", root / "cifar-py" / "cifar-10-batches-py"
    for folder in (mnist, cifar_bin, cifar_py):
        folder.mkdir(parents=True, exist_ok=True)
    # Small real data sets: 64 + 32 MNIST digits; 6 CIFAR-10 batches of 12 records.
    images = gzip.decompress((MNIST_DIR / "t10k-images-idx3-ubyte.gz").read_bytes())
    labels = gzip.decompress((MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes())
    digits = np.frombuffer(images, np.uint8, offset=16).reshape(-1, 28, 28)
    classes = np.frombuffer(labels, np.uint8, offset=8)
    base_idx = {"train-images-idx3-ubyte.gz": idx_bytes(digits[:64]),
                "train-labels-idx1-ubyte.gz": idx_bytes(classes[:64]),
                "t10k-images-idx3-ubyte.gz": idx_bytes(digits[64:96]),
                "t10k-labels-idx1-ubyte.gz": idx_bytes(classes[64:96])}
    test_batch = (CIFAR_DIR / "cifar-10-batches-bin" / "test_batch.bin").read_bytes()
    base_bin = {name: test_batch[i * 12 * 3073 : (i + 1) * 12 * 3073] for i, name in enumerate(CIFAR_NAMES)}

    def reset():
        for name, raw in base_idx.items():
            (mnist / name).write_bytes(gzip.compress(raw, mtime=0))
        for name, raw in base_bin.items():
            (cifar_bin / name).write_bytes(raw)
            records = np.frombuffer(raw, np.uint8).reshape(-1, 3073)
            (cifar_py / name.removesuffix(".bin")).write_bytes(pickle.dumps(
                {"labels": records[:, 0].astype(int).tolist(), "data": records[:, 1:].copy()}, protocol=2))

    failures, outcomes = [], {0: 0, 2: 0}
    total = IDX_CASES + CIFAR_CASES
    reset()  # one untimed call first: the CLI's lazy torch import (2.6 s on a busy machine) is no case's time
    run_case(["data", "info", "mnist", "--data-path", str(mnist.parent)])
    for index in range(total):
        rng = random.Random(f"{seed}:{index}")  # each case reproducible on its own
        if only is not None and index != only:
            continue
        if index < IDX_CASES:
            name, data, what, expect = idx_case(rng, base_idx)
            folder, argv = mnist, ["data", "info", "mnist", "--data-path", str(mnist)]
        else:
            py = rng.random() < 0.5
            name, data, what, expect = cifar_case(rng, base_bin, py)
            folder = cifar_py if py else cifar_bin
            argv = ["data", "info", "cifar10", "--data-path", str(folder.parent)]
        reset()
        if data is None:  # a sparse file of 10,001 zero records
            with open(folder / name, "wb") as f:
                f.truncate(3073 * 10001)
        else:
            (folder / name).write_bytes(data)
        start = time.perf_counter()
        code, err, tb = run_case(argv)
        elapsed = time.perf_counter() - start
        problem = judge(code, err, tb, expect)
        if problem is None and elapsed > MAX_CASE_S:
            problem = f"took {elapsed:.1f} s"
        if problem:
            failures.append(f"seed {seed} case {index} ({name}: {what}; expected {expect}): {problem}\n"
                            f"  reproduce: CONVZOO_FUZZ_SEED={seed} CONVZOO_FUZZ_CASE={index} "
                            f".venv/bin/python tests/test_fuzz_data.py")
        if code in outcomes:
            outcomes[code] += 1
    return {"cases": total if only is None else 1, "accepted": outcomes[0], "refused": outcomes[2],
            "failures": failures, "peak_rss": peak_rss()}


if __name__ == "__main__":
    import tempfile

    case = os.environ.get("CONVZOO_FUZZ_CASE")
    if len(sys.argv) > 2:
        seed, root = int(sys.argv[1]), Path(sys.argv[2])
    else:
        seed, root = SEED, Path(tempfile.mkdtemp(prefix="convzoo-fuzz-"))
    report = worker(seed, root, int(case) if case else None)
    if case:
        print("\n\n".join(report["failures"]) or f"case {case}: ok", file=sys.stderr)
    print(json.dumps(report))
