"""cellloc: find every cell in a multi-channel fluorescence field and say where its protein lives.

Data flows one way: channel files -> arrays -> instance labels -> crops and a cells table ->
model -> per-cell scores -> submission. Command-line scripts live in ``src/*.py``; this package
holds the logic they and the tests share.
"""

import os

# OpenCV's own log lines ("[ WARN:0@1.2] global grfmt_png.cpp ... buffer is incomplete") would
# stand beside the one-line error that names the file; set before any module imports cv2, and
# inherited by worker processes. A user's own OPENCV_LOG_LEVEL wins.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

# PyTorch's OpenMP threads sleep when idle instead of spinning: with the default (spin),
# 2 threads on 2 cores that other processes also use ran 2-12x slower than 1 thread; passive,
# 0.93-1.34x the 1-thread time (bench/bench_threads.py). Read by libgomp when torch is first
# imported, so it must be set here, before any module imports torch; a user's own value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
