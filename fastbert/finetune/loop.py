"""The fine-tuning loop: AdamW, linear warmup then decay, clipping, autocast, evaluation, checkpoints.

The loop takes any model of its task (:mod:`fastbert.finetune.tasks`) that maps ``input_ids``,
``token_type_ids`` and ``attention_mask`` to the task's outputs: fastbert's, or transformers' own for
``--reference``, so the two run the identical loop. The loss is computed here (the task's loss summed over
a process's share, divided by the global batch's units: examples, or labelled tokens for token
classification; times the process count because DDP averages gradients), so any split of a global batch
over processes gives the same gradient as one process with the whole batch.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader

from fastbert.finetune import checkpoint
from fastbert.finetune.batching import PlannedBatches, eval_plan, train_plan
from fastbert.finetune.data import Encoded
from fastbert.finetune.distributed import Context
from fastbert.finetune.lamb import Lamb
from fastbert.finetune.tasks.base import Task

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Settings:
    """Hyperparameters; ``batch_size`` and ``eval_batch_size`` are per process."""

    epochs: int = 3
    batch_size: int = 32
    eval_batch_size: int = 64
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 42
    precision: str = "fp32"
    metric: str = "macro_f1"
    save_steps: int = 0
    log_every: int = 10
    num_workers: int = 0
    progress: bool = True
    max_steps: int = 0  # stop after this many optimizer steps (0: the epochs decide)
    eval_steps: int = 0  # also evaluate (and pick best/) every N steps; 0: after every epoch only
    grad_accum: int = 1  # micro-batches per optimizer step (each process's share cut in that many)
    optimizer: str = "adamw"  # or "lamb"
    schedule: str = "linear"  # the decay after warmup: "linear" or "cosine"


@dataclass
class Position:
    """Where training stands: ``batch`` batches of epoch ``epoch`` are done, ``step`` in all."""

    epoch: int = 0
    batch: int = 0
    step: int = 0


@dataclass
class History:
    losses: list = field(default_factory=list)  # the global mean loss of every optimizer step
    evals: list = field(default_factory=list)  # one dict per epoch: epoch, step, accuracy, macro_f1, loss
    best: Optional[float] = None


@dataclass
class Speed:
    """Training steps only (no evaluation, no checkpoints), without the run's first step (warm-up)."""

    seconds: float = 0.0
    steps: int = 0
    tokens: int = 0  # real tokens over all processes
    peak_memory_bytes: Optional[int] = None  # CUDA only

    @property
    def seconds_per_step(self) -> Optional[float]:
        return self.seconds / self.steps if self.steps else None

    @property
    def tokens_per_second(self) -> Optional[float]:
        return self.tokens / self.seconds if self.steps else None

    def as_dict(self) -> dict:
        return dict(asdict(self), seconds_per_step=self.seconds_per_step, tokens_per_second=self.tokens_per_second)


