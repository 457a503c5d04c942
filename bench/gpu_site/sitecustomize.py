"""Peak GPU memory of every Python process of a run, for bench/gpu_check.sh (on PYTHONPATH only there).

Python imports ``sitecustomize`` at start-up, so each stage process started by
run.py loads this without any change to the recipe. With ``KD_GPU_STATS=<file>``
set, a process that initialised CUDA appends one JSON line to that file at exit:
its command line and, per device it used, PyTorch's peak allocated and reserved
bytes (``torch.cuda.max_memory_allocated`` / ``max_memory_reserved``: the caching
allocator's own counts, without the CUDA context). Processes that never touched
CUDA (the driver, dataloader workers, CPU runs) write nothing. Then the next
``sitecustomize`` on ``sys.path`` (the machine's own, if any) runs as it would
have without this one.
"""

import atexit
import importlib.util
import json
import os
import sys


def _record():
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return
    devices = {}
    for i in range(torch.cuda.device_count()):
        peak = torch.cuda.max_memory_allocated(i)
        if peak:
            devices[str(i)] = {"max_allocated": peak, "max_reserved": torch.cuda.max_memory_reserved(i)}
    line = json.dumps({"pid": os.getpid(), "argv": sys.argv, "devices": devices})
    with open(os.environ["KD_GPU_STATS"], "a") as f:  # one short write per process: lines do not interleave
        f.write(line + "\n")


def _next_sitecustomize():
    here = os.path.dirname(os.path.abspath(__file__))
    for folder in sys.path:
        if not folder or os.path.abspath(folder) == here:
            continue
        path = os.path.join(folder, "sitecustomize.py")
        if os.path.isfile(path):
            spec = importlib.util.spec_from_file_location("_next_sitecustomize", path)
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
            return


if os.environ.get("KD_GPU_STATS"):
    atexit.register(_record)
_next_sitecustomize()
