"""Shared machinery for methods that train a generative model: model cache, checkpoints, resume, NaN guard, progress.

A trained model lives in ``<cache>/models/<method>/<key>/`` where the key hashes the method's parameters, the
training split's content and the method's model version; a later run (another seed, a probe change, a report)
finds ``final.safetensors`` there and skips training. While training, ``ckpt-<step>.pt`` files are written
atomically every N steps and when Ctrl-C or SIGTERM interrupts training (after the current step finishes); a killed
run (SIGKILL, a crash) resumes from the newest one. Randomness is drawn per step from ``step_generator(seed, step)``,
so a resumed run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from benchmark.core.cache import atomic_write_bytes, atomic_write_json, remove_orphan_temps

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, unusable checkpoint); the message says what and where."""


def model_key(method: str, params: Any, train_fingerprint: str, version: str, extra: dict | None = None) -> str:
    """Content address of a trained model: parameters, training data and the method's model version."""
    payload = {
        "method": method,
        "params": asdict(params) if is_dataclass(params) else params,
        "train": train_fingerprint,
        "version": version,
        "extra": extra or {},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def step_generator(seed: int, step: int, device: str = "cpu"):
    """A torch.Generator that depends only on (seed, step): exact resume without saving RNG state."""
    import torch

    g = torch.Generator(device=device if device in ("cpu", "cuda") else "cpu")
    g.manual_seed((seed * 1_000_003 + step) % (2**63 - 1))
    return g


class Checkpoints:
    """Atomic training checkpoints (torch.save; loaded with ``weights_only=True``) and the final safetensors. Of the
    processes of one multi-process run only the main one writes (:meth:`save`, :meth:`save_final`) and locks
    (:meth:`exclusive`); in the others these do nothing, so callers need no guard."""

    FINAL = "final.safetensors"

    def __init__(self, folder: Path, keep: int = 2):
        self.folder = Path(folder)
        self.keep = keep

    @property
    def final_path(self) -> Path:
        return self.folder / self.FINAL

    def is_done(self) -> bool:
        return self.final_path.is_file() and (self.folder / "done.json").is_file()

    @contextlib.contextmanager
    def exclusive(self):
        """Hold the model's training lock (``flock``; released by the OS if the process dies). A second process
        that wants the same model (a sweep worker running another seed) waits here, then finds it trained. Of the
        processes of one multi-process run only the main one takes it (the others train with it)."""
        import fcntl

        from benchmark.training import distributed

        if not distributed.is_main():
            yield self
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".train.lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("waiting: another process is training %s", self.folder)
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield self
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def latest(self) -> tuple[int, Path] | None:
        found = self._all()
        return max(found) if found else None

    def save(self, step: int, state: dict) -> Path:
        """Write the checkpoint of ``step`` (the main process; the others only return its path) and keep the newest
        ``keep``."""
        import torch

        from benchmark.training import distributed

        path = self.folder / f"ckpt-{step:08d}.pt"
        if not distributed.is_main():
            return path
        # serialized in memory, then written: a failed write (a full disk) is then an OSError naming the file
        # (torch.save writing to a file reports it as an unspecific RuntimeError)
        buffer = io.BytesIO()
        torch.save({"step": step, **state}, buffer)
        atomic_write_bytes(path, buffer.getbuffer())
        for _, old in sorted(self._all())[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def _all(self) -> list[tuple[int, Path]]:
        out = []
        for p in self.folder.glob("ckpt-*.pt"):
            try:
                out.append((int(p.stem.split("-")[1]), p))
            except (IndexError, ValueError):
                continue
        return out

    def load(self, path: Path) -> dict:
        import torch

        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated or foreign file
            raise TrainingError(f"checkpoint {path} is unreadable ({exc}); delete it to start over") from None

    def newest_readable(self) -> tuple[Path, dict] | None:
        """(path, state) of the newest checkpoint that loads; an unreadable newer one (a disk error, a file damaged
        after it was written) is renamed ``*.unreadable`` with a warning and the one before it is used. None when
        there is no checkpoint; TrainingError when there are some and none loads."""
        tried = []
        for _step, path in sorted(self._all(), reverse=True):
            try:
                return path, self.load(path)
            except TrainingError as exc:
                tried.append(str(path))
                bad = path.with_name(path.name + ".unreadable")
                path.replace(bad)
                log.warning("%s; kept as %s, trying the previous checkpoint", exc, bad.name)
        if tried:
            raise TrainingError(f"no readable checkpoint in {self.folder} (tried {', '.join(tried)}; kept as "
                                "*.unreadable); delete the folder to start over")
        return None

    def save_final(self, tensors: dict, meta: dict) -> None:
        """The trained weights (safetensors) and a done marker; checkpoints are then removed. The main process
        writes; the others do nothing."""
        from safetensors.torch import save

        from benchmark.training import distributed

        if not distributed.is_main():
            return
        atomic_write_bytes(self.final_path, save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}))
        atomic_write_json(self.folder / "done.json", meta)
        for _, old in self._all():
            old.unlink(missing_ok=True)

    def load_final(self) -> dict:
        from safetensors.torch import load_file

        return load_file(str(self.final_path))


