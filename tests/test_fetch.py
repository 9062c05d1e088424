"""Locating data in the layouts users have, and downloading from a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from convzoo.data import fetch, formats
from convzoo.data.catalog import CIFAR10, MNIST
from convzoo.errors import DataError, DownloadError

from conftest import (CIFAR_DIR, FASHION_DIR, MNIST_DIR, ROOT, RunsCode, assert_user_error, cifar_pickle, cli_error,
                      need, run_cli)

OFFICIAL_T10K = ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def small_mnist_files(n_train=50, n_test=20) -> dict[str, bytes]:
    """Real MNIST digits (a prefix of the shared files) written in the official gzipped IDX format."""
    images = formats.read_idx(need(MNIST_DIR) / "t10k-images-idx3-ubyte.gz")
    labels = formats.read_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    out = {}
    for name, arr in [("train-images-idx3-ubyte.gz", images[:n_train]), ("train-labels-idx1-ubyte.gz", labels[:n_train]),
                      ("t10k-images-idx3-ubyte.gz", images[n_train:n_train + n_test]),
                      ("t10k-labels-idx1-ubyte.gz", labels[n_train:n_train + n_test])]:
        header = bytes([0, 0, 8, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes()
        out[name] = gzip.compress(header + arr.tobytes(), mtime=0)
    return out


def spec_for(files: dict[str, bytes]):
    """MNIST's spec with the md5s of `files`, so a download of them verifies."""
    specs = tuple(dataclasses.replace(f, md5=md5(files[f.name]), raw_md5=None) for f in MNIST.files)
    return dataclasses.replace(MNIST, files=specs)


