"""Runtimes: the same module under PyTorch and OpenVINO, converted graphs cached by weights and shape."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from cellloc import runtime
from cellloc.errors import InputError
from cellloc.models import calibrate, create_model
from cellloc.runtime import RUNTIMES, compile_for_runtime, compile_module, create_runtime, graph_name, load_openvino, threads_for
from cellloc.runs.segment import SegmentRunConfig
from cellloc.segmentation.dpn_unet import DPNUnet
from conftest import REPO


def small_net(seed: int = 0) -> nn.Module:
    """Conv, batch norm, ReLU, pooling, a grouped conv and a head: the layer kinds of the real networks."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.MaxPool2d(2), nn.Upsample(scale_factor=2),
        nn.Conv2d(16, 3, 1),
    )
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


def save_weights(path, seed: int = 0):
    torch.save(small_net(seed).state_dict(), path)
    return path


def build_from(path):
    def build() -> nn.Module:
        net = small_net()
        net.load_state_dict(torch.load(path, weights_only=True))
        return net.eval()

    return build


def torch_out(net: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return net(torch.from_numpy(x)).numpy()


@pytest.fixture
def machine(monkeypatch):
    """No thread variables set; ``machine(cpus)`` fakes the CPUs this process may use."""
    for name in (runtime.THREADS_ENV, "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)

    def fake(cpus: int) -> None:
        monkeypatch.setattr(runtime, "available_cpus", lambda: cpus)

    return fake


def test_threads_are_the_cpus_shared_among_workers(machine):
    machine(8)
    assert threads_for(1) == 8 and threads_for(2) == 4 and threads_for(3) == 2 and threads_for(16) == 1
    assert threads_for(4, threads=3) == 3  # an explicit count wins


def test_openmp_threads_sleep_when_idle_unless_told_otherwise():
    # set by `import cellloc` before torch loads OpenMP (bench/bench_threads.py: spinning threads
    # made PyTorch 2-12x slower on shared cores); this subprocess imports nothing else first
    code = "import os, cellloc; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(REPO / "src")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip() == "PASSIVE"
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip() == "ACTIVE"


def test_thread_option_then_env_then_omp(machine, monkeypatch):
    machine(8)
    monkeypatch.setenv("OMP_NUM_THREADS", "3,1")  # OpenMP's nested form: the first level counts
    assert threads_for(2) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "")  # set but empty: the rule
    assert threads_for(2) == 4
    monkeypatch.setenv(runtime.THREADS_ENV, "2")
    assert threads_for(2) == 2 and threads_for(2, threads=5) == 5
    monkeypatch.setenv(runtime.THREADS_ENV, "many")
    with pytest.raises(InputError, match="CELLLOC_THREADS='many': expected a positive number"):
        threads_for(1)


def test_thread_count_reaches_torch(machine, monkeypatch, tmp_path):
    path = save_weights(tmp_path / "w.pt")
    before = torch.get_num_threads()
    try:
        create_runtime("torch", build_from(path), path, threads=1)
        assert torch.get_num_threads() == 1
        monkeypatch.setenv(runtime.THREADS_ENV, "2")
        create_runtime("torch", build_from(path), path)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_thread_option_reaches_the_segmenter_and_predictor_configs(machine, monkeypatch):
    machine(8)
    assert SegmentRunConfig(backend="hpa", workers=2).segment_config().threads == 4
    assert SegmentRunConfig(backend="hpa", workers=2, threads=3).segment_config().threads == 3
    monkeypatch.setenv(runtime.THREADS_ENV, "1")
    assert SegmentRunConfig(backend="hpa", workers=2).segment_config().threads == 1
    with pytest.raises(ValueError, match="--threads must be >= 0"):
        SegmentRunConfig(threads=-1)


def test_missing_openvino_is_one_line_naming_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    with pytest.raises(InputError) as err:
        load_openvino()
    msg = str(err.value)
    assert "\n" not in msg and '".[fast]"' in msg and "--runtime torch" in msg
    with pytest.raises(InputError, match=r"\.\[fast\]"):
        create_runtime("openvino", small_net, save_weights(tmp_path / "w.pt"))


def test_unknown_runtime_lists_the_known_ones(tmp_path):
    with pytest.raises(InputError, match="choose one of torch, openvino"):
        create_runtime("tensorrt", small_net, save_weights(tmp_path / "w.pt"))
    assert set(RUNTIMES) == {"torch", "openvino"}


def test_torch_runtime_is_the_module_itself(tmp_path):
    path = save_weights(tmp_path / "w.pt")
    rt = create_runtime("torch", build_from(path), path)
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(rt.runner(x.shape[1:])(x), torch_out(build_from(path)(), x))


# --------------------------------------------------------------------------- OpenVINO


@pytest.fixture
def ov():
    return pytest.importorskip("openvino", reason='the openvino runtime is the optional extra: pip install -e ".[fast]"')


def test_openvino_gives_the_torch_outputs(ov, tmp_path):
    net = small_net()
    x = np.random.default_rng(1).normal(size=(3, 3, 24, 40)).astype(np.float32)
    run = compile_module(net, x.shape[1:], tmp_path / "g.xml", threads=1)
    assert (tmp_path / "g.xml").is_file() and (tmp_path / "g.bin").is_file()
    np.testing.assert_allclose(run(x), torch_out(net, x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run(x[:1]), torch_out(net, x[:1]), rtol=1e-5, atol=1e-5)  # another batch size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.bin", "g.xml"]  # no temporary files left


def test_graph_cache_is_keyed_by_weights_and_shape(ov, tmp_path, monkeypatch):
    weights = save_weights(tmp_path / "w.pt", seed=0)
    cache = tmp_path / "compiled"
    x = np.random.default_rng(2).normal(size=(1, 3, 16, 16)).astype(np.float32)

    first = create_runtime("openvino", build_from(weights), weights, cache_dir=cache, threads=1)
    out0 = first.runner(x.shape[1:])(x)
    np.testing.assert_allclose(out0, torch_out(build_from(weights)(), x), rtol=1e-5, atol=1e-5)
    assert [p.name for p in cache.glob("*.xml")] == [graph_name("w", first.sha256, (3, 16, 16))]

    # Same weights, same shape: the cached graph is used; the module is never even built.
    def refuse():
        raise AssertionError("the module was built although its graph is cached")

    again = create_runtime("openvino", refuse, weights, cache_dir=cache, threads=1)
    np.testing.assert_array_equal(again.runner(x.shape[1:])(x), out0)

    # Another input size: another graph.
    y = np.random.default_rng(3).normal(size=(1, 3, 32, 48)).astype(np.float32)
    out_y = create_runtime("openvino", build_from(weights), weights, cache_dir=cache, threads=1).runner(y.shape[1:])(y)
    np.testing.assert_allclose(out_y, torch_out(build_from(weights)(), y), rtol=1e-5, atol=1e-5)
    assert out_y.shape == (1, 3, 32, 48) and len(list(cache.glob("*.xml"))) == 2

    # New weights in the same file: a new graph with the new outputs, never the stale one.
    save_weights(weights, seed=1)
    changed = create_runtime("openvino", build_from(weights), weights, cache_dir=cache, threads=1)
    out1 = changed.runner(x.shape[1:])(x)
    np.testing.assert_allclose(out1, torch_out(build_from(weights)(), x), rtol=1e-5, atol=1e-5)
    assert not np.allclose(out1, out0) and len(list(cache.glob("*.xml"))) == 3


def test_thread_count_reaches_openvino(ov, machine, tmp_path):
    path = save_weights(tmp_path / "w.pt")
    for threads, cpus in ((2, 2), (1, 2), (0, 1)):  # OpenVINO caps a count at the machine's cores; 0: the rule
        machine(cpus)
        run = create_runtime("openvino", build_from(path), path, cache_dir=tmp_path / "c", threads=threads).runner((3, 16, 16))
        assert run.compiled.get_property("INFERENCE_NUM_THREADS") == min(threads or cpus, os.cpu_count())


def test_openvino_is_cpu_only(ov, tmp_path):
    path = save_weights(tmp_path / "w.pt")
    with pytest.raises(InputError, match="runs on the CPU"):
        create_runtime("openvino", build_from(path), path, device="cuda")


def calibrated_dpn(seed: int = 0) -> DPNUnet:
    """A random DPN-U-Net whose every layer carries signal (uncalibrated random weights give
    near-constant maps that would agree whatever the runtime)."""
    torch.manual_seed(seed)
    net = DPNUnet()
    return calibrate(net, [torch.randn(2, 3, 64, 64) for _ in range(2)], head=net.final[0], logit_std=4)


def test_dpn_unet_raw_outputs_agree(ov, tmp_path):
    net = calibrated_dpn()
    x = np.random.default_rng(4).normal(size=(1, 3, 64, 96)).astype(np.float32)
    want = torch_out(net, x)
    assert want.std() > 2  # the outputs vary: agreement below means something
    got = compile_module(net, x.shape[1:], tmp_path / "dpn.xml", threads=1)(x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    p_got, p_want = (torch.softmax(torch.from_numpy(a), 1).numpy() for a in (got, want))
    assert np.abs(p_got - p_want).max() < 1e-4


def test_classifier_backbone_swapped_for_its_graph(ov, tmp_path):
    """The loader hook: a 4-channel EfficientNet's class probabilities, torch vs OpenVINO, on the
    transposed (non-contiguous) views that test-time augmentation feeds it."""
    torch.manual_seed(0)
    net = create_model("efficientnet-b0", 4, 19, "none", image_size=32)
    calibrate(net, [torch.randn(8, 4, 32, 32) for _ in range(2)], head=net._fc)
    weights = tmp_path / "fold0" / "best.pt"
    weights.parent.mkdir()
    torch.save(net.state_dict(), weights)
    fast = compile_for_runtime(net, (4, 32, 32), weights, "openvino", threads=1, stem="efficientnet-b0")
    assert compile_for_runtime(net, (4, 32, 32), weights, "torch") is net
    assert next(fast.parameters()).device.type == "cpu" and list((weights.parent / "compiled").glob("*.xml"))
    x = torch.randn(5, 4, 32, 32)
    with torch.no_grad():
        for view in (x, x.transpose(-1, -2), x.flip(-1)):
            want, got = torch.sigmoid(net(view)), torch.sigmoid(fast(view))
            assert want.std() > 0.1 and (got - want).abs().max() < 1e-4  # the goal: 1e-3


# --------------------------------------------------------------------------- command lines


def test_cli_runtime_without_openvino_is_one_line(synth_dataset, tmp_path):
    """``--runtime openvino`` where the extra is not installed: exit 2 and one line naming it."""
    hidden = tmp_path / "hide"
    (hidden / "openvino").mkdir(parents=True)
    (hidden / "openvino" / "__init__.py").write_text('raise ImportError("openvino is hidden by this test")\n')
    weights = tmp_path / "weights"
    weights.mkdir()
    for name in ("dpn_unet_nuclei_v1.pth", "dpn_unet_cell_3ch_v1.pth"):
        (weights / name).write_bytes(b"")  # present; the runtime is refused before they are read
    env = {**os.environ, "PYTHONPATH": str(hidden)}
    for script, args in (
        ("src/score_segmentation.py", [synth_dataset]),
        ("src/segment.py", ["--input", synth_dataset / "train", "--out", tmp_path / "out"]),
    ):
        r = subprocess.run([sys.executable, script, *map(str, args), "--backend", "hpa", "--runtime", "openvino",
                            "--weights-dir", str(weights)], capture_output=True, text=True, cwd=REPO, env=env)
        assert r.returncode == 2, (script, r.stderr)
        errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]  # (after any progress bar)
        assert len(errors) == 1 and '".[fast]"' in errors[0] and "Traceback" not in r.stderr
        # the default, auto, runs on torch instead and says why, once (then fails on the empty weight files)
        r = subprocess.run([sys.executable, script, *map(str, args), "--backend", "hpa", "--weights-dir", str(weights)],
                           capture_output=True, text=True, cwd=REPO, env=env)
        said = [line for line in r.stdout.splitlines() if line.startswith("runtime:")]
        assert said == ['runtime: torch (auto: openvino is not installed (pip install -e ".[fast]" runs CPU networks faster))']
        assert "Traceback" not in r.stderr


def test_runtime_options_reach_the_segmenter_config(machine):
    machine(8)
    cfg = SegmentRunConfig(backend="hpa", runtime="openvino", workers=2)
    seg = cfg.segment_config()
    assert seg.runtime == "openvino" and seg.threads == threads_for(2)


@pytest.mark.parametrize("runtime_name", ["torch", "openvino"])
def test_predict_thread_option_reaches_the_classifier(machine, tmp_path, runtime_name):
    from cellloc.classifier import Recipe, save_untrained
    from cellloc.runs.predict import PredictConfig, load_predictor

    if runtime_name == "openvino":
        pytest.importorskip("openvino", reason='the openvino runtime is the optional extra: pip install -e ".[fast]"')
    machine(8)
    save_untrained(tmp_path / "run" / "fold0", Recipe("hpa-2018", "image", "efficientnet-b0", 4, 28, 32, [0.1] * 4, [0.2] * 4,
                                                      "multilabel", {"kind": "field", "resize": 32, "tiles": 1}))
    before = torch.get_num_threads()
    try:
        predictor = load_predictor(PredictConfig(models=str(tmp_path / "run"), runtime=runtime_name, threads=1, workers=2))
        net = predictor.model.members[0].net
        if runtime_name == "openvino":
            assert net.runner.compiled.get_property("INFERENCE_NUM_THREADS") == 1
        else:
            assert torch.get_num_threads() == 1
        load_predictor(PredictConfig(models=str(tmp_path / "run"), runtime="torch", workers=2))
        assert torch.get_num_threads() == 4  # the rule: 8 idle CPUs shared by 2 workers
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- --runtime auto (the default)


def test_auto_is_the_default_of_every_command():
    from cellloc.runs.predict import PredictConfig
    from cellloc.service import ServiceConfig
    from test_evaluate_cli import load_script

    score = load_script("score_segmentation").ScoreConfig
    for config in (SegmentRunConfig, PredictConfig, ServiceConfig, score):
        assert config().runtime == "auto", config
    assert runtime.runtime_choices() == ["auto", "torch", "openvino"]


def test_auto_picks_openvino_on_the_cpu_when_it_imports(ov, tmp_path):
    chosen, why = runtime.choose_runtime("auto", "cpu")
    assert chosen == "openvino" and "installed" in why
    assert runtime.runtime_line("auto") == "runtime: openvino (auto: openvino is installed and the device is the CPU)"
    path = save_weights(tmp_path / "w.pt")
    rt = create_runtime("auto", build_from(path), path, cache_dir=tmp_path / "c", threads=1)
    assert isinstance(rt, runtime.OpenVINORuntime)
    x = np.random.default_rng(5).normal(size=(2, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(rt.runner(x.shape[1:])(x), torch_out(build_from(path)(), x), rtol=1e-5, atol=1e-5)


def test_auto_falls_back_to_torch_when_openvino_does_not_import(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    chosen, why = runtime.choose_runtime("auto", "cpu")
    assert chosen == "torch" and "not installed" in why and '".[fast]"' in why
    runtime.require_runtime("auto")  # no error: auto never needs the extra
    with pytest.raises(InputError, match=r"\.\[fast\]"):
        runtime.require_runtime("openvino")  # asked for by name: the one-line error, as before
    path = save_weights(tmp_path / "w.pt")
    assert isinstance(create_runtime("auto", build_from(path), path), runtime.TorchRuntime)


@pytest.mark.parametrize("device", ["cuda", "cuda:1", torch.device("cuda", 0)])
def test_auto_is_torch_on_a_gpu(device, monkeypatch, tmp_path):
    chosen, why = runtime.choose_runtime("auto", device)
    assert chosen == "torch" and why.startswith(f"auto: --device {device} is not the CPU")
    runtime.require_runtime("auto", device)
    made = []  # the torch factory receives the device (no GPU needed to see the choice reach it)
    monkeypatch.setitem(RUNTIMES, "torch", lambda build, weights, **kw: made.append(kw["device"]) or "torch runtime")
    path = save_weights(tmp_path / "w.pt")
    assert create_runtime("auto", build_from(path), path, device=device) == "torch runtime" and made == [device]


def test_explicit_runtime_names_are_kept(monkeypatch):
    assert runtime.choose_runtime("torch", "cpu") == ("torch", "--runtime torch")
    assert runtime.choose_runtime("openvino", "cpu") == ("openvino", "--runtime openvino")
    with pytest.raises(InputError, match="unknown runtime 'tensorrt'"):
        runtime.choose_runtime("tensorrt")


def test_runtime_is_not_a_setting_of_a_segment_run(tmp_path):
    """A run started on one runtime resumes on another: masks are identical and probabilities agree
    within 1e-3 (the tests above and test_hpa_backend's), so the choice is speed, not results."""
    from cellloc.runs.segment import run_settings

    settings = [run_settings(SegmentRunConfig(backend="hpa", input=str(tmp_path), weights_dir=str(tmp_path), runtime=name))
                for name in ("auto", "torch", "openvino")]
    assert settings[0] == settings[1] == settings[2]
    recipe = SegmentRunConfig(backend="hpa", runtime="torch").recipe_input()
    assert recipe["segment"]["runtime"] == "auto"  # the predicting machine chooses its own


def test_auto_reaches_the_classifier(openvino_installed, tmp_path):
    from cellloc.classifier import Recipe, save_untrained
    from cellloc.runs.predict import PredictConfig, load_predictor

    save_untrained(tmp_path / "run" / "fold0", Recipe("hpa-2018", "image", "efficientnet-b0", 4, 28, 32, [0.1] * 4, [0.2] * 4,
                                                      "multilabel", {"kind": "field", "resize": 32, "tiles": 1}))
    before = torch.get_num_threads()
    try:
        net = load_predictor(PredictConfig(models=str(tmp_path / "run"), threads=1)).model.members[0].net
    finally:
        torch.set_num_threads(before)
    assert hasattr(net, "runner") is openvino_installed  # the converted graph, or the torch module itself
