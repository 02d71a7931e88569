"""submit.py: the job on a Slurm cluster (stand-ins for sbatch and scontrol) and submitit's local
executor, requeued after preemption; shards built inside a submitted job."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tokenformer_vit.make_shards import ShardSpec, make_shards

from job import _cmdline, descendants, train, weights


def test_shards_built_inside_a_submitted_local_job_finish(tmp_path):
    # submitit's tasks bypass SIGTERM; a process pool forked inside one used to wait forever on a worker
    import submitit
    from test_data import image_folder
    image_folder(tmp_path / 'img', classes=('a', 'b', 'c'), per_class=6)
    executor = submitit.AutoExecutor(folder=str(tmp_path / 'jobs'), cluster='local')
    executor.update_parameters(timeout_min=3, nodes=1, tasks_per_node=1, gpus_per_node=0)
    job = executor.submit(make_shards, str(tmp_path / 'img'), 'train', str(tmp_path / 'wds'),
                          ShardSpec(shard_size=3, max_side=512, workers=2, progress=False))
    deadline = time.time() + 120
    while not job.done() and time.time() < deadline:
        time.sleep(0.2)
    if not job.done():
        job.cancel()
        pytest.fail('building shards inside a submitted job did not finish in 120 s')
    assert job.result()['num_samples'] == 18


def test_slurm_submission_script_and_requeue_after_preemption(shards, tmp_path):
    """Against stand-ins for sbatch and scontrol on PATH, as submitit's own tests do: no cluster."""
    bin_dir, record = tmp_path / 'bin', tmp_path / 'record'
    bin_dir.mkdir()
    record.mkdir()
    (bin_dir / 'sbatch').write_text(f'#!/bin/sh\ncp "$1" {record}/script.sh\necho "Submitted batch job 4242"\n')
    (bin_dir / 'scontrol').write_text(f'#!/bin/sh\necho "$@" >> {record}/scontrol.txt\n')
    (bin_dir / 'srun').write_text('#!/bin/sh\nexit 1\n')  # submitit looks for it; the test never runs it
    for tool in ('sbatch', 'scontrol', 'srun'):
        (bin_dir / tool).chmod(0o755)
    out = tmp_path / 'run'
    res = train('--data-dir', shards, '--output', out, '--submit', '--cluster', 'slurm', check=False)
    assert res.returncode == 2 and 'cannot submit from this machine' in res.stderr
    assert res.stderr.strip().count('\n') == 0
    env = dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}')
    res = train('--data-dir', shards, '--output', out, '--epochs', 3, '--submit', '--cluster', 'slurm', '--nodes', 2,
                '--gpus-per-node', 8, '--partition', 'learn', '--timeout-min', 60, env=env)
    assert 'submitted job 4242' in res.stdout
    script = (record / 'script.sh').read_text()
    for line in ('--nodes=2', '--ntasks-per-node=8', '--gpus-per-node=8', '--signal=USR2@120', '--partition=learn',
                 '--time=60'):
        assert f'#SBATCH {line}\n' in script, line
    # the job itself, as Slurm would start its one task here: preempted after its first epoch
    task_env = dict(env, SUBMITIT_EXECUTOR='slurm', SLURM_JOB_ID='4242', SLURM_NTASKS='1', SLURM_PROCID='0',
                    SLURM_LOCALID='0', SLURM_NODEID='0', SLURM_JOB_NUM_NODES='1', SLURM_JOB_NODELIST='localhost')
    task = [sys.executable, '-u', '-m', 'submitit.core._submit', str(out / 'submitit')]
    proc = subprocess.Popen(task, env=task_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while not (out / 'last.pth.tar').exists():
        assert time.time() < deadline and proc.poll() is None, proc.communicate()[0]
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR2)
    log, _ = proc.communicate(timeout=180)
    assert (record / 'scontrol.txt').read_text().split() == ['requeue', '4242'], log
    stopped = weights(out / 'last.pth.tar')[0]['step']
    assert 6 <= stopped < 18, log
    # the requeued job: the same task again, which resumes and finishes
    again = subprocess.run(task, env=task_env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert weights(out / 'last.pth.tar')[0]['step'] == 18 and 'resumed from' in again.stdout + again.stderr


def test_submitit_local_two_tasks_requeue_after_sigusr2_and_resume(shards, tmp_path):
    out = tmp_path / 'job'
    proc = train('--data-dir', shards, '--output', out, '--epochs', 30, '--submit', '--cluster', 'local',
                 '--tasks-per-node', 2, '--gpus-per-node', 0, '--timeout-min', 10, popen=dict(cwd=tmp_path))
    deadline = time.time() + 300
    while not (out / 'last.pth.tar').exists():  # the first epoch is done: signal both tasks mid-run
        assert time.time() < deadline and proc.poll() is None, proc.communicate()[0]
        time.sleep(0.05)
    pids = [pid for pid in descendants(proc.pid) if b'submitit.core._submit' in _cmdline(pid)]
    assert len(pids) == 2, pids  # the two tasks of our own job, found among our own children
    for pid in pids:
        os.kill(pid, signal.SIGUSR2)
    stdout, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, stdout
    logs = ''.join(p.read_text() for p in (out / 'submitit').glob('*_log.*'))
    assert 'Requeued job' in logs and 'resumed from' in logs, logs[-3000:]
    ckpt = torch.load(out / 'last.pth.tar', map_location='cpu', weights_only=True)
    assert ckpt['step'] == 30 * 48 // 16 and [r['epoch'] for r in ckpt['log']['epochs']] == list(range(30))