def train_loop(
    *,
    checkpoints: Checkpoints,
    total_steps: int,
    step_fn: Callable[[int], dict[str, float]],
    get_state: Callable[[], dict],
    set_state: Callable[[dict], None],
    checkpoint_every: int,
    desc: str,
    progress: bool = True,
    log_metrics: Callable[[dict[str, float], int | None], None] | None = None,
    log_every: int = 50,
    on_log: Callable[[int], None] | None = None,
    stop_after: int | None = None,
) -> int:
    """Run ``step_fn(step)`` for steps [resume point, total_steps): resume, checkpoints, NaN guard, progress bar.

    ``step_fn`` returns at least ``loss`` and ``images`` (batch size). A non-finite loss raises TrainingError and
    keeps the last good checkpoint. A KeyboardInterrupt (Ctrl-C, or SIGTERM through :mod:`benchmark.core.interrupts`,
    which lets the current step finish) first saves a checkpoint of the steps completed, logs it and notes it for
    the CLI's message, then propagates. ``stop_after`` ends the loop early after that many steps (used by tests to
    simulate an interruption). Returns the step reached.
    """
    from tqdm.auto import tqdm

    from benchmark.core import interrupts
    from benchmark.training import distributed

    main = distributed.is_main()
    # 1. resume from the newest readable checkpoint (a checkpoint half-written by a killed process is removed); with
    # several processes the main one chooses it and the others load the same file
    found = None
    if main:
        for path in remove_orphan_temps(checkpoints.folder) if checkpoints.folder.is_dir() else []:
            log.info("%s: removed %s, a checkpoint left half-written by a killed process", desc, path.name)
        found = checkpoints.newest_readable()
    chosen = distributed.broadcast(str(found[0]) if found is not None else None)
    if found is None and chosen is not None:
        found = Path(chosen), checkpoints.load(Path(chosen))
    start = 0
    if found is not None:
        path, state = found
        set_state(state)
        start = int(state["step"])
        log.info("%s: resuming from %s (step %d of %d)", desc, path.name, start, total_steps)
    # 2. the loop
    bar = tqdm(total=total_steps, initial=start, desc=desc, disable=not progress, dynamic_ncols=True, leave=False)
    t_last, images_since, loss_sum, n_loss = time.time(), 0, 0.0, 0
    completed = start  # steps whose update is in the model: what a checkpoint written now holds
    try:
        for step in range(start, total_steps):
            with interrupts.deferred():  # Ctrl-C / SIGTERM: the step finishes, then the checkpoint below is exact
                out = step_fn(step)
                completed = step + 1
            loss = float(out["loss"])
            if not math.isfinite(loss):
                last = checkpoints.latest()
                where = f"last good checkpoint: {last[1]} (step {last[0]})" if last else "no checkpoint yet"
                raise TrainingError(f"{desc}: non-finite loss ({loss}) at step {step}; training stopped, {where}")
            images_since += int(out.get("images", 0))
            loss_sum, n_loss = loss_sum + loss, n_loss + 1
            done = step + 1
            # 3. progress and logs
            if done % log_every == 0 or done == total_steps:
                dt = max(time.time() - t_last, 1e-9)
                rate = images_since / dt
                metrics = {"train/loss": loss_sum / n_loss, "train/images_per_s": rate}
                metrics.update({f"train/{k}": float(v) for k, v in out.items() if k not in ("loss", "images")})
                bar.set_postfix(loss=f"{loss_sum / n_loss:.4f}", img_s=f"{rate:.0f}")
                if log_metrics is not None:
                    log_metrics(metrics, done)
                if on_log is not None:
                    on_log(done)
                t_last, images_since, loss_sum, n_loss = time.time(), 0, 0.0, 0
            bar.update(1)
            # 4. checkpoints
            if done % checkpoint_every == 0 and done < total_steps:
                checkpoints.save(done, get_state())
            if stop_after is not None and done - start >= stop_after:
                return done
        return total_steps
    except KeyboardInterrupt:
        bar.close()
        _keep_interrupted(checkpoints, completed, total_steps, get_state, desc)
        raise
    finally:
        bar.close()


def _keep_interrupted(checkpoints: Checkpoints, step: int, total_steps: int, get_state: Callable[[], dict],
                      desc: str) -> None:
    """Checkpoint an interrupted training at ``step`` (unless one of that step exists), log and note it; the main
    process of a multi-process run does it for all."""
    from benchmark.core import interrupts
    from benchmark.training import distributed

    if not distributed.is_main():
        return
    latest = checkpoints.latest()
    if latest is not None and latest[0] == step:
        path = latest[1]
    elif step > 0:
        path = checkpoints.save(step, get_state())
    else:
        log.warning("%s: interrupted before the first step finished; nothing to keep", desc)
        return
    log.warning("%s: interrupted; kept step %d of %d in %s (the same command resumes from there)", desc, step,
                total_steps, path)
    interrupts.note_kept(desc, step, total_steps, str(path))
