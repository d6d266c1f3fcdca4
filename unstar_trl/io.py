"""Writing outputs so that nothing is lost: atomic files and folders, JSONL, and directory fingerprints."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
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
    with tempfile.NamedTemporaryFile("wb", dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        temporary = handle.name
        try:
            handle.write(data)
            os.chmod(temporary, 0o666 & ~_umask())
        except BaseException:
            handle.close()
            os.remove(temporary)
            raise
    os.replace(temporary, path)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to a temporary file beside `path`, then rename it into place."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json(path: str | Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` whole, on failure it is removed and
    whatever stood at `path` before is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_staging(path)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-{os.getpid()}-"))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp's 0700 would become the output folder's mode
    previous_handler = _exit_on_sigterm()
    try:
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        backup = path.parent / f".{path.name}.old-{os.getpid()}"
        if path.exists():
            os.replace(path, backup)
        os.replace(staging, path)
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


def refuse_overwrite(output_dir: str | Path, *protected: str | Path) -> None:
    """Refuse an output folder that is, or lies inside or around, a folder that must not be touched."""
    output = Path(output_dir).resolve()
    for item in protected:
        source = Path(item).resolve()
        if output == source or source in output.parents or output in source.parents:
            raise UsageError(f"output_dir {output_dir} overlaps the input {item}; choose another output_dir")


def refuse_foreign_folder(path: str | Path, marker: str) -> None:
    """Refuse to replace a non-empty folder that is not an earlier output of ours (it holds no `marker` file):
    replacing it would delete whatever the user keeps there."""
    path = Path(path)
    if path.is_dir() and any(path.iterdir()) and not (path / marker).is_file():
        raise UsageError(f"{path} exists and holds files that are not an earlier output (no {marker}); "
                         "choose a new or empty folder")


def fingerprint(path: str | Path) -> dict[str, str]:
    """sha256 of every file under `path`, keyed by relative path (to prove a folder was not touched)."""
    root = Path(path)
    return {
        str(file.relative_to(root)): hashlib.sha256(file.read_bytes()).hexdigest()
        for file in sorted(root.rglob("*"))
        if file.is_file()
    }
