"""The code that runs in child processes, and the formats it shares with the parent.

Everything a pool worker, a ``spawn()`` child or a Dask worker running a procpool
chunk executes lives here: the wire formats (:mod:`.messages`), pickling and its
diagnosis (:mod:`.codec`), shared memory for large buffers (:mod:`.shm`), the
pool worker's loop (:mod:`.worker`), the entry point of ``spawn()`` children
(:mod:`.spawned`) and the chunk runner for Dask (:mod:`.dask_chunk`).

One rule, checked by tests/test_layers.py: nothing here imports from outside this
package (the standard library aside), so a child imports none of the parent's
machinery (the pool, the dispatcher, futures, asyncio, logging): it starts fast
under spawn and forkserver, and what it runs is all in one place. The parent side
imports from here, never the other way round.
"""
