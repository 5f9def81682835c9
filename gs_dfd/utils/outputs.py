"""The output rule, in one place for every command that writes.

1. An output never equals, contains or lies inside one of the run's inputs, with or without
   ``--overwrite`` (paths compared after resolving symlinks).
2. ``--overwrite`` only replaces what gs-dfd itself wrote: a folder that holds the marker
   :data:`MARKER_FILE`, a file that carries the signature :data:`SIGNATURE` (a PNG text chunk, a PLY
   or PCD header comment). Anything else is refused with one line naming the path.
3. Results appear whole or not at all: a folder is built in a hidden sibling (``.NAME.gs-dfd-partial``)
   and renamed into place when complete, so no file of an earlier run survives; a file is written
   beside and renamed. A resumable job (fit, train) keeps its partial folder on Ctrl-C, with the
   checkpoint its ``--resume`` continues from.
4. One run per output: a lock file beside it (``.NAME.gs-dfd.lock``, ``flock``: released by the OS
   when the process dies) refuses a second run while the first is writing.

Commands call :func:`check_output` while validating their flags, so a long job fails before it
starts, then write through :class:`OutputDir` or :func:`output_file`, which check again under the lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import struct
import time
import zlib
from pathlib import Path
from typing import Iterable, Iterator, Literal, Optional, Tuple

from gs_dfd.errors import InputError, Interrupted, os_error_reason
from gs_dfd.utils.atomic import umask

MARKER_FILE = ".gs_dfd_output.json"
MARKER_FORMAT = "gs_dfd.output/1"
SIGNATURE = "gs-dfd"
PARTIAL_SUFFIX = ".gs-dfd-partial"
_LOCK_SUFFIX = ".gs-dfd.lock"
_OLD_SUFFIX = ".gs-dfd-old"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_SIGNATURE_TEXT = b"Software\x00" + SIGNATURE.encode()

Inputs = Iterable[Tuple[str, Optional[os.PathLike]]]  # (flag, path) pairs; None paths are skipped


def _real(path: os.PathLike | str) -> Path:
    """Absolute, with every symlink that exists resolved (a missing tail is kept as written)."""
    return Path(os.path.realpath(os.path.abspath(path)))


# --------------------------------------------------------------------------- rule 1: outputs and inputs


def check_not_input(out: Path, inputs: Inputs, flag: str = "--out") -> None:
    """Refuse an output that equals, contains or lies inside an input."""
    real_out = _real(out)
    for in_flag, path in inputs:
        if path is None:
            continue
        real_in = _real(path)
        if real_out == real_in:
            how = "is"
        elif real_out.is_relative_to(real_in):
            how = "lies inside"
        elif real_in.is_relative_to(real_out):
            how = "contains"
        else:
            continue
        raise InputError(out, f"{how} the input {in_flag} {path}: an output may never equal, contain or lie inside "
                              f"an input, with or without --overwrite; choose another {flag}", flag)


# --------------------------------------------------------------------------- rule 2: recognising our outputs


def is_gs_dfd_folder(path: Path) -> bool:
    """A folder gs-dfd wrote: it holds the marker with our format."""
    try:
        marker = json.loads((Path(path) / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("format") == MARKER_FORMAT


def _head(path: Path, size: int = 1 << 16) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(size)
    except OSError:
        return b""


def is_gs_dfd_file(path: Path) -> bool:
    """A file gs-dfd wrote: a PNG with its ``Software`` text chunk, or a PLY/PCD with its header comment."""
    head = _head(Path(path))
    if head.startswith(_PNG_MAGIC):
        return _PNG_SIGNATURE_TEXT in head
    if head.startswith(b"ply"):
        header = head.split(b"end_header", 1)[0]
        return f"comment {SIGNATURE}".encode() in header.splitlines()
    if head.startswith(b"#") or head.startswith(b"VERSION"):  # PCD: comment lines start with '#'
        header = head.split(b"\nDATA", 1)[0]
        return f"# {SIGNATURE}".encode() in header.splitlines()
    return False


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def sign_file(path: Path) -> None:
    """Add gs-dfd's signature to a PNG, PLY or PCD file it just wrote (in place; call on a temporary file)."""
    path = Path(path)
    if is_gs_dfd_file(path):
        return
    head = _head(path, 1 << 16)
    if head.startswith(_PNG_MAGIC):
        ihdr_end = 8 + 8 + struct.unpack(">I", head[8:12])[0] + 4  # magic + IHDR chunk
        insert, at = _png_chunk(b"tEXt", _PNG_SIGNATURE_TEXT), ihdr_end
    elif head.startswith(b"ply"):
        fmt = head.index(b"\nformat ") + 1  # after the "format" line: readers such as RPly expect it second
        insert, at = f"comment {SIGNATURE}\n".encode(), head.index(b"\n", fmt) + 1
    elif head.startswith(b"#") or head.startswith(b"VERSION"):
        insert, at = f"# {SIGNATURE}\n".encode(), 0
    else:
        raise ValueError(f"{path}: cannot sign a {path.suffix} file")
    tmp = path.with_name(path.name + ".sign")
    try:
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            dst.write(src.read(at))
            dst.write(insert)
            shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(tmp, path)
    finally:
        _remove(tmp)


