"""The training loop: data, model, pruning schedule, DDP/AMP, evaluation, checkpoints, export (spec §9).

Per iteration (spec §9.3, without its bugs): set the LR of this global step; ``zero_grad``; forward under
``torch.autocast`` (bf16 on CPU, fp16 + GradScaler on CUDA, when ``run.amp``); skip the batch on every rank if
any rank's loss is non-finite (counted); backward; ``scaler.unscale_``; skip the batch if a gradient is non-finite
(counted; fp16's GradScaler does this itself); importance; ``optimizer.step``; pruning
step when the schedule says so. After the last pruning step (``prune.slim``) the run goes on with the exported,
physically smaller network (:mod:`training.slim`). Each epoch: top-1/top-5 on the validation set (all-reduced),
a row of ``metrics.csv``, ``checkpoint_last.pt``; ``best_state.pt`` and ``best_masks.pt`` when top-1 is the best
since pruning finished. At the end: the slim network (``pruned.pt2``), ``masks.pt``,
``final_state.pt`` (dense-shaped, zeros where pruned) and ``result.json``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import get_total_norm
from tqdm import tqdm

from db.errors import LatlabError
from db.files import claim_output_folder, folder_lock
from profiler.runner import provenance
from pruning.cost import DEFAULT_KIND, Settings, spec_latency
from pruning.slices import Slices
from training.checkpoint import (
    check_compatible,
    gather_rng_states,
    load_checkpoint,
    save_atomically,
    save_checkpoint,
    set_rng_state,
)
from training.config import TrainConfig, save_config
from training.data import build_loaders, check_layout, seed_epoch
from training.distributed import DistInfo, all_reduce_sum, barrier, broadcast_object, init_distributed, teardown
from training.optim import build_optimizer, loss_fn, lr_at, scaled_lr, set_lr
from training.tensorboard import ScalarLog

__all__ = ["TrainResult", "train"]

log = logging.getLogger(__name__)
METRIC_FIELDS = ["epoch", "global_step", "lr", "train_loss", "val_loss", "top1", "top5", "kept_channels",
                 "removed_blocks", "predicted_ms", "images_per_s", "seconds", "skipped_batches"]
RUN_FILES = ("checkpoint_last.pt", "config.resolved.yaml", "metrics.csv", "best_state.pt", "best_masks.pt",
             "final_state.pt", "pruned.pt2", "masks.pt", "result.json", "tensorboard")  # what a run writes in run.out


@dataclass
class TrainResult:
    """What a run produced (rank 0 has the full picture; other ranks get the same metrics)."""

    out_dir: Path
    metrics: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)
    predicted_dense_ms: float | None = None
    predicted_pruned_ms: float | None = None
    removed_blocks: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    prune_steps: list[dict[str, Any]] = field(default_factory=list)
    epochs_done: int = 0
    global_step: int = 0
    finished: bool = False
    masks: dict[str, torch.Tensor] = field(default_factory=dict)  # {group: bool keep-mask}, on every rank


def train(cfg: TrainConfig, *, progress: bool = True) -> TrainResult:
    """Run (or resume) the training described by ``cfg``; works single-process and under ``torchrun``."""
    cfg.validate()
    import torch.distributed as dist

    owned = not dist.is_initialized()
    info = init_distributed(cfg.run.device)
    try:
        return _Run(cfg, info, progress).run()
    finally:
        if owned:
            teardown()


def _amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    name = cfg.run.amp_dtype
    if name == "auto":
        name = "fp16" if device.type == "cuda" else "bf16"
    return torch.float16 if name == "fp16" else torch.bfloat16


def _build_model(cfg: TrainConfig) -> tuple[str, nn.Module]:
    """(the network's canonical name, e.g. ``resnet50`` or ``timm:…``, the network in train mode)."""
    from profiler.measure import load_model

    torch.manual_seed(cfg.run.seed)
    try:
        name, net = load_model(cfg.model.name, weights=cfg.model.weights, num_classes=cfg.model.num_classes)
    except RuntimeError as exc:  # shape mismatches come from load_state_dict itself
        detail = "; ".join(line.strip() for line in str(exc).splitlines()[1:3])
        raise LatlabError(f"weights {cfg.model.weights} do not match {cfg.model.name} with "
                          f"num_classes={cfg.model.num_classes}: {detail}") from None
    return name, net.train()


def _output_width(net: nn.Module, input_size: int) -> int:
    """The classifier width of ``net``: its output's last dimension on one image (fake tensors: no compute)."""
    from profiler._trace import shapes_only

    param = next(net.parameters(), None)

    def forward() -> int:
        with torch.no_grad():
            x = torch.zeros(1, 3, input_size, input_size, device=param.device if param is not None else "cpu")
            return int(net.eval()(x).shape[-1])

    was_training = net.training
    try:
        return shapes_only(forward)
    finally:
        net.train(was_training)


class _Run:
    def __init__(self, cfg: TrainConfig, info: DistInfo, progress: bool) -> None:
        self.cfg, self.info, self.progress = cfg, info, progress and info.main
        self.out = Path(cfg.run.out)
        self.ckpt_path = self.out / "checkpoint_last.pt"

    # ---------------------------------------------------------------------------------------- set-up
    def _setup(self) -> None:
        cfg, info = self.cfg, self.info
        check_layout(cfg.data.path, cfg.data.train_dir, cfg.data.val_dir)  # before any heavy work
        self.resume_state = self._find_checkpoint()
        self.tb = ScalarLog(self.out, enabled=cfg.run.tensorboard, writes=info.main,
                            resume_step=int(self.resume_state["global_step"]) if self.resume_state else 0)
        self.model_name, self.model = _build_model(cfg)  # a weights file that does not match raises here
        self.train_loader, self.val_loader, classes = build_loaders(
            cfg.data.path, input_size=cfg.data.input_size, batch_size=cfg.data.batch_size, workers=cfg.data.workers,
            seed=cfg.run.seed, rank=info.rank, world=info.world, train_dir=cfg.data.train_dir,
            val_dir=cfg.data.val_dir, val_batch_size=cfg.data.val_batch_size, pin_memory=info.device.type == "cuda")
        width = cfg.model.num_classes or _output_width(self.model, cfg.data.input_size)
        if len(classes) > width:
            raise LatlabError(f"the dataset has {len(classes)} classes but {self.model_name} has {width} outputs "
                              "(model.num_classes)")
        self.ipe = len(self.train_loader)
        if cfg.run.max_iters_per_epoch:
            self.ipe = min(self.ipe, cfg.run.max_iters_per_epoch)
        saved_ipe = self.resume_state.get("iters_per_epoch") if self.resume_state else None
        if saved_ipe is not None and saved_ipe != self.ipe:  # the dataset changed size: the schedule would not fit
            raise LatlabError(f"checkpoint {self.ckpt_path} was written with {saved_ipe} iterations per epoch, this "
                              f"run has {self.ipe} ({len(self.train_loader.dataset)} training images under "
                              f"{cfg.data.path}): the learning-rate and pruning schedules would change mid-run; "
                              "resume on the same data, or start over with run.resume=never")
        self.memory_format = torch.channels_last if cfg.run.channels_last else torch.preserve_format
        self.model.to(info.device, memory_format=self.memory_format)
        self.pruner = self._build_pruner() if cfg.prune.method != "none" else None
        self.slices: Slices | None = None  # set once the run trains the slim network
        self.base_lr = scaled_lr(cfg.optim.lr, cfg.data.batch_size * info.world)
        self.optimizer = self._optimizer(self.model)
        self.amp_dtype = _amp_dtype(cfg, info.device)
        use_scaler = cfg.run.amp and self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(info.device.type, enabled=use_scaler)
        self.criterion = loss_fn(cfg.optim.label_smoothing, cfg.optim.aux_loss_weight)
        self.epoch, self.global_step, self.skipped = 0, 0, 0
        self.best_top1, self.best_epoch = math.nan, None  # of the final architecture (pruning done)
        self.history: list[dict[str, Any]] = []
        self.pending: dict[str, Any] | None = None  # the trained, not yet evaluated epoch's row
        if self.resume_state is not None:
            self._restore(self.resume_state)
        p = self.pruner
        if p is not None and cfg.prune.slim and self.slices is None and self.global_step > p.schedule.last_step:
            self._try_slim()  # a checkpoint written after the last pruning step by a run without prune.slim
        self._wrap()
        if self.progress:
            tqdm.write(self._plan())

    def _plan(self) -> str:
        """One paragraph on what this run will do (printed at the start)."""
        cfg, info, p, o = self.cfg, self.info, self.pruner, self.cfg.optim
        lines = [f"{cfg.model.name}, {info.world} process{'es' * (info.world != 1)} on {info.device.type}: "
                 f"global batch {cfg.data.batch_size * info.world}, lr {self.base_lr:.4g}, {o.epochs} epochs × "
                 f"{self.ipe} iterations ({o.schedule}, {o.warmup_epochs} warm-up), AMP "
                 f"{'on' if cfg.run.amp else 'off'}, out {self.out}"]
        if p is not None:
            s = p.schedule
            lines.append(f"pruning: {cfg.prune.method} to {1 - s.ratio:.0%} of {s.l0:.4g} ms predicted "
                         f"({self.latency_source}), {s.steps} step{'s' * (s.steps != 1)} at global steps "
                         f"{s.prune_steps()[0]}…{s.last_step}" + (", then the slim network" if cfg.prune.slim else ""))
        return "\n".join(lines)

    def _optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        o = self.cfg.optim
        return build_optimizer(model, lr=self.base_lr, momentum=o.momentum, weight_decay=o.weight_decay,
                               nesterov=o.nesterov)

    def _wrap(self) -> None:
        """``self.ddp``: the model that trains (DDP around ``self.model`` when distributed)."""
        self.ddp: nn.Module = self.model
        if self.info.distributed:
            ids = [self.info.device.index] if self.info.device.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    def _try_slim(self) -> bool:
        """:meth:`_slim`, or a warning and the masked network when this model cannot be exported (every rank
        hits the same error, so all go on masked)."""
        dense_params = sum(q.numel() for q in self.model.parameters())
        try:
            self._slim()
        except LatlabError as exc:
            log.warning("cannot train the slim network (%s); training goes on with the masks "
                        "(prune.slim=false skips this)", exc)
            if self.progress:
                tqdm.write(f"prune.slim: cannot export this network ({exc}); training goes on with the masks")
            return False
        if self.progress:
            tqdm.write(f"pruning done: training the slim network from here on "
                       f"({sum(q.numel() for q in self.model.parameters()):,} parameters, dense {dense_params:,})")
        return True

    def _slim(self) -> None:
        """Swap the masked network for its export; weights, BN statistics and momentum carry over."""
        from training.slim import carry_momentum, slim_copy

        p, dense, old = self.pruner, self.model, self.optimizer
        slim, self.slices = slim_copy(dense, p.masks.conv_masks(), p.removed_blocks(), p.spec.input_size)
        self.model = slim.to(self.info.device, memory_format=self.memory_format)
        self.optimizer = self._optimizer(self.model)
        carry_momentum(dense, old, self.model, self.optimizer, self.slices)
        for q in dense.parameters():  # the dense network stays with the pruner (masks, export template)
            q.grad = None

    def _find_checkpoint(self) -> dict[str, Any] | None:
        mode = self.cfg.run.resume
        if mode == "never" or not self.ckpt_path.is_file():
            if mode == "required":
                raise LatlabError(f"run.resume=required but {self.ckpt_path} does not exist")
            return None
        state = load_checkpoint(self.ckpt_path)
        check_compatible(state.get("config", {}), self.cfg.to_dict(), self.ckpt_path)
        world = state.get("world_size", self.info.world)
        if world != self.info.world:  # the global batch, hence the learning rate and the iterations per epoch
            procs = f"{world} process{'es' if world != 1 else ''}"
            raise LatlabError(f"checkpoint {self.ckpt_path} was written by {procs}, this run has {self.info.world}: "
                              "the global batch, learning rate and schedule would change mid-run; resume with "
                              f"{procs} (--nproc-per-node), or start over with run.resume=never")
        return state

    def _build_pruner(self) -> Any:
        from latency_models.resolve import resolve_latency_model
        from pruning.cost import check_limits, check_prunable
        from pruning.graph import build_network_spec
        from pruning.schedule import LatencySchedule, preset
        from training.pruner import TrainingPruner

        p, info = self.cfg.prune, self.info
        spec = build_network_spec(self.model, p.input_size or self.cfg.data.input_size, group_sizes=p.group_sizes,
                                  name=self.model_name, keep=p.keep)
        check_prunable(spec, p.method)  # before any training, not at the first pruning step
        check_limits(spec, p.method, min_keep_share=p.min_keep_share, max_kept_blocks=p.max_kept_blocks)
        lat, settings, l0, source = None, None, None, None
        if info.main:
            from db.engine import open_database

            try:
                database = open_database(p.db, create=False, upgrade=False)
                lat, settings, source = resolve_latency_model(
                    database, latency_model=p.latency_model, sweep=p.sweep, hardware=p.hardware,
                    kind=p.kind or DEFAULT_KIND[p.method], choose_sweep="--set prune.sweep=ID")
                l0 = spec_latency(lat, spec, settings)
                shared: dict[str, Any] = {"settings": settings.__dict__, "l0": l0, "source": source}
            except LatlabError as exc:
                shared = {"error": str(exc)}
        else:
            shared = {}
        shared = broadcast_object(shared)
        if "error" in shared:
            raise LatlabError(shared["error"])
        settings = Settings(**shared["settings"])
        self.latency_source, l0 = shared["source"], shared["l0"]
        if p.steps is not None or p.every is not None:
            name = p.schedule or p.method
            from pruning.schedule import PRESETS

            steps, every = PRESETS[name]
            schedule = LatencySchedule(l0, p.ratio, p.steps or steps, p.every or every, p.start)
        else:
            schedule = preset(p.schedule or p.method, l0, p.ratio, p.start)
        if p.max_kept_blocks is not None and p.max_kept_blocks_from > schedule.steps:
            raise LatlabError(f"prune.max_kept_blocks_from={p.max_kept_blocks_from} is after the last of the "
                              f"{schedule.steps} pruning steps, so prune.max_kept_blocks would never apply")
        total = self.cfg.optim.epochs * self.ipe
        if schedule.last_step >= total:
            raise LatlabError(f"the pruning schedule ends at global step {schedule.last_step} but the run has only "
                              f"{total} steps ({self.cfg.optim.epochs} epochs × {self.ipe}); lower prune.steps/every "
                              "or train longer")
        return TrainingPruner(self.model, spec, method=p.method, schedule=schedule, latency_model=lat,
                              settings=settings, solver=p.solver, time_limit=p.time_limit,
                              min_keep_share=p.min_keep_share, max_kept_blocks=p.max_kept_blocks,
                              max_kept_blocks_from=p.max_kept_blocks_from)

    def _restore(self, state: dict[str, Any]) -> None:
        if self.pruner is not None:
            self.pruner.load_state_dict(state["pruner"])
            if state.get("slim"):
                self._slim()  # the architecture; weights and momentum come from the checkpoint below
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise LatlabError(f"checkpoint {self.ckpt_path} does not match the model: {str(exc).splitlines()[0]}"
                              ) from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.global_step = int(state["epoch"]), int(state["global_step"])
        self.skipped = int(state["skipped"])
        self.best_epoch = state.get("best_epoch")
        self.best_top1 = float(state["best_top1"]) if self.best_epoch is not None else math.nan
        self.history = [dict(r) for r in state["history"]]
        self.pending = dict(state["pending"]) if state.get("pending") else None
        rngs = state["rng"]
        if len(rngs) == self.info.world:
            set_rng_state(rngs[self.info.rank])
        else:
            log.warning("checkpoint has RNG states of %d ranks, this run has %d: RNG streams restart",
                        len(rngs), self.info.world)
        if self.progress:
            tqdm.write(f"resumed from {self.ckpt_path}: epoch {self.epoch}, global step {self.global_step}"
                       + (" (slim network)" if self.slices is not None else "")
                       + (f"; evaluating epoch {self.epoch + 1}, trained before the stop" if self.pending else ""))

    # ----------------------------------------------------------------------------------------- loop
    def run(self) -> TrainResult:
        self._claim(create=False)  # another command's folder, or one in use, is refused before any work
        self._setup()  # every check (data, weights, latency model, checkpoint) before anything is written
        with self._folder_locked():
            return self._run()

    def _claim(self, *, create: bool) -> None:
        """Rank 0 claims run.out for `latlab train` (:func:`claim_output_folder`); its error stops every rank."""
        error = ""
        if self.info.main:
            try:
                claim_output_folder(self.out, "train", writes=RUN_FILES, create=create)
            except LatlabError as exc:
                error = f"{exc} (run.out)"
        error = broadcast_object(error)
        if error:
            raise LatlabError(error)

    @contextmanager
    def _folder_locked(self) -> Iterator[None]:
        """Rank 0 holds the run folder's lock for the run: a second run on the same folder stops with a message
        (on every rank) instead of overwriting this one's checkpoints."""
        self._claim(create=True)
        with ExitStack() as stack:
            error = ""
            if self.info.main:
                try:
                    stack.enter_context(folder_lock(self.out, wait=False))
                except LatlabError as exc:
                    error = f"{exc} (run.out)"
            error = broadcast_object(error)
            if error:
                raise LatlabError(error)
            yield

    def _run(self) -> TrainResult:
        cfg = self.cfg
        if self.info.main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out / "config.resolved.yaml")
        ran = 0
        try:
            while self.epoch < cfg.optim.epochs:
                if cfg.run.stop_after_epochs is not None and ran >= cfg.run.stop_after_epochs:
                    break
                row, self.pending = self.pending, None  # a resumed run evaluates the epoch it had trained
                if row is None:
                    row = self._train_epoch()
                    self._save(pending=row)  # a failed or killed evaluation does not lose the trained epoch
                row.update(self._evaluate())
                self._finish_epoch(row)
                ran += 1
        finally:
            self.tb.close()
        finished = self.epoch >= cfg.optim.epochs
        paths = self._export() if finished and cfg.run.export else {}
        barrier()
        p = self.pruner
        return TrainResult(
            self.out, self.history[-1] if self.history else {}, paths,
            p.schedule.l0 if p else None, p.predicted_latency() if p and self.info.main else None,
            p.removed_blocks() if p else [], list(self.history), list(p.history) if p else [], self.epoch,
            self.global_step, finished, p.masks.state_dict() if p else {})

    def _train_epoch(self) -> dict[str, Any]:
        cfg, info, dev = self.cfg, self.info, self.info.device
        seed_epoch(self.train_loader, cfg.run.seed, self.epoch, info.rank)
        self.ddp.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=dev, dtype=torch.float64)
        counted, images = 0, 0
        bar = tqdm(total=self.ipe, desc=f"epoch {self.epoch + 1}/{cfg.optim.epochs}", disable=not self.progress,
                   dynamic_ncols=True, leave=False)
        lr = self.base_lr
        for i, (x, y) in enumerate(self.train_loader):
            if i >= self.ipe:
                break
            x, y = x.to(dev, non_blocking=True, memory_format=self.memory_format), y.to(dev, non_blocking=True)
            lr = lr_at(self.global_step, base=self.base_lr, iters_per_epoch=self.ipe,
                       warmup_epochs=cfg.optim.warmup_epochs, epochs=cfg.optim.epochs, schedule=cfg.optim.schedule)
            set_lr(self.optimizer, lr)
            self.optimizer.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=self.amp_dtype, enabled=cfg.run.amp):
                loss = self.criterion(self.ddp(x), y)
            finite = torch.isfinite(loss.detach()).to(torch.float32)
            if info.distributed:
                all_reduce_sum(finite)
            if float(finite) < info.world:  # skip on every rank, so DDP's collectives stay matched
                self.skipped += 1
            else:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
                if not self.scaler.is_enabled() and not self._gradients_finite():
                    self.skipped += 1  # fp16's GradScaler skips such a step itself (and lowers its scale)
                else:
                    if self.pruner is not None:
                        self.pruner.after_backward(self.global_step)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    loss_sum += loss.detach().double()
                    counted += 1
            if self.pruner is not None:
                rec = self.pruner.after_step(self.global_step, self.optimizer)
                if rec is not None:
                    self.tb.scalars("prune", {"target_ms": rec["target_ms"], "step": rec["step"],
                                              "removed_blocks": len(rec["removed_blocks"])}, self.global_step + 1)
                if rec is not None and self.progress:
                    tqdm.write(f"prune step {rec['step']}/{self.pruner.schedule.steps} at global step "
                               f"{rec['global_step']}: target {rec['target_ms']:.4g} ms, solver "
                               f"{rec['solver_status']}, removed blocks {len(rec['removed_blocks'])}")
                done = rec is not None and self.pruner.schedule.done(self.global_step)
                if done and cfg.prune.slim and self._try_slim():  # swaps in the slim network
                    self._wrap()
            self.global_step += 1
            images += x.shape[0]
            if (self.progress or self.tb.enabled) and (i % cfg.run.log_every == 0 or i == self.ipe - 1):
                loss_value = float(loss.detach())  # one host sync for the bar and TensorBoard
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.4g}")
                self.tb.scalars("train", {"loss": loss_value, "lr": lr}, self.global_step)
            bar.update(1)
        bar.close()
        stats = torch.tensor([float(loss_sum), counted, images], dtype=torch.float64, device=dev)
        all_reduce_sum(stats)
        seconds = time.perf_counter() - t0
        return {"epoch": self.epoch + 1, "global_step": self.global_step, "lr": lr,
                "train_loss": float(stats[0] / stats[1]) if stats[1] else math.nan,
                "images_per_s": float(stats[2]) / seconds if seconds > 0 else math.nan, "seconds": seconds}

    def _gradients_finite(self) -> bool:
        """No NaN or inf in any gradient (spec §9.3 skips such a batch). DDP has averaged the gradients, so every
        rank reaches the same verdict without a collective."""
        grads = [p.grad for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        return not grads or bool(torch.isfinite(get_total_norm(grads, norm_type="inf")))

    @torch.no_grad()
    def _evaluate(self) -> dict[str, Any]:
        dev = self.info.device
        self.ddp.eval()
        totals = torch.zeros(4, dtype=torch.float64, device=dev)  # correct@1, correct@5, n, loss sum
        for i, (x, y) in enumerate(self.val_loader):
            if self.cfg.run.max_val_iters is not None and i >= self.cfg.run.max_val_iters:
                break
            x, y = x.to(dev, non_blocking=True, memory_format=self.memory_format), y.to(dev, non_blocking=True)
            with torch.autocast(dev.type, dtype=self.amp_dtype, enabled=self.cfg.run.amp):
                out = self.model(x)
            out = out.float()
            k = min(5, out.shape[1])
            top = out.topk(k, dim=1).indices
            hit = top.eq(y[:, None])
            totals += torch.tensor([float(hit[:, 0].sum()), float(hit.any(1).sum()), float(len(y)),
                                    float(nn.functional.cross_entropy(out, y, reduction="sum"))],
                                   dtype=torch.float64, device=dev)
        all_reduce_sum(totals)
        n = float(totals[2]) or math.nan
        return {"top1": 100.0 * float(totals[0]) / n, "top5": 100.0 * float(totals[1]) / n,
                "val_loss": float(totals[3]) / n}

    def _finish_epoch(self, row: dict[str, Any]) -> None:
        p = self.pruner
        row["kept_channels"] = sum(p.widths().values()) if p else None
        row["removed_blocks"] = len(p.removed_blocks()) if p else 0
        row["predicted_ms"] = p.predicted_latency() if p and self.info.main else None
        row["skipped_batches"] = self.skipped
        self.epoch += 1
        self.history.append(row)
        if self._is_best(row["top1"]):  # written before the checkpoint: a kill in between rewrites it on resume
            self._save_best(row["top1"])
        state = self._save()
        if self.info.main:
            self.tb.scalars("epoch", {k: row.get(k) for k in METRIC_FIELDS if k != "global_step"}, self.global_step)
            self._write_metrics()  # after the checkpoint, from its history: a kill in between loses no row, adds none
            every = self.cfg.run.checkpoint_every
            if every and (self.epoch % every == 0 or self.epoch == self.cfg.optim.epochs):
                save_checkpoint(state, self.out / f"checkpoint_epoch{self.epoch}.pt")
            if self.progress:
                tqdm.write(f"epoch {self.epoch}: loss {row['train_loss']:.4f} top1 {row['top1']:.2f} "
                           f"top5 {row['top5']:.2f}" + (f" predicted {row['predicted_ms']:.4g} ms"
                                                       if row["predicted_ms"] is not None else ""))
        barrier()

    def _is_best(self, top1: float) -> bool:
        """A top-1 above every earlier one of the network as pruning leaves it (epochs before the last pruning step
        do not count: a denser network is no candidate)."""
        done = self.pruner is None or self.pruner.schedule.done(self.global_step - 1)
        return done and not math.isnan(top1) and (math.isnan(self.best_top1) or top1 > self.best_top1)

    def _save_best(self, top1: float) -> None:
        """``best_state.pt`` (dense-shaped state dict, zeros where pruned) and ``best_masks.pt``: spec §9.4's
        ``best_net.pth``, usable as ``latlab measure/export --weights best_state.pt --mask best_masks.pt``."""
        self.best_top1, self.best_epoch = top1, self.epoch
        if not self.info.main:
            return
        p = self.pruner
        if p is not None:
            from pruning.export import masks_file_content

            save_atomically(masks_file_content(p.masks.conv_masks(), p.removed_blocks()), self.out / "best_masks.pt")
        save_atomically(self._dense_copy().cpu().float().state_dict(), self.out / "best_state.pt")

    def _save(self, pending: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write checkpoint_last.pt on rank 0 (every rank joins the RNG gather); ``pending`` is a trained epoch's
        row whose evaluation has not run yet, which a resume evaluates before it trains on."""
        rngs = gather_rng_states()  # collective: every rank
        if not self.info.main:
            return {}
        p = self.pruner
        state = {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "pruner": p.state_dict() if p else None,
            "epoch": self.epoch, "global_step": self.global_step, "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "skipped": self.skipped, "history": self.history, "rng": rngs, "config": self.cfg.to_dict(),
            "world_size": self.info.world, "slim": self.slices is not None, "iters_per_epoch": self.ipe,
            "pending": pending,
        }
        save_checkpoint(state, self.ckpt_path)
        return state

    def _write_metrics(self) -> None:
        """``metrics.csv``: one row per finished epoch, rewritten whole (atomically) from the history."""
        path, tmp = self.out / "metrics.csv", self.out / ".metrics.csv.tmp"
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=METRIC_FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(self.history)
        os.replace(tmp, path)

    # ---------------------------------------------------------------------------------------- export
    def _export(self) -> dict[str, Path]:
        if not self.info.main:
            return {}
        paths = {"metrics": self.out / "metrics.csv", "checkpoint": self.ckpt_path,
                 "config": self.out / "config.resolved.yaml", "final_state": self.out / "final_state.pt",
                 "result": self.out / "result.json"}
        plain = self._dense_copy().cpu().float().eval()
        torch.save(plain.state_dict(), paths["final_state"])
        summary: dict[str, Any] = {"final": self.history[-1] if self.history else {}, "best_epoch": self.best_epoch,
                                   "best_top1": None if self.best_epoch is None else self.best_top1,
                                   "provenance": provenance()}
        p = self.pruner
        if p is not None:
            from pruning.export import export_checked, save_pruned

            masks, removed = p.masks.conv_masks(), p.removed_blocks()
            slim, delta, counts = export_checked(plain, p.spec.input_size, masks, removed)
            variant = f"{self.cfg.prune.method}{round(100 * (1 - self.cfg.prune.ratio))}"
            paths.update(save_pruned(self.out, slim, masks, removed, p.spec.input_size, model=p.spec.model_name,
                                     variant=variant))
            summary.update({
                "method": self.cfg.prune.method, "latency_model": self.latency_source,
                "predicted_dense_ms": p.schedule.l0, "predicted_pruned_ms": p.predicted_latency(),
                "final_target_ms": p.schedule.final_target, "removed_blocks": removed, "group_widths": p.widths(),
                "max_logit_delta": delta, **counts, "prune_steps": p.history, "trained_slim": self.slices is not None,
            })
        paths["result"].write_text(json.dumps(summary, indent=2, default=float))
        return paths

    def _dense_copy(self) -> nn.Module:
        """The trained network in the dense architecture, masks folded in (zeros where pruned), no hooks."""
        from training.pruner import baked_copy

        if self.slices is None:
            return baked_copy(self.model)
        from training.slim import dense_state_dict

        dense = baked_copy(self.pruner.model)
        dense.load_state_dict(dense_state_dict(self.model, self.slices, dense.state_dict()))
        return dense
