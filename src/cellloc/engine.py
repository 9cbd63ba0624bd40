"""The tez adapter: Tez 0.7.2 runs the training loop; every workaround for it lives here.

tez has been unmaintained since 2022 and predates numpy 2, torch's ``weights_only=True``
default (2.6) and accelerate 1.x. What breaks, and what this module does about it (every item
that can be shown on a CPU has a test in ``tests/test_engine.py``, item 9 in
``tests/test_training.py`` with two torchrun ranks; the tests named "tripwire" fail once the
defect is fixed upstream, so the workaround can be dropped):

1. ``import tez`` runs ``warnings.filterwarnings("ignore", category=UserWarning)``, silencing
   every UserWarning of the process. We import tez inside ``warnings.catch_warnings()``, which
   restores the filter list on exit.
2. ``tez.callbacks.EarlyStopping.__init__`` reads ``np.Inf`` (removed in numpy 2:
   AttributeError). :class:`EarlyStopping` sets the same attributes with ``np.inf`` and does
   not call the parent ``__init__``; its ``check``/``save_checkpoint`` logic is tez's.
3. ``Tez.save`` pickles the ``TezConfig`` object into the checkpoint and ``Tez.load`` calls
   ``torch.load`` without ``weights_only``: under torch >= 2.6 tez cannot load its own
   checkpoints. :meth:`CellTez.save` writes plain state_dicts (tensors and primitives only)
   and :meth:`CellTez.load` reads them with :func:`cellloc.torchfile.load_checkpoint` (what
   ``weights_only=True`` reads, without the allocations a hostile file could ask of it).
4. ``Tez.metrics`` is a class-level dict mutated in place, so every Tez instance in a process
   shares one metric history (a second fold starts with the first fold's numbers).
   :class:`CellTez` gives each instance its own dict.
5. With gradient accumulation tez logs ``loss.item() * steps``, but accelerate divides only a
   copy of the loss, so the logged loss is multiplied by ``steps`` (doubled at 2).
   :meth:`CellTez.train_step` returns ``loss / steps`` so the logged value is the true loss.
6. accelerate's state is a per-process singleton: a second ``Accelerator`` with another mixed
   precision raises, and one asking for GPU after a CPU run silently stays on the CPU. In a
   single (non-distributed) process :func:`make_accelerator` resets the state when the
   request differs; under ``accelerate launch`` it refuses with a one-line error instead.
7. ``TezConfig.device`` is ignored (accelerate picks CUDA whenever it exists): ``device="cpu"``
   is passed on as ``Accelerator(cpu=True)``, and so is ``auto`` where torch sees no CUDA:
   without ``cpu=True`` accelerate does not set up several CPU processes, so each rank of an
   ``accelerate launch`` or ``torchrun`` trained the whole fold alone (as process 0 of 1).
8. ``Tez._clip_grad_norm`` clips with ``torch.nn.utils.clip_grad_norm_`` on every micro-batch,
   i.e. on fp16-*scaled* gradients: we use ``accelerator.clip_grad_norm_`` (unscales first) on
   the micro-batches where gradients are synchronised.
9. Callbacks run on the local main process only, so an early stop never reaches the other
   ranks of a multi-GPU run (they would wait forever): the stop flag is broadcast after each
   epoch. A callback that changes what every rank trains on (``--relabel-after``'s new
   targets) has a ``sync_ranks(trainer)`` method, run on every rank after each epoch's
   callbacks, in the callbacks' order, where it takes rank 0's result
   (:meth:`CellTez.from_main`).
10. Batches must be dicts (tez calls ``model(**batch)``): :meth:`CellTez.model_fn` says so in
    one line instead of ``argument after ** must be a mapping``.
11. tez's validation loss averages batch means weighted by the nominal batch size, and batch
    metrics cannot be an AP: :class:`CellTez` keeps every validation logit (gathered across
    ranks without the padding duplicates) and computes loss and epoch metrics over the fold.
12. With gradient accumulation ``Tez._step`` steps a per-batch scheduler on every micro-batch,
    also those where the optimizer did not step (torch warns "lr_scheduler.step() before
    optimizer.step()"): :meth:`CellTez._step` steps it only when gradients were synchronised,
    so a schedule is counted in optimizer steps.
13. accelerate's prepared loader calls ``sampler.set_epoch(n)`` with ``n`` = how many times
    *this process* has iterated it, so after ``--resume`` epoch 3 would replay epoch 0's order
    and augmentations: :meth:`CellTez._set_training_epoch_start` sets it to tez's
    ``current_epoch`` instead.
14. ``Tez.fit`` sleeps 2 s after an early stop; harmless, left alone. Multi-GPU needs
    ``accelerate launch`` (tez has no launcher of its own).
15. tez's ``Progress`` callback draws one unlabelled bar over all epochs' training steps and a
    second one for validation, re-created every epoch: the nested bars move the cursor
    (``ESC[A``), and in a log file or a pipe every update adds ``\r``-separated bar text.
    :class:`EpochProgress` replaces it (before it draws anything): in a terminal, one bar per
    epoch and phase, labelled ``epoch 2/10 train`` then ``epoch 2/10 valid``, left in place
    with the phase's loss and metrics; when the output is not a terminal, no bar and no control
    characters, but one plain line per phase when it ends (batches, seconds, loss, metrics).
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn

with warnings.catch_warnings():  # defect 1: tez's import-time filterwarnings is discarded on exit
    import tez
    from tez import enums
    from tez.callbacks import Callback, CallbackRunner
    from tez.callbacks import Progress as TezProgress
    from tez.callbacks import EarlyStopping as _TezEarlyStopping
    from tez.model.config import TezConfig
    from tez.utils import AverageMeter

from accelerate import Accelerator
from tqdm import tqdm
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import broadcast, gather

from .errors import InputError
from .fieldio import atomic_path
from .torchfile import load_checkpoint
from .weight_average import WeightAverage

__all__ = [
    "Callback",
    "CellTez",
    "EarlyStopping",
    "EpochProgress",
    "TezConfig",
    "TezModule",
    "load_plain",
    "make_accelerator",
    "save_plain",
]

EpochMetricsFn = Callable[[np.ndarray, np.ndarray, np.ndarray], "tuple[dict[str, float], dict[str, Any]]"]


# --------------------------------------------------------------------------- checkpoints


def save_plain(obj: Any, path: str | Path) -> None:
    """``torch.save`` atomically; ``obj`` must hold only tensors and primitives (weights_only-safe)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_plain(path: str | Path) -> Any:
    """A checkpoint written by :func:`save_plain`, on the CPU, read by :func:`cellloc.torchfile.load_checkpoint`
    (what ``weights_only=True`` allows, with bounded memory); one-line errors naming the file."""
    return load_checkpoint(path)


