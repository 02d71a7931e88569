"""benchmarks/growth_experiment.py --quick: every strategy runs for every seed through the job's own
Run, each ladder really grows (and restarts its schedule only under `restart`), FLOPs are counted as
the sum over stages, the JSON, the plot and the summary agree, a rerun reproduces a seed's numbers,
and --convergence trains every size for each schedule length."""
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'benchmarks'))
FM = {}  # the tests' study config: its path, once written


def fashion_mnist_study() -> dict:
    """The tests' study: the CIFAR-10 study's recipe on Fashion-MNIST (which the tests have, from the
    Debian package; CIFAR-10 they do not), 28x28 grey at three small sizes, the 2x2 of ladders."""
    import yaml
    cfg = yaml.safe_load((REPO / 'benchmarks' / 'growth_cifar10.yaml').read_text())
    cfg.update(dataset='fashion-mnist', sizes=[[16, 64], [32, 128], [64, 256]], scratch_epochs=[60, 30, 30],
               ladders=['preserve+continue', 'preserve+restart', 'paper+continue', 'paper+restart'],
               convergence_factors=[0.5, 2], train_images=60000)
    cfg['job'] = dict(cfg['job'], img_size=28,
                      model_kwargs=dict(embed_dim=64, depth=2, num_heads=4, patch_size=7, in_chans=1))
    return cfg


@pytest.fixture(scope='module', autouse=True)
def study_config_file(tmp_path_factory):
    import yaml
    path = tmp_path_factory.mktemp('config') / 'fashion_mnist.yaml'
    path.write_text(yaml.safe_dump(fashion_mnist_study()))
    FM['path'] = str(path)
    return path


@pytest.fixture(scope='module')
def quick(tmp_path_factory, study_config_file):
    import growth_experiment
    out = tmp_path_factory.mktemp('growth')
    assert growth_experiment.main(['--config', FM['path'], '--quick', '--jobs', '2', '--output', str(out)]) == 0
    return json.loads((out / 'growth_vs_scratch_fashion_mnist_quick.json').read_text()), out


def test_quick_experiment_runs_every_strategy_and_seed(quick):
    import growth_experiment
    result, out = quick
    cfg, runs = result['config'], result['runs']
    assert (out / 'growth_vs_scratch_fashion_mnist_quick.png').stat().st_size > 10_000
    largest = tuple(cfg['sizes'][-1])
    assert sorted((r['strategy'], tuple(r['size'])) for r in runs if r['seed'] == 0) == sorted(
        [('scratch', tuple(s)) for s in cfg['sizes']] + [(s, largest) for s in growth_experiment.LADDERS])
    assert {r['seed'] for r in runs} == set(cfg['seeds']) and len(cfg['seeds']) >= 3
    for key, s in result['summary'].items():
        assert s['seeds'] == len(cfg['seeds']) and 0 <= s['top1'] <= 100 and s['spread'] >= 0, key


def test_every_ladder_grows_at_each_stage_boundary(quick):
    result, _ = quick
    cfg = result['config']
    grown = [f'grown to {a}/{f}' for a, f in cfg['sizes'][1:]]
    for r in result['runs']:
        growths = [p['stage'] for p in r['points'] if p['stage'].startswith('grown to')]
        assert growths == ([] if r['strategy'] == 'scratch' else grown), r['strategy']
        if r['strategy'] != 'scratch':  # the last point is at the largest size
            assert r['points'][-1]['stage'] == '{}/{}'.format(*cfg['sizes'][-1])


def test_ladders_are_the_jobs_grow_flags_and_only_restart_restarts_the_schedule():
    import growth_experiment
    cfg = fashion_mnist_study()
    config = growth_experiment.run_args(cfg, 'paper+restart', 0, 0)
    assert [(e.epoch, e.attn_tokens, e.ffn_tokens) for e in config.growth.events] == [(5, 32, 128), (10, 64, 256)]
    assert (config.growth.mode, config.growth.schedule, config.epochs) == ('paper', 'restart', 25)
    assert growth_experiment.run_args(cfg, 'preserve+continue', 0, 0).growth.schedule == 'continue'
    scratch = growth_experiment.run_args(cfg, 'scratch', 0, 30, (64, 256))
    assert not scratch.growth and scratch.model_kwargs['attn_tokens'] == 64 and scratch.warmup_epochs == 1.5


