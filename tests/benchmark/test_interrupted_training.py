"""Ctrl-C / SIGTERM during a generative model's training keeps the steps done: train_loop checkpoints the step it
reached before the interruption propagates, notes it for the CLI, and the next call resumes there."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from benchmark.core import interrupts
from benchmark.training.loop import Checkpoints, step_generator, train_loop
from tests.conftest import ROOT


class _Tiny:
    """A real (small) model trained with Adam on per-step random batches: what train_loop drives."""

    def __init__(self):
        torch.manual_seed(0)
        self.net = torch.nn.Linear(4, 1)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=0.05)
        self.steps_run: list[int] = []

    def step(self, step: int) -> dict[str, float]:
        self.steps_run.append(step)
        g = step_generator(7, step)
        x = torch.randn(8, 4, generator=g)
        loss = ((self.net(x).squeeze(1) - x.sum(1)) ** 2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss": loss.item(), "images": 8}

    def state(self) -> dict:
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict()}

    def load(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])


def _train(model: _Tiny, ckpts: Checkpoints, total: int = 12) -> int:
    return train_loop(checkpoints=ckpts, total_steps=total, step_fn=model.step, get_state=model.state,
                      set_state=model.load, checkpoint_every=100, desc="tiny", progress=False)


def test_an_interrupted_training_checkpoints_its_step_and_resumes_from_it(tmp_path):
    full = _Tiny()
    _train(full, Checkpoints(tmp_path / "full"))

    interrupted, ckpts = _Tiny(), Checkpoints(tmp_path / "run")
    real_step = interrupted.step

    def ctrl_c_at_step_5(step: int):
        if step == 5:
            raise KeyboardInterrupt  # as Ctrl-C does, before step 5 changed anything
        return real_step(step)

    interrupted.step = ctrl_c_at_step_5
    before = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        _train(interrupted, ckpts)
    # the steps done are kept although checkpoint_every (100) never came, and the CLI can say so
    assert ckpts.latest()[0] == 5 and ckpts.latest()[1].name == "ckpt-00000005.pt"
    kept = interrupts.kept_since(before)
    assert [(k.what, k.step, k.total, k.where) for k in kept] == [("tiny", 5, 12, str(ckpts.latest()[1]))]
    # a second call resumes there and ends where an uninterrupted training ends
    resumed = _Tiny()
    assert _train(resumed, ckpts) == 12
    assert resumed.steps_run == list(range(5, 12))
    for name, value in full.net.state_dict().items():
        torch.testing.assert_close(resumed.net.state_dict()[name], value, rtol=0, atol=0)


def test_an_interrupt_before_the_first_step_keeps_nothing(tmp_path):
    model, ckpts = _Tiny(), Checkpoints(tmp_path / "run")

    def ctrl_c(step: int):
        raise KeyboardInterrupt

    model.step = ctrl_c
    before = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        _train(model, ckpts)
    assert ckpts.latest() is None and interrupts.kept_since(before) == []


_SIGTERM_MID_STEP = """
import os, signal, sys, torch
sys.path.insert(0, sys.argv[2])
from benchmark.core import interrupts
from benchmark.training.loop import Checkpoints
from tests.benchmark.test_interrupted_training import _Tiny, _train

interrupts.install()
model = _Tiny()
real_step = model.step

def step(i):
    if i == 7:
        os.kill(os.getpid(), signal.SIGTERM)  # arrives in the middle of step 7
    return real_step(i)

model.step = step
try:
    _train(model, Checkpoints(sys.argv[1]))
except KeyboardInterrupt:
    print("stopped after", model.steps_run[-1])
"""


def test_sigterm_in_the_middle_of_a_step_lets_it_finish_and_checkpoints_after_it(tmp_path):
    """With the CLI's handlers a signal is held until the step ends, so the checkpoint holds whole steps."""
    script = tmp_path / "train.py"
    script.write_text(_SIGTERM_MID_STEP)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "ckpt"), str(ROOT)], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "stopped after 7" in proc.stdout  # step 7 finished; step 8 never started
    assert "tiny: interrupted; kept step 8 of 12" in proc.stderr
    ckpts = Checkpoints(tmp_path / "ckpt")
    assert ckpts.latest()[0] == 8
    uninterrupted = _Tiny()
    _train(uninterrupted, Checkpoints(tmp_path / "ref"), total=8)
    state = ckpts.load(ckpts.latest()[1])
    for name, value in uninterrupted.net.state_dict().items():
        torch.testing.assert_close(state["net"][name], value, rtol=0, atol=0)