def test_download_happy_path(tmp_path, file_server):
    files = small_mnist_files()
    file_server.files = {f"/mnist/{k}": v for k, v in files.items()}
    located = fetch.download_dataset(spec_for(files), tmp_path, mirrors=[file_server.url + "/mnist/"])
    assert located.verified and located.source == "download"
    assert (tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").read_bytes() == files["t10k-images-idx3-ubyte.gz"]
    assert not list((tmp_path / "mnist").glob(".*part"))


def test_real_official_file_downloads_and_verifies(tmp_path, file_server):
    """The shared t10k files are byte-identical to the official ones: served locally, they pass
    the catalog's real official md5."""
    body = (need(MNIST_DIR) / OFFICIAL_T10K[1]).read_bytes()
    file_server.files = {"/a/" + OFFICIAL_T10K[1]: body}
    spec = next(f for f in MNIST.files if f.name == OFFICIAL_T10K[1])
    dest = fetch.download_file([file_server.url + "/a/" + spec.name], tmp_path / spec.name, spec.md5, spec.size)
    assert dest.read_bytes() == body


def test_first_mirror_404_then_second(tmp_path, file_server):
    files = small_mnist_files()
    file_server.files = {f"/second/{k}": v for k, v in files.items()}
    located = fetch.download_dataset(spec_for(files), tmp_path,
                                     mirrors=[file_server.url + "/first/", file_server.url + "/second/"])
    assert located.verified
    assert file_server.hits["/first/train-images-idx3-ubyte.gz"] == 1


def test_wrong_bytes_rejected_and_removed(tmp_path, file_server):
    file_server.files = {"/m/t10k-labels-idx1-ubyte.gz": b"not the official bytes"}
    with pytest.raises(DownloadError, match="does not match the official"):
        fetch.download_file([file_server.url + "/m/t10k-labels-idx1-ubyte.gz"], tmp_path / "t10k-labels-idx1-ubyte.gz",
                            "ec29112dd5afa0611ce80d1b7f02629c", 4542)
    assert list(tmp_path.iterdir()) == []


def test_connection_dropped_half_way_leaves_nothing(tmp_path, file_server):
    body = bytes(range(256)) * 4000
    file_server.files = {"/x.bin": body}
    file_server.drop = {"/x.bin"}
    with pytest.raises(DownloadError, match="IncompleteRead|Connection"):
        fetch.download_file([file_server.url + "/x.bin"], tmp_path / "x.bin", md5(body), len(body), timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_cli_download_checksum_mismatch(tmp_path, file_server):
    file_server.files = {f"/m/{k}": v for k, v in small_mnist_files().items()}  # not the official bytes
    proc = run_cli("data", "download", "mnist", "--data-path", tmp_path, "--mirror", file_server.url + "/m/")
    assert_user_error(proc, "md5", "rejected")
    assert list(tmp_path.iterdir()) == []  # not even the mnist/ folder the failed download made


def test_cli_every_mirror_404(tmp_path, file_server):
    proc = run_cli("data", "download", "fashion-mnist", "--data-path", tmp_path,
                   "--mirror", file_server.url + "/a/", "--mirror", file_server.url + "/b/")
    line = assert_user_error(proc, "every mirror", "HTTP 404")
    assert line.count("HTTP 404") == 2


def test_mirror_with_credentials_query_or_fragment_is_refused_before_any_request(tmp_path, file_server, capsys):
    """`--mirror http://user:pw@host/` passed the check, then urllib looked 'user:pw@host' up as a host
    name (gaierror) and the error printed the password; a ?query or #fragment had the file name appended
    after it. Each is now one line before a request is sent, the password never in it."""
    file_server.files = {f"/m/{k}": v for k, v in small_mnist_files().items()}
    host = file_server.url.split("//", 1)[1]
    for mirror, fragment in [(f"http://user:s3cret@{host}/m/", "credentials in mirror URLs are not supported"),
                             (f"http://:s3cret@{host}/m/", "credentials"), ("http://s3cret@[::1/m/", "credentials"),
                             (f"{file_server.url}/m/?token=s3cret", "without a ?query or #fragment"),
                             (f"{file_server.url}/m/#part", "without a ?query or #fragment")]:
        line = cli_error(capsys, "data", "download", "mnist", "--data-path", tmp_path, "--mirror", mirror,
                         fragments=[fragment])
        assert "s3cret" not in line or "?token" in line, line
    assert file_server.hits == {} and list(tmp_path.iterdir()) == []
    with pytest.raises(Exception, match="credentials") as info:  # the Python API checks its mirrors the same way
        fetch.download_dataset(MNIST, tmp_path, mirrors=[f"https://u:s3cret@{host}/"])
    assert "s3cret" not in str(info.value)


def test_failed_download_removes_only_the_empty_folders_it_made(tmp_path, file_server):
    """A failed download leaves no empty mnist/ (nor a cache folder it made) behind; a folder that
    existed, other data sets' files and the files already downloaded stay."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "other" / "cifar-10-batches-bin").mkdir(parents=True)
    (tmp_path / "other" / "cifar-10-batches-bin" / "batches.meta.txt").write_text("airplane\n")
    for folder in ("empty", "other"):
        proc = run_cli("data", "download", "mnist", "--data-path", tmp_path / folder,
                       "--mirror", file_server.url + "/no/")
        assert_user_error(proc, "every mirror", "HTTP 404")
    assert list((tmp_path / "empty").iterdir()) == []
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["cifar-10-batches-bin"]
    cache = tmp_path / "new" / "cache"
    proc = run_cli("data", "download", "mnist", "--mirror", file_server.url + "/no/", env={"CONVZOO_CACHE": str(cache)})
    assert_user_error(proc, "every mirror")
    assert not (tmp_path / "new").exists()
    # Half a data set downloaded: its folder and files are kept for the next try.
    files = small_mnist_files()
    file_server.files = {f"/half/{n}": body for n, body in files.items() if n.startswith("train")}  # t10k: 404
    with pytest.raises(DownloadError, match="t10k-images-idx3-ubyte.gz: download failed"):
        fetch.download_dataset(spec_for(files), tmp_path / "empty", mirrors=[file_server.url + "/half/"])
    assert sorted(p.name for p in (tmp_path / "empty" / "mnist").iterdir()) == sorted(
        n for n in files if n.startswith("train"))


def test_cli_timeout(tmp_path):
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts the connection, never answers
    try:
        proc = run_cli("data", "download", "mnist", "--data-path", tmp_path, "--timeout", "1",
                       "--mirror", f"http://127.0.0.1:{silent.getsockname()[1]}/")
    finally:
        silent.close()
    assert_user_error(proc, "timed out")


def make_tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def small_cifar_files() -> dict[str, bytes]:
    folder = need(CIFAR_DIR) / "cifar-10-batches-bin"
    out = {f"cifar-10-batches-bin/{f.name}": (folder / f.name).read_bytes()[: 3073 * 8] for f in CIFAR10.files}
    out["cifar-10-batches-bin/batches.meta.txt"] = (folder / "batches.meta.txt").read_bytes()
    return out


def test_cifar_archive_download_extract_verify(tmp_path, file_server):
    archive = make_tar(small_cifar_files())
    file_server.files = {"/c/cifar-10-binary.tar.gz": archive}
    spec = dataclasses.replace(CIFAR10, archive=dataclasses.replace(CIFAR10.archive, md5=md5(archive)))
    located = fetch.download_dataset(spec, tmp_path, mirrors=[file_server.url + "/c/"])
    assert located.verified  # via the manifest written after the archive's md5 matched
    again = fetch.locate(spec, tmp_path, download=False)
    assert again.verified and again.root == (tmp_path / "cifar10" / "cifar-10-batches-bin").resolve()


def test_tar_member_escaping_is_refused(tmp_path, file_server):
    archive = make_tar({"cifar-10-batches-bin/../../evil.txt": b"owned", **small_cifar_files()})
    file_server.files = {"/c/cifar-10-binary.tar.gz": archive}
    spec = dataclasses.replace(CIFAR10, archive=dataclasses.replace(CIFAR10.archive, md5=md5(archive)))
    with pytest.raises(DataError, match=r"unsafe member path .*\.\./\.\./evil\.txt"):
        fetch.download_dataset(spec, tmp_path / "root", mirrors=[file_server.url + "/c/"])
    assert not (tmp_path / "evil.txt").exists()


def test_cli_unwritable_cache(tmp_path, file_server):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run_cli("data", "download", "mnist", "--mirror", file_server.url + "/", env={"CONVZOO_CACHE": str(blocker / "sub")})
    assert_user_error(proc, "cannot write to the data folder", f"set $CONVZOO_CACHE (now '{blocker / 'sub'}') to one")


@pytest.mark.real_data
def test_mindspore_layout_uncompressed(tmp_path):
    """MindSpore's Data/train + Data/test with `train-images.idx3-ubyte` spellings, not gzipped."""
    for split, prefix in (("train", "train"), ("test", "t10k")):
        (tmp_path / "Data" / split).mkdir(parents=True)
        for kind, ext in (("images", "idx3"), ("labels", "idx1")):
            raw = gzip.decompress((need(MNIST_DIR) / f"{prefix}-{kind}-{ext}-ubyte.gz").read_bytes())
            (tmp_path / "Data" / split / f"{prefix}-{kind}.{ext}-ubyte").write_bytes(raw)
    located = fetch.locate(MNIST, tmp_path, download=False)
    status = {c.path.name: c.status for c in located.checks}
    assert status == {"train-images.idx3-ubyte": "differs", "train-labels.idx1-ubyte": "differs",
                      "t10k-images.idx3-ubyte": "verified", "t10k-labels.idx1-ubyte": "verified"}
    assert "22,699 of 60,000 records" in located.warning()


@pytest.mark.real_data
def test_mindspore_cifar_verify_bin_layout(tmp_path):
    src = need(CIFAR_DIR) / "cifar-10-batches-bin"
    (tmp_path / "cifar-10-batches-bin").mkdir()
    (tmp_path / "cifar-10-verify-bin").mkdir()
    for i in range(1, 6):
        (tmp_path / "cifar-10-batches-bin" / f"data_batch_{i}.bin").symlink_to(src / f"data_batch_{i}.bin")
    (tmp_path / "cifar-10-verify-bin" / "test_batch.bin").symlink_to(src / "test_batch.bin")
    located = fetch.locate(CIFAR10, tmp_path, download=False)
    assert located.files["test_batch.bin"].parent.name == "cifar-10-verify-bin"
    assert not located.verified and "no official per-file checksum" in located.warning()


@pytest.mark.real_data
def test_cli_verify_reports_official_t10k(tmp_path):
    proc = run_cli("data", "verify", "mnist", "--data-path", need(MNIST_DIR))
    assert proc.returncode == 1  # the 22,699-image train files are not the official ones
    lines = {line.split()[1].rsplit("/", 1)[-1]: line.split()[0] for line in proc.stdout.splitlines()}
    assert lines["t10k-images-idx3-ubyte.gz"] == "verified" and lines["t10k-labels-idx1-ubyte.gz"] == "verified"
    assert lines["train-images-idx3-ubyte.gz"] == "differs"
    assert "22,699 of 60,000" in proc.stderr


@pytest.mark.real_data
def test_data_json_outputs_and_download_of_a_verified_copy(tmp_path):
    """`data verify|sample|download --json` printed plain text; `data download` went to the network
    (and failed offline) though a verified copy was where convzoo looks."""
    import json

    from conftest import FASHION_DIR

    proc = run_cli("data", "verify", "mnist", "--data-path", need(MNIST_DIR), "--json")
    report = json.loads(proc.stdout)
    assert proc.returncode == 1 and report["verified"] is False and len(report["files"]) == 4
    assert {f["path"].rsplit("/", 1)[-1]: f["status"] for f in report["files"]}["t10k-images-idx3-ubyte.gz"] == "verified"
    proc = run_cli("data", "sample", "mnist", "--count", "2", "--output", tmp_path / "s", "--data-path", MNIST_DIR,
                   "--json", check=0)
    assert [json.loads(line)["class"] for line in proc.stdout.splitlines()] == ["7", "2"]
    dead = "http://127.0.0.1:9/"  # nothing listens: a download attempt would fail
    proc = run_cli("data", "download", "fashion-mnist", "--data-path", need(FASHION_DIR), "--mirror", dead, check=0)
    assert "Fashion-MNIST already present and verified in" in proc.stdout
    proc = run_cli("data", "download", "fashion-mnist", "--data-path", FASHION_DIR, "--mirror", dead, "--json", check=0)
    assert json.loads(proc.stdout)["downloaded"] is False


@pytest.mark.real_data
def test_cli_info_debian_fashion_mnist_verified():
    """Debian re-compressed the .gz files; the decompressed contents match the official md5s."""
    proc = run_cli("data", "info", "fashion-mnist", "--data-path", "/usr/share/datasets/fashion-mnist", check=0)
    assert "verified     yes" in proc.stdout and "60,000 images" in proc.stdout
    assert "warning" not in proc.stderr


@pytest.mark.real_data
def test_cli_info_from_env(tmp_path):
    proc = run_cli("data", "info", "mnist", env={"CONVZOO_DATA": str(need(MNIST_DIR).parent)}, check=0)
    assert "22,699 images (official: 60,000)" in proc.stdout
    warning = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "not the official ones" in warning[0]


def corrupt_copy(tmp_path, name: str, payload: bytes):
    folder = tmp_path / "mnist"
    shutil.copytree(need(MNIST_DIR), folder)
    (folder / name).write_bytes(payload)
    return folder


@pytest.mark.real_data
@pytest.mark.parametrize("name,payload,message", [
    ("train-images-idx3-ubyte.gz", "truncate", "truncated gzip"),
    ("t10k-images-idx3-ubyte.gz", gzip.compress(b"\x00\x00\x99\x03" + bytes(20), mtime=0), "bad magic"),
    ("t10k-labels-idx1-ubyte.gz", gzip.compress(b"\x00\x00\x08\x01" + (5000).to_bytes(4, "big") + bytes(100), mtime=0),
     "header says 5000 items"),
    ("t10k-labels-idx1-ubyte.gz", gzip.compress(b"\x00\x00\x08\x01" + (20000).to_bytes(4, "big") + bytes(100),
                                                mtime=0),
     "header says 20,000 records, more than the 10,000 of the official file"),
    ("t10k-labels-idx1-ubyte.gz", gzip.compress(b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + bytes([1, 200, 3]),
                                                mtime=0),
     "label 200 at index 1"),
], ids=["truncated", "bad-magic", "fewer-items", "more-records", "bad-label"])  # ids the same in every xdist worker
def test_cli_corrupt_local_files(tmp_path, name, payload, message):
    if payload == "truncate":
        payload = (MNIST_DIR / name).read_bytes()[:100000]
    folder = corrupt_copy(tmp_path, name, payload)
    assert_user_error(run_cli("data", "info", "mnist", "--data-path", folder), name, message)


@pytest.mark.real_data
def test_cli_cifar_wrong_size(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    shutil.copytree(need(CIFAR_DIR) / "cifar-10-batches-bin", folder)
    with open(folder / "data_batch_3.bin", "r+b") as f:
        f.truncate(3073 * 10000 - 7)
    assert_user_error(run_cli("data", "info", "cifar10", "--data-path", tmp_path), "data_batch_3.bin", "3073-byte")


def test_cli_missing_data_says_how_to_fix(tmp_path):
    proc = run_cli("data", "info", "mnist", "--data-path", tmp_path)
    assert_user_error(proc, "not found", "convzoo data download mnist", "--data-path")


def test_cli_unknown_dataset_suggests(tmp_path):
    assert_user_error(run_cli("data", "info", "minst"), "unknown dataset 'minst'", "did you mean 'mnist'")
    proc = run_cli("data", "info", "minst")
    assert "--data-path" not in proc.stderr, proc.stderr
    # a folder given where the data set's name goes (`data info ./photos`) is told how to name it
    assert_user_error(run_cli("data", "info", tmp_path), f"unknown dataset '{tmp_path}'",
                      f"a folder of your own images is the data set 'folder', found by --data-path {tmp_path}")


def torchvision_cifar(root, records: int = 400):
    """root/cifar-10-batches-py/ as torchvision leaves it, from the first `records` of each real batch."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for file in CIFAR10.files:
        images, labels = formats.read_cifar_batch(need(CIFAR_DIR) / "cifar-10-batches-bin" / file.name)
        (folder / file.name.removesuffix(".bin")).write_bytes(cifar_pickle(images[:records], labels[:records]))
    return folder


@pytest.mark.real_data
def test_torchvision_cifar_python_layout(tmp_path):
    folder = torchvision_cifar(tmp_path / "data")
    proc = run_cli("data", "info", "cifar10", "--data-path", tmp_path / "data", check=0)
    assert f"found in     {folder}" in proc.stdout
    assert "2,000 images (official: 50,000)" in proc.stdout and "400 images (official: 10,000)" in proc.stdout
    assert "400 of 10,000 records, md5" in proc.stderr
    # a file whose md5 is the one published for it verifies
    official = {f.name: md5((folder / f.name.removesuffix(".bin")).read_bytes()) for f in CIFAR10.files}
    spec = dataclasses.replace(CIFAR10, files=tuple(dataclasses.replace(f, python_md5=official[f.name])
                                                    for f in CIFAR10.files))
    assert fetch.locate(spec, tmp_path / "data", download=False).verified


@pytest.mark.real_data
def test_cli_cifar_pickle_with_code_is_refused(tmp_path):
    folder = torchvision_cifar(tmp_path, records=20)
    marker = tmp_path / "was-run"
    (folder / "data_batch_2").write_bytes(pickle.dumps({"labels": [1], "data": RunsCode(marker)}, protocol=2))
    proc = run_cli("data", "info", "cifar10", "--data-path", tmp_path)
    assert_user_error(proc, "data_batch_2", "refusing to unpickle posix.mkdir")
    assert not marker.exists()


# ---------------------------------------------------------------- downloads stop at the official size

T10K_LABELS = next(f for f in MNIST.files if f.name == "t10k-labels-idx1-ubyte.gz")


def cli(capsys, *args) -> tuple[int, str]:
    """The real entry point in this process (no interpreter start): exit code and stderr."""
    from convzoo.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_catalog_records_official_sizes():
    sizes = {f.name: f.size for f in MNIST.files}
    assert sizes == {"train-images-idx3-ubyte.gz": 9912422, "train-labels-idx1-ubyte.gz": 28881,
                     "t10k-images-idx3-ubyte.gz": 1648877, "t10k-labels-idx1-ubyte.gz": 4542}
    assert CIFAR10.archive.size == 170052171
    # the shared t10k files are the official ones, byte for byte
    assert (need(MNIST_DIR) / "t10k-labels-idx1-ubyte.gz").stat().st_size == T10K_LABELS.size
    assert (MNIST_DIR / "t10k-images-idx3-ubyte.gz").stat().st_size == MNIST.files[2].size


@pytest.mark.parametrize("how,message", [
    ("endless", "sends more than the official 4,542 bytes (stopped and removed)"),
    ("announce", "announces 4,543 bytes, more than the official 4,542 (stopped and removed)"),
])
def test_download_stops_at_official_size(tmp_path, file_server, how, message):
    path = "/m/" + T10K_LABELS.name
    file_server.files = {path: bytes(range(256)) * 4}
    if how == "endless":
        file_server.endless = {path}
    else:
        file_server.announce = {path: T10K_LABELS.size + 1}
    with pytest.raises(DownloadError, match=re.escape(message)):
        fetch.download_file([file_server.url + path], tmp_path / T10K_LABELS.name, T10K_LABELS.md5, T10K_LABELS.size)
    assert list(tmp_path.iterdir()) == []


def test_cli_download_from_endless_mirror(tmp_path, file_server, capsys):
    """A mirror that streams forever: cut at the official 9,912,422 bytes of train-images, nothing kept."""
    path = "/m/train-images-idx3-ubyte.gz"
    file_server.files = {path: np.random.default_rng(0).integers(0, 256, 1 << 20, np.uint8).tobytes()}
    file_server.endless = {path}
    code, err = cli(capsys, "data", "download", "mnist", "--data-path", tmp_path, "--mirror", file_server.url + "/m/")
    errors = [line for line in err.splitlines() if line.startswith("convzoo: error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert "sends more than the official 9,912,422 bytes (stopped and removed)" in errors[0]
    assert list(tmp_path.iterdir()) == []  # the .part and the mnist/ folder made for it


DOWNLOAD = """
import sys
from pathlib import Path
from convzoo.data import fetch
from convzoo.data.catalog import MNIST
fetch.download_dataset(MNIST, Path(sys.argv[1]), mirrors=[sys.argv[2]], timeout=60)
"""


def test_killed_download_leftover_removed_by_next_run(tmp_path, capsys):
    """SIGKILL while a mirror stalls mid-file leaves the .part; the next download removes it first."""
    import socket
    import threading

    stop = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))

    def stall():  # answers 128 KiB of a 9.9 MB file, then sends nothing more
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 9912422\r\n\r\n" + bytes(1 << 17))
        stop.wait(60)
        conn.close()

    threading.Thread(target=stall, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
    proc = subprocess.Popen([sys.executable, "-c", DOWNLOAD, str(tmp_path), url], cwd=ROOT)
    try:
        deadline = time.time() + 60
        while not [p for p in (tmp_path / "mnist").glob(".*.part") if p.stat().st_size >= 1 << 16]:
            assert time.time() < deadline and proc.poll() is None, "the download never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
    finally:
        stop.set()
        listener.close()
    (part,) = (tmp_path / "mnist").glob(".train-images-idx3-ubyte.gz.*.part")
    os.utime(part, (time.time() - 60,) * 2)  # the next run comes later
    code, err = cli(capsys, "data", "download", "mnist", "--data-path", tmp_path, "--mirror", "http://127.0.0.1:9/")
    assert code == 2 and "download failed on every mirror" in err
    assert list((tmp_path / "mnist").iterdir()) == []


def test_a_failed_download_of_a_data_set_not_found_says_where_it_was_looked_for(tmp_path, monkeypatch):
    """A model trained with --data-path and used without it (`predict --from-test`) looked, found nothing,
    tried to download and ended on a DNS error alone; the line now says where the data set was looked
    for and how to point at it. An explicit --data-path's failure stays the download's own."""
    from convzoo.data.catalog import get_spec

    monkeypatch.setenv("CONVZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CONVZOO_DATA", raising=False)
    with pytest.raises(DownloadError) as caught:
        fetch.locate(get_spec("mnist"), None, mirrors=["http://127.0.0.1:9/"])
    assert "download failed on every mirror" in str(caught.value)
    where = ", ".join(str(root) for _, root in fetch.search_roots(None))  # the cache, then the system's folder
    assert str(tmp_path / "cache") in where
    assert str(caught.value).endswith(f"; MNIST is not in {where} either: pass --data-path FOLDER where it is (or "
                                      "set $CONVZOO_DATA)"), caught.value
    with pytest.raises(DownloadError) as caught:
        fetch.locate(get_spec("mnist"), tmp_path, mirrors=["http://127.0.0.1:9/"])
    assert "either" not in str(caught.value)


def test_only_convzoos_own_stale_extractions_are_removed(tmp_path, capsys):
    """Any unlocked `.extract*` folder over a second old in the data folder was removed with its files
    (a user's `.extract/important.txt`); now only one with convzoo's prefix and mark, as a killed
    extraction leaves it."""
    from convzoo.data.fetch import EXTRACT_MARK, EXTRACTING

    mine = tmp_path / "mnist" / f"{EXTRACTING}k1ll3d"
    (mine / "cifar-10-batches-bin").mkdir(parents=True)
    (mine / EXTRACT_MARK).touch()
    users = [tmp_path / "mnist" / ".extract", tmp_path / "mnist" / f"{EXTRACTING}mine"]  # no mark: not ours
    for folder in users:
        folder.mkdir()
        (folder / "important.txt").write_text("keep")
    for folder in (mine, *users):
        os.utime(folder, (time.time() - 3600,) * 2)
    code, err = cli(capsys, "data", "download", "mnist", "--data-path", tmp_path, "--mirror", "http://127.0.0.1:9/")
    assert code == 2 and "download failed on every mirror" in err
    assert not mine.exists() and all((f / "important.txt").read_text() == "keep" for f in users)

def test_cli_download_onto_full_disk(tmp_path, file_server, capsys):
    """ENOSPC while a download streams: one line naming the file, nothing half-written left."""
    from test_formats import tmpfs

    body = np.random.default_rng(1).integers(0, 256, 300_000, np.uint8).tobytes()
    file_server.files = {"/m/train-images-idx3-ubyte.gz": body}
    with tmpfs(tmp_path / "small") as folder:
        code, err = cli(capsys, "data", "download", "mnist", "--data-path", folder, "--mirror", file_server.url + "/m/")
        errors = [line for line in err.splitlines() if line.startswith("convzoo: error:")]
        assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
        assert "mnist/train-images-idx3-ubyte.gz: cannot write: No space left on device" in errors[0]
        assert not (folder / "mnist").exists()


def test_a_folder_of_symlinks_is_named_as_given(tmp_path):
    """Files linked in from two places: the warning and config.yaml named "/" (their common real
    folder); they name the folder the user gave."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    given = tmp_path / "data" / "mnist"
    given.mkdir(parents=True)
    for source in sorted(Path(need(MNIST_DIR)).glob("*-ubyte.gz")):
        target = source if source.name.startswith("train") else shutil.copy(source, elsewhere)
        (given / source.name).symlink_to(target)
    located = fetch.locate(MNIST, tmp_path / "data", download=False)
    assert located.root == given and str(given) in located.warning()


# ---------------------------------------------------------------- mirrors that never finish: FIFOs, trickles, bad URLs


@contextlib.contextmanager
def hang_guard(seconds: float):
    """Fails the test instead of hanging the suite when the block outlives `seconds` (the defects
    checked here were hangs). A BaseException, so no `except OSError` on the way swallows it."""
    class Hung(BaseException):
        pass

    def alarm(*_):
        raise Hung(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def paced_server(body: bytes, chunk: int, every: float, *, announce: int | None = None, slow_headers=False):
    """A real HTTP server on 127.0.0.1 sending `body` `chunk` bytes at a time, one piece every `every`
    seconds (with slow_headers, the header too, a byte at a time, padded to minutes' worth), whatever the
    path; it announces `announce` bytes (default: the body's), then holds the connection until the
    client hangs up."""
    stop = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    pad = f"X-Pad: {'a' * 2000}\r\n" if slow_headers else ""
    head = f"HTTP/1.0 200 OK\r\n{pad}Content-Length: {len(body) if announce is None else announce}\r\n\r\n".encode()
    pieces = ([head[i:i + 1] for i in range(len(head))] if slow_headers else [head]) + \
        [body[i:i + chunk] for i in range(0, len(body), chunk)]

    def serve(conn):
        with conn:
            try:
                conn.recv(65536)
                for piece in pieces:
                    if stop.wait(every):
                        return
                    conn.sendall(piece)
                stop.wait()
            except OSError:  # the client cut the connection
                return

    def accept():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()


@pytest.fixture
def quick_rule(monkeypatch):
    """The slow-download rule in seconds instead of minutes: 1,000 bytes/s averaged after 1 s (or --timeout)."""
    monkeypatch.setattr(fetch, "GRACE_S", 1.0)
    monkeypatch.setattr(fetch, "MIN_RATE", 1000)


def test_fifo_file_mirror_fails_over(tmp_path, file_server):
    """A FIFO behind a file: mirror blocked open() for ever; it is refused and the next mirror used."""
    files = small_mnist_files()
    (tmp_path / "mir").mkdir()
    os.mkfifo(tmp_path / "mir" / "train-images-idx3-ubyte.gz")
    file_server.files = {f"/m/{k}": v for k, v in files.items()}
    with hang_guard(20):
        located = fetch.download_dataset(spec_for(files), tmp_path / "dl",
                                         mirrors=[(tmp_path / "mir").as_uri() + "/", file_server.url + "/m/"])
    assert located.verified
    assert file_server.hits["/m/train-images-idx3-ubyte.gz"] == 1


def test_cli_fifo_file_mirror_is_one_line(tmp_path):
    (tmp_path / "mir").mkdir()
    os.mkfifo(tmp_path / "mir" / "train-images-idx3-ubyte.gz")
    proc = run_cli("data", "download", "mnist", "--data-path", tmp_path / "dl", "--timeout", "2",
                   "--mirror", (tmp_path / "mir").as_uri(), timeout=60)
    assert_user_error(proc, "train-images-idx3-ubyte.gz: not a regular file (refused)")
    assert not (tmp_path / "dl").exists()


def test_cli_trickling_mirror_fails_over_then_one_line(tmp_path, quick_rule, capsys):
    """1 byte every 0.1 s of the 9.9 MB train images: each read is well within --timeout 2, but the
    average is far under the rule's, so both mirrors are cut after the 2 s grace."""
    with paced_server(bytes(1000), 1, 0.1, announce=9912422) as url, hang_guard(30):
        start = time.monotonic()
        code, err = cli(capsys, "data", "download", "mnist", "--data-path", tmp_path, "--timeout", "2",
                        "--mirror", url + "/a/", "--mirror", url + "/b/")
    errors = [line for line in err.splitlines() if line.startswith("convzoo: error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].count("too slow") == 2 and "/b/train-images-idx3-ubyte.gz: too slow" in errors[0], errors[0]
    assert "(stopped and removed)" in errors[0]
    assert time.monotonic() - start < 15
    assert list(tmp_path.iterdir()) == []


def test_trickling_headers_are_cut_and_next_mirror_used(tmp_path, file_server, quick_rule):
    """A header sent a byte at a time never returned from urlopen (each byte within --timeout)."""
    body = bytes(range(256)) * 20
    file_server.files = {"/m/x.bin": body}
    with paced_server(body, len(body), 0.1, slow_headers=True) as url, hang_guard(20):
        dest = fetch.download_file([url + "/x.bin", file_server.url + "/m/x.bin"], tmp_path / "x.bin", md5(body),
                                   len(body), timeout=1)
    assert dest.read_bytes() == body


@pytest.mark.parametrize("min_rate,ok", [(1000, True), (20000, False)])
def test_slow_but_steady_download_is_judged_by_its_average(tmp_path, quick_rule, monkeypatch, min_rate, ok):
    """6,000 bytes at about 5,000 bytes/s for over a second: kept when the floor is 1,000 bytes/s,
    cut (and nothing left) when it is 20,000."""
    monkeypatch.setattr(fetch, "GRACE_S", 0.5)
    monkeypatch.setattr(fetch, "MIN_RATE", min_rate)
    body = np.random.default_rng(2).integers(0, 256, 6000, np.uint8).tobytes()
    with paced_server(body, 500, 0.1) as url, hang_guard(20):
        if ok:
            assert fetch.download_file([url + "/x"], tmp_path / "x", md5(body), len(body), timeout=2).read_bytes() == body
        else:
            with pytest.raises(DownloadError, match="too slow: .* under the minimum average of 20,000 bytes/s"):
                fetch.download_file([url + "/x"], tmp_path / "x", md5(body), len(body), timeout=0.5)
            assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mirror", ["http://[::1", "http://[zz]/", "http://host:99999/", "http://host:port/",
                                    "ftp://127.0.0.1/mnist/"])  # ftp: out of reach of the slow-download rule
def test_cli_malformed_mirror_is_one_line(tmp_path, capsys, mirror):
    code, err = cli(capsys, "data", "download", "mnist", "--data-path", tmp_path, "--mirror", mirror)
    errors = [line for line in err.splitlines() if line.startswith("convzoo: error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert "--mirror must be a base URL" in errors[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("headers, failure", [
    # urllib follows a redirect to ftp:, whose control connection the slow-download rule cannot cut
    # (a trickling FTP server behind a 302 hung the download)
    ({"Location": "ftp://127.0.0.1:9/x", "Content-Length": "0"}, ": redirected to ftp://127.0.0.1:9/x, not an http(s) URL"),
    # urllib's parse of the new URL raised ValueError: a traceback, and the next mirror never tried
    ({"Location": "http://[::1/x", "Content-Length": "0"}, ": invalid URL (Invalid IPv6 URL)"),
])
def test_a_bad_redirect_fails_that_mirror_only(tmp_path, file_server, headers, failure):
    import http.server
    import threading

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(302)
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    bad = f"http://127.0.0.1:{server.server_port}/x"
    body = b"the file's bytes" * 100
    file_server.files = {"/good/x": body}
    try:
        with pytest.raises(DownloadError) as caught:
            fetch.download_file([bad], tmp_path / "x", "0" * 32, 10, timeout=5)
        assert str(caught.value).endswith(f"download failed on every mirror: {bad}{failure}"), caught.value
        assert list(tmp_path.iterdir()) == []
        got = fetch.download_file([bad, file_server.url + "/good/x"], tmp_path / "x", md5(body), len(body), timeout=5)
        assert got.read_bytes() == body
    finally:
        server.shutdown()
        server.server_close()


def test_a_negative_content_length_is_named(tmp_path):
    """`Content-Length: -5` came out as http.client's 'IncompleteRead(0 bytes read, -3645439 more expected)'."""
    import socketserver
    import threading

    class Liar(socketserver.BaseRequestHandler):
        def handle(self):
            self.request.recv(65536)
            self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\nConnection: close\r\n\r\nsome bytes")

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Liar)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(DownloadError, match=r"/x: invalid Content-Length header '-5'$"):
            fetch.download_file([f"http://127.0.0.1:{server.server_address[1]}/x"], tmp_path / "x", "0" * 32, 10,
                                timeout=5)
        assert list(tmp_path.iterdir()) == []
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.real_data
def test_scoring_reads_the_test_files_alone(tmp_path, file_server):
    """eval (--model, --ckpt) and predict --from-test only read the test split: a folder holding only
    MNIST's t10k files (or CIFAR-10's test_batch.bin) is enough; they asked for train-images and tried
    to download it into that folder ("download failed on every mirror"). train still needs every file,
    and missing test files are downloaded as before, the failure naming them. The official mirrors are
    reached through the local server as a proxy: no real network, every request seen and refused."""
    import json

    from convzoo.data.tensors import load_dataset

    folder = tmp_path / "testonly"
    folder.mkdir()
    for name in OFFICIAL_T10K:
        shutil.copy(need(MNIST_DIR) / name, folder / name)
    proxy = {"http_proxy": file_server.url, "https_proxy": file_server.url, "HTTP_PROXY": file_server.url,
             "HTTPS_PROXY": file_server.url, "no_proxy": "", "NO_PROXY": ""}

    result = json.loads(run_cli("eval", "--model", "lenet5:mnist", "--data-path", folder, "--json", env=proxy,
                                check=0).stdout)
    assert result["accuracy"] > 0.98 and sum(map(sum, result["confusion"])) == 10000
    proc = run_cli("eval", "--ckpt", "lenet5:mnist", "--data-path", folder, "--test-limit", "1000", env=proxy, check=0)
    assert "'Accuracy': 0.9" in proc.stdout and "warning" not in proc.stderr
    proc = run_cli("predict", "--model", "lenet5:mnist", "--from-test", "3", "--data-path", folder,
                   "--grid", tmp_path / "grid.png", env=proxy, check=0)
    assert proc.stdout.startswith("test[0]: 7 (") and (tmp_path / "grid.png").is_file()
    assert sorted(p.name for p in folder.iterdir()) == OFFICIAL_T10K and not file_server.hits  # nothing fetched

    # A folder holding part of the set names the missing file; nothing is downloaded into it.
    proc = run_cli("train", "--model", "lenet5", "--dataset", "mnist", "--data-path", folder, "--epochs", "1",
                   "--output-dir", tmp_path / "run", env=proxy)
    assert_user_error(proc, f"{folder}/train-images-idx3-ubyte(.gz): missing")
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    proc = run_cli("eval", "--model", "lenet5:mnist", "--data-path", folder, env=proxy)
    assert_user_error(proc, f"{folder}/t10k-labels-idx1-ubyte(.gz): missing")
    assert sorted(p.name for p in folder.iterdir()) == OFFICIAL_T10K[:1] and not file_server.hits

    cifar = tmp_path / "cifar"
    (cifar / "cifar-10-verify-bin").mkdir(parents=True)  # MindSpore's folder for the test batch
    (cifar / "cifar-10-verify-bin" / "test_batch.bin").symlink_to(need(CIFAR_DIR) / "cifar-10-batches-bin" /
                                                                  "test_batch.bin")
    train, test, located = load_dataset("cifar10", cifar, test_only=True, quiet=True)
    assert train is None and test.images.shape == (10000, 3, 32, 32) and list(located.files) == ["test_batch.bin"]
    with pytest.raises(DataError, match="data_batch_1.bin: missing"):
        fetch.locate(CIFAR10, cifar, download=False)


def partial_mnist(folder: Path, leave_out: str) -> Path:
    """The shared MNIST's four files linked into `folder`, all but `leave_out`."""
    folder.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", *OFFICIAL_T10K):
        if name != leave_out:
            (folder / name).symlink_to(need(MNIST_DIR) / name)
    return folder


@pytest.mark.real_data
@pytest.mark.parametrize("put,shown,problem", [
    (None, "train-labels-idx1-ubyte(.gz)", "missing"),
    ("fifo", "train-labels-idx1-ubyte", "not a regular file"),
    ("folder", "train-labels-idx1-ubyte", "not a regular file"),
    ("dev-zero", "train-labels-idx1-ubyte.gz", "not a regular file"),
    ("dangling", "train-labels-idx1-ubyte.gz", "a link to nothing"),
], ids=["missing", "fifo", "folder", "dev-zero", "dangling"])
def test_a_missing_or_unusable_local_file_is_named(tmp_path, capsys, put, shown, problem):
    """Three of MNIST's four files and the fourth missing or not a regular file: one line naming it.
    It was `.../mnist/train-images-idx3-ubyte.gz: download failed on every mirror` (another file, a
    download into the user's folder) for train, and `MNIST not found` for data info."""
    folder = partial_mnist(tmp_path / "data", "train-labels-idx1-ubyte.gz")
    if put == "fifo":
        os.mkfifo(folder / shown)
    elif put == "folder":
        (folder / shown).mkdir()
    elif put in ("dev-zero", "dangling"):
        (folder / shown).symlink_to("/dev/zero" if put == "dev-zero" else tmp_path / "gone")
    cli_error(capsys, "data", "info", "mnist", "--data-path", folder, fragments=[f"{folder}/{shown}: {problem}"])
    cli_error(capsys, "train", "--model", "lenet5", "--data-path", folder, "--epochs", "1", "--output-dir",
              tmp_path / "run", fragments=[f"{folder}/{shown}: {problem}"])
    assert not (folder / "mnist").exists() and not (tmp_path / "run").exists()


@pytest.mark.real_data
def test_eval_names_a_missing_test_file(tmp_path, capsys):
    folder = partial_mnist(tmp_path / "data", "t10k-labels-idx1-ubyte.gz")
    cli_error(capsys, "eval", "--ckpt", "lenet5:mnist", "--data-path", folder,
              fragments=[f"{folder}/t10k-labels-idx1-ubyte(.gz): missing"])
    assert not (folder / "mnist").exists()


@pytest.mark.real_data
def test_another_data_sets_official_files_are_refused(tmp_path, capsys):
    """MNIST and Fashion-MNIST share file names: a Fashion-MNIST model scored on MNIST's digits gave
    'Accuracy': 0.11 with T-shirt rows, under only a 'not the official ones' warning."""
    cli_error(capsys, "eval", "--ckpt", "lenet5:fashion-mnist", "--data-path", need(MNIST_DIR), "--test-limit", "200",
              fragments=["these are MNIST's files, not Fashion-MNIST's", "t10k-images-idx3-ubyte.gz"])
    cli_error(capsys, "train", "--model", "lenet5", "--dataset", "fashion-mnist", "--data-path", MNIST_DIR,
              "--epochs", "1", "--output-dir", tmp_path / "run", fragments=["these are MNIST's files"])
    assert not (tmp_path / "run").exists()
    # Debian's re-compressed copy, known by its decompressed md5s
    cli_error(capsys, "data", "info", "mnist", "--data-path", need(FASHION_DIR),
              fragments=[f"{FASHION_DIR}: these are Fashion-MNIST's files, not MNIST's"])


@pytest.mark.real_data
def test_a_gz_and_a_different_plain_copy_are_refused(tmp_path, capsys):
    """X.gz was silently read over a different X beside it. The same bytes (torchvision's raw/ keeps
    both) still read without a word; a plain copy of another length is one line naming both."""
    folder = partial_mnist(tmp_path / "data", "")
    labels = gzip.decompress((MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (folder / "t10k-labels-idx1-ubyte").write_bytes(labels)
    located = fetch.locate(MNIST, folder, download=False, splits=("test",))
    assert located.files["t10k-labels-idx1-ubyte.gz"].name == "t10k-labels-idx1-ubyte.gz" and located.verified
    (folder / "t10k-labels-idx1-ubyte").write_bytes(labels[:5008])
    cli_error(capsys, "data", "info", "mnist", "--data-path", folder,
              fragments=[f"{folder}/t10k-labels-idx1-ubyte.gz: decompresses to 10,008 bytes but "
                         "t10k-labels-idx1-ubyte beside it has 5,008"])