@dataclass
class Result:
    history: History
    speed: Speed
    position: Position


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on every weight matrix/table, none on biases and LayerNorm weights."""
    decay, no_decay = [], []
    for param in model.parameters():  # 1-D: biases and LayerNorm weights of any family's naming
        if param.requires_grad:
            (no_decay if param.dim() < 2 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_then_cosine_decay(optimizer, warmup_steps: int, total_steps: int):
    """Learning rate ``lr * step / warmup`` up to ``warmup_steps``, then down along a half cosine to 0 at
    ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        done = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * done))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def warmup_then_linear_decay(optimizer, warmup_steps: int, total_steps: int):
    """Learning rate ``lr * step / warmup`` up to ``warmup_steps``, then down linearly to 0 at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class FineTuner:
    """Trains ``model`` on ``train`` and evaluates it on ``evaluation`` after every epoch.

    When ``output`` is given, process 0 writes (each atomically) ``output/best`` (the best epoch by
    ``settings.metric``, or the last one without evaluation data: ``save_pretrained`` + tokenizer),
    and ``output/last`` (the same plus ``training_state.pt``, for ``resume``).
    """

    def __init__(self, model: nn.Module, tokenizer, train: Encoded, evaluation: Optional[Encoded],
                 settings: Settings, ctx: Context, output: Optional[Path] = None,
                 fingerprint: Optional[dict] = None, name: str = "train", task: Optional[Task] = None):
        if task is None:
            from fastbert.finetune.tasks.classification import SequenceClassification

            task = SequenceClassification()
        self.task = task
        self.model, self.tokenizer, self.train, self.evaluation = model, tokenizer, train, evaluation
        self.settings, self.ctx, self.output = settings, ctx, Path(output) if output is not None else None
        self.fingerprint, self.name = fingerprint or {}, name
        self.autocast_dtype = PRECISIONS[settings.precision]
        self.global_batch = settings.batch_size * ctx.world * settings.grad_accum
        self.steps_per_epoch = math.ceil(len(train) / self.global_batch)
        self.total_steps = self.steps_per_epoch * settings.epochs
        if settings.max_steps:
            self.total_steps = min(self.total_steps, settings.max_steps)
        groups = parameter_groups(model, settings.weight_decay)
        if settings.optimizer == "lamb":
            self.optimizer = Lamb(groups, lr=settings.lr)
        else:
            # The fused AdamW: one kernel per step on CUDA; on the CPU about 7x faster than the for-each one
            # (the embedding table alone is 12M parameters for a MiniLM).
            self.optimizer = torch.optim.AdamW(groups, lr=settings.lr, fused=ctx.device.type in ("cuda", "cpu"))
        schedule = warmup_then_cosine_decay if settings.schedule == "cosine" else warmup_then_linear_decay
        self.scheduler = schedule(self.optimizer, math.ceil(settings.warmup_ratio * self.total_steps), self.total_steps)
        self.scaler = torch.amp.GradScaler(ctx.device.type) if settings.precision == "fp16" else None
        self.position, self.history, self.speed = Position(), History(), Speed()
        self._warmed_up, self._pending_losses, self._pending_stats = False, [], []
        self.ddp = model
        if ctx.world > 1:
            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids)

    # ------------------------------------------------------------------------- running
    def run(self, resume: Optional[Path] = None, on_step: Optional[Callable[[int], None]] = None) -> Result:
        """Trains to the end (from ``resume``'s training state if given); ``on_step(step)`` is called after
        every optimizer step and its checkpoint."""
        if resume is not None:
            self._load_state(resume)
        if self.ctx.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.ctx.device)
        bar = _progress(self.total_steps, self.position.step, self.settings.progress and self.ctx.is_main,
                        self.name)
        while self.position.epoch < self.settings.epochs and not self._finished():
            if not self._train_epoch(bar, on_step):  # max_steps reached within the epoch
                improved = self._evaluate_epoch()
                self._save(improved or self.evaluation is None)
                break
            self.position = Position(self.position.epoch + 1, 0, self.position.step)
            improved = self._evaluate_epoch()
            self._save(improved or (self.evaluation is None and (self.position.epoch == self.settings.epochs
                                                                 or self._finished())))
        bar.close()
        if self.ctx.device.type == "cuda":
            self.speed.peak_memory_bytes = torch.cuda.max_memory_allocated(self.ctx.device)
        return Result(self.history, self.speed, self.position)

    def _finished(self) -> bool:
        return bool(self.settings.max_steps) and self.position.step >= self.settings.max_steps

    def _train_epoch(self, bar, on_step) -> bool:
        """Trains the rest of this epoch; False when ``max_steps`` stopped it before its end."""
        settings, ctx = self.settings, self.ctx
        plan = train_plan(self.train.lengths, self.global_batch, settings.seed, self.position.epoch)
        batches = PlannedBatches(self.train, plan, ctx.rank, ctx.world, self.tokenizer.pad_token_id, stand_in=True,
                                 task=self.task, epoch=self.position.epoch, micro_batches=settings.grad_accum)
        # Its own generator: a DataLoader draws a base seed from the global one per epoch otherwise, and
        # a resumed run would then see other dropout masks than an uninterrupted one.
        loader = DataLoader(batches, batch_size=None, sampler=range(self.position.batch, len(plan)),
                            pin_memory=ctx.device.type == "cuda", num_workers=settings.num_workers,
                            generator=torch.Generator().manual_seed(settings.seed))
        self.model.train()
        tokens_since_log = 0
        _sync(ctx.device)
        started, log_started = time.perf_counter(), time.perf_counter()
        for batch in loader:
            self._pending_losses.append(self._train_step(batch))
            self.position.batch += 1
            self.position.step += 1
            tokens_since_log += batch["global_tokens"]
            if not self._warmed_up:  # this run's first step (allocator, autotuning) is not timed
                _sync(ctx.device)
                started, self._warmed_up = time.perf_counter(), True
            else:
                self.speed.steps += 1
                self.speed.tokens += batch["global_tokens"]
            bar.update(1)
            if len(self._pending_losses) >= settings.log_every or self.position.batch == len(plan):
                logged = self._flush_losses()
                now = time.perf_counter()
                shown = {"loss": f"{sum(logged) / len(logged):.4f}"}
                if self._pending_stats:  # the task's accuracy on this process's share (MLM accuracy)
                    correct, total = torch.stack(self._pending_stats).sum(0).tolist()
                    shown["acc"] = f"{correct / max(1, total):.3f}"
                    self._pending_stats = []
                bar.set_postfix(**shown, lr=f"{self.scheduler.get_last_lr()[0]:.2e}",
                                tok_s=f"{tokens_since_log / max(now - log_started, 1e-9):.0f}")
                tokens_since_log, log_started = 0, now
            stopping = self._finished() and self.position.batch < len(plan)
            evaluating = settings.eval_steps and self.position.step % settings.eval_steps == 0 and not stopping \
                and self.position.batch < len(plan)
            saving = settings.save_steps and self.position.step % settings.save_steps == 0 and not stopping \
                and self.position.batch < len(plan)
            if evaluating or saving:
                _sync(ctx.device)
                paused = time.perf_counter()
                improved = self._evaluate_epoch() if evaluating else False
                self._save(best=improved)
                started += time.perf_counter() - paused  # evaluations and checkpoints are not training time
            if on_step is not None:
                on_step(self.position.step)
            if stopping:
                break
        _sync(ctx.device)
        self.speed.seconds += time.perf_counter() - started
        return self.position.batch >= len(plan)

    def _flush_losses(self) -> list[float]:
        """Reads the losses of the steps since the last read (one host sync) into the history."""
        losses = [t.item() for t in self._pending_losses]
        self.history.losses += losses
        self._pending_losses = []
        return losses

    def _train_step(self, batch: dict) -> torch.Tensor:
        """One optimizer step; returns the global mean loss (a device tensor, not yet read)."""
        device = self.ctx.device
        parts = batch.get("micro", [batch])
        if batch["global_units"] is None:  # counted after collating (masked tokens): summed over the processes
            local = sum(part["units"] for part in parts) if batch["weight"] else 0
            units = self.ctx.sum_(torch.tensor(float(local), device=device)).clamp(min=1)
        else:
            units = max(1, batch["global_units"])  # a batch of windows without a labelled token adds nothing
        totals = {"units": units, "examples": batch["global_examples"]}
        total = torch.zeros((), device=device)
        for k, part in enumerate(parts):
            # gradient accumulation: DDP all-reduces once, after the last micro-batch
            last = k == len(parts) - 1
            syncing = contextlib.nullcontext() if last or self.ddp is self.model else self.ddp.no_sync()
            with syncing:
                inputs = {key: part[key].to(device, non_blocking=True) for key in self.task.inputs}
                labels = part["labels"].to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
                    outputs = self.ddp(**inputs)
                loss_sum = self.task.loss_sum(outputs, labels, inputs.get("attention_mask"), totals) * batch["weight"]
                stats = self.task.bar_stats(outputs)
                if stats is not None:
                    self._pending_stats.append(stats.detach())
                loss = loss_sum * (self.ctx.world / units)
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
            total = total + loss_sum.detach()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.settings.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return self.ctx.sum_(total) / units

    # ------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, data: Encoded) -> dict:
        """The task's scores (:meth:`Task.score`) and the mean ``loss`` per unit of the model on ``data``
        (all processes' shares)."""
        ctx, task = self.ctx, self.task
        plan = eval_plan(data.lengths, self.settings.eval_batch_size * ctx.world)
        loader = DataLoader(PlannedBatches(data, plan, ctx.rank, ctx.world, self.tokenizer.pad_token_id, task=task),
                            batch_size=None, pin_memory=ctx.device.type == "cuda", generator=torch.Generator())
        was_training = self.model.training
        self.model.eval()
        predictions, loss, units = {}, 0.0, 0
        for batch in loader:
            if batch is None:
                continue
            inputs = {k: batch[k].to(ctx.device, non_blocking=True) for k in task.inputs}
            with torch.autocast(ctx.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
                outputs = self.model(**inputs)
            loss += task.loss_sum(outputs, batch["labels"].to(ctx.device), inputs.get("attention_mask")).item()
            predictions.update(zip(batch["index"].tolist(), task.predict(outputs, batch)))
            units += batch["units"]
        self.model.train(was_training)
        shares = ctx.gather((predictions, loss, units))
        predictions = {i: p for share in shares for i, p in share[0].items()}
        total_loss, total_units = sum(share[1] for share in shares), sum(share[2] for share in shares)
        scores = task.score(data, [predictions[i] for i in range(len(data))])
        return task.with_loss(scores, total_loss / max(1, total_units))

    def _evaluate_epoch(self) -> bool:
        """Evaluates after an epoch; True when the result is the best so far."""
        if self.evaluation is None:
            return False
        scores = self.evaluate(self.evaluation)
        self.history.evals.append({"epoch": self.position.epoch, "step": self.position.step, **scores})
        value, best = scores[self.settings.metric], self.history.best
        improved = best is None or (value < best if self.settings.metric == "loss" else value > best)
        if improved:
            self.history.best = value
        if self.ctx.is_main and self.settings.progress:
            when = f"step {self.position.step}" if self.position.batch else f"epoch {self.position.epoch}"
            print(f"{when}: " + " ".join(f"{k}={v:.4f}" for k, v in scores.items()
                                                              if isinstance(v, float))
                  + (" (best)" if improved else ""), flush=True)
        return improved

    # ------------------------------------------------------------------------- checkpoints
    def state(self) -> dict:
        """The training state ``resume`` restores (this process's RNG only; see ``_save``)."""
        return {
            "position": asdict(self.position),
            "history": asdict(self.history),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "fingerprint": self.fingerprint,
        }

    def _save(self, best: bool) -> None:
        """Writes ``last`` (and ``best``) from process 0; every process must call it (RNG states are gathered)."""
        if self.output is None:
            return
        self._flush_losses()
        rng = self.ctx.gather(_rng_state(self.ctx.device))
        if self.ctx.is_main:
            model = self.model

            def write_model(folder: Path) -> None:
                with _quiet_transformers():
                    model.save_pretrained(folder)
                self.tokenizer.save_pretrained(folder)

            def write_last(folder: Path) -> None:
                write_model(folder)
                torch.save({**self.state(), "rng": rng}, folder / checkpoint.STATE_FILE)

            self.output.mkdir(parents=True, exist_ok=True)
            if best:  # before last: a crash in between must not leave a last/ whose history claims this best
                checkpoint.write_atomically(self.output / "best", write_model)
            checkpoint.write_atomically(self.output / "last", write_last)
        self.ctx.barrier()

    def _load_state(self, folder: Path) -> None:
        state = load_state(folder, self.fingerprint)
        self.position = Position(**state["position"])
        self.history = History(**state["history"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"][self.ctx.rank], self.ctx.device)


def load_state(folder: Path, fingerprint: dict) -> dict:
    """The training state saved in ``folder``; a ValueError when ``fingerprint`` (the settings that shape
    the run: data, batch size, learning rate...) differs from the one it was saved with."""
    path = Path(folder) / checkpoint.STATE_FILE
    if not path.is_file():
        raise ValueError(f"cannot resume from {folder}: it has no {checkpoint.STATE_FILE}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key, value in fingerprint.items():
        saved = state["fingerprint"].get(key)
        if saved != value:
            raise ValueError(f"cannot resume from {folder}: {key} was {saved!r} there and is {value!r} now")
    return state


# ============================================================================= helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rng_state(device: torch.device) -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


@contextlib.contextmanager
def _quiet_transformers():
    """No "Writing model shards" bar inside the training bar."""
    from transformers.utils import logging

    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()


class _NoBar:
    def update(self, n=1):
        pass

    def set_postfix(self, **kwargs):
        pass

    def close(self):
        pass


def _progress(total: int, initial: int, enabled: bool, name: str):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, desc=name)