# --------------------------------------------------------------------------- the up-front check


def _check_parent_writable(out: Path, flag: str) -> None:
    """The nearest existing ancestor must be a folder we may write in (not a file, not read-only)."""
    anc = _real(out).parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise InputError(out, f"cannot be created: {anc} is a file, not a folder", flag)
    if not os.access(anc, os.W_OK | os.X_OK):
        raise InputError(out, f"cannot be written: {anc} is read-only or not writable by this user", flag)


def check_output(out: Path, *, kind: Literal["dir", "file"], inputs: Inputs = (), overwrite: bool = False,
                 flag: str = "--out", resume: bool = False, resumable: bool = False) -> None:
    """The output rule for ``out``, checked before any work (and again under the lock).

    ``resume``: the run continues one of our own folders, which it may replace without ``--overwrite``;
    ``resumable``: the job could (the refusal says so).
    """
    out = Path(out)
    check_not_input(out, inputs, flag)
    if out.exists() or out.is_symlink():
        if kind == "dir":
            if not out.is_dir():
                raise InputError(out, "exists and is not a folder", flag)
            if any(out.iterdir()):
                if not is_gs_dfd_folder(out):
                    raise InputError(out, f"exists and holds files gs-dfd did not write (no {MARKER_FILE}); "
                                          f"--overwrite only replaces gs-dfd's own outputs: choose another {flag}",
                                     flag)
                if not (overwrite or resume):
                    how = "--resume to continue it or --overwrite to replace it" if resumable else \
                        "--overwrite to replace it"
                    raise InputError(out, f"output folder exists (pass {how})", flag)
        else:
            if out.is_dir():
                raise InputError(out, "exists and is a folder", flag)
            if not overwrite:
                raise InputError(out, "output file exists (pass --overwrite to replace it)", flag)
            if not is_gs_dfd_file(out):
                raise InputError(out, f"exists and was not written by gs-dfd; --overwrite only replaces gs-dfd's "
                                      f"own files: choose another {flag}", flag)
    _check_parent_writable(out, flag)


# --------------------------------------------------------------------------- rule 4: one run per output


def _sibling(out: Path, suffix: str) -> Path:
    out = Path(os.path.abspath(out))
    return out.parent / f".{out.name}{suffix}"


@contextlib.contextmanager
def output_lock(out: Path, flag: str = "--out") -> Iterator[None]:
    """Hold ``.NAME.gs-dfd.lock`` beside ``out`` for the run; a second run on ``out`` is refused at once."""
    lock_path = _sibling(out, _LOCK_SUFFIX)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            try:
                pid = lock_path.read_text().strip() or "?"
            except OSError:
                pid = "?"
            raise InputError(out, f"another gs-dfd run (pid {pid}) is writing this output; wait for it to finish "
                                  f"or choose another {flag}", flag) from None
        try:  # the file locked must still be the one at lock_path: a finishing run unlinks it
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            lock_path.unlink()
        os.close(fd)


# --------------------------------------------------------------------------- rule 3: whole or nothing


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _named(exc: BaseException, out: Path, flag: str) -> BaseException:
    """An OS error while writing ``out`` as the one-line error that names it; other exceptions as they are."""
    if isinstance(exc, OSError):
        return InputError(out, f"could not be written ({os_error_reason(exc)})", flag)
    return exc


def partial_dir(out: Path) -> Path:
    """Where the folder ``out`` is built (and where an interrupted resumable run left its checkpoint)."""
    return _sibling(out, PARTIAL_SUFFIX)


