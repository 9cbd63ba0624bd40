"""Weight files: download into the cache, and loading both published formats without pytorch_zoo."""

from __future__ import annotations

import hashlib
import os
import sys
import types
import urllib.error
from pathlib import Path

import pytest
import torch
from torch import nn

from cellloc import torchfile
from cellloc.errors import InputError
from cellloc.segmentation import dpn_unet, weights
from cellloc.segmentation.dpn_unet import DPNUnet
from cellloc.segmentation.weights import (
    SHA256,
    WEIGHT_FILES,
    PickledObject,
    WeightFileGlobals,
    ensure_weights,
    load_state_dict_file,
    load_weights,
    match_state_dict,
    weights_folder,
)

NUCLEI = "dpn_unet_nuclei_v1.pth"

# Where the published pickles say each class lives.
ZOO_HOMES = {
    "DPNUnet": "pytorch_zoo.unet",
    "UnetDecoderBlock": "pytorch_zoo.abstract_model",
    "ConvBottleneck": "pytorch_zoo.abstract_model",
    "DualPathBlock": "pytorch_zoo.dpn",
    "BnActConv2d": "pytorch_zoo.dpn",
    "CatBnAct": "pytorch_zoo.dpn",
}


def install_fake_zoo(monkeypatch) -> dict[type, type]:
    """Put modules named like the ``pytorch_zoo`` package in ``sys.modules`` whose classes wrap ours,
    so ``torch.save`` writes the same globals the published files reference. monkeypatch removes them."""
    mods = {"pytorch_zoo": types.ModuleType("pytorch_zoo")}
    ours_to_fake = {}
    for name, home in ZOO_HOMES.items():
        mod = mods.setdefault(home, types.ModuleType(home))
        ours = getattr(dpn_unet, name)
        fake = type(name, (ours,), {"__module__": home})
        setattr(mod, name, fake)
        ours_to_fake[ours] = fake
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return ours_to_fake


def as_published_pickle(net: nn.Module, ours_to_fake: dict[type, type]) -> nn.Module:
    """Turn our module tree into one whose classes pickle as ``pytorch_zoo.*`` (like the Zenodo files)."""
    for m in net.modules():
        if type(m) in ours_to_fake:
            m.__class__ = ours_to_fake[type(m)]
    # Plain attributes the published top-level object carries, two of them classes.
    net.decoder_block = ours_to_fake[dpn_unet.UnetDecoderBlock]
    net.bottleneck_type = ours_to_fake[dpn_unet.ConvBottleneck]
    net.filters = [64, 336, 704, 1552, 2688]
    net.decoder_type = 1
    net.first_layer_stride_two = True
    net.need_center = False
    return nn.DataParallel(net)  # the nuclei file may be wrapped: keys gain "module."


@pytest.fixture(scope="module")
def net() -> DPNUnet:
    torch.manual_seed(1)
    model = DPNUnet()
    with torch.no_grad():  # non-trivial BN buffers, so a swapped or dropped buffer shows
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.num_batches_tracked.fill_(7)
    return model.eval()


@pytest.fixture(scope="module")
def saved(net, tmp_path_factory):
    """Both formats written once for the module: a plain state dict and a published-style pickle."""
    folder = tmp_path_factory.mktemp("weights")
    plain = folder / "plain.pth"
    torch.save(net.state_dict(), plain)
    published = folder / NUCLEI
    mp = pytest.MonkeyPatch()
    original_classes = {m: type(m) for m in net.modules()}
    try:
        fake = install_fake_zoo(mp)
        torch.save(as_published_pickle(net, fake), published)
    finally:
        for m, cls in original_classes.items():
            m.__class__ = cls
        for attr in ("decoder_block", "bottleneck_type", "filters", "decoder_type", "first_layer_stride_two", "need_center"):
            delattr(net, attr)
        mp.undo()
    assert "pytorch_zoo" not in sys.modules
    return plain, published


def assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k


def test_plain_state_dict_round_trips(net, saved):
    plain, _ = saved
    assert_same_tensors(load_state_dict_file(plain), net.state_dict())


def test_published_pickle_loads_without_pytorch_zoo(net, saved):
    _, published = saved
    with pytest.raises(ModuleNotFoundError):
        torch.load(published, weights_only=False)  # what a plain load does without the package
    tensors = load_state_dict_file(published)
    assert all(not k.startswith("module.") for k in tensors)
    assert_same_tensors(dict(sorted(tensors.items())), dict(sorted(net.state_dict().items())))


def test_load_weights_into_meta_model_matches_and_runs(net, saved):
    _, published = saved
    with torch.device("meta"):
        empty = DPNUnet()
    model = load_weights(empty, published).eval()
    assert_same_tensors(model.state_dict(), net.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x), rtol=0, atol=0)


