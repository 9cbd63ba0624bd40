"""Reading ``torch.save`` files without trusting them: checkpoints, state dicts, pickled models.

``torch.load(weights_only=True)`` refuses unknown classes, yet a file can still make it
allocate what the file asks for: its allowlist includes ``bytearray``, so a 32-byte file
calling ``bytearray(2**31)`` takes 2 GB; the legacy (pre-1.6, non-zip) format allocates every
storage at the size its pickle declares before reading a byte of it; and a tensor whose view
is larger than its storage makes ``Tensor.set_`` grow the storage to fit. The C
``pickle.Unpickler`` grows its memo to the largest index a file names (9 bytes: 4 GB).
:func:`load` reads both formats itself instead:

* the pickle runs on the pure-Python unpickler (its memo is a dict), without the opcodes that
  preallocate a declared length (protocol 5's ``BYTEARRAY8`` and out-of-band buffers);
* every global the pickle names is looked up in one table (tensor-rebuild functions, storage
  types, ``OrderedDict``, ``set``, plus what the caller adds): anything else raises
  :class:`RefusedGlobal` before it can be called;
* a storage is allocated only after its declared size is checked against the bytes that hold
  it (the zip record's stored size, or what is left of a legacy file), in memory that cannot
  grow, and it is filled from the file; every tensor's view (offset, sizes, strides) is checked
  to lie inside its storage before torch's own rebuild function (``torch._utils``) runs.
  Backward hooks and Python attributes a file attaches to tensors are dropped.

Memory is then bounded by the file's size plus a few dozen times its pickles' size (at most
``MAX_PICKLE_BYTES``), whatever the file says. The result is on the CPU; tensors keep their dtype.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from .errors import InputError

__all__ = ["RefusedGlobal", "TorchFileError", "load", "load_checkpoint"]

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # first pickle of a legacy torch.save file
# The pickles of a file (its tensors' bytes excluded) may be this long: a state dict of a
# 600-tensor network takes ~60 KB. Unpickling makes at most a few dozen bytes of objects per
# pickle byte, so this caps what the pickle itself can allocate.
MAX_PICKLE_BYTES = 16 << 20
PROTOCOL_VERSION = 1001
# Python 2 module names in protocol-2 pickles written by old torch versions.
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class TorchFileError(ValueError):
    """The file is not a torch.save file this reader accepts; the message is one line."""


class RefusedGlobal(TorchFileError):
    """The pickle names a global outside the table; ``name`` is its ``module.qualname``."""

    def __init__(self, name: str) -> None:
        super().__init__(f"its pickle names {name}, which is not on the list of what may be loaded")
        self.name = name


@dataclass(frozen=True)
class _StorageKind:
    """What a pickled ``torch.FloatStorage`` (etc.) global stands for: only its dtype."""

    dtype: torch.dtype


def _storage_kinds() -> dict[str, _StorageKind]:
    kinds = {
        f"torch.{name}": _StorageKind(dtype)
        for dtype, name in torch.storage._dtype_to_storage_type_map().items()
        if not name.startswith("Q")  # quantized tensors need other rebuild functions: not read
    }
    kinds["torch.UntypedStorage"] = _StorageKind(torch.uint8)
    return kinds


def _latin1_encode(text: Any, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes``: latin-1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise TorchFileError(f"_codecs.encode with {encoding!r}: only latin-1 text is accepted")
    return text.encode("latin-1")


class _Storages:
    """The storages of one file, and the checks that keep tensors inside them."""

    def __init__(self) -> None:
        self.ours: set[int] = set()

    def wrap(self, untyped: torch.UntypedStorage, dtype: torch.dtype) -> torch.storage.TypedStorage:
        if untyped.nbytes() % torch._utils._element_size(dtype):
            raise TorchFileError(f"a {dtype} storage of {untyped.nbytes()} bytes is not a whole number of elements")
        typed = torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)
        self.ours.add(id(typed))
        return typed

    def check_view(self, storage: Any, offset: Any, size: Any, stride: Any) -> None:
        if not isinstance(storage, torch.storage.TypedStorage) or id(storage) not in self.ours:
            raise TorchFileError("a tensor is rebuilt from something that is not one of the file's storages")
        ints = (offset, *size, *stride) if isinstance(size, tuple) and isinstance(stride, tuple) else None
        if ints is None or len(size) != len(stride) or any(type(v) is not int or v < 0 for v in ints):
            raise TorchFileError("a tensor has a malformed offset, size or stride")
        numel = storage._untyped_storage.nbytes() // torch._utils._element_size(storage.dtype)
        end = offset if 0 in size else offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1
        if end > numel:
            raise TorchFileError(f"a tensor view reaches element {end} of a storage of {numel}")

    def rebuild_functions(self) -> dict[str, Callable[..., Any]]:
        """torch's tensor-rebuild functions behind the view check, without hooks or metadata from the file."""

        def rebuild_tensor(storage, storage_offset, size, stride):
            self.check_view(storage, storage_offset, size, stride)
            return torch._utils._rebuild_tensor(storage, storage_offset, size, stride)

        def rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
            self.check_view(storage, storage_offset, size, stride)
            if metadata is not None and not (
                isinstance(metadata, dict) and all(isinstance(k, str) and type(v) is bool for k, v in metadata.items())
            ):
                raise TorchFileError("a tensor has malformed metadata")
            return torch._utils._rebuild_tensor_v2(
                storage, storage_offset, size, stride, requires_grad is True, OrderedDict(), metadata
            )

        def rebuild_parameter(data, requires_grad, backward_hooks, state=None):
            if type(data) is not torch.Tensor:
                raise TorchFileError("a parameter is rebuilt from something that is not a tensor")
            return torch._utils._rebuild_parameter(data, requires_grad is True, OrderedDict())

        return {
            "torch._utils._rebuild_tensor": rebuild_tensor,
            "torch._utils._rebuild_tensor_v2": rebuild_tensor_v2,
            "torch._utils._rebuild_parameter": rebuild_parameter,
            "torch._utils._rebuild_parameter_with_state": rebuild_parameter,
        }


