"""Where a network runs: PyTorch (always there; the GPU path) or OpenVINO (CPU, the ``fast`` extra).

Both runtimes take the same thing, a PyTorch ``nn.Module`` and the shape of one input, and give
back a callable ``float32 (N, *input_shape) -> float32 outputs`` (numpy in, numpy out), so any
loader (the HPA DPN-U-Nets, a cell classifier) plugs in without knowing which one runs.
``"auto"`` (the commands' default) picks OpenVINO on the CPU when the extra is installed, else
PyTorch (:func:`choose_runtime`).

OpenVINO was chosen over ONNX Runtime after measuring both on this kind of CPU (2 cores,
AVX-512, fp32; same weights, one process, interleaved): the DPN-U-Net forward ran 1.8-2.4x
faster than PyTorch with either, EfficientNet-B2 at 260 px 6.3x with OpenVINO against 4.2x with
ONNX Runtime. OpenVINO converts the module itself (its PyTorch frontend), so no ``onnx`` package is
needed to export; ONNX Runtime would need ``onnx`` besides (wheel sizes: openvino ~180 MB,
onnxruntime ~78 MB plus onnx). Neither pulls torch or CUDA packages.

Graphs are converted once per (weight file checksum, input shape, OpenVINO and torch versions)
and saved as OpenVINO IR (``.xml`` + ``.bin``, fp32 weights) in a cache folder, normally beside
the weights (``compiled/``); a later run compiles from that file without building the PyTorch
module at all. The batch axis stays dynamic in the file and is fixed per batch size at compile.

Precision: fp32, always, set explicitly. OpenVINO's own default on CPUs with AMX or AVX512-BF16
(this one) is bf16, which is 4-5x faster again but changed the DPN-U-Net's per-cell masks
(mean per-cell IoU 0.79-0.84 against fp32 PyTorch, on batch-norm-calibrated random weights),
so it is not used for segmentation; see :data:`PRECISIONS`.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .errors import InputError
from .fieldio import sha256_file

if TYPE_CHECKING:  # torch is imported where a network is built or run, so the CLIs can list RUNTIMES cheaply
    import torch
    from torch import nn

EXTRA = "fast"
OPENVINO_REQUIREMENT = "openvino==2026.4.1"
PRECISIONS = ("f32", "bf16")  # bf16: only where a caller has measured that its outputs still agree
USER_CACHE = Path("~/.cache/cellloc/compiled")

Runner = Callable[[np.ndarray], np.ndarray]


def load_openvino():
    """The ``openvino`` module, or a one-line :class:`InputError` saying how to install it."""
    try:
        import openvino
    except ImportError:
        raise InputError(
            f'the openvino runtime needs the optional package openvino: pip install -e ".[{EXTRA}]" '
            f"(or pip install {OPENVINO_REQUIREMENT}), or use --runtime torch"
        ) from None
    return openvino


@lru_cache(maxsize=1)
def openvino_core():
    """The process's one ``openvino.Core``, shared by every compiled graph.

    A second ``Core`` in one process has been reported to crash OpenVINO 2026 builds
    (openvinotoolkit/openvino#35338); one per process is also all the runtime needs.
    """
    return load_openvino().Core()


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AMX or AVX512-BF16). There, PyTorch's bf16
    autocast trains faster than float32; elsewhere bf16 is emulated and slower, so callers that
    choose precision automatically ask this first."""
    import torch

    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


THREADS_ENV = "CELLLOC_THREADS"


def default_threads(workers: int = 1) -> int:
    """Intra-op threads per process when none is asked for: the CPUs this process may use, shared
    among ``workers`` processes (at least 1).

    Measured (``bench/bench_threads.py``, 2 cores shared with other sessions, load average 8-13):
    OpenVINO at 2 threads was 1.10-1.18x faster than at 1, PyTorch with idle OpenMP threads
    sleeping (``OMP_WAIT_POLICY=PASSIVE``, which ``import cellloc`` sets unless the variable is
    already set) 0.93-1.34x; only PyTorch with OpenMP's spinning threads (libgomp's default)
    collapsed, 2-12x slower. So more threads cost nothing worth a rule even on a busy machine,
    and on an idle one every core works; a thread count below the core count is for the user to
    ask for (``--threads``, ``$CELLLOC_THREADS``).
    """
    return max(1, available_cpus() // max(1, workers))


def _env_threads(name: str, strict: bool = True) -> int:
    """A positive thread count from environment variable ``name``; 0 when unset. ``strict``: a bad
    value is a one-line :class:`InputError`; otherwise (a variable another tool owns, such as
    ``OMP_NUM_THREADS``, whose value may be a list "4,2") the first entry, or 0 when unreadable."""
    value = os.environ.get(name, "").strip()
    if not value:
        return 0
    try:
        n = int(value if strict else value.split(",")[0])
    except ValueError:
        n = 0
    if n < 1 and strict:
        raise InputError(f"{name}={value!r}: expected a positive number of threads")
    return max(n, 0)


def threads_for(workers: int = 1, threads: int = 0) -> int:
    """Intra-op threads per process: ``threads`` when > 0 (``--threads``), else ``$CELLLOC_THREADS``,
    else ``$OMP_NUM_THREADS`` (the variable PyTorch itself reads), else :func:`default_threads`.

    Every setting is per process: ``--workers 4 --threads 2`` runs 4 processes of 2 threads.
    """
    if threads > 0:
        return threads
    return _env_threads(THREADS_ENV) or _env_threads("OMP_NUM_THREADS", strict=False) or default_threads(workers)


def set_torch_threads(threads: int) -> int:
    """Set PyTorch's intra-op threads for this process to ``threads_for(1, threads)``; returns it."""
    import torch

    n = threads_for(1, threads)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def _version_tag(version: str) -> str:
    return re.sub(r"[^0-9A-Za-z.]+", "_", version.split("-")[0])


def graph_name(stem: str, weights_sha256: str, input_shape: Sequence[int]) -> str:
    """File name of a converted graph: what it was made from, so a change in any part makes a new file.

    ``stem`` names the network, ``weights_sha256`` its weight file's checksum, ``input_shape``
    one input without the batch axis (C, H, W); the OpenVINO and torch versions that convert it
    are part of the name too.
    """
    import torch

    ov = load_openvino()
    shape = "x".join(str(int(s)) for s in input_shape)
    return f"{stem}-{weights_sha256[:16]}-{shape}-ov{_version_tag(ov.__version__)}-torch{_version_tag(torch.__version__)}.xml"


def writable_cache_dir(preferred: str | os.PathLike | None) -> Path:
    """``preferred`` if a file can be created there, else ``~/.cache/cellloc/compiled`` (a read-only
    weights folder must not stop the runtime; the fallback is announced on stderr)."""
    fallback = USER_CACHE.expanduser()
    if preferred is None:
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback
    folder = Path(preferred).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
        return folder
    except OSError:
        print(f"warning: {folder}: not writable; caching converted graphs in {fallback}", file=sys.stderr)
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback


def export_openvino(module: nn.Module, input_shape: Sequence[int], path: str | os.PathLike) -> Path:
    """Convert ``module`` (eval mode, CPU, float32) for inputs (N, *input_shape) and save it as
    OpenVINO IR at ``path`` (``.xml``, weights in the ``.bin`` beside it, fp32).

    The batch axis is left dynamic. Both files are written under temporary names and moved into
    place, the ``.xml`` last, so a reader never sees half a graph (concurrent exports of the same
    graph write identical files). Returns ``path``.
    """
    import torch

    ov = load_openvino()
    path = Path(path)
    example = torch.zeros((1, *input_shape), dtype=torch.float32)
    with torch.no_grad(), warnings.catch_warnings():
        # OpenVINO traces the module: torch calls tracing deprecated, and shape checks in forward
        # become constants, which is right for a graph made for one input shape.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace", category=DeprecationWarning)
        model = ov.convert_model(module, example_input=example, input=[(-1, *[int(s) for s in input_shape])])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=path.parent))
    try:
        ov.save_model(model, tmp / path.name, compress_to_fp16=False)
        os.replace(tmp / path.with_suffix(".bin").name, path.with_suffix(".bin"))
        os.replace(tmp / path.name, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


class OpenVINORunner:
    """A converted graph compiled for the CPU: ``runner(x)`` with x float32 (N, *input_shape) returns
    the first output as a float32 numpy array (a copy, safe to keep).

    Compiled once with the batch axis dynamic (measured as fast as a graph compiled for one
    batch size, for the DPN-U-Net and EfficientNet alike, so a field's crop count never triggers
    a recompile). ``threads`` intra-op threads (0: :func:`threads_for`'s default), one stream,
    no core pinning (several worker processes would otherwise pin to the same cores).
    """

    def __init__(self, path: str | os.PathLike, threads: int = 0, precision: str = "f32"):
        if precision not in PRECISIONS:
            raise InputError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        core = openvino_core()
        self.path = Path(path)
        config = {
            "INFERENCE_NUM_THREADS": threads_for(1, threads),
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": precision,
            "ENABLE_CPU_PINNING": False,
        }
        self.compiled = core.compile_model(str(self.path), "CPU", config)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.array(self.compiled(np.ascontiguousarray(x, dtype=np.float32))[0], dtype=np.float32, copy=True)


def compile_module(
    module: nn.Module,
    input_shape: Sequence[int],
    cache_path: str | os.PathLike,
    threads: int = 0,
    precision: str = "f32",
) -> OpenVINORunner:
    """``module`` as an OpenVINO runner for inputs (N, *input_shape), converted once into
    ``cache_path`` (see :func:`graph_name` for a key that changes with the weights)."""
    cache_path = Path(cache_path)
    if not cache_path.is_file():
        export_openvino(module, input_shape, cache_path)
    return OpenVINORunner(cache_path, threads, precision)


# --------------------------------------------------------------------------- runtimes by name


class NetworkRuntime(Protocol):
    """One network under one runtime: ``runner(input_shape)`` -> callable for (N, *input_shape) batches."""

    def runner(self, input_shape: Sequence[int]) -> Runner: ...


RUNTIMES: dict[str, Callable[..., NetworkRuntime]] = {}


def register_runtime(name: str):
    """Class decorator: make a runtime constructible by name (see :func:`create_runtime`)."""

    def deco(factory):
        RUNTIMES[name] = factory
        return factory

    return deco


def runtime_factory(name: str) -> Callable[..., NetworkRuntime]:
    """The registered runtime ``name``, or a one-line :class:`InputError` listing the known ones."""
    try:
        return RUNTIMES[name]
    except KeyError:
        raise InputError(f"unknown runtime {name!r}; choose one of {', '.join(RUNTIMES)}") from None


AUTO = "auto"
RUNTIME_HELP = ("where the networks run: auto (openvino when installed and --device is the CPU, else torch), torch "
                f"(any --device) or openvino (CPU only, faster; the optional extra: pip install -e \".[{EXTRA}]\")")


def runtime_choices() -> list[str]:
    """What ``--runtime`` accepts: ``auto`` and every registered runtime."""
    return [AUTO, *RUNTIMES]


def _device_type(device: str | torch.device) -> str:
    """``"cpu"``, ``"cuda"``, ... of a device name or ``torch.device`` (without importing torch)."""
    return str(device).split(":")[0].strip().lower()


def choose_runtime(name: str, device: str | torch.device = "cpu") -> tuple[str, str]:
    """(the runtime to run, why): ``name`` itself, or for ``"auto"`` openvino when its package
    imports and ``device`` is the CPU, torch otherwise (another device, or no openvino).

    Measured (``bench/bench_hpa.py --sizes 1728``, 2 threads, quiet machine): per 1728 px field
    the hpa backend took 2.76 s on OpenVINO against 3.47 s on PyTorch; the classifier alone is
    several times faster (BENCHMARKS.md). Outputs agree (masks identical, probabilities within
    1e-3), so the choice is one of speed only and stays out of a run's settings check.
    """
    if name != AUTO:
        runtime_factory(name)
        return name, f"--runtime {name}"
    kind = _device_type(device)
    if kind != "cpu":
        return "torch", f"auto: --device {device} is not the CPU"
    try:
        load_openvino()
    except InputError:
        return "torch", f'auto: openvino is not installed (pip install -e ".[{EXTRA}]" runs CPU networks faster)'
    return "openvino", "auto: openvino is installed and the device is the CPU"


def resolve_runtime(name: str, device: str | torch.device = "cpu") -> str:
    """The runtime that ``name`` runs as on ``device`` (see :func:`choose_runtime`)."""
    return choose_runtime(name, device)[0]


def runtime_line(name: str, device: str | torch.device = "cpu") -> str:
    """The one line a command prints about its runtime: ``runtime: openvino (auto: ...)``."""
    chosen, why = choose_runtime(name, device)
    return f"runtime: {chosen} ({why})"


def require_runtime(name: str, device: str | torch.device = "cpu") -> None:
    """Fail now, with one line, if runtime ``name`` is unknown or its package is not installed.

    Run folders call it before starting workers, which would otherwise each fail every field.
    ``"auto"`` never fails: it falls back to torch.
    """
    if resolve_runtime(name, device) == "openvino":
        load_openvino()


def create_runtime(
    name: str,
    build: Callable[[], nn.Module],
    weights: str | os.PathLike,
    *,
    stem: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    threads: int = 0,
    device: str = "cpu",
    half: bool = False,
    precision: str = "f32",
) -> NetworkRuntime:
    """The network that ``build()`` makes from the file ``weights``, under runtime ``name``
    (``"auto"``: see :func:`choose_runtime`).

    ``build`` returns the module in eval mode on the CPU, weights loaded; a runtime calls it only
    when it needs the module (OpenVINO: only to convert a graph not cached yet). ``stem`` names
    the cached graphs (default: the weight file's name without suffix), ``cache_dir`` holds them
    (default: ``compiled/`` beside the weight file). ``device`` and ``half`` (fp16 autocast on
    CUDA) apply to the torch runtime, ``precision`` (see :data:`PRECISIONS`) to openvino.
    """
    factory = runtime_factory(resolve_runtime(name, device))
    weights = Path(weights)
    return factory(
        build, weights, stem=stem or weights.stem, cache_dir=cache_dir if cache_dir is not None else weights.parent / "compiled",
        threads=threads, device=device, half=half, precision=precision,
    )


@register_runtime("torch")
class TorchRuntime:
    """PyTorch as it is: the module is built at once (so a bad weight file fails here), any shape,
    any device; on the CPU it sets torch's intra-op threads for the whole process to
    ``threads_for(1, threads)`` (0: the default rule, :func:`threads_for`)."""

    def __init__(self, build: Callable[[], nn.Module], weights: Path, *, stem: str, cache_dir, threads: int = 0,
                 device: str = "cpu", half: bool = False, precision: str = "f32"):
        import torch

        self.device = torch.device(device)
        self.module = build().to(self.device).eval()
        self.half = half and self.device.type == "cuda"  # fp16 only pays on CUDA; on CPU it is slower
        if self.device.type == "cpu":
            set_torch_threads(threads)

    def runner(self, input_shape: Sequence[int]) -> Runner:
        return self

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.float16, enabled=self.half):
            return self.module(t).float().cpu().numpy()


