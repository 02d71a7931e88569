"""The training job's parts around the run (train.py's `main` runs them in order; the run itself,
model, optimizer, growth and the epoch loop, is run.py's): its process and run folder, the checkpoint
it resumes and every check made before work starts (`setup`), its data (`prepare_data`,
`build_loaders`), and its logs and saves in the run folder: config.yaml, the loss curve and
TensorBoard, summary.csv and curves.png after each evaluated epoch, and every save of last.pth.tar
(with best.pth.tar and checkpoint-EPOCH.pth.tar), each written atomically under a name the run
folder's manifest lists (run_folder.py); then the ends of a job: evaluation only, done, preempted.
"""
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, Optional

import torch
import yaml

from .atomic import atomic_file, save_atomic
from .checkpoint import read_checkpoint, validate_command
from .config import JobConfig, plain
from .data import build_loader, read_info
from .distributed import Preemption, Process, leave, on_rank_zero, setup_distributed
from .engine import schedule_lr
from .errors import CheckpointError, ConfigError, DataError, UserError
from .identity import check_flags, check_resolved, resolved_identity
from .pretrained import checkpoint_classes
from .run import Run, build_run, check_initial, check_pretrained, check_resume, evaluate_run, read_start_weights
from .run_folder import RunFolder, prepare_output, run_names, write_logs
from .triton_env import interpreting

__all__ = ['Job', 'setup', 'ensure_shards', 'prepare_data', 'job_identity', 'build_loaders', 'start_logging',
           'StepHook', 'log_epoch', 'save', 'end_epoch', 'evaluate_only', 'finish_message', 'job_validate_command',
           'stop', 'progress']


# ----------------------------------------------------------------------------------------------------------------
# set up: ranks and devices, the run folder, the checkpoint to resume, the data


@dataclass
class Job:
    """What the job knows besides the run: its values, its process, its run folder, what its data
    holds, and the checkpoint it resumes."""
    config: JobConfig
    process: Process
    folder: RunFolder
    num_classes: int = 0
    info: Dict = field(default_factory=dict)
    resume: Optional[Dict] = None
    weights: Optional[Dict] = None  # --pretrained-path's or --initial-checkpoint's, read and checked at the start
    identity: Dict = field(default_factory=dict)  # what the job resolved at its start besides the flags (identity.py)
    train_stream: Optional[object] = None  # the training loader's ShardStream: where a save inside an epoch stands

    @property
    def resume_path(self) -> Path:
        return self.config.output / 'last.pth.tar'


def setup(config: JobConfig) -> Job:
    """Processes and devices, the run folder (claimed, then checked), the checkpoint to resume, and
    every check that can be made before work starts; a refusal releases the folder it claimed."""
    process = setup_distributed(config.device, config.amp)
    rank, world, device = process.rank, process.world, process.device
    if config.run.pattention_impl == 'triton' and device.type != 'cuda' and not interpreting():
        raise ConfigError(f'--pattention-impl triton runs on CUDA GPUs, not on {device.type}: leave it out here.')
    job = Job(config, process, RunFolder(config.output))
    try:
        on_rank_zero(rank, world, job.folder.claim)
        names = [] if config.eval_only else run_names(config.run.epochs, config.save_every_epochs, config.tensorboard)
        on_rank_zero(rank, world, lambda: prepare_output(job.folder, names, config.overwrite))
        if job.resume_path.is_file():
            job.resume = read_checkpoint(job.resume_path)
            if not config.eval_only:  # first: it names the global batch and the token counts held now
                check_resume(config.run, job.resume, world, job.resume_path)
            check_flags(job.resume, config.flags, job.resume_path, eval_only=config.eval_only)
        elif config.run.pretrained_path or config.run.initial_checkpoint:
            job.weights = read_start_weights(config.run)
            if config.run.pretrained_path:
                check_pretrained(config.run, job.weights, config.run.pretrained_path)
            else:
                check_initial(config.run, job.weights, grow=not config.eval_only)
        elif config.eval_only:
            raise ConfigError(f'--eval-only has nothing to evaluate: {job.resume_path} does not exist and no '
                              f'--initial-checkpoint was given.')
    except UserError:
        job.folder.release()
        raise
    return job