class _Globals:
    """Resolves a pickle's ``module.qualname``: the tensor machinery first, then the caller's table."""

    def __init__(self, storages: _Storages, extra: Mapping[str, object] | None) -> None:
        self.base: dict[str, object] = {
            "collections.OrderedDict": OrderedDict,
            "builtins.set": set,
            "_codecs.encode": _latin1_encode,
            **_storage_kinds(),
            **storages.rebuild_functions(),
        }
        self.extra = extra or {}

    def __getitem__(self, qualified: str) -> object:
        if qualified in self.base:
            return self.base[qualified]
        try:
            return self.extra[qualified]
        except KeyError:
            raise RefusedGlobal(qualified) from None


class _Unpickler(pickle._Unpickler):  # the pure-Python unpickler: its memo is a dict
    dispatch = {
        k: v
        for k, v in pickle._Unpickler.dispatch.items()  # type: ignore[attr-defined]
        if k not in (pickle.BYTEARRAY8[0], pickle.NEXT_BUFFER[0], pickle.READONLY_BUFFER[0])
    }

    def __init__(self, file: BinaryIO, table: _Globals, persistent: Callable[[Any], Any] | None = None):
        super().__init__(file, encoding="utf-8")
        self._table = table
        self._persistent = persistent

    def find_class(self, module: str, name: str) -> object:
        return self._table[f"{_PY2_MODULES.get(module, module)}.{name}"]

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise TorchFileError("a pickle holds a storage reference where none may be")
        return self._persistent(pid)

    def load_build(self) -> None:
        if isinstance(self.stack[-2], torch.Tensor):
            raise TorchFileError("the pickle sets a tensor's state directly")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build


def _storage_id(pid: Any, fields: int) -> tuple:
    if not isinstance(pid, tuple) or len(pid) != fields or pid[0] not in ("storage", b"storage"):
        raise TorchFileError(f"unknown storage reference {str(pid)[:60]!r}")
    if not isinstance(pid[1], _StorageKind):
        raise TorchFileError("a storage reference names no storage type")
    return pid


