"""Atomic download, checksum verification and safe extraction of a dataset archive."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


class ChecksumError(RuntimeError):
    """The archive on disk is not the one that was asked for."""


class UnsafeArchiveError(RuntimeError):
    """The archive holds a member that would escape the destination or is a link."""


class BadArchiveError(RuntimeError):
    """The file is not a complete, readable tar archive."""


class UnreachableError(ConnectionError):
    """The archive's URL cannot be fetched: no network, nothing listening, or the server refused it."""


def unreachable(url: str, error: urllib.error.URLError) -> UnreachableError:
    """What to do when ``url`` cannot be fetched: the reason, and the offline alternatives."""
    if isinstance(error, urllib.error.HTTPError):
        what = f"{url} answered HTTP {error.code} {error.reason}: check the url"
    else:
        what = f"cannot reach {url} ({error.reason}): this machine may be offline, or nothing serves that address"
    return UnreachableError(
        f"{what}. Without a network, fetch the archive elsewhere and pass its path as url (--data.url "
        "/path/to/archive.tgz), or point root (--data.root) at an extracted folder: train/ and val/ with class "
        "sub-folders, or one sub-folder per class"
    )


class StorageError(OSError):
    """The data root cannot take the files: the disk is full, or it is read-only or not writable by us."""


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def storage_error(error: OSError, path: Path, root: Path) -> StorageError | None:
    """A clear error (what, where, the fix) if writing ``path`` under ``root`` failed for lack of space or rights."""
    where, option = error.filename or path, "(root=... / --data.root)"
    if error.errno in _NO_SPACE:
        what = f"no space left on the device writing {where}: free space under {root}, or choose a root {option}"
        return StorageError(error.errno, f"{what} with room for the archive and the extracted dataset")
    if error.errno in _NOT_WRITABLE:
        what = f"cannot write {where} ({os.strerror(error.errno)}): choose a writable root {option}"
        return StorageError(error.errno, f"{what} or make {root} writable")
    return None


def is_remote(url: str) -> bool:
    """Whether ``url`` must be fetched over the network (http/https/ftp) rather than read from disk."""
    return urllib.parse.urlparse(url).scheme in {"http", "https", "ftp"}


def local_path(url: str) -> Path:
    """A local path or ``file://`` URL as a Path."""
    parsed = urllib.parse.urlparse(url)
    return Path(urllib.request.url2pathname(parsed.path)) if parsed.scheme == "file" else Path(url)


def archive_stem(url: str) -> str:
    """``.../imagenette2-160.tgz`` -> ``imagenette2-160``: the folder the archive unpacks to."""
    name = Path(urllib.parse.urlparse(url).path).name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    raise ValueError(f"{url!r} is not a .tgz, .tar.gz or .tar archive")


def md5sum(path: Path, limit: int | None = None) -> str:
    """md5 of the file, or of its first ``limit`` bytes."""
    digest, left = hashlib.md5(usedforsecurity=False), limit
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK if left is None else min(_CHUNK, left)):
            digest.update(chunk)
            if left is not None:
                left -= len(chunk)
    return digest.hexdigest()


def verify(path: Path, md5: str | None = None, size: int | None = None, head_md5: str | None = None) -> None:
    """Raise ChecksumError unless ``path`` matches every check given (full md5, size, md5 of the first MiB)."""
    problems = []
    if size is not None and (actual := path.stat().st_size) != size:
        problems.append(f"size {actual} bytes, expected {size}")
    if head_md5 is not None and (actual := md5sum(path, _CHUNK)) != head_md5:
        problems.append(f"md5 of the first MiB {actual}, expected {head_md5}")
    if md5 is not None and (actual := md5sum(path)) != md5:
        problems.append(f"md5 {actual}, expected {md5}")
    if problems:
        raise ChecksumError(
            f"{path}: {'; '.join(problems)}. The file is corrupt or not the archive you meant: delete it and "
            "download again, or give the checksum of your own mirror (md5=...)."
        )