def ensure_shards(config: JobConfig, process: Process) -> None:
    """Build --data-dir from --shards-from if it has no _info.json: on rank 0, the others waiting for
    its verdict (a missing data set is one sentence on every rank)."""
    root = Path(config.data.root)
    if (root / '_info.json').is_file() or not config.shards_from:
        return

    def build():
        from .make_shards import make_shards
        for split in (config.train_split, config.val_split):
            print(f'building {config.shards_from} {split} shards in {root}', flush=True)
            try:
                make_shards(config.shards_from, split, root, config.shards)
            except OSError as e:
                raise ConfigError(f'cannot write the {config.shards_from} shards to --data-dir {root} ({e.strerror}): '
                                  f'free space there or choose another --data-dir.') from None
    on_rank_zero(process.rank, process.world, build)


def prepare_data(job: Job) -> None:
    """Build the shards if asked and missing; read the number of classes from them."""
    config = job.config
    ensure_shards(config, job.process)
    job.info = read_info(config.data.root)
    split = job.info.get('splits', {}).get(config.train_split, {})
    data_classes = split.get('num_classes') or len(job.info.get('classes', []))
    job.num_classes = config.num_classes or data_classes
    if not job.num_classes:
        raise ConfigError(f'{config.data.root}/_info.json does not say how many classes there are: pass --num-classes.')
    if data_classes and job.num_classes < data_classes:
        raise ConfigError(f'--num-classes {job.num_classes} is fewer than the {data_classes} classes of '
                          f'{config.data.root}: pass at least {data_classes}, or leave it out.')
    _check_classes(job, data_classes)
    job.identity = job_identity(job)
    if job.resume is not None and not config.eval_only:
        check_resolved(job.resume.get('identity') or {}, job.identity, job.resume_path, config.train_split,
                       config.data.root)


def _check_classes(job: Job, data_classes: int) -> None:
    """A checkpoint that is evaluated, or trained on from --initial-checkpoint, keeps its classifier:
    one of the model's class count (a resumed training run compares its classes and data with the
    identity it started with, identity.py; --pretrained-path replaces a classifier of another count)."""
    config = job.config
    if job.resume is not None and config.eval_only:
        state, name = job.resume['state_dict'], str(job.resume_path)
    elif job.resume is None and job.weights is not None and config.run.initial_checkpoint:
        state, name = job.weights, f'--initial-checkpoint {config.run.initial_checkpoint}'
    else:
        return
    held = checkpoint_classes(state)
    if held is None or held == job.num_classes:
        return
    if held >= data_classes:
        fix = f'pass --num-classes {held}'
    elif config.eval_only:
        fix = 'evaluate it on the data it was trained on'
    else:
        fix = 'fine-tune it with --pretrained-path instead, which gives it a new classifier'
    now = '--num-classes' if config.num_classes else f'the classes of {config.data.root}'
    raise ConfigError(f'{name} has a classifier of {held} classes and the model here has {job.num_classes} ({now}): '
                      f'{fix}.')


def job_identity(job: Job) -> Dict:
    """What the job resolved at its start besides the flags, recorded in every save (identity.py)."""
    train = job.info.get('splits', {}).get(job.config.train_split, {})
    return resolved_identity(job.process.amp, job.num_classes, job.config.data.recipe, train)


def build_loaders(job: Job):
    """(train loader, validation loader) over the shards, with the job's recipe."""
    config, process = job.config, job.process
    common = dict(world_size=process.world, rank=process.rank, num_classes=job.num_classes,
                  pin_memory=process.device.type == 'cuda')
    val = build_loader(config.data, config.val_split, False, **common)
    if config.eval_only:
        return None, val
    return build_loader(config.data, config.train_split, True, **common), val


# ----------------------------------------------------------------------------------------------------------------
# the ends of a job: evaluation only, done, preempted


def evaluate_only(job: Job, model: torch.nn.Module, val_loader) -> int:
    """--eval-only: the model's and the EMA's figures (the EMA's where the checkpoint holds one), by
    the evaluation that training runs (run.evaluate_run), and stop."""
    has_ema = job.resume is not None and bool(job.resume.get('state_dict_ema'))
    config = job.config.run if has_ema else replace(job.config.run, ema_decay=0.0)
    run = build_run(config, model, job.num_classes, 1, process=job.process, resume=job.resume,
                    source=str(job.resume_path))
    source = job.resume_path if job.resume is not None else config.initial_checkpoint
    if job.process.rank == 0 and hasattr(model, 'attn_tokens'):  # the checkpoint as it is: --eval-only never grows it
        print(f'evaluating {source} (attn_tokens={model.attn_tokens}, ffn_tokens={model.ffn_tokens})', flush=True)
    row = evaluate_run(run, val_loader)
    if job.process.rank == 0:
        images = val_loader.dataset.num_samples  # every one of them, or evaluate_run has raised
        for name, prefix in (('model', 'eval'), ('ema', 'eval_ema')):
            if f'{prefix}_top1' in row:
                print(f'{name}: top-1 {row[prefix + "_top1"]:.2f}%  top-5 {row[prefix + "_top5"]:.2f}%  loss '
                      f'{row[prefix + "_loss"]:.4f}  ({images} images)')
    leave()
    return 0