@register_runtime("openvino")
class OpenVINORuntime:
    """OpenVINO on the CPU, graphs cached by weight checksum and input shape.

    The weight file is hashed once here. If no graph made from these weights is cached yet, the
    module is built now (a bad file fails at construction, as with torch) and kept until the
    first conversion; otherwise it is built only if a new input shape needs converting.
    """

    def __init__(self, build: Callable[[], nn.Module], weights: Path, *, stem: str, cache_dir, threads: int = 0,
                 device: str = "cpu", half: bool = False, precision: str = "f32"):
        load_openvino()
        if not str(device).startswith("cpu"):
            raise InputError(f"the openvino runtime runs on the CPU; use --runtime torch for --device {device}")
        self.build, self.stem, self.threads, self.precision = build, stem, threads, precision
        self.sha256 = sha256_file(weights)
        self.cache_dir = writable_cache_dir(cache_dir)
        self._module: nn.Module | None = None
        if not any(self.cache_dir.glob(f"{stem}-{self.sha256[:16]}-*.xml")):
            self._module = build()
        self._runners: dict[tuple[int, ...], OpenVINORunner] = {}

    def runner(self, input_shape: Sequence[int]) -> Runner:
        key = tuple(int(s) for s in input_shape)
        if key not in self._runners:
            path = self.cache_dir / graph_name(self.stem, self.sha256, key)
            if not path.is_file():
                module = self._module if self._module is not None else self.build()
                export_openvino(module, key, path)
                self._module = None  # the compiled graph holds its own weights: free ~0.5 GB per network
            self._runners[key] = OpenVINORunner(path, self.threads, self.precision)
        return self._runners[key]


