"""The training job behind `train_imagenet.py` (flags: config.py; launcher: submit.py): train a
Tokenformer-ViT on WebDataset shards on one device, over DDP (torchrun or submitit) or on a Slurm
cluster, grow it on a schedule, and survive preemption without losing work. The run itself (model,
optimizer, growth, the epoch loop) is run.py's; this file is the process around it: ranks, the run
folder, shards, logs and saves.

    python train_imagenet.py --config configs/demo.yaml
    python train_imagenet.py --config configs/tokenformer_vit_base.yaml --data-dir /data/imagenet-wds --output runs/b
    torchrun --nproc-per-node 8 train_imagenet.py --config configs/tokenformer_vit_base.yaml ...
    python train_imagenet.py --config configs/tokenformer_vit_base.yaml ... --submit --cluster slurm --nodes 4 \\
        --gpus-per-node 8

A job whose --output holds `last.pth.tar` resumes from it: model, EMA, optimizer, scaler,
scheduler, step and data position; growth events it has passed are not repeated. On SIGUSR2 or
SIGTERM the job saves at the next step boundary and stops (under submitit rank 0 then requeues).
"""
import argparse
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

import torch

from .checkpoint import read_checkpoint, validate_command
from .config import data_config, run_config
from .data import DataConfig, build_loader, read_info
from .distributed import Preemption, leave, on_rank_zero, setup_distributed
from .errors import ConfigError, DataError, UserError
from .identity import check_flags, check_resolved, resolved_identity
from .run import Run, RunConfig, build_model, build_run, check_epochs, check_resume, evaluate_checked, train_epochs
from .run_folder import RunFolder, prepare_output, run_names
from .saves import StepHook, end_epoch, save, start_logging
from .triton_env import interpreting

__all__ = ['Job', 'setup', 'main']


# ----------------------------------------------------------------------------------------------------------------
# set up: ranks and devices, the run folder, the checkpoint to resume, the data


@dataclass
class Job:
    """What the job knows besides the run: where it writes, its data, its place among the ranks."""
    args: argparse.Namespace
    config: RunConfig
    data: DataConfig
    out: Path
    rank: int
    world: int
    device: torch.device
    amp: str
    num_classes: int = 0
    info: Dict = field(default_factory=dict)
    resume: Optional[Dict] = None
    folder: Optional['RunFolder'] = None
    train_stream: Optional[object] = None  # the training loader's ShardStream: where a save inside an epoch stands

    @property
    def resume_path(self) -> Path:
        return self.out / 'last.pth.tar'


def setup(args: argparse.Namespace) -> Job:
    """Processes and devices, the run folder (claimed, then checked), the checkpoint to resume, and
    every check that can be made before work starts; a refusal releases the folder it claimed."""
    rank, world, device = setup_distributed(args.device)
    amp = args.amp or ('bf16' if device.type == 'cuda' else 'none')
    job = Job(args, run_config(args), data_config(args), Path(args.output), rank, world, device, amp)
    if job.amp == 'fp16' and device.type != 'cuda':
        raise ConfigError('--amp fp16 needs a CUDA GPU: use --amp bf16 or none on the CPU.')
    impl = args.pattention_impl if args.pattention_impl != 'auto' else args.model_kwargs.get('pattention_impl')
    if impl == 'fused' and device.type != 'cuda' and not interpreting():
        raise ConfigError(f'pattention_impl fused runs on CUDA GPUs, not on {device.type}: use --pattention-impl '
                          f'torch (and no pattention_impl in --model-kwargs).')
    job.folder = RunFolder(job.out)
    try:
        on_rank_zero(rank, world, job.folder.claim)
        names = [] if args.eval_only else run_names(args.epochs, args.save_every_epochs, args.tensorboard)
        on_rank_zero(rank, world, lambda: prepare_output(job.folder, names, args.overwrite))
        if job.resume_path.is_file():
            job.resume = read_checkpoint(job.resume_path)
            if not args.eval_only:  # evaluation needs only the model it was trained as (below)
                check_resume(job.config, job.resume, world, job.resume_path)
            check_flags(job.resume, vars(args), job.resume_path, eval_only=args.eval_only)
        elif args.eval_only and not args.initial_checkpoint:
            raise ConfigError(f'--eval-only has nothing to evaluate: {job.resume_path} does not exist and no '
                              f'--initial-checkpoint was given.')
    except UserError:
        job.folder.release()
        raise
    return job


