"""Download and extraction faults: a process killed mid-way, a dropped connection, a full or read-only disk.

The killed runs are real processes (forked, so they start without re-importing Lightning) stopped with
SIGKILL: no ``except`` or ``finally`` of theirs runs. The rerun in this process must find what they left,
remove it, and produce the whole dataset; the dataset folder must never exist half-filled.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import http.server
import itertools
import logging
import multiprocessing
import os
import signal
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import imagenette_sota.data.download as download_module
from imagenette_sota.data import ImagenetteDataModule
from imagenette_sota.data.download import StorageError

from .helpers import MINI_ARCHIVE, MINI_MD5, SHARED_DATA

MINI = MINI_ARCHIVE.name
FOLDER = "imagenette2-160-mini"


class _FaultyHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files; ``/cut/<f>`` hangs up halfway, ``/stall/<f>`` stalls halfway, ``/html/<f>`` is an error page."""

    def do_GET(self) -> None:
        route, _, name = self.path.lstrip("/").partition("/")
        if route == "html":  # what a proxy or expired link answers with, status 200 and all
            body = b"<!DOCTYPE html><html><body><h1>Service unavailable</h1></body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return None
        if route not in ("cut", "stall"):
            with contextlib.suppress(ConnectionError):  # a client that fails on its side hangs up early
                super().do_GET()
            return None
        data = (Path(self.directory) / name).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if route == "cut":
            self.wfile.write(data[: len(data) // 2])
        else:  # slowly, then nothing more until the server shuts down
            for start in range(0, len(data) // 2, 1 << 16):
                self.wfile.write(data[start : start + (1 << 16)])
                time.sleep(0.002)
            self.server.release.wait(60)  # type: ignore[attr-defined]
        self.close_connection = True
        return None

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve(directory: Path = SHARED_DATA) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 serving ``directory`` through ``_FaultyHandler``; yields its base URL."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_FaultyHandler, directory=directory))
    httpd.release = threading.Event()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.release.set()  # type: ignore[attr-defined]
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """Base URL of a faulty server for ../shared/data."""
    with serve() as url:
        yield url


@pytest.fixture(scope="module")
def archive_files() -> dict[str, int]:
    """Every regular file of the mini archive and its size: what a complete dataset holds."""
    with tarfile.open(MINI_ARCHIVE) as tar:
        return {m.name: m.size for m in tar.getmembers() if m.isfile()}


def _tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def _prepare(root: Path, url: str, stall_extraction_after: int | None) -> None:
    """In the child: prepare_data, with extraction stalling after that many files if asked (to be killed)."""
    if stall_extraction_after is not None:
        copy, calls = tarfile.copyfileobj, itertools.count()

        def stalling(*args: Any, **kwargs: Any) -> None:
            if next(calls) == stall_extraction_after:
                time.sleep(60)
            copy(*args, **kwargs)

        tarfile.copyfileobj = stalling
    ImagenetteDataModule(root=root, url=url, md5=MINI_MD5, num_workers=0).prepare_data()


def _run_and_kill(root: Path, url: str, ready: Callable[[], bool], stall_extraction_after: int | None = None) -> None:
    """Run prepare_data in a child process, SIGKILL it once ``ready()``; the dataset folder never appears."""
    child = multiprocessing.get_context("fork").Process(
        target=_prepare, args=(root, url, stall_extraction_after), daemon=True
    )
    child.start()
    try:
        deadline = time.monotonic() + 60
        while not ready():
            assert not (root / FOLDER).exists(), "the dataset folder appeared before extraction finished"
            assert child.is_alive(), f"the child exited ({child.exitcode}) before the point to kill it at"
            assert time.monotonic() < deadline, "the child never reached the point to kill it at"
            time.sleep(0.01)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join()
    assert child.exitcode == -signal.SIGKILL


def _rerun_completes(dm: ImagenetteDataModule, archive_files: dict[str, int], caplog: pytest.LogCaptureFixture) -> str:
    """prepare_data again in this process: the whole dataset, nothing else left; returns the warnings logged."""
    with caplog.at_level(logging.WARNING, logger="imagenette_sota"):
        dm.prepare_data()
    got = {p.relative_to(dm.root).as_posix(): p.stat().st_size for p in dm.data_dir.rglob("*") if p.is_file()}
    got = {k: v for k, v in got.items() if "/.presized/" not in k}  # the decode-once cache (on by default), not data
    assert got == archive_files
    assert sum(name.endswith(".JPEG") for name in got) == 300
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set)) == (200, 100)
    assert not list(dm.root.glob("*.part")) and not list(dm.root.glob(".*extracting*"))
    return caplog.text


def test_killed_download_is_cleaned_and_redone(
    server: str, tmp_path: Path, archive_files: dict[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    part = tmp_path / f"{MINI}.part"
    _run_and_kill(tmp_path, f"{server}/stall/{MINI}", lambda: part.is_file() and part.stat().st_size >= 1 << 20)
    assert _tree(tmp_path) == [part.name]  # a partial download and nothing else: no archive, no dataset
    dm = ImagenetteDataModule(root=tmp_path, url=f"{server}/{MINI}", md5=MINI_MD5, num_workers=0)
    with pytest.raises(FileNotFoundError, match="call prepare_data"):  # the partial state is never used
        dm.setup()
    log = _rerun_completes(dm, archive_files, caplog)
    assert f"removing {part} left by an interrupted download" in log
    assert (tmp_path / MINI).stat().st_size == MINI_ARCHIVE.stat().st_size


def test_killed_extraction_is_cleaned_and_redone(
    tmp_path: Path, archive_files: dict[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    def half_extracted() -> bool:
        return len(list(tmp_path.glob(f".{FOLDER}.extracting-*/{FOLDER}/*/*/*.JPEG"))) >= 100

    _run_and_kill(tmp_path, str(MINI_ARCHIVE), half_extracted, stall_extraction_after=100)
    (leftover,) = tmp_path.iterdir()  # the temporary folder only, never the dataset folder
    assert leftover.name.startswith(f".{FOLDER}.extracting-")
    dm = ImagenetteDataModule(root=tmp_path, url=str(MINI_ARCHIVE), md5=MINI_MD5, num_workers=0)
    with pytest.raises(FileNotFoundError, match="call prepare_data"):
        dm.setup()
    log = _rerun_completes(dm, archive_files, caplog)
    assert f"removing {leftover} left by an interrupted extraction" in log
    assert sorted(p.name for p in tmp_path.iterdir()) == [FOLDER]


def test_dropped_connection_leaves_nothing_and_a_rerun_recovers(
    server: str, tmp_path: Path, archive_files: dict[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    cut = ImagenetteDataModule(root=tmp_path, url=f"{server}/cut/{MINI}", md5=MINI_MD5)
    with pytest.raises(ConnectionError, match=rf"got \d+ of {MINI_ARCHIVE.stat().st_size} bytes; run again"):
        cut.prepare_data()
    assert _tree(tmp_path) == []
    _rerun_completes(ImagenetteDataModule(root=tmp_path, url=f"{server}/{MINI}", md5=MINI_MD5), archive_files, caplog)


class _FillingDisk:
    """Files opened for writing on a disk with ``room`` bytes left in all: writes past it fail with ENOSPC."""

    def __init__(self, room: int) -> None:
        self.room = room

    def open(self, opener: Callable[..., Any]) -> Callable[..., Any]:
        """``opener`` (builtin open) with writes counted against the room left."""

        def counted_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            f = opener(file, mode, *args, **kwargs)
            if "w" not in mode:
                return f
            disk, write = self, f.write

            def limited(data: bytes) -> int:
                if len(data) > disk.room:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                disk.room -= len(data)
                return write(data)

            return _Wrapped(f, limited)

        return counted_open


class _Wrapped:
    """A file object whose ``write`` is replaced."""

    def __init__(self, f: Any, write: Callable[[bytes], int]) -> None:
        self._f, self.write = f, write

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> _Wrapped:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


def _source(server: str, where: str) -> str:
    """The mini archive over HTTP (the fault hits the download) or on disk (it hits the extraction)."""
    return f"{server}/{MINI}" if where == "download" else str(MINI_ARCHIVE)


@pytest.mark.parametrize("where", ["download", "extraction"])
def test_full_disk_names_the_path_and_the_fix(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    disk = _FillingDisk(room=1 << 19)  # half a MiB: full long before the mini archive or its images are written
    monkeypatch.setattr(download_module, "open", disk.open(open), raising=False)
    monkeypatch.setattr(tarfile, "bltn_open", disk.open(tarfile.bltn_open))
    dm = ImagenetteDataModule(root=tmp_path, url=_source(server, where), md5=MINI_MD5)
    with pytest.raises(StorageError, match="no space left on the device writing") as raised:
        dm.prepare_data()
    written = f"{MINI}.part" if where == "download" else f".{FOLDER}.extracting-"
    assert f"{tmp_path}/{written}" in str(raised.value)
    assert f"free space under {tmp_path}, or choose a root (root=... / --data.root)" in str(raised.value)
    assert raised.value.errno == errno.ENOSPC and raised.value.__cause__.errno == errno.ENOSPC
    assert _tree(tmp_path) == []  # no partial archive, no temporary folder, no dataset


@pytest.mark.parametrize("where", ["download", "extraction"])
@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_unwritable_root_names_the_path_and_the_fix(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, code: int
) -> None:
    # We run as root, so chmod would not stop a write: make every creation under tmp_path fail instead.
    def refuse(real: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(path: Any, mode: Any = "r", *args: Any, **kwargs: Any) -> Any:
            creates = isinstance(mode, int) or "w" in mode  # mkdir's mode is an int, open's a string
            if creates and str(path).startswith(str(tmp_path)):
                raise OSError(code, os.strerror(code), str(path))
            return real(path, mode, *args, **kwargs)

        return guarded

    monkeypatch.setattr(download_module, "open", refuse(open), raising=False)
    monkeypatch.setattr(tarfile, "bltn_open", refuse(tarfile.bltn_open))
    monkeypatch.setattr(os, "mkdir", refuse(os.mkdir))
    dm = ImagenetteDataModule(root=tmp_path, url=_source(server, where), md5=MINI_MD5)
    with pytest.raises(StorageError, match=f"cannot write {tmp_path}/") as raised:
        dm.prepare_data()
    assert f"({os.strerror(code)}): choose a writable root (root=... / --data.root) or make {tmp_path} writable" in str(
        raised.value
    )
    assert raised.value.errno == code
    assert _tree(tmp_path) == []
