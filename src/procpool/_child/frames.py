"""One message on a pipe: a length prefix, then the bytes, read and written with ``os``.

The framing is ``multiprocessing.connection.Connection``'s (a 4-byte big-endian
length, or -1 and an 8-byte length for 2 GiB and more), so either end may still
be a ``Connection``. What differs is the cost: ``Connection.recv_bytes`` and
``send_bytes`` run about 30 lines of Python per message (checks, a ``BytesIO``,
a loop), a third of a worker's own work on a small call; these functions run a
few, and the usual message takes one ``read`` for its length, one for its bytes
and one ``write``.

POSIX only (``os.writev``, descriptors of pipes); on Windows both ends keep
``Connection``. Partial reads and writes are handled (a pipe hands out at most what it holds; a
signal can cut a write short), and end-of-file raises ``EOFError`` as
``Connection`` does, so callers keep their ``except (EOFError, OSError)``.
"""

from __future__ import annotations

import os
import struct

_SIZE = struct.Struct("!i")
_LONG_SIZE = struct.Struct("!Q")
#: Frames this large or larger carry the long form of the length.
_LONG = 0x7FFFFFFF


def header(size: int) -> bytes:
    """The length prefix of a frame of ``size`` bytes."""
    if size >= _LONG:
        return _SIZE.pack(-1) + _LONG_SIZE.pack(size)
    return _SIZE.pack(size)


def _read_exactly(fd: int, size: int) -> bytes:
    data = os.read(fd, size)
    if len(data) == size:
        return data
    if not data:
        raise EOFError
    parts = [data]
    got = len(data)
    while got < size:
        more = os.read(fd, size - got)
        if not more:
            raise EOFError
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def read_frame(fd: int) -> bytes:
    """Read one whole frame from ``fd`` (blocking) and return its bytes.

    Raises:
        EOFError: the writing end is closed (at a frame boundary or inside one).
        OSError: the read failed.
    """
    (size,) = _SIZE.unpack(_read_exactly(fd, 4))
    if size == -1:
        (size,) = _LONG_SIZE.unpack(_read_exactly(fd, 8))
    return _read_exactly(fd, size) if size else b""


def write_frame(fd: int, data: bytes) -> None:
    """Write ``data`` as one frame to ``fd``, which must be in blocking mode.

    Raises:
        OSError: the write failed (``BrokenPipeError``: the reader is gone).
    """
    head = header(len(data))
    if len(data) <= 16384:
        # One write: a reader woken by the length finds the bytes there too.
        chunks = [head + data]
        written = os.write(fd, chunks[0])
    else:
        chunks = [head, data]  # no copy of a large payload to join them
        written = os.writev(fd, chunks)
    if written == len(head) + len(data):
        return
    # Cut short (a signal during a large write): the rest, chunk by chunk, uncopied.
    for chunk in chunks:
        view = memoryview(chunk)
        while written < len(view):
            written += os.write(fd, view[written:])
        written -= len(view)