def finish_message(job: Job, run: Run, tb) -> None:
    """Rank 0: the best top-1 and the timm validate.py command for last.pth.tar."""
    if job.process.rank != 0:
        return
    print(f'done: best top-1 {run.best:.2f}%; checkpoints in {job.config.output}. Validate with timm\'s '
          f'validate.py:\n  {job_validate_command(job, run.model)}', flush=True)
    if tb:
        tb.close()


def job_validate_command(job: Job, model: torch.nn.Module) -> str:
    """The validate.py command that gives the job's evaluation of last.pth.tar: the model as built
    (every --model-kwargs), the data set, split, crop and precision the job evaluated with."""
    config, process = job.config, job.process
    flags = ['--dataset', f'wds/{job.info.get("name", "NAME")}', '--split', config.val_split]
    if config.crop_pct:
        flags += ['--crop-pct', str(config.crop_pct)]
    if process.amp != 'none':
        flags += ['--amp', '--amp-dtype', dict(bf16='bfloat16', fp16='float16')[process.amp]]
    if process.device.type != 'cuda':  # validate.py runs on cuda unless told
        flags += ['--device', process.device.type]
    kwargs, img_size = dict(config.run.model_kwargs), config.run.img_size
    if not hasattr(model, 'attn_tokens'):  # another timm model: the weights do not say its sizes
        kwargs.setdefault('num_classes', job.num_classes)
        if img_size:
            flags += ['--img-size', str(img_size)]
            if hasattr(model, 'patch_embed'):  # the job built it at this size (run.create_model)
                kwargs.setdefault('img_size', img_size)
    return validate_command(config.run.model, model.state_dict(), job.resume_path, config.data.root,
                            model_kwargs=kwargs, flags=flags)


def stop(preemption: 'Preemption', job: Job, step: int) -> int:
    """After the preemption save: all ranks leave the process group, then submitit may requeue."""
    if job.process.rank == 0:
        print(f'signal {preemption.signum}: saved {job.resume_path} at step {step}; rerun the same command '
              f'(or let the cluster requeue it) to resume', flush=True)
    leave()
    return preemption.hand_over()


# ----------------------------------------------------------------------------------------------------------------
# logs and saves


def progress(job: Job, loader, epoch: int, skip: int):
    """The epoch's batches, behind a progress bar on rank 0 (unless --no-progress)."""
    if job.process.rank != 0 or not job.config.progress:
        return loader
    from tqdm import tqdm
    return tqdm(loader, desc=f'epoch {epoch}', initial=skip, total=loader.dataset.batches_per_rank, unit='batch',
                dynamic_ncols=True, leave=False)


def start_logging(job: Job, run: Run):
    """The run's start: its identity recorded (identity.py), and on rank 0 a line if it resumed,
    TensorBoard if asked, and config.yaml in the run folder (the flags as run, with the derived values)."""
    run.identity = job.identity
    resumed, job.resume = job.resume, None  # the run holds what it needs of the checkpoint now
    process = job.process
    if process.rank != 0:
        return None
    if resumed is not None:
        print(f'resumed from {job.resume_path}: epoch {resumed["epoch_in_progress"]}, step {run.step}', flush=True)
    values = plain(dict(job.config.flags, lr=run.config.peak_lr(process.world), amp=process.amp,
                        world_size=process.world, num_classes=job.num_classes))
    tb = None
    if job.config.tensorboard:  # the package was checked with the flags (config.py)
        from torch.utils.tensorboard import SummaryWriter
        tb = SummaryWriter(str(job.folder.path('tb')))
    with atomic_file(job.folder.path('config.yaml'), 'w', tmp=job.folder.tmp('config.yaml')) as f:
        yaml.safe_dump(values, f, sort_keys=False)
    return tb