# --------------------------------------------------------------------------- accelerate


def make_accelerator(device: str = "auto", mixed_precision: str = "no", gradient_accumulation_steps: int = 1) -> Accelerator:
    """An ``Accelerator`` on ``device`` ("auto", "cpu", "cuda") honouring the request (defects 6, 7).

    accelerate keeps one device/precision per process; when a previous run in this process
    chose differently and we are not under ``accelerate launch``, its state is reset first.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise InputError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device cuda requested but torch sees no CUDA device (use --device cpu)")
    if mixed_precision not in ("no", "fp16", "bf16"):
        raise InputError(f"mixed precision must be no, fp16 or bf16, got {mixed_precision!r}")
    # "auto" without CUDA is the CPU too, said so: accelerate sets up several processes (gloo) only when told cpu=True,
    # and otherwise leaves each rank of a launch to train the whole fold alone
    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if PartialState._shared_state:
        state = PartialState()
        on_cpu = state.device.type == "cpu"
        wants_gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        acc = AcceleratorState._shared_state
        differs = (cpu and not on_cpu) or (wants_gpu and on_cpu)
        differs |= bool(acc) and acc.get("_mixed_precision", mixed_precision) != mixed_precision
        if differs:
            if state.num_processes > 1:
                raise InputError(
                    "accelerate is already set up for another device/precision in this process; "
                    "under accelerate launch every run in one process must use the same --device and --amp"
                )
            AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(
        cpu=cpu,
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=gradient_accumulation_steps,
        device_placement=True,
        step_scheduler_with_optimizer=False,
    )


# --------------------------------------------------------------------------- model wrapper


class TezModule(nn.Module):
    """What tez 0.7.2 expects of a model: ``forward(**batch) -> (output, loss, metrics)`` and
    ``optimizer_scheduler()``. Wraps a plain backbone ``net`` so checkpoints hold ``net``'s
    state_dict only (loadable without this class).
    """

    def __init__(
        self,
        net: nn.Module,
        loss_fn: nn.Module,
        optimizer_factory: Callable[[nn.Module], tuple[torch.optim.Optimizer, Any]],
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.net = net
        self.loss_fn = loss_fn
        self.optimizer_factory = optimizer_factory
        self.channels_last = channels_last
        if channels_last:
            self.net.to(memory_format=torch.channels_last)

    def forward(self, image: torch.Tensor, targets: torch.Tensor | None = None, weight: torch.Tensor | None = None,
                index: torch.Tensor | None = None, **_: Any):
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        logits = self.net(image)
        return logits, self.loss(logits, targets, weight, index), {}

    def loss(self, logits: torch.Tensor, targets: torch.Tensor | None, weight: torch.Tensor | None = None,
             index: torch.Tensor | None = None):
        """The loss of ``logits`` against ``targets`` (None without targets), weighted per sample when ``weight`` is given.

        A loss with ``takes_index`` (:class:`cellloc.field_top.FieldTopTargets`) also gets the batch's sample ``index``.
        """
        if targets is None:
            return None
        extra = {"index": index} if index is not None and getattr(self.loss_fn, "takes_index", False) else {}
        if weight is not None:
            extra["weight"] = weight
        return self.loss_fn(logits.float(), targets, **extra)

    def optimizer_scheduler(self) -> tuple[torch.optim.Optimizer, Any]:
        return self.optimizer_factory(self.net)


# --------------------------------------------------------------------------- early stopping


class EarlyStopping(_TezEarlyStopping):
    """tez's EarlyStopping without ``np.Inf`` (defect 2), saving best weights as a plain state_dict,
    remembering the best epoch, and with a state for ``--resume``. ``keep_last``: every epoch is
    saved as the best and training never stops early (the monitored value is still recorded).
    """

    def __init__(self, monitor: str, model_path: str | Path, patience: int = 5, mode: str = "min", delta: float = 0.001,
                 keep_last: bool = False):
        # Not super().__init__(): it evaluates np.Inf. Same attributes, same meaning.
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be min or max, got {mode!r}")
        self.monitor = monitor
        self.patience = patience
        self.counter = 0
        self.mode = mode
        self.best_score = None
        self.early_stop = False
        self.delta = delta
        self.save_weights_only = True
        self.model_path = str(model_path)
        self.history: list[str] = []
        self.val_score = np.inf if mode == "min" else -np.inf
        self.best_epoch: int | None = None
        self.keep_last = keep_last
        if monitor.startswith("train_"):
            self.model_state, self.monitor_value = "train", monitor[len("train_") :]
        elif monitor.startswith("valid_"):
            self.model_state, self.monitor_value = "valid", monitor[len("valid_") :]
        else:
            raise ValueError("monitor must start with train_ or valid_")

    def check(self, tez_trainer) -> None:
        if not self.keep_last:
            super().check(tez_trainer)
            return
        score = float(tez_trainer.metrics[self.model_state][self.monitor_value])
        self.best_score = -score if self.mode == "min" else score
        self.save_checkpoint(score, tez_trainer)

    def save_checkpoint(self, epoch_score, tez_trainer) -> None:
        self.best_epoch = int(tez_trainer.current_epoch)
        super().save_checkpoint(epoch_score, tez_trainer)

    def state_dict(self) -> dict[str, Any]:
        return {
            "counter": int(self.counter),
            "best_score": None if self.best_score is None else float(self.best_score),
            "val_score": float(self.val_score),
            "best_epoch": self.best_epoch,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.counter = int(state["counter"])
        self.best_score = state["best_score"]
        self.val_score = float(state["val_score"])
        self.best_epoch = state["best_epoch"]


# --------------------------------------------------------------------------- progress (defect 15)


class EpochProgress(Callback):
    """One labelled progress display per epoch and phase (train, then validation).

    ``bars``: draw tqdm bars (default: only when ``stream`` is a terminal). Without bars each
    phase prints one line when it ends, e.g.
    ``epoch 2/10 valid: 8 batches in 1.3 s, loss=0.2104, map=0.4312``.
    """

    def __init__(self, stream: TextIO | None = None, bars: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.bars = bool(isatty and isatty()) if bars is None else bars
        self._bar: tqdm | None = None
        self._total = 0
        self._label = ""
        self._t0 = 0.0
        self._steps = 0

    @staticmethod
    def _metrics_text(metrics: Mapping[str, Any]) -> str:
        return ", ".join(f"{k}={float(v):.4f}" for k, v in metrics.items() if k not in ("epoch", "steps"))

    def _start(self, trainer: tez.Tez, phase: str, loader) -> None:
        total = self._total or int(trainer.config.epochs)
        self._label = f"epoch {int(trainer.current_epoch) + 1}/{total} {phase}"
        self._t0, self._steps = time.perf_counter(), 0
        if self.bars:
            self._bar = tqdm(total=len(loader), desc=self._label, file=self.stream, leave=True, dynamic_ncols=True)

    def _step(self, metrics: Mapping[str, Any]) -> None:
        self._steps += 1
        if self._bar is not None:
            self._bar.set_postfix_str(self._metrics_text(metrics), refresh=False)
            self._bar.update(1)

    def _end(self, metrics: Mapping[str, Any]) -> None:
        text = self._metrics_text(metrics)
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)
            self._bar.close()
            self._bar = None
        else:
            seconds = time.perf_counter() - self._t0
            print(f"{self._label}: {self._steps} batches in {seconds:.1f} s" + (f", {text}" if text else ""), file=self.stream, flush=True)

    def on_train_start(self, tez_trainer, **kwargs) -> None:
        # A resumed run starts at a later epoch and runs only the epochs left.
        self._total = int(tez_trainer.current_epoch) + int(tez_trainer.config.epochs)

    def on_train_epoch_start(self, tez_trainer, **kwargs) -> None:
        self._start(tez_trainer, "train", tez_trainer.train_loader)

    def on_train_step_end(self, tez_trainer, **kwargs) -> None:
        self._step(tez_trainer.metrics["train"])

    def on_train_epoch_end(self, tez_trainer, **kwargs) -> None:
        self._end(tez_trainer.metrics["train"])

    def on_valid_epoch_start(self, tez_trainer, **kwargs) -> None:
        self._start(tez_trainer, "valid", tez_trainer.valid_loader)

    def on_valid_step_end(self, tez_trainer, **kwargs) -> None:
        self._step(tez_trainer.metrics["valid"])

    def on_valid_epoch_end(self, tez_trainer, **kwargs) -> None:
        self._end(tez_trainer.metrics["valid"])

    def on_train_end(self, tez_trainer, **kwargs) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# --------------------------------------------------------------------------- the trainer


class CellTez(tez.Tez):
    """``tez.Tez`` with the defects above handled. Use like Tez: ``CellTez(module).fit(...)``.

    ``epoch_metrics(logits, targets, index)`` is called once per validation epoch with every
    validation sample (numpy arrays, ``index`` = the dataset's ``"index"`` values) and returns
    ``(shown, extra)``: ``shown`` joins tez's metrics (printed, usable by EarlyStopping as
    ``valid_<name>``), ``extra`` is kept in :attr:`valid_extra` (e.g. per-class APs).
    ``resume_state`` holds ``optimizer``/``scheduler``/``scaler`` state_dicts to restore
    once tez has built them. ``progress`` replaces tez's progress bars (defect 15; default:
    :class:`EpochProgress` on stderr). ``average_decay`` > 0 keeps an exponential moving average of
    the backbone's weights (:class:`~cellloc.weight_average.WeightAverage`): every rank validates
    and saves the average (``best.pt``), trains the live weights, and ``last.pt`` holds both.
    """

    def __init__(
        self,
        model: TezModule,
        device: str = "auto",
        mixed_precision: str = "no",
        epoch_metrics: EpochMetricsFn | None = None,
        resume_state: Mapping[str, Any] | None = None,
        progress: Callback | None = None,
        average_decay: float = 0.0,
    ) -> None:
        super().__init__(model=model)
        self.average_decay = average_decay
        self.average: WeightAverage | None = None
        self.metrics = {"train": {}, "valid": {}, "test": {}}  # defect 4: per instance
        self._callback_runner = None
        self.device_request = device
        self.mixed_precision = mixed_precision
        self.epoch_metrics = epoch_metrics
        self.valid_extra: dict[str, Any] = {}
        self._valid_buffer: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._resume_state = resume_state
        self.progress = progress
        self._initialising = False

    # -- setup ------------------------------------------------------------------------------

    def _init_driver(self) -> None:
        self._driver = make_accelerator(self.device_request, self.mixed_precision, self.config.gradient_accumulation_steps)
        self.config.device = self._driver.device

    def _init_trainer(self, train_dataset, valid_dataset, config, **kwargs) -> None:
        self._initialising = True  # defect 15: no callback runs (tez's bars draw) until they are replaced
        try:
            super()._init_trainer(train_dataset, valid_dataset, config, **kwargs)
        finally:
            self._initialising = False
        self._progress = self.progress if self.progress is not None else EpochProgress()
        self.callbacks = [self._progress] + [cb for cb in self.callbacks if not isinstance(cb, TezProgress)]
        self._callback_runner = CallbackRunner(self.callbacks, self)
        if self._resume_state:
            self.optimizer.load_state_dict(self._resume_state["optimizer"])
            if self.scheduler is not None and self._resume_state.get("scheduler") is not None:
                self.scheduler.load_state_dict(self._resume_state["scheduler"])
            if self._driver.scaler is not None and self._resume_state.get("scaler"):
                self._driver.scaler.load_state_dict(self._resume_state["scaler"])
        if self.average_decay > 0:
            self.average = WeightAverage(self._net(), self.average_decay)
            if self._resume_state and self._resume_state.get("average"):
                self.average.load_state_dict(self._resume_state["average"])
        self.train_state = enums.TrainingState.TRAIN_START  # what tez's own _init_trainer ends with

    def is_main_process(self) -> bool:
        """True on the rank that writes files (always, outside ``accelerate launch``)."""
        return self._driver is None or self._driver.is_main_process

    def wait_for_everyone(self) -> None:
        if self._driver is not None:
            self._driver.wait_for_everyone()

    def unwrapped(self) -> nn.Module:
        return self._driver.unwrap_model(self.model) if self._driver is not None else self.model

    def _net(self) -> nn.Module:
        module = self.unwrapped()
        return getattr(module, "net", module)

    def net_state_dict(self) -> dict[str, torch.Tensor]:
        """The backbone's state_dict (without the TezModule wrapper or DDP), on CPU: during a validation
        with a weight average, the average's (what ``best.pt`` keeps)."""
        return {k: v.detach().cpu() for k, v in self._net().state_dict().items()}

    def fit(self, train_dataset, valid_dataset=None, config: TezConfig | None = None, **kwargs):
        try:
            return super().fit(train_dataset, valid_dataset, config, **kwargs)
        finally:
            if self.average is not None:
                self.average.restore(self._net())

    # -- callbacks and the multi-GPU stop flag (defect 9) -----------------------------------

    @property
    def train_state(self):
        return self._train_state

    @train_state.setter
    def train_state(self, value) -> None:
        self._train_state = value
        if self._callback_runner is not None and not self._initialising and self._driver.is_local_main_process:
            self._callback_runner(value)
        if value == enums.TrainingState.EPOCH_END and self.num_processes > 1:
            for callback in self.callbacks:  # every rank, the same order: each may call a collective
                sync = getattr(callback, "sync_ranks", None)
                if callable(sync):
                    sync(self)
            stop = torch.tensor([int(self._model_state == enums.ModelState.END)], device=self._driver.device)
            if int(broadcast(stop, from_process=0).item()):
                self._model_state = enums.ModelState.END

    @property
    def num_processes(self) -> int:
        """How many ranks train (1 outside ``accelerate launch``)."""
        return 1 if self._driver is None else int(self._driver.num_processes)

    def from_main(self, array: np.ndarray) -> np.ndarray:
        """Rank 0's ``array`` on every rank (each passes one of the same shape and dtype); as it is on one process."""
        if self.num_processes == 1:
            return array
        return broadcast(torch.from_numpy(np.ascontiguousarray(array)).to(self._driver.device),
                         from_process=0).cpu().numpy()

    def gathered(self, value: float) -> list[float]:
        """Each rank's ``value``, in rank order, on every rank (``[value]`` on one process)."""
        if self.num_processes == 1:
            return [float(value)]
        mine = torch.tensor([float(value)], dtype=torch.float64, device=self._driver.device)
        return [float(v) for v in gather(mine).cpu().tolist()]

    # -- steps ------------------------------------------------------------------------------

    def model_fn(self, data):
        if not isinstance(data, Mapping):  # defect 10
            raise TypeError(
                f"tez calls model(**batch): the Dataset must return a dict (e.g. image/targets), got {type(data).__name__}"
            )
        return super().model_fn(data)

    def train_step(self, data):
        loss, metrics = super().train_step(data)
        return loss / self.config.gradient_accumulation_steps, metrics  # defect 5

    def _clip_grad_norm(self) -> None:  # defect 8
        clip = self.config.clip_grad_norm
        if clip is not None and clip > 0 and self._driver.sync_gradients:
            self._driver.clip_grad_norm_(self.model.parameters(), clip)

    def _step(self) -> None:  # defect 12
        self.optimizer.step()  # accelerate skips it on accumulation micro-batches
        if self.average is not None and self._driver.sync_gradients:
            self.average.update(self._net())
        if self.scheduler is None or self.config.step_scheduler_after != "batch" or not self._driver.sync_gradients:
            return
        if self.config.step_scheduler_metric is None:
            self.scheduler.step()
        else:
            self.scheduler.step(self.name_to_metric(self.config.step_scheduler_metric))

    def _set_training_epoch_start(self, data_loader) -> None:  # defect 13
        if self.average is not None:
            self.average.restore(self._net())  # train the live weights
        if hasattr(data_loader, "set_epoch"):
            data_loader.set_epoch(int(self.current_epoch))
        super()._set_training_epoch_start(data_loader)

    def _set_validation_epoch_start(self, data_loader) -> None:
        self._valid_buffer = []
        if self.average is not None:
            self.average.swap_in(self._net())  # before the callbacks: BatchNorm is recalibrated for the average
        super()._set_validation_epoch_start(data_loader)

    def predict_step(self, data):
        output, loss, metrics = self.model_fn(data)
        index = data.get("index")
        if index is None:
            index = torch.full((len(output),), -1, dtype=torch.long, device=output.device)
        logits, targets, index = self._driver.gather_for_metrics((output.detach().float(), data["targets"], index))
        self._valid_buffer.append((logits.cpu(), targets.cpu().float(), index.cpu()))
        return loss, metrics

    def _set_validation_epoch_end(self, losses, monitor) -> None:  # defect 11
        logits = torch.cat([b[0] for b in self._valid_buffer])
        targets = torch.cat([b[1] for b in self._valid_buffer])
        index = torch.cat([b[2] for b in self._valid_buffer])
        self._valid_buffer = []
        exact = AverageMeter()
        with torch.no_grad():
            exact.update(float(self.unwrapped().loss_fn(logits, targets)), len(logits))
        monitor = dict(monitor)
        if self.epoch_metrics is not None:
            shown, self.valid_extra = self.epoch_metrics(logits.numpy(), targets.numpy(), index.numpy())
            monitor.update(shown)
        super()._set_validation_epoch_end(exact, monitor)

    # -- checkpoints (defect 3) -------------------------------------------------------------

    def training_state(self) -> dict[str, Any]:
        """Everything to continue training: the live net weights (and an image head's), optimizer, scheduler,
        AMP scaler, the weight average when there is one, and a loss's own state (``--field-top``'s remembered
        scores) when it has one."""
        head = getattr(self.unwrapped(), "image_head", None)
        loss_state = getattr(self.unwrapped(), "loss_fn", nn.Identity()).state_dict()
        live = self.average.live_state_dict(self._net()) if self.average is not None else self.net_state_dict()
        return {
            "model": live,
            "average": self.average.state_dict() if self.average is not None else None,
            "heads": {k: v.detach().cpu() for k, v in head.state_dict().items()} if head is not None else None,
            "loss": dict(loss_state) or None,  # e.g. --field-top's remembered scores (already on the CPU)
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self._driver.scaler.state_dict() if self._driver.scaler is not None else None,
        }

    def save(self, model_path, weights_only: bool = False) -> None:
        """Plain state_dict (``weights_only``) or :meth:`training_state`; loadable with weights_only=True."""
        if self._driver is not None and not self._driver.is_main_process:
            return
        save_plain(self.net_state_dict() if weights_only else self.training_state(), model_path)

    def load(self, model_path, weights_only: bool = False, config: TezConfig | None = None) -> None:
        """Load a file written by :meth:`save` into the backbone (and the optimizer, when built)."""
        obj = load_plain(model_path)
        sd = obj if weights_only or "model" not in obj else obj["model"]
        module = self.unwrapped()
        getattr(module, "net", module).load_state_dict(sd)
        head = getattr(module, "image_head", None)
        if not weights_only and head is not None and obj.get("heads"):
            head.load_state_dict(obj["heads"])
        if not weights_only and self.optimizer is not None and obj.get("optimizer") is not None:
            self.optimizer.load_state_dict(obj["optimizer"])