def _ensure_shards(args, rank: int, world: int) -> None:
    """Build --data-dir from --shards-from if it has no _info.json: on rank 0, the others waiting for
    its verdict (a missing data set is one sentence on every rank)."""
    root = Path(args.data_dir)
    if (root / '_info.json').is_file() or not args.shards_from:
        return

    def build():
        from .make_shards import make_shards
        for split in (args.train_split, args.val_split):
            print(f'building {args.shards_from} {split} shards in {root}', flush=True)
            try:
                make_shards(args.shards_from, split, root, shard_size=2500, workers=max(1, os.cpu_count() or 1),
                            name=args.shards_from.replace('-', '_'), max_side=None, max_pixels=args.max_image_pixels)
            except OSError as e:
                raise ConfigError(f'cannot write the {args.shards_from} shards to --data-dir {root} ({e.strerror}): '
                                  f'free space there or choose another --data-dir.') from None
    on_rank_zero(rank, world, build)


def prepare_data(job: Job) -> None:
    """Build the shards if asked and missing; read the number of classes from them."""
    args = job.args
    _ensure_shards(args, job.rank, job.world)
    job.info = read_info(args.data_dir)
    split = job.info.get('splits', {}).get(args.train_split, {})
    data_classes = split.get('num_classes') or len(job.info.get('classes', []))
    job.num_classes = args.num_classes or data_classes
    if not job.num_classes:
        raise ConfigError(f'{args.data_dir}/_info.json does not say how many classes there are: pass --num-classes.')
    if data_classes and job.num_classes < data_classes:
        raise ConfigError(f'--num-classes {job.num_classes} is fewer than the {data_classes} classes of '
                          f'{args.data_dir}: pass at least {data_classes}, or leave it out.')
    if job.resume is not None and not args.eval_only:
        check_resolved(job.resume.get('identity') or {}, job_identity(job), job.resume_path, args.train_split,
                       args.data_dir)


def job_identity(job: Job) -> Dict:
    """What the job resolved at its start besides the flags, recorded in every save (identity.py)."""
    train = job.info.get('splits', {}).get(job.args.train_split, {})
    return resolved_identity(job.amp, job.num_classes, job.data.recipe, train)


def build_loaders(job: Job):
    """(train loader, validation loader) over the shards, with the job's recipe."""
    args = job.args
    common = dict(world_size=job.world, rank=job.rank, num_classes=job.num_classes,
                  pin_memory=job.device.type == 'cuda')
    val = build_loader(job.data, args.val_split, False, **common)
    if args.eval_only:
        return None, val
    return build_loader(job.data, args.train_split, True, **common), val


# ----------------------------------------------------------------------------------------------------------------
# the ends of a job: evaluation only, done, preempted


def evaluate_only(job: Job, model: torch.nn.Module, val_loader) -> int:
    """--eval-only: the model's and the EMA's figures, and stop."""
    run = build_run(job.config, model, job.num_classes, 1, device=job.device, amp=job.amp, rank=job.rank,
                    world=job.world, resume=job.resume, source=str(job.resume_path))
    kw = dict(device=run.device, mean=run.mean, std=run.std, amp_dtype=run.amp_dtype, distributed=run.world > 1)
    source = job.resume_path if job.resume is not None else job.args.initial_checkpoint
    if job.rank == 0 and hasattr(model, 'attn_tokens'):  # the checkpoint as it is: --eval-only never grows it
        print(f'evaluating {source} (attn_tokens={model.attn_tokens}, ffn_tokens={model.ffn_tokens})', flush=True)
    has_ema = run.ema is not None and job.resume is not None and bool(job.resume.get('state_dict_ema'))
    for name, m in (('model', run.model), ('ema', run.ema.module if has_ema else None)):
        if m is not None:
            r = evaluate_checked(m, val_loader, **kw)
            if job.rank == 0:
                print(f'{name}: top-1 {r["top1"]:.2f}%  top-5 {r["top5"]:.2f}%  loss {r["loss"]:.4f}  '
                      f'({r["images"]} images)')
    leave()
    return 0


def finish_message(job: Job, run: Run, tb) -> None:
    """Rank 0: the best top-1 and the timm validate.py command for last.pth.tar."""
    if job.rank != 0:
        return
    print(f'done: best top-1 {run.best:.2f}%; checkpoints in {job.out}. Validate with timm\'s validate.py:\n  '
          f'{job_validate_command(job, run.model)}', flush=True)
    if tb:
        tb.close()


