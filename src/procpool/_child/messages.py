"""The small fixed formats that cross the process boundary.

Every message on a pipe is one ``send_bytes`` frame: a fixed binary header
followed by a pickle body. The header is read without unpickling anything, so a
body that cannot be unpickled still names the call it belongs to, and only that
call fails.

Parent -> worker (``CALL_HEADER``: call id, kind)::

    CALL        body: (fn, args, kwargs)        run fn(*args, **kwargs)
    CHUNK       body: (fn, items)               run fn(item) for each item
    STARCHUNK   body: (fn, items)               run fn(*item) for each item
    STOP        no body                         exit the loop cleanly

    Kind flags: CLOUDPICKLED (the function is cloudpickle bytes), SHARED (a
    shared-memory header, see ``shm``, comes before the pickle), TIMED and EXACT
    (how a chunk marks its items), MEMORY (``MEMORY_FIELD``, the memory limit,
    follows the header) and GRACE (``GRACE_FIELD``, the time limit and the grace
    period, follows the header, after MEMORY's field).

Worker -> parent (``REPLY_HEADER``: call id, status, seconds spent)::

    OK          body: value                     the call's return value
    ERROR       body: (exception, traceback)    the call raised
    ITEMS       body: (offset, values, errors, final)   results of part of a chunk
    BAD_PICKLE  body: message                   a call, result or exception would not (un)pickle
    INIT_ERROR  body: (exception, traceback)    the initializer raised; the worker exits
    LOG         body: dict of LogRecord fields  a forwarded log record (forward_logs=True)
    RELEASED    no body                         the worker let go of the call's shared
                                                segment: the parent may reuse it
    KEPT        no body                         ...but something still uses it: do not
    RECYCLED    no body; the seconds field      the worker's resident memory passed the
                holds its resident bytes        call's limit: it exits before another call

    Status flag: SHARED_REPLY (a shared-memory header precedes the pickle).

The worker also publishes, in a shared ``marker`` array, which call and which item
of a chunk it is running and since when. That costs a store per item instead of
a message per item, and it is what lets the parent blame exactly one item when a
worker dies or overruns its time limit, and hand the items after it to another
worker instead of failing them. Items so fast that the store would be a third
of their cost (a full block of them, see ``_worker.MAX_BLOCK``, runs within
``BLOCK_TIME``) are marked a block at a time instead: a death then fails the
block it was running.
"""

from __future__ import annotations

import struct

CALL_HEADER = struct.Struct("<qB")
REPLY_HEADER = struct.Struct("<qBd")

# Kinds of call.
CALL = 0
CHUNK = 1
STARCHUNK = 2
STOP = 3
#: Or-ed into the kind: the function travels as cloudpickle bytes.
CLOUDPICKLED = 0x10
#: Or-ed into the kind: large buffers of the body are in a shared segment.
SHARED = 0x20
#: Or-ed into a chunk's kind: its items have a time limit, so the worker marks
#: when each item starts (otherwise only when the call starts).
TIMED = 0x08
#: Or-ed into a chunk's kind: a death must be blamed on exactly one item (it may
#: be retried), so the worker marks every item, however fast.
EXACT = 0x04
#: Or-ed into the kind: ``MEMORY_FIELD`` follows the header; after the call, a
#: worker above that many resident bytes exits (``max_memory_per_worker``).
MEMORY = 0x40
#: Or-ed into the kind: ``GRACE_FIELD`` follows: at the time limit the worker
#: raises TimeLimitInterrupt inside the task; the parent kills it ``grace`` s later.
GRACE = 0x80
#: The kind of call, without its flags.
KIND_MASK = 0x03
MEMORY_FIELD = struct.Struct("<q")
GRACE_FIELD = struct.Struct("<dd")

# Statuses of a reply.
OK = 0
ERROR = 1
ITEMS = 2
BAD_PICKLE = 3
INIT_ERROR = 4
LOG = 5
RELEASED = 6
KEPT = 7
RECYCLED = 8
#: Or-ed into the status: large buffers of the body are in a shared segment.
SHARED_REPLY = 0x40

#: Call id used by messages that belong to no call (INIT_ERROR, LOG).
NO_CALL = -1

# Layout of one worker's slot in the shared marker array (int64 each).
MARK_CALL = 0  # id of the call being run, or -1 between calls
MARK_ITEM = 1  # index, within a chunk, of the item (or first item of a block) being run
MARK_SINCE = 2  # time.monotonic_ns() when that item started
MARK_STOP = 3  # end of the block of tiny items being run; at most MARK_ITEM + 1: one item
MARK_WIDTH = 4

#: How long a worker may hold finished chunk results before sending them. Bounds
#: the results a death can lose and keeps per-item time limits honest, while tiny
#: items still travel in large batches.
FLUSH_INTERVAL = 0.005
#: An item that took this long has its result sent before the next item starts:
#: the message costs little next to the item, and no crash can lose the result.
SLOW_ITEM = 0.001
#: Fast items run in blocks of about this long between two clock reads.
BLOCK_TIME = 0.0002