def test_flops_grow_with_tokens_and_a_ladder_counts_all_its_stages(quick):
    result, _ = quick
    cfg, per_image = result['config'], result['train_flops_per_image']
    f = [per_image[f'{a}/{b}'] for a, b in cfg['sizes']]
    assert f[0] < f[1] < f[2] < 2.2 * f[1]  # Pattention cost is linear in the token count, plus a fixed part
    images = cfg['train_images'] // cfg['job']['batch_size'] * cfg['job']['batch_size']  # an epoch, drop-last
    for r in result['runs']:
        if r['strategy'] == 'scratch':
            i = cfg['sizes'].index(r['size'])
            assert r['epochs'] == cfg['scratch_epochs'][i]
            assert r['flops'] == pytest.approx(r['epochs'] * images * f[i], rel=1e-9)
        else:
            assert r['flops'] == pytest.approx(sum(e * images * fi for e, fi in zip(cfg['ladder_epochs'], f)), rel=1e-9)
            assert [p['flops'] for p in r['points']] == sorted(p['flops'] for p in r['points'])
    largest = result['summary'][f'scratch {cfg["sizes"][-1][0]}/{cfg["sizes"][-1][1]}']
    ladder = result['summary'][f'preserve+continue {cfg["sizes"][-1][0]}/{cfg["sizes"][-1][1]}']
    assert ladder['flops_fraction_total'] == pytest.approx(ladder['flops'] / largest['flops'])


def test_preserve_growth_keeps_the_test_accuracy_at_the_growth_step(quick):
    result, _ = quick
    checked = 0
    for r in result['runs']:
        points = r['points']
        for before, after in zip(points, points[1:]):
            if after['stage'].startswith('grown to') and r['strategy'].startswith('preserve'):
                assert after['top1'] == pytest.approx(before['top1'], abs=0.05)  # function-preserving
                checked += 1
    assert checked == 2 * 2 * len(result['config']['seeds'])  # two ladders, two growths, every seed


def test_a_rerun_of_one_seed_in_one_process_reproduces_its_numbers_exactly(quick, tmp_path):
    import torch
    import growth_experiment
    result, _ = quick  # trained two runs at a time, in worker processes
    threads = torch.get_num_threads()
    assert growth_experiment.main(['--config', FM['path'], '--quick', '--seeds', '0', '--jobs', '1', '--strategies',
                                   'scratch,paper+restart', '--output', str(tmp_path)]) == 0
    assert torch.get_num_threads() == threads  # the runs' one thread is not left set in the caller
    rerun = json.loads((tmp_path / 'growth_vs_scratch_fashion_mnist_quick.json').read_text())
    assert rerun['config']['seeds'] == [0]

    def numbers(runs):
        return [(r['strategy'], r['size'], [(p['flops'], p['top1'], p['stage']) for p in r['points']])
                for r in runs if r['seed'] == 0 and r['strategy'] in ('scratch', 'paper+restart')]
    assert numbers(rerun['runs']) == numbers(result['runs'])


def test_convergence_mode_trains_every_size_for_each_schedule_length(tmp_path):
    import growth_experiment
    assert growth_experiment.main(['--config', FM['path'], '--quick', '--convergence', '--output', str(tmp_path)]) == 0
    result = json.loads((tmp_path / 'growth_convergence_fashion_mnist_quick.json').read_text())
    cfg = result['config']
    assert cfg['seeds'] == [0]  # one seed unless --seeds
    assert sorted((tuple(r['size']), r['epochs']) for r in result['runs']) == sorted(
        (tuple(s), round(f * e)) for s, e in zip(cfg['sizes'],
                                                 cfg['scratch_epochs']) for f in cfg['convergence_factors'])
    for r in result['runs']:
        assert r['strategy'] == 'scratch' and r['flops'] > 0
        assert r['points'][-1]['flops'] == r['flops']  # the last evaluation is at the end of the schedule
        assert result['final_top1'][f'{r["size"][0]}/{r["size"][1]}'][str(r['epochs'])] == r['points'][-1]['top1']
    assert not (tmp_path / 'growth_vs_scratch_fashion_mnist_quick.json').exists()


def test_bad_schedules_strategies_and_process_counts_are_refused(tmp_path):
    import growth_experiment
    config = tmp_path / 'bad.yaml'
    import yaml
    config.write_text(yaml.safe_dump(dict(fashion_mnist_study(), scratch_epochs=[1, 2])))
    with pytest.raises(SystemExit, match='scratch_epochs has 2 entries for 3 sizes'):
        growth_experiment.main(['--config', str(config), '--output', str(tmp_path)])
    with pytest.raises(SystemExit, match='at least 1'):
        growth_experiment.main(['--config', FM['path'], '--quick', '--jobs', '0', '--output', str(tmp_path)])
    with pytest.raises(SystemExit, match='choose among'):
        growth_experiment.main(['--config', FM['path'], '--quick', '--strategies', 'preserve+sometimes', '--output',
                                str(tmp_path)])


