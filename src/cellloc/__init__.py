"""cellloc: find every cell in a multi-channel fluorescence field and say where its protein lives.

Data flows one way: channel files -> arrays -> instance labels -> crops and a cells table ->
model -> per-cell scores -> submission. Command-line scripts live in ``src/*.py``; this package
holds the logic they and the tests share.
"""

__version__ = "0.1.0"
