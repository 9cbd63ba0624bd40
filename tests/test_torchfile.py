"""Reading torch.save files without trusting them: same results as torch.load on honest files,
a one-line refusal and little memory on hostile ones."""

from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict

import pytest
import torch

from cellloc import torchfile
from cellloc.torchfile import MAGIC_NUMBER, PROTOCOL_VERSION, RefusedGlobal, TorchFileError


def checkpoint() -> dict:
    """What train.py's last.pt holds, plus the tensor shapes and types a state dict can have."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    opt = torch.optim.AdamW(net.parameters())
    net(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=10)
    base = torch.arange(24.0).reshape(4, 6)
    return {
        "model": net.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": {"torch": torch.get_rng_state()},
        "history": [{"epoch": 0, "valid_loss": 0.5, "best": True, "note": None}],
        "base": base,
        "view": base[1:, 2:].t(),  # shares base's storage, with an offset and swapped strides
        "half": torch.randn(3).half(),
        "bfloat": torch.randn(2).bfloat16(),
        "flags": torch.tensor([True, False]),
        "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(3.5),
        "param": torch.nn.Parameter(torch.ones(2)),
        "bytes": b"\x00\xff",
        "set": {1, 2},
    }


def assert_same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert type(b) is type(a) and b.dtype == a.dtype and b.shape == a.shape and b.stride() == a.stride()
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert type(b) is type(a) and list(b) == list(a)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(b) is type(a) and len(b) == len(a)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert b == a


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_reads_what_torch_load_reads(tmp_path, zipped):
    obj = checkpoint()
    path = tmp_path / "ckpt.pt"
    torch.save(obj, path, _use_new_zipfile_serialization=zipped)
    got = torchfile.load(path)
    assert_same(obj, got)
    assert_same(torch.load(path, weights_only=True), got)
    assert got["view"].untyped_storage().data_ptr() == got["base"].untyped_storage().data_ptr()
    assert got["model"]._metadata == obj["model"]._metadata  # the state dict's version info


def test_refuses_a_global_before_calling_it(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "x": Evil()}, path)
    with pytest.raises(RefusedGlobal) as err:
        torchfile.load(path)
    assert err.value.name in ("posix.system", "os.system") and not marker.exists()


def test_extra_globals_are_looked_up_by_qualified_name(tmp_path):
    path = tmp_path / "module.pt"
    torch.save({"w": torch.nn.ReLU()}, path)

    class StandIn:
        def __setstate__(self, state):
            self.state = state

    class Only(dict):
        def __missing__(self, key):
            raise KeyError(key)

    got = torchfile.load(path, Only({"torch.nn.modules.activation.ReLU": StandIn}))
    assert type(got["w"]) is StandIn and "_modules" in got["w"].state
    with pytest.raises(RefusedGlobal, match="torch.nn.modules.activation.ReLU"):
        torchfile.load(path, Only())


# --------------------------------------------------------------------------- hostile files

# Each file asks for gigabytes; every case runs in a child allowed ~512 MiB more than its
# imports, so a regression fails the test instead of exhausting the machine.
SETUP = "import torch\nfrom cellloc import torchfile"
BODY = """
try:
    torchfile.load({path!r})
    print("LOADED")
except torchfile.TorchFileError as exc:
    print("REFUSED", exc)