def _nbytes(numel: Any, dtype: torch.dtype) -> int:
    if type(numel) is not int or numel < 0:
        raise TorchFileError(f"a storage has a malformed size {str(numel)[:40]!r}")
    return numel * torch._utils._element_size(dtype)


def _fill(fh: BinaryIO, buf: np.ndarray, what: str) -> None:
    view = memoryview(buf).cast("B")
    done = 0
    while done < len(view):
        n = fh.readinto(view[done:])
        if not n:
            raise TorchFileError(f"{what} is cut short ({done} of {len(view)} bytes)")
        done += n


def _load_zip(path: Path, extra: Mapping[str, object] | None) -> Any:
    with zipfile.ZipFile(path) as zf:
        pickles = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise TorchFileError(f"a torch.save zip archive has one <name>/data.pkl, this one has {len(pickles)}")
        prefix = pickles[0][: -len("data.pkl")]
        if prefix + "byteorder" in zf.namelist():
            order = zf.getinfo(prefix + "byteorder")
            if order.file_size > 16 or zf.read(order) != b"little":
                raise TorchFileError("the file was not written on a little-endian machine (not supported)")
        info = zf.getinfo(pickles[0])
        if info.compress_type != zipfile.ZIP_STORED or info.file_size > MAX_PICKLE_BYTES:
            raise TorchFileError(f"{pickles[0]} is compressed or longer than {MAX_PICKLE_BYTES} bytes (torch.save writes neither)")
        storages = _Storages()
        loaded: dict[str, torch.UntypedStorage] = {}

        def persistent(pid: Any) -> torch.storage.TypedStorage:
            _, kind, key, _location, numel = _storage_id(pid, 5)
            key = key.decode() if isinstance(key, bytes) else str(key)
            nbytes = _nbytes(numel, kind.dtype)
            if key not in loaded:
                try:
                    info = zf.getinfo(f"{prefix}data/{key}")
                except KeyError:
                    raise TorchFileError(f"storage record data/{key} is missing") from None
                if info.compress_type != zipfile.ZIP_STORED or info.file_size != nbytes:
                    raise TorchFileError(f"storage record data/{key} holds {info.file_size} bytes, the pickle says {nbytes}")
                buf = np.empty(nbytes, np.uint8)
                with zf.open(info) as fh:
                    _fill(fh, buf, f"storage record data/{key}")
                loaded[key] = torch.from_numpy(buf).untyped_storage()
            elif loaded[key].nbytes() < nbytes:
                raise TorchFileError(f"storage record data/{key} is used with a larger size than it has")
            return storages.wrap(loaded[key], kind.dtype)

        pickled = io.BytesIO(zf.read(info))  # stored, at most MAX_PICKLE_BYTES: read whole, unpickled fast
        return _Unpickler(pickled, _Globals(storages, extra), persistent).load()


class _CappedReader:
    """The read calls an unpickler makes, failing once more than ``budget`` bytes were read."""

    def __init__(self, fh: BinaryIO, budget: int) -> None:
        self._fh = fh
        self.budget = budget

    def _spend(self, data: bytes) -> bytes:
        self.budget -= len(data)
        if self.budget < 0:
            raise TorchFileError(f"its pickles are longer than {MAX_PICKLE_BYTES} bytes")
        return data

    def read(self, n: int = -1) -> bytes:
        return self._spend(self._fh.read(self.budget + 1 if n < 0 else min(n, self.budget + 1)))

    def readline(self) -> bytes:
        return self._spend(self._fh.readline(self.budget + 1))


