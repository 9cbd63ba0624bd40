"""engine.py: each tez 0.7.2 defect, shown on a tiny model, and its workaround.

Tests named ``test_tripwire_*`` assert that the defect is still present in the installed
tez/accelerate; if one fails, upstream changed and the matching workaround can be revisited.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cellloc.engine import (
    Callback,
    CellTez,
    EarlyStopping,
    EpochProgress,
    TezConfig,
    TezModule,
    load_plain,
    make_accelerator,
)
from cellloc.errors import InputError


class Toy(Dataset):
    """8x8 4-channel inputs whose 3 targets depend on the first channel's mean."""

    def __init__(self, n: int, seed: int = 0, as_tuple: bool = False) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, 8, 8, generator=g)
        m = self.x[:, 0].mean((1, 2))
        self.y = torch.stack([m > 0, m < 0, m > 0.1], 1).float()
        self.as_tuple = as_tuple

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        if self.as_tuple:
            return self.x[i], self.y[i]
        return {"image": self.x[i], "targets": self.y[i], "index": torch.tensor(i)}


def toy_module(lr: float = 0.1, seed: int = 0) -> TezModule:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(256, 3))

    def factory(n: nn.Module):
        opt = torch.optim.SGD(n.parameters(), lr=lr)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)

    return TezModule(net, nn.BCEWithLogitsLoss(), factory)


def fit(trainer: CellTez, train: Dataset, valid: Dataset, epochs: int = 1, bs: int = 4, accum: int = 1, callbacks=(),
        clip: float = -1):
    cfg = TezConfig(device="cpu", training_batch_size=bs, validation_batch_size=bs, epochs=epochs,
                    gradient_accumulation_steps=accum, step_scheduler_after="batch", num_jobs=0, pin_memory=False,
                    clip_grad_norm=clip)
    trainer.fit(train, valid, config=cfg, train_loader=DataLoader(train, batch_size=bs),
                valid_loader=DataLoader(valid, batch_size=bs), callbacks=list(callbacks))
    return trainer


# --------------------------------------------------------------------------- 1. warnings


SRC = Path(__file__).resolve().parents[1] / "src"


