"""Report, as JSON, what a pool worker, a spawn() child and a Dask chunk load.

Usage: python child_imports.py START_METHOD
Nothing is imported at module level: under spawn and forkserver the children run
this file again as __mp_main__, and must not load procpool's parent side through it.
"""

if __name__ == "__main__":
    import functools
    import json
    import os
    import pickle
    import subprocess
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

    import layer_probe
    import procpool

    method = sys.argv[1]
    with procpool.Pool(1, context=method) as pool:  # type: ignore[arg-type]
        worker = pool.submit(layer_probe.loaded).result(timeout=60)
    # spawn() uses the default start method (forkserver on Linux) whatever METHOD is.
    spawned = procpool.spawn(layer_probe.loaded).result(timeout=60)
    # A Dask worker unpickles the chunk function by reference, then runs it: the
    # same here, in a fresh interpreter that has imported nothing of procpool.
    from procpool._child.dask_chunk import run_chunk

    task = pickle.dumps(functools.partial(run_chunk, layer_probe.double, [(1,), (2,)], None, 0))
    code = (
        "import pickle, sys, layer_probe; "
        f"task = pickle.loads({task!r}); "
        "assert [o[1] for o in task()] == [2, 4]; "
        "print(repr(layer_probe.loaded()))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    import ast

    dask = ast.literal_eval(out.stdout.strip())
    print(json.dumps({"worker": worker, "spawned": spawned, "dask": dask}))