# --------------------------------------------------------------------------- for code written against a module


def as_module(runner: Runner) -> nn.Module:
    """``runner`` as an ``nn.Module`` whose forward takes and returns CPU float tensors, so code written
    for the converted module (TTA loops, a sigmoid, ``model.eval()``) runs on it unchanged. It holds
    one empty parameter so ``next(module.parameters()).device`` says ``cpu``."""
    import torch
    from torch import nn

    class RunnerModule(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.runner = runner
            self.anchor = nn.Parameter(torch.empty(0), requires_grad=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(self.runner(x.detach().cpu().numpy()))

    return RunnerModule()


def compile_for_runtime(
    module: nn.Module,
    input_shape: Sequence[int],
    weights: str | os.PathLike,
    runtime: str,
    *,
    threads: int = 0,
    cache_dir: str | os.PathLike | None = None,
    stem: str | None = None,
    precision: str = "f32",
) -> nn.Module:
    """``module`` (eval mode, CPU, loaded from the file ``weights``) under ``runtime``, as an ``nn.Module``.

    ``"torch"`` (or ``"auto"`` without openvino) returns ``module`` itself; ``"openvino"`` returns :func:`as_module` of its graph for
    inputs (N, *input_shape), converted once per weight checksum and shape into ``cache_dir``
    (default ``compiled/`` beside ``weights``). This is the hook for a loader: swap a classifier's
    backbone for ``compile_for_runtime(backbone, (C, S, S), weight_file, runtime)``.
    """
    if resolve_runtime(runtime) == "torch":
        return module
    rt = create_runtime(runtime, lambda: module, weights, stem=stem, cache_dir=cache_dir, threads=threads, precision=precision)
    return as_module(rt.runner(input_shape))