class OutputDir:
    """An output folder built whole: write into :attr:`path` (a hidden sibling), renamed over ``out`` on success.

    ``resumable``: on Ctrl-C (and a resumed run's start) the partial folder is kept, with the job's checkpoint;
    ``resume=True`` continues in it, or in a copy of the finished ``out``. Without ``resumable``, any failure
    removes the partial folder and ``out`` is untouched.
    """

    def __init__(self, out: Path, *, command: str, inputs: Inputs = (), overwrite: bool = False,
                 flag: str = "--out", resumable: bool = False, resume: bool = False,
                 resume_file: str = "checkpoint.pt") -> None:
        self.out = Path(out)
        self.command = command
        self.inputs = list(inputs)
        self.overwrite = overwrite
        self.flag = flag
        self.resumable = resumable
        self.resume = resume
        self.resume_file = resume_file
        self.path = partial_dir(self.out)
        self.resumed_from: Optional[str] = None  # "partial" or "out" once entered with resume=True
        self._lock = None

    def check(self) -> None:
        """The up-front check (no lock, nothing written)."""
        check_output(self.out, kind="dir", inputs=self.inputs, overwrite=self.overwrite, flag=self.flag,
                     resume=self.resume, resumable=self.resumable)
        if self.resume and not self.can_resume():
            raise InputError(self.out / self.resume_file, "nothing to resume: no checkpoint (no interrupted run "
                                                          "beside it, no finished run in it)", "--resume")

    def can_resume(self) -> bool:
        return self.path.is_dir() or (self.out / self.resume_file).is_file()

    def __enter__(self) -> "OutputDir":
        self._lock = output_lock(self.out, self.flag)
        self._lock.__enter__()
        try:
            self.check()
            if self.resume and self.path.is_dir():
                self.resumed_from = "partial"
            elif self.resume:
                _remove(self.path)
                shutil.copytree(self.out, self.path, symlinks=True)
                (self.path / MARKER_FILE).unlink(missing_ok=True)
                self.resumed_from = "out"
            else:
                _remove(self.path)  # a run killed before it could clean up
                self.path.mkdir(parents=True)
                os.chmod(self.path, 0o777 & ~umask())
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def commit(self) -> None:
        """Mark the partial folder complete and move it over ``out`` (the old ``out``, ours, goes)."""
        marker = {"format": MARKER_FORMAT, "command": self.command, "completed": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (self.path / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
        if self.out.exists() or self.out.is_symlink():
            old = _sibling(self.out, _OLD_SUFFIX)
            _remove(old)
            os.replace(self.out, old)
            try:
                os.replace(self.path, self.out)
            except BaseException:
                os.replace(old, self.out)  # the earlier output stays where it was
                raise
            _remove(old)
        else:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.path, self.out)

    def __exit__(self, exc_type, exc, tb) -> bool:
        # A resumable job keeps its partial folder when interrupted, and any failure of a run that continued one
        # (a refused resume must not cost the work done).
        keep = self.resumable and exc_type is not None and (
            issubclass(exc_type, (KeyboardInterrupt, Interrupted)) or self.resumed_from == "partial")
        try:
            if exc_type is None:
                self.commit()
        except OSError as failure:
            keep = False
            raise _named(failure, self.out, self.flag) from None
        except BaseException:
            keep = False
            raise
        finally:
            if not keep and self.path.exists():
                _remove(self.path)
            self._lock.__exit__(None, None, None)
        if isinstance(exc, OSError):  # disk full, read-only, ...: say which output could not be written
            raise _named(exc, self.out, self.flag) from None
        return False


@contextlib.contextmanager
def output_file(out: Path, *, inputs: Inputs = (), overwrite: bool = False, flag: str = "--out") -> Iterator[Path]:
    """Yield a temporary path beside ``out`` (same suffix); on success it is signed and renamed over ``out``."""
    out = Path(out)
    with output_lock(out, flag):
        check_output(out, kind="file", inputs=inputs, overwrite=overwrite, flag=flag)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = _sibling(out, f".tmp{out.suffix}")
        _remove(tmp)
        try:
            yield tmp
            if not tmp.is_file():
                raise InputError(out, "was not written", flag)
            sign_file(tmp)
            os.replace(tmp, out)
        except OSError as exc:
            raise _named(exc, out, flag) from None
        finally:
            _remove(tmp)



@contextlib.contextmanager
def atomic_output_dir(out: Path, overwrite: bool = False, inputs: Inputs = (), command: str = "gs-dfd",
                      flag: str = "--out") -> Iterator[Path]:
    """:class:`OutputDir` for a job that is not resumable: yields the folder to write into."""
    with OutputDir(out, command=command, inputs=inputs, overwrite=overwrite, flag=flag) as work:
        yield work.path
