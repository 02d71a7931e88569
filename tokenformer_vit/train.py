"""The training job behind `train_imagenet.py` (flags: config.py; launcher: submit.py): train a
Tokenformer-ViT on WebDataset shards on one device, over DDP (torchrun or submitit) or on a Slurm
cluster, grow it on a schedule, and survive preemption without losing work. The run itself (model,
optimizer, growth, the epoch loop) is run.py's.

    python train_imagenet.py --config configs/demo.yaml
    python train_imagenet.py --config configs/tokenformer_vit_base.yaml --data-dir /data/imagenet-wds --output runs/b
    torchrun --nproc-per-node 8 train_imagenet.py --config configs/tokenformer_vit_base.yaml ...
    python train_imagenet.py --config configs/tokenformer_vit_base.yaml ... --submit --cluster slurm --nodes 4 \\
        --gpus-per-node 8

A job whose --output holds `last.pth.tar` resumes from it: model, EMA, optimizer, scaler,
scheduler, step and data position; growth events it has passed are not repeated. On SIGUSR2 or
SIGTERM the job saves at the next step boundary and stops (under submitit rank 0 then requeues).

This file is the job's flow, read top to bottom; its parts (process, run folder, data, logs, saves)
are job.py's, and `main` takes the job's values (config.job_config), not its flags.
"""
import time

from .config import JobConfig
from .distributed import Preemption, leave
from .errors import DataError
from .job import (StepHook, build_loaders, end_epoch, evaluate_only, finish_message, prepare_data, progress, save,
                  setup, start_logging, stop)
from .run import build_model, build_run, check_epochs, train_epochs

__all__ = ['main']


def main(config: JobConfig) -> int:
    """The job: set up, build or resume the run, then per epoch grow, train, evaluate and log, save."""
    job = setup(config)
    process = job.process
    try:
        try:  # a job refused before its first step leaves nothing behind
            prepare_data(job)
            model, history = build_model(config.run, job.num_classes, job.resume, str(job.resume_path),
                                         grow_initial=not config.eval_only, weights=job.weights,
                                         say=lambda line: print(line, flush=True) if process.rank == 0 else None)
            job.weights = None  # in the model now
            train_loader, val_loader = build_loaders(job)
            if config.eval_only:
                return evaluate_only(job, model, val_loader)
            upe = train_loader.dataset.batches_per_rank
            job.train_stream = train_loader.dataset
            if job.resume is not None:
                check_epochs(config.run, job.resume, upe, job.resume_path)
            run = build_run(config.run, model, job.num_classes, upe, process=process, growth_history=history,
                            resume=job.resume, source=str(job.resume_path))
            tb = start_logging(job, run)
        except BaseException:
            job.folder.release()
            raise
        preemption = Preemption(process.world, process.device)
        t_start, step_start = time.time(), run.step
        if run.unevaluated:  # stopped after training an epoch that could not be evaluated: evaluate it first
            pending = run.unevaluated
            end_epoch(job, run, val_loader, pending['epoch'], pending['train_loss'], pending['img_s'], 0.0, tb)
        try:
            for result in train_epochs(run, train_loader, should_stop=preemption.requested,
                                       on_step=StepHook(job, run, tb),
                                       view=lambda loader, epoch, skip: progress(job, loader, epoch, skip)):
                epoch = result['epoch']
                if result['stopped'] and run.step % upe:  # signalled mid-epoch: save where it stopped
                    save(job, run, epoch, epoch - 1)
                    return stop(preemption, job, run.step)
                img_s = result['images'] * process.world / max(result['seconds'], 1e-9)
                eta = (time.time() - t_start) / max(1, run.step - step_start) * (config.run.epochs * upe - run.step)
                end_epoch(job, run, val_loader, epoch, result['loss'], img_s, eta, tb)
                if result['stopped'] and epoch + 1 < config.run.epochs:  # signalled in its last step: saved above
                    return stop(preemption, job, run.step)
        except DataError:  # shards gone or rebuilt in the middle of an epoch: keep the steps trained so far
            if run.step % upe:
                save(job, run, run.step // upe, run.step // upe - 1, gather=False)  # the other ranks may be elsewhere
            raise
        finish_message(job, run, tb)
        leave()
        return 0
    finally:  # ended, refused or failed: the run folder is free for the next command (in this process too)
        job.folder.close()