"""


def refused_with_little_memory(run_memory_capped, path) -> str:
    res, growth = run_memory_capped(SETUP, BODY.format(path=str(path)), cap_mib=512)
    assert res.returncode == 0, res.stderr[-2000:]
    assert growth < 128, f"peak RSS grew by {growth:.0f} MiB"
    out = res.stdout.strip()
    assert out.startswith("REFUSED ") and "\n" not in out, out
    return out.removeprefix("REFUSED ")


def test_bytearray_bomb(tmp_path, run_memory_capped):
    # 32 bytes asking for bytearray(2**31 - 2**24): torch.load(weights_only=True) allows the call.
    path = tmp_path / "bytearray.pt"
    path.write_bytes(b"c__builtin__\nbytearray\n(J\x00\x00\x00\x7ftR.")
    assert refused_with_little_memory(run_memory_capped, path).startswith("its pickle names builtins.bytearray")


def test_memo_bomb(tmp_path, run_memory_capped):
    # 9 bytes: memo slot 2**28; the C unpickler allocates a 4 GiB table for it.
    path = tmp_path / "memo.pt"
    path.write_bytes(b"\x80\x02Nr\x00\x00\x00\x10.")
    assert refused_with_little_memory(run_memory_capped, path).startswith("not a torch.save file")


def legacy_file(path, storage_pid, main_obj, keys, tail=b""):
    """A legacy-format file by hand: magic, protocol, sys info, main pickle, storage keys, data."""

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return storage_pid if obj == "STORAGE" else None

    with open(path, "wb") as fh:
        for head in (MAGIC_NUMBER, PROTOCOL_VERSION, {"little_endian": True}):
            pickle.dump(head, fh, protocol=2)
        Pickler(fh, protocol=2).dump(main_obj)
        pickle.dump(keys, fh, protocol=2)
        fh.write(tail)
    return path


def test_legacy_storage_larger_than_the_file(tmp_path, run_memory_capped):
    # Legacy torch.load allocates the declared 4 GB before finding the data missing.
    path = legacy_file(tmp_path / "big.pt", ("storage", torch.FloatStorage, "0", "cpu", 10**9, None), ["STORAGE"], ["0"])
    assert "storages declare 4000000000 bytes but the file has" in refused_with_little_memory(run_memory_capped, path)


class HugeView:
    """Pickles as a tensor whose view is 10**9 elements of a 4-element storage."""

    def __reduce_ex__(self, protocol):
        return (torch._utils._rebuild_tensor_v2, (torch.zeros(4).storage(), 0, (10**9,), (1,), False, OrderedDict()))


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_view_larger_than_its_storage(tmp_path, run_memory_capped, zipped):
    # Tensor.set_ grows a resizable storage to fit the view: legacy torch.load allocates 4 GB.
    path = tmp_path / "view.pt"
    torch.save({"w": HugeView()}, path, _use_new_zipfile_serialization=zipped)
    assert "view reaches element 1000000000 of a storage of 4" in refused_with_little_memory(run_memory_capped, path)


def test_zip_record_size_must_match(tmp_path):
    path = tmp_path / "ok.pt"
    torch.save({"w": torch.zeros(4)}, path)
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, data[:8] if info.filename.endswith("data/0") else data)
    with pytest.raises(TorchFileError, match="data/0 holds 8 bytes, the pickle says 16"):
        torchfile.load(bad)


def test_compressed_pickle_is_refused(tmp_path):
    path = tmp_path / "ok.pt"
    torch.save({"w": torch.zeros(4)}, path)
    bad = tmp_path / "deflated.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bad, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    with pytest.raises(TorchFileError, match="compressed or longer than"):
        torchfile.load(bad)


def test_pickles_longer_than_the_cap_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "long.pt"
    torch.save({"history": list(range(5000))}, path, _use_new_zipfile_serialization=False)
    monkeypatch.setattr(torchfile, "MAX_PICKLE_BYTES", 4096)
    with pytest.raises(TorchFileError, match="longer than 4096 bytes"):
        torchfile.load(path)


def test_protocol5_buffers_are_refused(tmp_path):
    # BYTEARRAY8 declares its length first; the pure-Python unpickler would allocate it.
    path = tmp_path / "p5.pt"
    path.write_bytes(b"\x80\x05\x96" + (2**40).to_bytes(8, "little") + b".")
    with pytest.raises(TorchFileError, match="KeyError"):
        torchfile.load(path)


class TensorWithState:
    """Pickles as a tensor and then a BUILD handing Tensor.__setstate__ a 10**9-element view."""

    def __reduce_ex__(self, protocol):
        small = torch.zeros(4).storage()
        return (torch._utils._rebuild_tensor_v2, (small, 0, (4,), (1,), False, OrderedDict()), (small, 0, (10**9,), (1,)))


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
def test_tensor_state_is_refused(tmp_path):
    path = tmp_path / "state.pt"
    torch.save([TensorWithState()], path)
    with pytest.raises(TorchFileError, match="sets a tensor's state directly"):
        torchfile.load(path)


def test_not_a_torch_file(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"this is not a pickle")
    with pytest.raises(TorchFileError) as err:
        torchfile.load(path)
    assert "\n" not in str(err.value) and "weights_only" not in str(err.value)
    with pytest.raises(FileNotFoundError):
        torchfile.load(tmp_path / "absent.pt")