def _stderr_of(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stderr


def test_importing_the_engine_keeps_user_warnings_visible():
    err = _stderr_of("import cellloc.engine, warnings; warnings.warn('still-visible', UserWarning)")
    assert "still-visible" in err


def test_tripwire_importing_tez_silences_user_warnings():
    err = _stderr_of("import tez, warnings; warnings.warn('swallowed', UserWarning)")
    assert "swallowed" not in err


# --------------------------------------------------------------------------- 2. np.Inf


def test_early_stopping_works_on_numpy_2_and_stops(tmp_path):
    assert not hasattr(np, "Inf")
    calls = iter([0.5, 0.4, 0.4, 0.4, 0.4, 0.4])
    trainer = CellTez(toy_module(), device="cpu", epoch_metrics=lambda l, t, i: ({"score": next(calls)}, {}))
    early = EarlyStopping("valid_score", tmp_path / "best.pt", patience=2, mode="max")
    fit(trainer, Toy(16), Toy(8, 1), epochs=6, callbacks=[early])
    assert trainer.current_epoch == 2  # best at epoch 0, two epochs without improvement, stop
    assert early.best_epoch == 0
    sd = torch.load(tmp_path / "best.pt", weights_only=True)
    assert set(sd) == {"1.weight", "1.bias"}  # a plain state_dict of the backbone


def test_tripwire_tez_early_stopping_needs_np_inf(tmp_path):
    from tez.callbacks import EarlyStopping as TezEarlyStopping

    with pytest.raises(AttributeError, match="Inf"):
        TezEarlyStopping("valid_loss", str(tmp_path / "x.pt"))


# --------------------------------------------------------------------------- 3. checkpoints


def test_checkpoints_load_with_weights_only(tmp_path):
    trainer = fit(CellTez(toy_module(), device="cpu"), Toy(16), Toy(8, 1))
    trainer.save(tmp_path / "full.pt")
    trainer.save(tmp_path / "weights.pt", weights_only=True)
    full = torch.load(tmp_path / "full.pt", weights_only=True)
    assert set(full) == {"model", "average", "heads", "loss", "optimizer", "scheduler", "scaler"}
    assert full["scheduler"]["last_epoch"] == 4 and full["heads"] is None  # no image head on this module
    assert full["average"] is None and full["loss"] is None  # no weight average, a loss without state
    other = CellTez(toy_module(seed=1), device="cpu")
    other.load(tmp_path / "weights.pt", weights_only=True)
    torch.testing.assert_close(other.net_state_dict(), trainer.net_state_dict())


def test_tripwire_tez_full_checkpoint_fails_under_weights_only(tmp_path):
    import tez

    raw = tez.Tez(model=toy_module())
    raw.config = TezConfig(device="cpu")
    raw._driver = make_accelerator("cpu")
    raw.save(str(tmp_path / "tez.pt"))
    with pytest.raises(Exception, match="TezConfig|weights_only|Unsupported global"):
        torch.load(tmp_path / "tez.pt", weights_only=True)
    with pytest.raises(InputError, match="cannot load checkpoint"):
        load_plain(tmp_path / "tez.pt")


# --------------------------------------------------------------------------- 4. shared metrics


def test_two_trainers_do_not_share_metrics():
    seen = []

    class Peek(Callback):
        def on_train_start(self, tez_trainer, **kwargs):
            seen.append({k: dict(v) for k, v in tez_trainer.metrics.items()})

    a = fit(CellTez(toy_module(), device="cpu"), Toy(16), Toy(8, 1), callbacks=[Peek()])
    b = fit(CellTez(toy_module(), device="cpu"), Toy(12, 2), Toy(8, 3), callbacks=[Peek()])
    assert seen[1] == {"train": {}, "valid": {}, "test": {}}  # the second starts clean
    assert a.metrics is not b.metrics
    assert a.metrics["valid"]["loss"] != b.metrics["valid"]["loss"]


def test_tripwire_tez_metrics_is_one_class_level_dict():
    import tez

    assert tez.Tez(model=toy_module()).metrics is tez.Tez(model=toy_module()).metrics


# --------------------------------------------------------------------------- 5. accumulation


def test_logged_loss_is_not_multiplied_by_accumulation_steps():
    # lr=0: weights never change, so the true per-batch losses are the same with and without
    # accumulation; tez's own arithmetic would log twice the value at 2 steps.
    train, valid = Toy(16), Toy(8, 1)
    one = fit(CellTez(toy_module(lr=0.0), device="cpu"), train, valid, accum=1)
    two = fit(CellTez(toy_module(lr=0.0), device="cpu"), train, valid, accum=2)
    module = toy_module(lr=0.0)
    with torch.no_grad():
        expected = np.mean([float(module(**b)[1]) for b in DataLoader(train, batch_size=4)])
    assert one.metrics["train"]["loss"] == pytest.approx(expected, rel=1e-5)
    assert two.metrics["train"]["loss"] == pytest.approx(expected, rel=1e-5)


def test_tripwire_tez_doubles_the_logged_loss_with_two_accumulation_steps():
    import tez

    train, valid = Toy(16), Toy(8, 1)
    cfg = TezConfig(device="cpu", training_batch_size=4, validation_batch_size=4, epochs=1,
                    gradient_accumulation_steps=2, num_jobs=0, pin_memory=False)
    raw = tez.Tez(model=toy_module(lr=0.0))
    raw.fit(train, valid, config=cfg, train_loader=DataLoader(train, batch_size=4),
            valid_loader=DataLoader(valid, batch_size=4))
    module = toy_module(lr=0.0)
    with torch.no_grad():
        expected = np.mean([float(module(**b)[1]) for b in DataLoader(train, batch_size=4)])
    assert raw.metrics["train"]["loss"] == pytest.approx(2 * expected, rel=1e-5)
    make_accelerator("cpu", "no")  # leave the process state as the other tests expect


def test_scheduler_counts_optimizer_steps_under_accumulation():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # torch warns when the scheduler runs ahead
        trainer = fit(CellTez(toy_module(), device="cpu"), Toy(16), Toy(8, 1), accum=2)
    assert trainer.scheduler.state_dict()["last_epoch"] == 2  # 4 batches / 2


# --------------------------------------------------------------------------- 8. clipping


def test_gradient_clipping_goes_through_the_accelerator():
    # SGD with lr 1: each of the 4 steps moves the weights by exactly the (clipped) gradient
    start = toy_module(lr=1.0).net.state_dict()
    clipped = fit(CellTez(toy_module(lr=1.0), device="cpu"), Toy(16), Toy(8, 1), clip=1e-3)
    free = fit(CellTez(toy_module(lr=1.0), device="cpu"), Toy(16), Toy(8, 1))

    def moved(t: CellTez) -> float:
        return float(sum(((t.net_state_dict()[k] - start[k]) ** 2).sum() for k in start) ** 0.5)

    assert moved(clipped) <= 4 * 1e-3 + 1e-6
    assert moved(free) > 100 * moved(clipped)


# --------------------------------------------------------------------------- 6, 7. accelerate


def test_accelerator_follows_each_request_in_one_process():
    a = make_accelerator("cpu", "no")
    assert a.mixed_precision == "no" and a.device.type == "cpu"
    b = make_accelerator("cpu", "bf16")
    assert b.mixed_precision == "bf16" and b.device.type == "cpu"
    c = make_accelerator("cpu", "no")
    assert c.mixed_precision == "no"


def test_tripwire_accelerate_state_is_fixed_per_process():
    from accelerate import Accelerator

    make_accelerator("cpu", "no")
    with pytest.raises(ValueError, match="already been initialized"):
        Accelerator(cpu=True, mixed_precision="bf16")
    make_accelerator("cpu", "no")


def test_accelerator_bad_requests_are_one_line_errors():
    with pytest.raises(InputError, match="device must be auto, cpu or cuda"):
        make_accelerator("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            make_accelerator("cuda")


# --------------------------------------------------------------------------- 13. sampler epoch


def test_sampler_epoch_follows_tez_epoch_after_resume():
    from cellloc.data import EpochSampler

    class Keyed(Toy):
        def __getitem__(self, key):
            i, _seed = key if isinstance(key, tuple) else (key, None)
            return super().__getitem__(i)

    train = Keyed(12)
    seen = []

    class Record(Callback):
        def on_train_step_start(self, tez_trainer, **kwargs):
            seen.append(tez_trainer.current_epoch)

    module = toy_module()
    order = []
    module.net.register_forward_pre_hook(lambda m, inp: order.append(inp[0][:, 0, 0, 0].clone()) if m.training else None)
    trainer = CellTez(module, device="cpu")
    trainer.current_epoch = 3  # as train_fold does on --resume
    sampler = EpochSampler(len(train), seed=1)
    cfg = TezConfig(device="cpu", training_batch_size=4, validation_batch_size=4, epochs=1, num_jobs=0, pin_memory=False)
    trainer.fit(train, Toy(4, 1), config=cfg, train_loader=DataLoader(train, batch_size=4, sampler=sampler),
                valid_loader=DataLoader(Toy(4, 1), batch_size=4), callbacks=[Record()])
    assert sampler.epoch == 3
    ref = EpochSampler(len(train), seed=1)
    ref.set_epoch(3)
    first = [i for i, _ in ref][:4]
    torch.testing.assert_close(order[0], train.x[first, 0, 0, 0])
    assert seen == [3, 3, 3]


# --------------------------------------------------------------------------- 10, 11. batches, validation


def test_non_dict_batches_get_a_clear_error():
    with pytest.raises(TypeError, match="Dataset must return a dict"):
        fit(CellTez(toy_module(), device="cpu"), Toy(8, as_tuple=True), Toy(4, 1, as_tuple=True))


def test_validation_loss_and_metrics_cover_the_whole_fold_exactly():
    valid = Toy(10, 1)  # batches of 4, 4, 2: tez would weight the last batch as 4 samples
    got = {}

    def metrics(logits, targets, index):
        got.update(logits=logits, targets=targets, index=index)
        return {"n": float(len(index))}, {"ok": True}

    trainer = fit(CellTez(toy_module(), device="cpu", epoch_metrics=metrics), Toy(16), valid)
    assert sorted(got["index"].tolist()) == list(range(10))
    module = trainer.unwrapped()
    with torch.no_grad():
        logits = module.net(valid.x)
        exact = float(nn.functional.binary_cross_entropy_with_logits(logits, valid.y))
    np.testing.assert_allclose(got["logits"], logits.numpy(), rtol=1e-5, atol=1e-6)
    assert trainer.metrics["valid"]["loss"] == pytest.approx(exact, rel=1e-5)
    assert trainer.metrics["valid"]["n"] == 10.0 and trainer.valid_extra == {"ok": True}


@pytest.mark.parametrize("content", [b"garbage, not a checkpoint", b"PK\x03\x04 a broken zip", b""])
def test_garbage_checkpoint_error_gives_no_unsafe_advice(tmp_path, content):
    # torch.load's own message advises retrying with weights_only=False (running the file's code).
    path = tmp_path / "last.pt"
    path.write_bytes(content)
    with pytest.raises(InputError) as err:
        load_plain(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: cannot load checkpoint (") and "\n" not in msg
    assert "weights_only" not in msg and "trust" not in msg


# --------------------------------------------------------------------------- 15. progress


PROGRESS_RUN = """
import sys
sys.path.insert(0, {tests!r})
from test_engine import CellTez, Toy, fit, toy_module
fit(CellTez(toy_module(), device="cpu"), Toy(16), Toy(8, 1), epochs=2)
"""


def _raw_stderr_of(code: str) -> str:
    """stderr of ``code`` with every byte kept (text mode would turn carriage returns into newlines)."""
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, env=env).stderr.decode()


def test_progress_in_a_pipe_is_plain_lines_per_epoch_and_phase():
    err = _raw_stderr_of(PROGRESS_RUN.format(tests=str(Path(__file__).parent)))
    assert "\r" not in err and "\x1b" not in err
    lines = [x for x in err.splitlines() if x.startswith("epoch ")]
    assert [x.split(":")[0] for x in lines] == ["epoch 1/2 train", "epoch 1/2 valid", "epoch 2/2 train", "epoch 2/2 valid"]
    assert lines[0].startswith("epoch 1/2 train: 4 batches in ") and ", loss=" in lines[0]
    assert lines[1].startswith("epoch 1/2 valid: 2 batches in ") and ", loss=" in lines[1]


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_in_a_terminal_is_one_labelled_bar_per_epoch_and_phase():
    screen = FakeTerminal()
    fit(CellTez(toy_module(), device="cpu", progress=EpochProgress(screen)), Toy(16), Toy(8, 1), epochs=2)
    text = screen.getvalue()
    assert "\x1b[A" not in text  # no cursor movement: one bar at a time
    finished = [line.split("\r")[-1] for line in text.split("\n") if line.strip()]
    assert [x.split(":")[0] for x in finished] == ["epoch 1/2 train", "epoch 1/2 valid", "epoch 2/2 train", "epoch 2/2 valid"]
    assert all("100%" in x and "loss=" in x for x in finished)
    assert "4/4" in finished[0] and "2/2" in finished[1]


def test_progress_of_a_resumed_run_counts_all_epochs():
    screen = io.StringIO()
    trainer = CellTez(toy_module(), device="cpu", progress=EpochProgress(screen))
    trainer.current_epoch = 3  # as training.py sets it from last.pt
    fit(trainer, Toy(16), Toy(8, 1), epochs=2)  # the 2 epochs left of 5
    labels = [line.split(":")[0] for line in screen.getvalue().splitlines()]
    assert labels == ["epoch 4/5 train", "epoch 4/5 valid", "epoch 5/5 train", "epoch 5/5 valid"]


def test_tripwire_tez_progress_writes_bar_updates_into_a_pipe():
    code = PROGRESS_RUN.format(tests=str(Path(__file__).parent)).replace(
        'fit(CellTez(toy_module(), device="cpu")', "import tez\nfit(tez.Tez(model=toy_module())"
    )
    err = _raw_stderr_of(code)
    assert "\r" in err and "\x1b[A" in err  # tez's nested bars: carriage returns and cursor-up codes


# --------------------------------------------------------------------------- weight average (not a tez defect)


def test_the_weight_average_moves_once_per_optimizer_step_and_training_ends_on_the_live_weights():
    seen: list[bool] = []

    class Peek(Callback):
        def on_valid_epoch_start(self, tez_trainer, **kwargs):
            seen.append(tez_trainer.average.swapped)

    trainer = fit(CellTez(toy_module(), device="cpu", average_decay=0.5), Toy(16), Toy(8, 1), epochs=2, accum=2,
                  callbacks=[Peek()])
    assert trainer.average.updates == 2 * 2  # 4 batches of 4 per epoch, 2 per optimizer step
    assert seen == [True, True]  # validations see the average
    assert not trainer.average.swapped
    live = trainer.net_state_dict()
    assert not torch.allclose(live["1.weight"], trainer.average.averaged()[0])
    torch.testing.assert_close(trainer.training_state()["model"]["1.weight"], live["1.weight"])
