"""Writing outputs so that nothing is lost: atomic files and folders, JSONL, and directory fingerprints."""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import math
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Iterator


class UsageError(Exception):
    """A problem with what the user asked for; the CLI prints its message as one line and exits non-zero."""


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it into place (with the mode that the user's
    umask gives a new file, not the temporary file's 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile("wb", dir=path.parent, prefix=f".{path.name}.", delete=False)
    try:
        with handle:
            handle.write(data)
        os.chmod(handle.name, 0o666 & ~_umask())
        os.replace(handle.name, path)
    except BaseException:  # no temporary file is left beside `path`, whatever failed
        os.remove(handle.name)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to a temporary file beside `path`, then rename it into place."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json(path: str | Path, data) -> None:
    """`data` as indented JSON; a NaN or infinite number becomes null (see `json_safe`)."""
    write_text_atomic(path, json.dumps(json_safe(data)[0], indent=2, sort_keys=False, allow_nan=False) + "\n")


def json_safe(data, where: str = "") -> tuple[object, list[str]]:
    """(`data` with every NaN or infinite float replaced by None, which JSON can hold; the places replaced, as
    dotted paths such as "config.max_forget_nll")."""
    if isinstance(data, float) and not math.isfinite(data):
        return None, [f"{where} ({data})"]
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, (list, tuple)) else None
    if items is None:
        return data, []
    cleaned, replaced = {}, []
    for key, value in items:
        cleaned[key], found = json_safe(value, f"{where}.{key}" if where else str(key))
        replaced.extend(found)
    return (cleaned if isinstance(data, dict) else list(cleaned.values())), replaced


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` whole, on failure it is removed and
    whatever stood at `path` before is left as it was."""
    path = Path(path)
    check_output_folder(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_staging(path)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-{os.getpid()}-"))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp's 0700 would become the output folder's mode
    backup = path.parent / f".{path.name}.old-{os.getpid()}"
    previous_handler = _exit_on_sigterm()
    try:
        try:
            yield staging
            if path.exists():
                os.replace(path, backup)
            os.replace(staging, path)
        except BaseException:
            if backup.exists() and not path.exists():  # the swap itself failed: put the earlier folder back
                os.replace(backup, path)
            shutil.rmtree(staging, ignore_errors=True)
            raise
        shutil.rmtree(backup, ignore_errors=True)
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)


def _umask() -> int:
    """The process's umask (read by setting it, then setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_abandoned_staging(path: Path) -> list[Path]:
    """Remove the staging folders of `path` whose process is gone (killed with SIGKILL, or a power cut: nothing
    could clean up); return them. A folder whose process still runs is left alone."""
    removed = []
    for staging in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        pid = staging.name.removeprefix(f".{path.name}.tmp-").split("-")[0]
        if staging.is_dir() and pid.isdigit() and not _process_exists(int(pid)):
            shutil.rmtree(staging, ignore_errors=True)
            removed.append(staging)
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _exit_on_sigterm():
    """Turn SIGTERM into SystemExit (so the staging folder is removed on the way out) when no one else handles it;
    returns the handler to restore, or None when it was left alone."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        return None

    def exit(signum, frame):
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, exit)


def refuse_overwrite(output_dir: str | Path, *protected: str | Path, flag: str = "output_dir") -> None:
    """Refuse an output (`flag` names it in the message) that is, or lies inside or around, a file or folder that
    must not be touched."""
    output = Path(output_dir).resolve()
    for item in protected:
        source = Path(item).resolve()
        if output == source or source in output.parents or output in source.parents:
            raise UsageError(f"{flag} {output_dir} overlaps the input {item}; choose another {flag}")


def check_output_folder(path: str | Path, marker: str | None = None) -> None:
    """Refuse, before any work, an output folder that could not be written or whose writing would destroy what is
    there: a symbolic link, an existing file, a parent that is not a writable folder, and (with `marker`, the file
    every earlier output of ours holds) a non-empty folder without it, whose files the user keeps."""
    path = Path(path)
    if path.is_symlink():
        raise UsageError(f"output folder {path} is a symbolic link; name the folder itself")
    if path.exists() and not path.is_dir():
        raise UsageError(f"output folder {path} is an existing file; choose another name")
    if marker is not None and path.is_dir() and any(path.iterdir()) and not (path / marker).is_file():
        raise UsageError(f"{path} exists and holds files that are not an earlier output (no {marker}); "
                         "choose a new or empty folder")
    _check_parent(path)


def check_output_file(path: str | Path) -> None:
    """Refuse, before any work, an output file that is an existing folder or whose parent is not a writable
    folder."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"output file {path} is a folder; name a file")
    _check_parent(path)


def _check_parent(path: Path) -> None:
    """The nearest existing folder above `path` (where it, and any folder missing in between, will be created)
    must be a writable folder."""
    above = next(parent for parent in Path(os.path.abspath(path)).parents if parent.exists())
    if not above.is_dir():
        raise UsageError(f"cannot create {path}: {above} is a file, not a folder")
    if not os.access(above, os.W_OK | os.X_OK):
        raise UsageError(f"cannot create {path}: {above} is not writable")


@contextlib.contextmanager
def output_lock(path: str | Path) -> Iterator[None]:
    """Hold the lock of output `path` (the file `.<name>.lock` beside it) for a whole run: a second run into the
    same output while this one runs is refused instead of racing it (one result would be lost). The lock dies
    with its process, even a killed one; the file is removed on the way out."""
    path = Path(path)
    lock = path.parent / f".{path.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = open(lock, "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise UsageError(f"another run is writing {path} (it holds {lock}); wait for it to end or choose "
                             "another output") from None
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(handle.fileno()), os.stat(lock)):
                break
        handle.close()  # the run that held the lock removed its file between our open and our lock: again
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        handle.close()


def fingerprint(path: str | Path) -> dict[str, str]:
    """sha256 of every file under `path`, keyed by relative path (to prove a folder was not touched)."""
    root = Path(path)
    return {
        str(file.relative_to(root)): hashlib.sha256(file.read_bytes()).hexdigest()
        for file in sorted(root.rglob("*"))
        if file.is_file()
    }