def test_fewer_evaluations_leave_the_training_unchanged():
    import growth_experiment
    cfg = fashion_mnist_study()
    cfg.update(train_images=512, test_images=500, sizes=[[8, 32]])
    cfg['job']['batch_size'] = 128  # 4 steps an epoch
    data = growth_experiment._data('fashion-mnist')
    flops = {(8, 32): 1.0}
    every_epoch = growth_experiment.run_one(cfg, data, flops, 'scratch', 0, 6, (8, 32))
    sparse = growth_experiment.run_one(dict(cfg, max_evals=2), data, flops, 'scratch', 0, 6, (8, 32))
    assert [p['flops'] for p in every_epoch['points']] == [4 * 128 * k for k in range(1, 7)]
    assert [p['flops'] for p in sparse['points']] == [4 * 128 * 3, 4 * 128 * 6]  # every 3rd epoch
    assert [p['top1'] for p in sparse['points']] == [every_epoch['points'][i]['top1'] for i in (2, 5)]


def test_a_rerun_reads_every_finished_run_from_the_cache_and_another_setting_trains_afresh(quick, tmp_path, capsys):
    import growth_experiment
    result, out = quick
    capsys.readouterr()
    assert growth_experiment.main(['--config', FM['path'], '--quick', '--jobs', '2', '--output', str(out)]) == 0
    printed = capsys.readouterr().out
    assert f'{len(result["runs"])} of {len(result["runs"])} runs read from' in printed
    again = json.loads((out / 'growth_vs_scratch_fashion_mnist_quick.json').read_text())

    def clock_free(summary):  # seconds come from each invocation's own timing (train_seconds_per_image)
        return {k: {f: v for f, v in s.items() if 'seconds' not in f} for k, s in summary.items()}
    assert clock_free(again['summary']) == clock_free(result['summary'])
    assert all(r['cached'] for r in again['runs'])
    # a study stopped half-way keeps its finished runs: here one seed's, then all three seeds
    cache = tmp_path / 'cache'
    assert growth_experiment.main(['--config', FM['path'], '--quick', '--seeds', '0', '--strategies', 'scratch',
                                   '--output', str(tmp_path),
                                   '--cache', str(cache)]) == 0
    capsys.readouterr()
    assert growth_experiment.main(['--config', FM['path'], '--quick', '--seeds', '0,1', '--strategies', 'scratch',
                                   '--output', str(tmp_path),
                                   '--cache', str(cache), '--threads', '2']) == 0
    assert '0 of 6 runs read' in capsys.readouterr().out  # another thread count: another setting
    assert growth_experiment.main(['--config', FM['path'], '--quick', '--seeds', '0,1', '--strategies', 'scratch',
                                   '--output', str(tmp_path),
                                   '--cache', str(cache)]) == 0
    assert '3 of 6 runs read' in capsys.readouterr().out


def test_both_views_measure_where_a_ladder_reaches_the_scratch_bar():
    import growth_experiment
    cfg = dict(sizes=[[8, 32], [16, 64]])

    def run(strategy, seed, points):
        pts = [dict(flops=f, seconds=s, top1=t, stage=st) for f, s, t, st in points]
        return dict(strategy=strategy, size=[16, 64], seed=seed, flops=pts[-1]['flops'],
                    seconds=pts[-1]['seconds'], points=pts)

    runs = [run('scratch', seed, [(50, 5, 70 + seed, '16/64'), (100, 10, 80 + 2 * seed, '16/64')])
            for seed in (0, 1)]  # final top-1 80 and 82: mean 81, sd √2
    runs += [run('ramp+continue', seed, [(10, 2, 60, '8/32'), (20, 4, 70, '8/32'), (20, 4, 70, 'grown to 16/64'),
                                         (40, 6, 78, '16/64'), (60, 9, 81, '16/64')]) for seed in (0, 1)]
    s = growth_experiment.summarize(cfg, runs)['ramp+continue 16/64']
    # the bar is 81 − √2 ≈ 79.6, first met at 60 FLOPs and 9 s: 60% of scratch's FLOPs, 90% of its seconds
    assert s['flops_fraction_at_reach'] == 0.6 and s['seconds_fraction_at_reach'] == 0.9
    # reuse: from the growth at 20 FLOPs and 4 s, 40 more FLOPs and 5 more seconds
    assert s['reuse_flops_fraction'] == 0.4 and s['reuse_seconds_fraction'] == 0.5
    assert s['difference_is_within_spread'] and s['flops_fraction_total'] == 0.6
    # the scratch run (mean 70.5 at 50 FLOPs, 81 at 100) first does as well as the ladder's 81 at its end
    assert s['scratch_flops_fraction_at_ladder_top1'] == 1.0
    runs += [run('paper+restart', seed, [(20, 4, 65, 'grown to 16/64'), (60, 9, 70, '16/64')]) for seed in (0, 1)]
    assert growth_experiment.summarize(cfg, runs)['paper+restart 16/64']['scratch_flops_fraction_at_ladder_top1'] == 0.5