class StepHook:
    """Called after every optimizer step of the job: the loss curve every --log-every steps, and a
    save every --save-every-steps steps (none at an epoch's last step: the epoch's save follows)."""

    def __init__(self, job: Job, run: Run, tb=None):
        self.job, self.run, self.tb = job, run, tb

    def __call__(self, step: int, loss, lr: float, n: int) -> None:
        config, run = self.job.config, self.run
        run.step = step  # where a save in the middle of the epoch stands
        if self.job.process.rank == 0 and (step % config.log_every == 0 or step == 1):
            value = float(loss)
            run.log['steps'].append(dict(step=step, loss=value, lr=lr))
            if self.tb:
                self.tb.add_scalar('train/loss', value, step)
                self.tb.add_scalar('train/lr', lr, step)
        upe = run.updates_per_epoch
        if config.save_every_steps and step % config.save_every_steps == 0 and step % upe:
            save(self.job, run, step // upe, step // upe - 1)


def log_epoch(job: Job, run: Run, epoch: int, train_loss: float, row: Dict, img_s: float, eta: float, tb) -> None:
    """Append the epoch to the run's log; rank 0 writes summary.csv, curves.png, TensorBoard, a line."""
    row = dict(epoch=epoch, step=run.step, train_loss=train_loss, **row, lr=schedule_lr(run.optimizer),
               img_s=img_s, attn_tokens=getattr(run.model, 'attn_tokens', ''),
               ffn_tokens=getattr(run.model, 'ffn_tokens', ''))
    run.log['epochs'].append(row)
    if job.process.rank != 0:
        return
    write_logs(job.folder, run.log, run.growth_history)
    if tb:
        for k, v in row.items():
            if k.startswith('eval') or k in ('train_loss', 'img_s'):
                tb.add_scalar(k, v, run.step)
    ema_text = f', EMA {row["eval_ema_top1"]:.2f}%' if run.ema is not None else ''
    print(f'epoch {epoch}: loss {train_loss:.4f}, top-1 {row["eval_top1"]:.2f}%{ema_text}, top-5 '
          f'{row["eval_top5"]:.2f}%, {img_s:.0f} img/s, ETA {eta / 60:.1f} min', flush=True)


def save(job: Job, run: Run, epoch_in_progress: int, epoch_done: int, *names: str, gather: bool = True) -> None:
    """Rank 0 saves the run to last.pth.tar and to any further `names`, each atomically. Inside an
    epoch the save records where every rank's loader workers stand (all ranks call it together; with
    `gather` False only this rank's, the others then resume by image count)."""
    trained = run.step - epoch_in_progress * run.updates_per_epoch
    rank, world, position = job.process.rank, job.process.world, None
    state = run.checkpoint_state(epoch_in_progress, epoch_done) if rank == 0 else None
    if trained > 0 and job.train_stream is not None:
        mine = job.train_stream.position(trained)
        position = {str(rank): mine}
        if world > 1 and gather:
            import torch.distributed as dist
            every = [None] * world
            dist.all_gather_object(every, mine)
            position = {str(r): p for r, p in enumerate(every)}
    if rank != 0:
        return
    state['data_position'] = position
    for name in ('last.pth.tar',) + names:
        try:
            save_atomic(state, job.folder.path(name), tmp=job.folder.tmp(name))
        except OSError as e:  # the file it would have replaced is intact
            raise CheckpointError(f'could not write {job.folder.path(name)} ({e.strerror}): free space in or fix '
                                  f'--output, then rerun the command to resume from the last save.') from None

def end_epoch(job: Job, run: Run, val_loader, epoch: int, train_loss: float, img_s: float, eta: float, tb) -> None:
    """After an epoch's training: evaluate, log and save (best, every N epochs). A validation split that
    cannot be read in full stops the job after saving the trained epoch, which is evaluated on resume."""
    try:
        row = evaluate_run(run, val_loader)
    except DataError:
        run.unevaluated = dict(epoch=epoch, train_loss=train_loss, img_s=img_s)
        save(job, run, epoch + 1, epoch)
        raise
    run.unevaluated = None
    is_best = run.best is None or row['eval_top1'] > run.best
    run.best = row['eval_top1'] if is_best else run.best
    log_epoch(job, run, epoch, train_loss, row, img_s, eta, tb)
    every = job.config.save_every_epochs
    save(job, run, epoch + 1, epoch, *(('best.pth.tar',) if is_best else ()),
         *((f'checkpoint-{epoch}.pth.tar',) if every and (epoch + 1) % every == 0 else ()))
