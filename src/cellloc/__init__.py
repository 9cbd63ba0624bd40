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

__version__ = "0.1.0"
