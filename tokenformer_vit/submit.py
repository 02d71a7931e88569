"""Run the training job through submitit: Slurm, or `local` (real processes on this machine), or
`debug` (in this process). One task per GPU (or per process on a CPU machine); each task sets up
torch.distributed from submitit's environment. On preemption or timeout (SIGUSR2) every rank stops at
the same step boundary, rank 0 saves `last.pth.tar`, then submitit requeues the job, and the requeued
job resumes from it (distributed.Preemption does the ordering). The command (cli.py) calls
`submit` with the checked flags; each task turns them into the job's values (config.job_config) and
runs the job (train.main), which never imports this module.

    python train_imagenet.py --config configs/tokenformer_vit_base.yaml --data-dir /data/imagenet-wds \\
        --output runs/base --submit --cluster slurm --nodes 4 --gpus-per-node 8 --partition learnlab
"""
import argparse
import os
from pathlib import Path

from .errors import UserError

__all__ = ['Trainer', 'submit']


class Trainer:
    """The submitted callable: a training run that submitit can checkpoint and requeue."""

    def __init__(self, args: argparse.Namespace):
        self.args = args

    def __call__(self) -> int:
        import submitit
        from .config import job_config
        from .train import main
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        return main(job_config(self.args))  # after a preemption rank 0 does not return: submitit requeues and exits

    def checkpoint(self):
        """Called by submitit on rank 0 after train.py has saved: requeue the same run, which resumes."""
        import submitit
        return submitit.helpers.DelayedSubmission(Trainer(self.args))


def submit(args: argparse.Namespace) -> int:
    import submitit
    tasks = args.tasks_per_node or args.gpus_per_node
    folder = Path(args.job_dir or Path(args.output) / 'submitit')
    try:
        executor = submitit.AutoExecutor(folder=str(folder), cluster=args.cluster)
    except RuntimeError as e:  # submitit's "Could not detect srun": no Slurm here
        raise UserError(f'--cluster {args.cluster} cannot submit from this machine ({e}): run on a login node of the '
                        f'cluster, or use --cluster local.') from None
    params = dict(nodes=args.nodes, tasks_per_node=tasks, cpus_per_task=args.cpus_per_task,
                  timeout_min=args.timeout_min, name=f'tokenformer-{Path(args.output).name}')
    if args.cluster == 'slurm':
        params.update(gpus_per_node=args.gpus_per_node, slurm_signal_delay_s=120)
        if args.partition:
            params['slurm_partition'] = args.partition
        if args.mem_gb:
            params['mem_gb'] = args.mem_gb
    elif args.cluster == 'local':
        params.update(gpus_per_node=args.gpus_per_node if _has_cuda() else 0)
        params.pop('cpus_per_task')
    executor.update_parameters(**params)
    run_args = argparse.Namespace(**vars(args))
    run_args.submit = False
    run_args.output = str(Path(args.output).resolve())
    run_args.data_dir = str(Path(args.data_dir).resolve())
    for key in ('initial_checkpoint', 'pretrained_path'):  # the job may start in another folder
        if getattr(run_args, key):
            setattr(run_args, key, str(Path(getattr(run_args, key)).resolve()))
    job = executor.submit(Trainer(run_args))
    print(f'submitted job {job.job_id} ({args.cluster}, {args.nodes} node(s) x {tasks} task(s)); logs in {folder}',
          flush=True)
    if args.cluster in ('local', 'debug'):
        job.results()  # local jobs die with this process: wait for them (one result per task)
        print(f'job {job.job_id} finished', flush=True)
    return 0


def _has_cuda() -> bool:
    import torch
    return torch.cuda.is_available() and os.environ.get('CUDA_VISIBLE_DEVICES', None) != ''