def test_refuses_forbidden_global(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(1), "payload": Evil()}, path)
    with pytest.raises(InputError, match=r"refused to load: its pickle names (posix|nt|os)\.system") as err:
        load_state_dict_file(path)
    assert not marker.exists()
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_refuses_unknown_pytorch_zoo_class(tmp_path, monkeypatch):
    mod = types.ModuleType("pytorch_zoo.unet")
    mod.Backdoor = type("Backdoor", (nn.Module,), {"__module__": "pytorch_zoo.unet"})
    monkeypatch.setitem(sys.modules, "pytorch_zoo", types.ModuleType("pytorch_zoo"))
    monkeypatch.setitem(sys.modules, "pytorch_zoo.unet", mod)
    path = tmp_path / "odd.pth"
    torch.save(mod.Backdoor(), path)
    monkeypatch.delitem(sys.modules, "pytorch_zoo.unet")
    with pytest.raises(InputError, match=r"pytorch_zoo\.unet\.Backdoor"):
        load_state_dict_file(path)


@pytest.mark.filterwarnings("ignore:Couldn.t retrieve source code")
def test_legacy_serialization_format(tmp_path, monkeypatch):
    fake = install_fake_zoo(monkeypatch)
    torch.manual_seed(0)
    unit = fake[dpn_unet.BnActConv2d](4, 8, 3, padding=1)
    path = tmp_path / "legacy.pth"
    torch.save(unit, path, _use_new_zipfile_serialization=False)
    want = {k: v.clone() for k, v in unit.state_dict().items()}
    for name in ["pytorch_zoo", *set(ZOO_HOMES.values())]:
        monkeypatch.delitem(sys.modules, name)
    assert_same_tensors(load_state_dict_file(path), want)


def test_not_a_weight_file(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"this is not a pickle")
    with pytest.raises(InputError, match="cannot read as a PyTorch weight file"):
        load_state_dict_file(path)
    with pytest.raises(InputError, match="not found"):
        load_state_dict_file(tmp_path / "absent.pth")
    path.write_bytes(b"garbage, not a weight file")  # torch.load's error here advises weights_only=False
    with pytest.raises(InputError, match="cannot read as a PyTorch weight file") as err:
        load_state_dict_file(path)
    assert "weights_only" not in str(err.value) and "\n" not in str(err.value)


def test_state_dict_of_other_content_is_refused(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(InputError, match="not a model or a state dict"):
        load_state_dict_file(path)


def test_match_tolerates_missing_batch_counters_only(net):
    expected = net.state_dict()
    old_style = {k: v for k, v in expected.items() if not k.endswith("num_batches_tracked")}
    assert len(old_style) == 595 - 96
    out = match_state_dict(old_style, expected, "old.pth")
    assert out["encoder_stages.0.1.num_batches_tracked"].item() == 0
    assert out.keys() == expected.keys()


def test_match_names_missing_unexpected_and_misshaped_keys(net):
    expected = net.state_dict()
    bad = dict(expected)
    del bad["final.0.bias"]
    bad["head.weight"] = torch.zeros(1)
    bad["final.0.weight"] = torch.zeros(2, 64, 3, 3)  # a 2-class head
    with pytest.raises(InputError) as err:
        match_state_dict(bad, expected, "x.pth")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("x.pth:")
    assert "1 missing key(s): final.0.bias" in msg
    assert "1 unexpected key(s): head.weight" in msg
    assert "final.0.weight [2, 64, 3, 3] vs [3, 64, 3, 3]" in msg


def test_match_converts_float_dtype(net):
    expected = net.state_dict()
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in expected.items()}
    out = match_state_dict(half, expected, "h.pth")
    assert out["final.0.bias"].dtype == torch.float32


# --------------------------------------------------------------------------- files and downloads


def test_weights_folder_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLLOC_WEIGHTS", str(tmp_path / "env"))
    assert weights_folder(tmp_path / "cfg") == tmp_path / "cfg"
    assert weights_folder(None) == tmp_path / "env"
    monkeypatch.delenv("CELLLOC_WEIGHTS")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert weights_folder(None) == tmp_path / "home" / ".cache" / "cellloc" / "hpa"


def test_published_names_and_urls():
    assert set(WEIGHT_FILES) == {"dpn_unet_nuclei_v1.pth", "dpn_unet_cell_3ch_v1.pth", "dpn_unet_cell_v2.pth"}
    for name, w in WEIGHT_FILES.items():
        assert w.url == f"https://zenodo.org/record/4665863/files/{name}"
    assert set(SHA256) == set(WEIGHT_FILES)


def test_missing_without_download_is_one_line(tmp_path):
    with pytest.raises(InputError) as err:
        ensure_weights(NUCLEI, tmp_path, download=False)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(tmp_path / NUCLEI) in msg and WEIGHT_FILES[NUCLEI].url in msg and f"into {tmp_path}" in msg