def test_a_config_with_unknown_ladders_or_data_set_is_refused_before_anything_runs(tmp_path):
    import growth_experiment
    import yaml
    cfg = fashion_mnist_study()
    for bad in (dict(ladders=['preserve+continue', 'double+continue']), dict(dataset='mnist')):
        path = tmp_path / 'bad.yaml'
        path.write_text(yaml.safe_dump(dict(cfg, **bad)))
        with pytest.raises(SystemExit, match='ladders are MODE\\+SCHEDULE'):
            growth_experiment.parse(['--config', str(path), '--output', str(tmp_path)])


def test_every_point_counts_the_images_trained_at_each_size_and_seconds_are_those_times_the_timed_rate(quick):
    result, _ = quick
    cfg, rate = result['config'], result['train_seconds_per_image']
    images = cfg['train_images'] // cfg['job']['batch_size'] * cfg['job']['batch_size']
    assert all(rate[f'{a}/{b}'] > 0 for a, b in cfg['sizes'])
    for r in result['runs']:
        stages = [(r['size'], r['epochs'])] if r['strategy'] == 'scratch' else zip(cfg['sizes'], cfg['ladder_epochs'])
        assert r['images'] == {f'{a}/{b}': e * images for (a, b), e in stages}, r['strategy']
        assert r['seconds'] == pytest.approx(sum(n * rate[k] for k, n in r['images'].items()), rel=1e-12)
        assert r['seconds_in_run'] > 0 and r['points'][-1]['images'] == r['images']


def test_timed_seconds_are_the_images_at_each_size_times_its_rate_and_the_clock_is_kept_beside_them():
    import growth_experiment
    new = dict(seconds=99.0, images={'8/32': 10, '16/64': 20},
               points=[dict(seconds=1.0, images={'8/32': 10}), dict(seconds=99.0, images={'8/32': 10, '16/64': 20})])
    timed, = growth_experiment.with_timed_seconds([new], {'8/32': 0.5, '16/64': 2.0})
    assert [p['seconds'] for p in timed['points']] == [5.0, 45.0] and timed['seconds'] == 45.0
    assert timed['seconds_in_run'] == 99.0 and timed['points'][0]['seconds_in_run'] == 1.0


def _fake_cifar10(split):
    """Class-sorted like the JPEG folders: every image's pixels hold its label."""
    import numpy as np
    per_class = 130 if split == 'train' else 50
    labels = np.repeat(np.arange(10), per_class).astype(np.int64)
    return np.broadcast_to(labels[:, None, None, None].astype(np.uint8), (len(labels), 32, 32, 3)).copy(), labels


def test_cifar10_study_data_comes_in_a_fixed_shuffle_so_a_prefix_holds_every_class(monkeypatch):
    import torch
    import study_data
    monkeypatch.setattr(study_data, 'load_cifar10', _fake_cifar10)
    train_x, train_y, test_x, test_y = study_data.load_dataset('cifar10')
    assert train_x.shape == (1300, 3, 32, 32) and test_x.shape == (500, 3, 32, 32)
    assert set(train_y[:100].tolist()) == set(range(10)) and set(test_y[:100].tolist()) == set(range(10))
    assert (train_x[:, 0, 0, 0].long() == train_y).all() and (test_x[:, 0, 0, 0].long() == test_y).all()
    assert torch.equal(study_data.load_dataset('cifar10')[1], train_y)  # the same order every time


def test_the_cifar10_config_runs_quick_and_writes_its_own_files(monkeypatch, tmp_path):
    import growth_experiment
    import study_data
    monkeypatch.setattr(study_data, 'load_cifar10', _fake_cifar10)
    growth_experiment._data.cache_clear()
    try:
        assert growth_experiment.main(['--config', str(REPO / 'benchmarks' / 'growth_cifar10.yaml'), '--quick',
                                       '--seeds', '0', '--jobs', '1', '--strategies', 'scratch,ramp+restart',
                                       '--output', str(tmp_path), '--cache', 'none']) == 0
    finally:
        growth_experiment._data.cache_clear()
    result = json.loads((tmp_path / 'growth_vs_scratch_cifar10_quick.json').read_text())
    assert (tmp_path / 'growth_vs_scratch_cifar10_quick.png').is_file()
    assert result['config']['dataset'] == 'cifar10' and 'ramp+restart 128/512' in result['summary']
    assert not (tmp_path / 'growth_vs_scratch_fashion_mnist_quick.json').exists()  # each data set names its files