_KILLED_WHILE_CHECKPOINTING = """
import logging, os, signal, sys, torch
sys.path.insert(0, sys.argv[2])
from benchmark.training.loop import Checkpoints, train_loop
logging.basicConfig(level=logging.INFO)
from tests.benchmark.test_interrupted_training import _Tiny

model, ckpts = _Tiny(), Checkpoints(sys.argv[1])
real_save = torch.save

def save(obj, f, *args, **kwargs):
    real_save(obj, f, *args, **kwargs)
    if sys.argv[3] == "kill" and obj["step"] == 6:
        # the checkpoint of step 6 is half on disk when the process dies
        from benchmark.core import cache
        fd, tmp = cache._mkstemp(ckpts.folder / "ckpt-00000006.pt")
        os.write(fd, f.getvalue()[: len(f.getvalue()) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    if sys.argv[3] == "full" and obj["step"] == 6:
        import resource
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, resource.RLIM_INFINITY))

torch.save = save
try:
    train_loop(checkpoints=ckpts, total_steps=12, step_fn=model.step, get_state=model.state, set_state=model.load,
               checkpoint_every=3, desc="tiny", progress=False)
except OSError as exc:
    print("OSError", exc.errno, exc.filename)
    sys.exit(1)
torch.save(model.state(), os.path.join(sys.argv[1], "..", "final-" + sys.argv[3] + ".pt"))
"""


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".unreadable")))


@pytest.mark.parametrize("failure", ["kill", "full"])
def test_a_training_killed_or_out_of_space_while_checkpointing_resumes_from_the_checkpoint_before(tmp_path, failure):
    """SIGKILL with a checkpoint half-written, or a write that fails (a real kernel write error: the file-size limit,
    EFBIG, standing in for a full disk): the previous checkpoint is intact, the next attempt removes the partial file
    and resumes from it, and ends where an uninterrupted training ends."""
    import errno

    script = tmp_path / "train.py"
    script.write_text(_KILLED_WHILE_CHECKPOINTING)
    folder = tmp_path / "ckpt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(script), str(folder), str(ROOT), failure], capture_output=True,
                          text=True, timeout=120, env=env)
    if failure == "kill":
        assert proc.returncode == -9, proc.stderr
        partial = _leftovers(folder)
        assert len(partial) == 1 and partial[0].startswith(".ckpt-00000006.pt~")
    else:
        assert proc.returncode == 1, proc.stderr
        # the error names the checkpoint (not its temporary file) and leaves no partial file
        assert proc.stdout.split() == ["OSError", str(errno.EFBIG), str(folder / "ckpt-00000006.pt")]
        assert _leftovers(folder) == []
    ckpts = Checkpoints(folder)
    assert ckpts.latest()[0] == 3 and ckpts.load(ckpts.latest()[1])["step"] == 3  # the one before: intact
    again = subprocess.run([sys.executable, str(script), str(folder), str(ROOT), "none"], capture_output=True,
                           text=True, timeout=120, env=env)
    assert again.returncode == 0, again.stderr
    assert "resuming from ckpt-00000003.pt" in again.stderr
    assert ("half-written by a killed process" in again.stderr) == (failure == "kill")
    assert _leftovers(folder) == []
    uninterrupted = _Tiny()
    train_loop(checkpoints=Checkpoints(tmp_path / "ref"), total_steps=12, step_fn=uninterrupted.step,
               get_state=uninterrupted.state, set_state=uninterrupted.load, checkpoint_every=3, desc="tiny",
               progress=False)
    resumed = torch.load(tmp_path / "final-none.pt", weights_only=True)
    for name, value in uninterrupted.net.state_dict().items():
        torch.testing.assert_close(resumed["net"][name], value, rtol=0, atol=0)