def test_offline_download_is_one_line(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(weights.urllib.request, "urlopen", offline)
    with pytest.raises(InputError) as err:
        ensure_weights(NUCLEI, tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and NUCLEI in msg and str(tmp_path) in msg and "name resolution" in msg
    assert list(tmp_path.iterdir()) == []  # no partial file left


def test_download_records_sha256(tmp_path, capsys):
    source = tmp_path / "served.bin"
    source.write_bytes(os.urandom(3 << 20))  # more than one read chunk
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    folder = tmp_path / "cache"
    path = ensure_weights(NUCLEI, folder, url=source.as_uri())
    assert path == folder / NUCLEI and path.read_bytes() == source.read_bytes()
    assert (folder / (NUCLEI + ".sha256")).read_text() == f"{digest}  {NUCLEI}\n"
    assert digest in capsys.readouterr().err
    # Present now: no second fetch even from a dead URL.
    assert ensure_weights(NUCLEI, folder, url=(tmp_path / "gone").as_uri()) == path


def test_download_with_wrong_pinned_sha256_keeps_nothing(tmp_path, monkeypatch):
    source = tmp_path / "served.bin"
    source.write_bytes(b"not the published weights")
    monkeypatch.setitem(SHA256, NUCLEI, "0" * 64)
    folder = tmp_path / "cache"
    with pytest.raises(InputError, match="expected 0000"):
        ensure_weights(NUCLEI, folder, url=source.as_uri())
    assert list(folder.iterdir()) == []
    monkeypatch.setitem(SHA256, NUCLEI, hashlib.sha256(source.read_bytes()).hexdigest())
    assert ensure_weights(NUCLEI, folder, url=source.as_uri()).read_bytes() == source.read_bytes()


def test_unknown_weight_name():
    with pytest.raises(InputError, match="unknown HPA weight file"):
        ensure_weights("resnet.pth", Path("."), download=False)


def test_command_line_fetch(tmp_path, monkeypatch, capsys):
    (tmp_path / NUCLEI).write_bytes(b"already here")
    weights.main([NUCLEI, "--dir", str(tmp_path)])
    assert capsys.readouterr().out.strip() == str(tmp_path / NUCLEI)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(weights.urllib.request, "urlopen", offline)
    with pytest.raises(SystemExit) as exit_info:
        weights.main(["dpn_unet_cell_v2.pth", "--dir", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "dpn_unet_cell_v2.pth" in err[-1] and "no route to host" in err[-1]


# --------------------------------------------------------------------------- hostile files


def test_every_pickled_class_is_an_inert_standin(net, saved):
    _, published = saved
    top = torchfile.load(published, WeightFileGlobals())
    assert isinstance(top, PickledObject) and top.pickled_as == "torch.nn.parallel.data_parallel.DataParallel"
    seen = set()

    def walk(obj):
        assert isinstance(obj, PickledObject) and not isinstance(obj, nn.Module)
        seen.add(obj.pickled_as)
        for child in obj.state["_modules"].values():
            walk(child)

    walk(top)
    assert {"pytorch_zoo.unet.DPNUnet", "pytorch_zoo.dpn.DualPathBlock", "torch.nn.modules.conv.Conv2d"} <= seen
    assert top.state["_modules"]["module"].state["decoder_block"].pickled_as == "pytorch_zoo.abstract_model.UnetDecoderBlock"


class CallsConv2d:
    """Pickles as a call ``Conv2d(25000, 25000, 1)``: 625M parameters, 2.5 GB if it ran."""

    def __reduce__(self):
        return (nn.Conv2d, (25000, 25000, 1))


def hostile_files(folder: Path) -> dict[str, tuple[Path, str]]:
    files = {
        # 42 bytes: a bare pickle calling an allowed class with huge arguments.
        "conv": (b"ctorch.nn.modules.conv\nConv2d\n(M\xa8aM\xa8aK\x01tR.", "not a torch.save file"),
        # 32 bytes: bytearray(2**31 - 2**24), which torch.load(weights_only=True) allows.
        "bytearray": (b"c__builtin__\nbytearray\n(J\x00\x00\x00\x7ftR.", "its pickle names builtins.bytearray"),
        # 40 bytes: memo slot 2**28 (a 4 GiB table in the C unpickler), then an allowed class.
        "memo": (b"\x80\x02Nr\x00\x00\x00\x100cpytorch_zoo.unet\nDPNUnet\n.", "not a torch.save file"),
    }
    out = {}
    for name, (data, reason) in files.items():
        path = folder / f"{name}.pth"
        path.write_bytes(data)
        out[name] = (path, reason)
    path = folder / "zip_conv.pth"
    torch.save({"w": CallsConv2d()}, path)  # the same call inside a well-formed torch.save file
    out["zip_conv"] = (path, "holds a dict, not a model or a state dict")
    return out


@pytest.mark.parametrize("name", ["conv", "bytearray", "memo", "zip_conv"])
def test_hostile_weight_file_allocates_nothing(tmp_path, run_memory_capped, name):
    path, reason = hostile_files(tmp_path)[name]
    res, growth = run_memory_capped(
        "from cellloc.errors import InputError\nfrom cellloc.segmentation.weights import load_state_dict_file",
        f"try:\n    load_state_dict_file({str(path)!r})\nexcept InputError as exc:\n    print('ERROR', exc)\n",
        cap_mib=512,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith(f"ERROR {path}: ") and reason in res.stdout and res.stdout.count("\n") == 1, res.stdout
    assert growth < 128, f"peak RSS grew by {growth:.0f} MiB"