def download(url: str, dest: Path, timeout: float = 60.0, progress: bool = True) -> Path:
    """Fetch ``url`` to ``dest`` atomically: bytes go to a ``.part`` file renamed into place when complete.

    A ``dest`` named like a tar archive must receive one (not, say, an HTML error or login page).
    """
    part = dest.with_name(dest.name + ".part")
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.URLError as e:  # before anything is written: an unreachable url leaves no trace
        raise unreachable(url, e) from e
    try:
        with response:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open(part, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
                        bar.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
            if total is not None and part.stat().st_size != total:
                raise ConnectionError(f"{url}: got {part.stat().st_size} of {total} bytes; run again to retry")
            if dest.name.endswith((".tar.gz", ".tgz", ".tar")) and not tarfile.is_tarfile(part):
                with open(part, "rb") as f:
                    head = f.read(60)
                raise BadArchiveError(
                    f"{url} sent {part.stat().st_size} bytes of {response.headers.get('Content-Type')!r} starting "
                    f"{head!r}, not a tar archive (an error or login page?): check the url, or download the archive "
                    "yourself and pass its path as url"
                )
        os.replace(part, dest)
    except OSError as e:
        part.unlink(missing_ok=True)
        # URLError is an OSError too, but about the network: only the file system's errors are translated.
        if not isinstance(e, urllib.error.URLError) and (clear := storage_error(e, part, dest.parent)):
            raise clear from e
        raise
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return dest


def _refuse_unsafe(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
    """tarfile's ``data`` filter (no ``..``, no special files), and no absolute paths or links at all."""
    if member.issym() or member.islnk():
        raise tarfile.FilterError(f"member {member.name!r} is a link")
    if os.path.isabs(member.name):  # the data filter would silently make it relative: refuse instead
        raise tarfile.FilterError(f"member {member.name!r} has an absolute path")
    return tarfile.data_filter(member, path)


def extract(archive: Path, root: Path, folder: str) -> Path:
    """Unpack ``archive`` (holding ``folder/...``) into ``root/folder`` atomically and return that path.

    Members go to a temporary sibling folder that is renamed into place only when extraction finished,
    so an interrupted run never leaves a half dataset under ``root/folder``.
    """
    target = root / folder
    tmp = root / f".{folder}.extracting-{uuid.uuid4().hex[:8]}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter=_refuse_unsafe)
        if not (tmp / folder).is_dir():
            found = sorted(p.name for p in tmp.iterdir())
            raise UnsafeArchiveError(f"{archive}: expected a top-level folder {folder!r}, found {found}")
        os.replace(tmp / folder, target)
    except tarfile.FilterError as e:
        raise UnsafeArchiveError(f"{archive}: refusing to extract: {e}. The archive is unsafe; do not use it.") from e
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        if isinstance(e, OSError) and str(e.filename) != str(archive) and (clear := storage_error(e, tmp, root)):
            raise clear from e
        raise BadArchiveError(
            f"{archive}: cannot extract ({e}): it is not a complete .tgz/.tar archive. Delete it and download it "
            "again, or check the url/path you gave."
        ) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def remove_stale(root: Path, folder: str) -> None:
    """Delete what an interrupted extraction or download of ``folder`` left behind."""
    if not root.is_dir():
        return
    for leftover in root.glob(f".{folder}.extracting-*"):
        log.warning("removing %s left by an interrupted extraction", leftover)
        shutil.rmtree(leftover, ignore_errors=True)
    for leftover in root.glob(f"{folder}.*.part"):
        log.warning("removing %s left by an interrupted download", leftover)
        leftover.unlink(missing_ok=True)


def fetch(source: str, root: Path, checks: dict[str, Any]) -> Path:
    """Download (if remote), verify with ``checks`` (``verify``'s keywords) and extract ``source`` under ``root``.

    A remote archive already in ``root`` is reused when it verifies and refused (never deleted: it may be the
    user's own copy) when it does not; a bad download is deleted, never extracted. Returns ``root/<archive stem>``.
    """
    folder = archive_stem(source)
    remove_stale(root, folder)
    if not any(checks.values()):
        log.warning("no checksum given for %s: the archive is not verified", source)
    if is_remote(source):
        archive = root / Path(source).name
        if archive.is_file():
            try:
                verify(archive, **checks)
            except Exception as e:  # not ours to delete: downloads land as .part files and are verified first
                raise FileExistsError(
                    f"{archive} is already there and is not the archive at {source} ({e}). If it is your own "
                    f"copy, use it with --data.url {archive} --data.md5 <its md5>; otherwise move it away and run "
                    "again to download the archive"
                ) from None
        else:
            log.info("downloading %s to %s", source, archive)
            download(source, archive)
            try:
                verify(archive, **checks)
            except Exception:
                archive.unlink()  # never keep (or extract) a bad download
                raise
    else:
        archive = local_path(source)
        if not archive.is_file():
            raise FileNotFoundError(f"archive {archive} does not exist: check the url/path you gave")
        verify(archive, **checks)
    log.info("extracting %s to %s", archive, root / folder)
    return extract(archive, root, folder)
