"""Writing outputs so that nothing is lost: atomic files and folders, JSONL, and directory fingerprints.

One rule: a run deletes or replaces only what it made itself. Every folder a run writes (an unlearned model, the
checkpoints beside it, a world, a bench) holds OUTPUT_MARKER, which names the command that made it and every entry it
wrote there; a run refuses, before it loads anything, an output place that is an input (the model, the data, the
teacher) or lies inside or around one, a non-empty folder without the marker or marked by another command, one of
ours holding entries its marker does not list (files the user added, which a rewrite would delete), and one that
cannot be renamed into place (the working directory or a folder above it, a mount point). A finished run removes
from its checkpoints folder only what the marker lists.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
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


OUTPUT_MARKER = ".unstar_output.json"
"""In every folder a run writes: {"kind": the command that made it, "entries": what it wrote there, as paths relative
to the folder or glob patterns over them}. What a later run may replace or remove, and nothing else."""


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
def atomic_directory(path: str | Path, kind: str) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it is marked as a `kind` output listing all it holds and
    replaces `path` whole (an earlier `kind` output of ours, checked again at the swap: the user may have added files
    meanwhile), on failure it is removed and whatever stood at `path` before is left as it was."""
    path = Path(path)
    check_output_folder(path, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_staging(path)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-{os.getpid()}-"))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp's 0700 would become the output folder's mode
    backup = path.parent / f".{path.name}.old-{os.getpid()}"
    previous_handler = _exit_on_sigterm()
    try:
        try:
            yield staging
            mark_output(staging, kind)
            check_output_folder(path, kind)
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


def refuse_overwrite(output_dir: str | Path, *protected: str | Path, flag: str = "output_dir",
                     remedy: str | None = None) -> None:
    """Refuse an output (`flag` names it in the message; `remedy` says what to do, default: choose another `flag`)
    that is, or lies inside or around, a file or folder that must not be touched."""
    output = Path(output_dir).resolve()
    for item in protected:
        source = Path(item).resolve()
        if output == source or source in output.parents or output in source.parents:
            raise UsageError(f"{flag} {output_dir} overlaps the input {item}; {remedy or f'choose another {flag}'}")


def check_output_folder(path: str | Path, kind: str) -> None:
    """Refuse, before any work, an output folder that could not be written, renamed into place, or whose writing
    would destroy what is not the run's own: the current directory or a folder holding it ('', '.'), a mount point,
    a symbolic link, an existing file, a parent that is not a writable folder, a non-empty folder that is not a
    `kind` output of ours (no OUTPUT_MARKER, or another kind's), and one of ours holding entries it did not write."""
    given, path = str(path), Path(path)
    if Path.cwd().is_relative_to(os.path.abspath(path)):
        raise UsageError(f"output folder {given!r} is the current directory or holds it, which cannot be renamed "
                         "into place; name a folder inside it")
    if path.is_symlink():
        raise UsageError(f"output folder {path} is a symbolic link; name the folder itself")
    if path.exists() and not path.is_dir():
        raise UsageError(f"output folder {path} is an existing file; choose another name")
    if os.path.ismount(path):
        raise UsageError(f"output folder {path} is a mount point, which cannot be renamed into place; name a folder "
                         "inside it")
    if path.is_dir() and any(path.iterdir()):
        marker = _read_marker(path)
        if marker is None or marker.get("kind") != kind:
            made = f"by unstar {marker['kind']}" if marker else f"no {OUTPUT_MARKER}"
            raise UsageError(f"{path} exists and holds files that are not an earlier output of unstar {kind} ({made});"
                             " choose a new or empty folder")
        unknown = _unlisted(path, marker["entries"], path.iterdir())
        if unknown:
            listed = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            raise UsageError(f"{path} holds {listed}, which no unstar run wrote there; a run replaces only what it "
                             "made itself: move them out or choose another folder")
    _check_parent(path)


def mark_output(folder: str | Path, kind: str, entries: Iterable[str] | None = None) -> None:
    """Mark `folder` as a `kind` output of ours that holds `entries`: glob patterns over paths relative to it, each
    with the temporary names of its atomic writes and staging folders beside it (.NAME.*), for a folder that a run
    fills in place; default: everything it holds now (each path escaped), for one written whole."""
    folder = Path(folder)
    if entries is None:
        entries = [glob.escape(path.relative_to(folder).as_posix()) for path in sorted(folder.rglob("*"))
                   if path.name != OUTPUT_MARKER]
    else:
        entries = [pattern for entry in entries for pattern in (entry, "{}.{}.*".format(*_split_last(entry)))]
    write_json(folder / OUTPUT_MARKER, {"kind": kind, "entries": entries})


def _split_last(entry: str) -> tuple[str, str]:
    """("a/b/", "c") for "a/b/c": the folder part of a relative path (with its slash) and its last name."""
    head, slash, name = entry.rpartition("/")
    return head + slash, name


def remove_output(folder: str | Path) -> None:
    """Remove what a run of ours made in `folder` (what its OUTPUT_MARKER lists, then the marker), and `folder` when
    nothing else is left in it; anything else stays where it is."""
    folder = Path(folder)
    marker = _read_marker(folder)
    if marker is None:
        return
    for entry in sorted(os.listdir(folder)):
        if entry != OUTPUT_MARKER and not _unlisted(folder, marker["entries"], [folder / entry]):
            item = folder / entry
            shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()
    (folder / OUTPUT_MARKER).unlink()
    with contextlib.suppress(OSError):
        folder.rmdir()


def _read_marker(folder: Path) -> dict | None:
    """The OUTPUT_MARKER of `folder` as {"kind", "entries"}, or None where there is none that we could read."""
    try:
        marker = json.loads((folder / OUTPUT_MARKER).read_text())
    except (OSError, ValueError):
        return None
    valid = isinstance(marker, dict) and isinstance(marker.get("kind"), str) and isinstance(marker.get("entries"),
                                                                                          list)
    return marker if valid else None


def _unlisted(root: Path, entries: list[str], items: Iterable[Path]) -> list[str]:
    """The paths, relative to `root`, among `items` (in `root`) and below them that none of `entries` matches (the
    marker aside): a folder not matched is named once, without what it holds."""
    found, pending = [], sorted(items)
    while pending:
        item = pending.pop(0)
        name = item.relative_to(root).as_posix()
        if name == OUTPUT_MARKER:
            continue
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in entries):
            found.append(name + ("/" if item.is_dir() else ""))
        elif item.is_dir() and not item.is_symlink():
            pending.extend(sorted(item.iterdir()))
    return found


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