def _load_legacy(fh: BinaryIO, file_size: int, extra: Mapping[str, object] | None) -> Any:
    storages = _Storages()
    table = _Globals(storages, extra)
    pickles = _CappedReader(fh, MAX_PICKLE_BYTES)
    if _Unpickler(pickles, table).load() != MAGIC_NUMBER:  # type: ignore[arg-type]
        raise TorchFileError("not a torch.save file (no zip archive, no legacy magic number)")
    if _Unpickler(pickles, table).load() != PROTOCOL_VERSION:  # type: ignore[arg-type]
        raise TorchFileError("unknown legacy torch.save protocol version")
    sys_info = _Unpickler(pickles, table).load()  # type: ignore[arg-type]
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise TorchFileError("the file was written on a big-endian machine (not supported)")

    roots: dict[str, tuple[np.ndarray, torch.UntypedStorage, torch.dtype]] = {}
    declared = 0

    def persistent(pid: Any) -> Any:
        nonlocal declared
        if isinstance(pid, tuple) and len(pid) == 4 and pid[0] in ("module", b"module"):
            return pid[1]  # (module, class, source file, source): the class, already looked up
        _, kind, root_key, _location, numel, view = _storage_id(pid, 6)
        root_key = str(root_key)
        nbytes = _nbytes(numel, kind.dtype)
        if root_key not in roots:
            declared += nbytes
            if declared > file_size:
                raise TorchFileError(f"its storages declare {declared} bytes but the file has {file_size}")
            buf = np.empty(nbytes, np.uint8)  # not touched until filled from the file
            roots[root_key] = (buf, torch.from_numpy(buf).untyped_storage(), kind.dtype)
        buf, untyped, _ = roots[root_key]
        if nbytes > buf.nbytes:
            raise TorchFileError(f"storage {root_key} is used with a larger size than it has")
        if view is None:
            return storages.wrap(untyped, kind.dtype)
        if not (isinstance(view, tuple) and len(view) == 3 and all(type(v) is int and v >= 0 for v in view[1:])):
            raise TorchFileError("a storage view is malformed")
        item = torch._utils._element_size(kind.dtype)
        start, stop = view[1] * item, (view[1] + view[2]) * item
        if stop > buf.nbytes:
            raise TorchFileError(f"a storage view reaches byte {stop} of a storage of {buf.nbytes}")
        return storages.wrap(untyped[start:stop], kind.dtype)

    result = _Unpickler(pickles, table, persistent).load()  # type: ignore[arg-type]
    keys = _Unpickler(pickles, table).load()  # type: ignore[arg-type]
    if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(roots):
        raise TorchFileError("the list of stored storages does not match the pickle's")
    for key in map(str, keys):
        buf, _, dtype = roots[key]
        header = fh.read(8)
        count = int.from_bytes(header, "little", signed=True) if len(header) == 8 else -1
        if count * torch._utils._element_size(dtype) != buf.nbytes:
            raise TorchFileError(f"storage {key}: the data says {count} elements, the pickle {buf.nbytes} bytes")
        _fill(fh, buf, f"storage {key}")
    return result


def load(path: str | Path, extra_globals: Mapping[str, object] | None = None) -> Any:
    """What ``torch.save`` wrote to ``path`` (zip or legacy format), tensors on the CPU.

    Args:
        path: the file. A missing or unreadable file raises ``OSError`` as ``open`` does.
        extra_globals: ``{"module.qualname": object}`` the pickle may name besides tensors,
            storages, ``OrderedDict`` and ``set`` (e.g. inert stand-ins for a model's classes);
            any mapping (a ``KeyError`` refuses the name). Whatever the object is, the pickle
            can call it with arguments of its choosing.
    Raises:
        RefusedGlobal: the pickle names anything else (nothing it names has been called).
        TorchFileError: anything else wrong with the file, in one line.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        is_zip = fh.read(4) == b"PK\x03\x04"
        fh.seek(0)
        try:
            if is_zip:
                return _load_zip(path, extra_globals)
            return _load_legacy(fh, path.stat().st_size, extra_globals)
        except TorchFileError:
            raise
        except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, KeyError, IndexError, TypeError, ValueError,
                AttributeError, RuntimeError, OverflowError) as exc:
            text = str(exc).strip().splitlines()
            raise TorchFileError(f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__) from None


def load_checkpoint(path: str | Path) -> Any:
    """:func:`load` of a checkpoint this project wrote (tensors and plain values only), with a
    one-line :class:`InputError` naming the file for every failure."""
    try:
        return load(path)
    except FileNotFoundError:
        raise InputError(f"{path}: checkpoint not found") from None
    except TorchFileError as exc:
        raise InputError(f"{path}: cannot load checkpoint ({exc})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read checkpoint ({exc.strerror or exc})") from None
