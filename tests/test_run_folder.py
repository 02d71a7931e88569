"""run_folder.py: one job per run folder, results never overwritten without --overwrite, a folder
that cannot be one refused, and every rank following rank 0's verdict."""
import os
import random
import signal


from job import one_sentence, run_cli, train, weights


def test_output_that_is_a_file_or_cannot_be_created_is_refused(shards, tmp_path, capsys):
    (tmp_path / 'file').write_text('x')
    for out, message in ((tmp_path / 'file', 'is a file'), (tmp_path / 'file' / 'run', 'cannot write to --output')):
        code, err = run_cli(['--data-dir', shards, '--output', out, '--epochs', 1], capsys)
        assert code == 2 and message in one_sentence(err), err


def test_results_without_last_checkpoint_are_kept_unless_overwrite(shards, tmp_path, capsys):
    out = tmp_path / 'run'
    train('--data-dir', shards, '--output', out, '--epochs', 1)
    earlier = (out / 'best.pth.tar').read_bytes()
    (out / 'last.pth.tar').unlink()  # an earlier run's results, and nothing to resume from
    (out / '.last.pth.tar.partial').write_bytes(b'half a save')  # a save killed half-way
    code, err = run_cli(['--data-dir', shards, '--output', out, '--epochs', 1], capsys)
    assert code == 2 and 'holds results of an earlier run (best.pth.tar, config.yaml, curves.png, summary.csv)' \
        in one_sentence(err), err
    assert (out / 'best.pth.tar').read_bytes() == earlier
    res = train('--data-dir', shards, '--output', out, '--epochs', 1, '--overwrite')
    assert 'epoch 0:' in res.stdout and not (out / '.last.pth.tar.partial').exists()
    assert (out / 'summary.csv').read_text().count('\n') == 2


def test_files_the_job_did_not_write_are_never_replaced_even_with_overwrite(shards, tmp_path, capsys):
    # before: a user's summary.csv, best.pth.tar, config.yaml or .lock in --output was replaced or, with
    # --overwrite, removed, by its name alone; now only names the folder's manifest lists are ours
    for name in ('summary.csv', 'config.yaml', 'best.pth.tar', '.lock', 'checkpoint-0.pth.tar',
                 '.summary.csv.partial'):
        out = tmp_path / name.strip('.')
        out.mkdir()
        (out / name).write_text('mine')
        code, err = run_cli(['--data-dir', shards, '--output', out, '--epochs', 1, '--save-every-epochs', 1,
                             '--overwrite'], capsys)
        assert code == 2 and 'which this job did not write' in one_sentence(err), (name, err)
        assert (out / name).read_text() == 'mine' and sorted(p.name for p in out.iterdir()) == [name]
    # a timm checkpoint placed as last.pth.tar is not resumed from, nor replaced
    out = tmp_path / 'timm'
    out.mkdir()
    (out / 'last.pth.tar').write_bytes(b'timm')
    code, err = run_cli(['--data-dir', shards, '--output', out, '--epochs', 1], capsys)
    assert code == 2 and 'holds last.pth.tar, which this job did not write' in one_sentence(err)
    # files of other names stay beside the run, untouched
    out = tmp_path / 'mixed'
    out.mkdir()
    (out / 'notes.txt').write_text('mine')
    train('--data-dir', shards, '--output', out, '--epochs', 1)
    assert (out / 'notes.txt').read_text() == 'mine'


def test_a_second_job_on_a_run_folder_in_use_is_refused_and_the_first_runs_on(shards, tmp_path):
    # two real processes: the second starts while the first holds the folder; it is refused with the
    # first one's PID before it reads or writes anything, and the first trains on undisturbed
    import socket
    flags = ['--data-dir', shards, '--epochs', 60, '--output', tmp_path / 'run', '--log-every', 1]
    first = train(*flags, popen=dict(cwd=tmp_path))
    for line in first.stdout:  # the first job trains: its lock is held
        if line.startswith('epoch 0:'):
            break
    second = train(*flags, check=False)
    assert second.returncode == 2, second.stdout + second.stderr
    assert f'is in use by another job (pid {first.pid} on {socket.gethostname()})' in second.stderr
    assert second.stdout == '' and second.stderr.strip().count('\n') == 0
    assert first.poll() is None  # still training
    first.send_signal(signal.SIGUSR2)  # it saves where it is and ends, its lock with it
    out, _ = first.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGUSR2, out
    saved = weights(tmp_path / 'run' / 'last.pth.tar')[0]
    assert saved['step'] >= 6  # the first job's own progress, past its first epoch, was kept
    again = train(*flags, '--eval-only')  # the folder is free now
    assert 'model: top-1' in again.stdout


def test_every_rank_of_a_job_gets_the_output_folders_verdict(shards, tmp_path):
    # two real gloo ranks: rank 0 finds an earlier run's results in --output; both end with its
    # sentence and exit 2 (before, rank 1 died in its first collective with torch's own error)
    out = tmp_path / 'run'
    out.mkdir()
    (out / 'summary.csv').write_text('epoch\n0\n')
    port = str(random.randint(20000, 40000))
    procs = []
    for rank in (0, 1):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE='2', LOCAL_RANK=str(rank), MASTER_ADDR='127.0.0.1',
                   MASTER_PORT=port)
        procs.append(train('--data-dir', shards, '--output', out, '--epochs', 1, '--batch-size', 4,
                           popen=dict(cwd=tmp_path, env=env)))
    outs = [p.communicate(timeout=120)[0] for p in procs]
    for p, text in zip(procs, outs):
        assert p.returncode == 2 and 'holds summary.csv, which this job did not write' in text, text
    assert sorted(p.name for p in out.iterdir()) == ['summary.csv']  # and nothing else was left there