def job_validate_command(job: Job, model: torch.nn.Module) -> str:
    """The validate.py command that gives the job's evaluation of last.pth.tar: the model as built
    (every --model-kwargs), the data set, split, crop and precision the job evaluated with."""
    args = job.args
    flags = ['--dataset', f'wds/{job.info.get("name", "NAME")}', '--split', args.val_split]
    if args.crop_pct:
        flags += ['--crop-pct', str(args.crop_pct)]
    if job.amp != 'none':
        flags += ['--amp', '--amp-dtype', dict(bf16='bfloat16', fp16='float16')[job.amp]]
    if job.device.type != 'cuda':  # validate.py runs on cuda unless told
        flags += ['--device', job.device.type]
    kwargs = dict(args.model_kwargs)
    if not hasattr(model, 'attn_tokens'):  # another timm model: the weights do not say its sizes
        kwargs.setdefault('num_classes', job.num_classes)
        if args.img_size:
            flags += ['--img-size', str(args.img_size)]
            if hasattr(model, 'patch_embed'):  # the job built it at this size (run.create_model)
                kwargs.setdefault('img_size', args.img_size)
    return validate_command(args.model, model.state_dict(), job.out / 'last.pth.tar', args.data_dir,
                            model_kwargs=kwargs, flags=flags)


def _stop(preemption: 'Preemption', rank: int, out: Path, step: int) -> int:
    """After the preemption save: all ranks leave the process group, then submitit may requeue."""
    if rank == 0:
        print(f'signal {preemption.signum}: saved {out / "last.pth.tar"} at step {step}; rerun the same command '
              f'(or let the cluster requeue it) to resume', flush=True)
    leave()
    return preemption.hand_over()


# ----------------------------------------------------------------------------------------------------------------
# the job


def _progress(job: Job, loader, epoch: int, skip: int):
    if job.rank != 0 or not job.args.progress:
        return loader
    from tqdm import tqdm
    return tqdm(loader, desc=f'epoch {epoch}', initial=skip, total=loader.dataset.batches_per_rank, unit='batch',
                dynamic_ncols=True, leave=False)


def main(args: argparse.Namespace) -> int:
    """The job: set up, build or resume the run, then per epoch grow, train, evaluate and log, save."""
    job = setup(args)
    try:
        return _run(job)
    finally:  # ended, refused or failed: the run folder is free for the next command (in this process too)
        job.folder.close()


def _run(job: Job) -> int:
    args = job.args
    try:  # a job refused before its first step leaves nothing behind
        prepare_data(job)
        model, history = build_model(job.config, job.num_classes, job.resume, str(job.resume_path),
                                     grow_initial=not args.eval_only)
        train_loader, val_loader = build_loaders(job)
        if args.eval_only:
            return evaluate_only(job, model, val_loader)
        upe = train_loader.dataset.batches_per_rank
        job.train_stream = train_loader.dataset
        if job.resume is not None:
            check_epochs(job.config, job.resume, upe, job.resume_path)
        run = build_run(job.config, model, job.num_classes, upe, device=job.device, amp=job.amp, growth_history=history,
                        rank=job.rank, world=job.world, resume=job.resume, source=str(job.resume_path))
        run.identity = job_identity(job)
        tb = start_logging(job, run)
    except BaseException:
        job.folder.release()
        raise
    if job.resume is not None and job.rank == 0:
        print(f'resumed from {job.resume_path}: epoch {job.resume["epoch_in_progress"]}, step {run.step}', flush=True)
    job.resume = None
    preemption = Preemption(job.world, job.device)
    t_start, step_start = time.time(), run.step
    if run.unevaluated:  # stopped after training an epoch that could not be evaluated: evaluate it first
        pending = run.unevaluated
        end_epoch(job, run, val_loader, pending['epoch'], pending['train_loss'], pending['img_s'], 0.0, tb)
    try:
        for result in train_epochs(run, train_loader, should_stop=preemption.requested,
                                   on_step=StepHook(job, run, tb),
                                   view=lambda loader, epoch, skip: _progress(job, loader, epoch, skip)):
            epoch = result['epoch']
            if result['stopped'] and run.step % upe:  # signalled mid-epoch: save where it stopped
                save(job, run, epoch, epoch - 1)
                return _stop(preemption, job.rank, job.out, run.step)
            img_s = result['images'] * job.world / max(result['seconds'], 1e-9)
            eta = (time.time() - t_start) / max(1, run.step - step_start) * (args.epochs * upe - run.step)
            end_epoch(job, run, val_loader, epoch, result['loss'], img_s, eta, tb)
            if result['stopped'] and epoch + 1 < args.epochs:  # signalled in the epoch's last step: saved above
                return _stop(preemption, job.rank, job.out, run.step)
    except DataError:  # shards gone or rebuilt in the middle of an epoch: keep the steps trained so far
        if run.step % upe:
            save(job, run, run.step // upe, run.step // upe - 1, gather=False)  # the other ranks may be elsewhere
        raise
    finish_message(job, run, tb)
    leave()
    return 0
