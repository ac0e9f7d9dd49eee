"""Bounded reads of user-named files: regular files only, nothing read past a stated size."""
from __future__ import annotations

import errno
import json
import os
import stat

CHUNK = 1 << 20  # read and decompress in 1 MiB steps


# Why a write failed, in words, for the errors a user can act on (errno -> problem).
WRITE_PROBLEMS = {
    errno.ENOSPC: "no space left on device",
    errno.EFBIG: "file too large (over the file size limit)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a folder on its path is a file",
    errno.ENOENT: "its folder does not exist",
    errno.EISDIR: "it is a folder",
}
if hasattr(errno, "EDQUOT"):
    WRITE_PROBLEMS[errno.EDQUOT] = "disk quota exceeded"
JSON_LIMIT = 64 * 2**20  # metrics, sweep and trial records are kilobytes; anything this large is not one


class ReadRefused(ValueError):
    """A file that must not (or cannot) be read; `problem` says why in a few words, and the
    message names the file when `path` is given."""

    def __init__(self, problem: str, path=None):
        self.problem = problem
        self.path = path
        super().__init__(problem if path is None else f"{path}: {problem}")


def _kind(mode: int) -> str | None:
    """What a non-regular file is, in words (None for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    for test, words in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                        (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                        (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return words
    return "a special file"


def _check(st: os.stat_result, what: str) -> None:
    kind = _kind(st.st_mode)
    if kind is not None:
        raise ReadRefused(f"is {kind}, not {what}")


def open_regular(path, what: str = "a regular file"):
    """(binary file object, its fstat) of a regular file; ReadRefused for anything else.

    stat first so that a FIFO or a device is refused without opening it; open with O_NONBLOCK and
    fstat the open descriptor so that a file swapped for a FIFO in between cannot block either.
    """
    try:
        _check(os.stat(path), what)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ReadRefused("file not found") from None
    except NotADirectoryError:
        raise ReadRefused("file not found (a folder on its path is a file)") from None
    except PermissionError:
        raise ReadRefused("permission denied") from None
    except OSError as e:
        raise ReadRefused(f"cannot open the file ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        _check(st, what)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=0), st
    except BaseException:
        os.close(fd)
        raise


def read_at_most(f, limit: int) -> bytes:
    """Up to limit + 1 bytes of a binary stream (one more than allowed tells "too large")."""
    parts, n = [], 0
    while n <= limit:
        chunk = f.read(min(CHUNK, limit + 1 - n))
        if not chunk:
            break
        parts.append(chunk)
        n += len(chunk)
    return b"".join(parts)


def read_regular(path, limit: int, what: str = "a regular file") -> bytes:
    """All bytes of a regular file of at most `limit` bytes; ReadRefused otherwise, before reading
    when the size shows it, and never reading more than limit + 1 bytes."""
    f, st = open_regular(path, what)
    with f:
        if st.st_size > limit:
            raise ReadRefused(f"{st.st_size:,} bytes, over the limit of {limit:,} bytes")
        try:
            data = read_at_most(f, limit)
        except OSError as e:
            raise ReadRefused(f"cannot read the file ({e.strerror or e})") from None
    if len(data) > limit:  # it grew after the fstat
        raise ReadRefused(f"more than {limit:,} bytes, over the limit")
    return data


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def read_json(path, limit: int = JSON_LIMIT, what: str = "a JSON file") -> object:
    """The value of a strict JSON file (UTF-8, no NaN or Infinity) of at most `limit` bytes, read as
    read_regular reads; ReadRefused naming the file otherwise."""
    try:
        data = read_regular(path, limit, what)
    except ReadRefused as e:
        raise ReadRefused(e.problem, path) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ReadRefused(f"not UTF-8 text (byte {e.start})", path) from None
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise ReadRefused(f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})", path) from None
    except ValueError as e:  # NaN or Infinity, which strict JSON readers refuse
        raise ReadRefused(f"not strict JSON ({e})", path) from None
    except RecursionError:
        raise ReadRefused("not usable JSON (nested too deeply)", path) from None
