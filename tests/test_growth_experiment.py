"""benchmarks/growth_experiment.py --quick: every strategy runs for every seed, FLOPs are counted
as the sum over stages, the JSON, the plot and the summary agree, a rerun reproduces a seed's
numbers, and --convergence trains every size for each schedule length."""
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / 'benchmarks'))


@pytest.fixture(scope='module')
def quick(tmp_path_factory):
    import growth_experiment
    out = tmp_path_factory.mktemp('growth')
    assert growth_experiment.main(['--quick', '--jobs', '2', '--output', str(out)]) == 0
    return json.loads((out / 'growth_vs_scratch_quick.json').read_text()), out


def test_quick_experiment_runs_every_strategy_and_seed(quick):
    result, out = quick
    cfg, runs = result['config'], result['runs']
    assert (out / 'growth_vs_scratch_quick.png').stat().st_size > 10_000
    assert sorted((r['strategy'], tuple(r['size'])) for r in runs if r['seed'] == 0) == sorted(
        [('scratch', tuple(s)) for s in cfg['sizes']] + [('preserve', tuple(cfg['sizes'][-1])),
                                                           ('paper', tuple(cfg['sizes'][-1]))])
    assert {r['seed'] for r in runs} == set(cfg['seeds']) and len(cfg['seeds']) >= 3
    for key, s in result['summary'].items():
        assert s['seeds'] == len(cfg['seeds']) and 0 <= s['top1'] <= 100 and s['spread'] >= 0, key


def test_flops_grow_with_tokens_and_a_ladder_counts_all_its_stages(quick):
    result, _ = quick
    cfg, per_image = result['config'], result['train_flops_per_image']
    f = [per_image[f'{a}/{b}'] for a, b in cfg['sizes']]
    assert f[0] < f[1] < f[2] < 2.2 * f[1]  # Pattention cost is linear in the token count, plus a fixed part
    n, bs = cfg['train_images'], cfg['batch_size']
    assert len(set(cfg['scratch_epochs'])) > 1  # one schedule length per size
    for r in result['runs']:
        if r['strategy'] == 'scratch':
            i = cfg['sizes'].index(r['size'])
            assert r['epochs'] == cfg['scratch_epochs'][i]
            assert r['flops'] == pytest.approx(round(r['epochs'] * n / bs) * bs * f[i], rel=1e-9)
    expected = sum(round(e * n / bs) * bs * fi for e, fi in zip(cfg['ladder_epochs'], f))
    for r in result['runs']:
        if r['strategy'] != 'scratch':
            assert r['flops'] == pytest.approx(expected, rel=1e-9)
            assert [p['flops'] for p in r['points']] == sorted(p['flops'] for p in r['points'])
    largest = result['summary'][f'scratch {cfg["sizes"][-1][0]}/{cfg["sizes"][-1][1]}']
    preserve = result['summary'][f'preserve {cfg["sizes"][-1][0]}/{cfg["sizes"][-1][1]}']
    assert preserve['flops_fraction_total'] == pytest.approx(preserve['flops'] / largest['flops'])


def test_preserve_growth_keeps_the_test_accuracy_at_the_growth_step(quick):
    result, _ = quick
    for r in result['runs']:
        points = r['points']
        for before, after in zip(points, points[1:]):
            if after['stage'].startswith('grown to') and r['strategy'] == 'preserve':
                assert after['top1'] == pytest.approx(before['top1'], abs=0.05)  # function-preserving


def test_a_rerun_of_one_seed_in_one_process_reproduces_its_numbers_exactly(quick, tmp_path):
    import torch
    import growth_experiment
    result, _ = quick  # trained two runs at a time, in worker processes
    threads = torch.get_num_threads()
    assert growth_experiment.main(['--quick', '--seeds', '0', '--jobs', '1', '--output', str(tmp_path)]) == 0
    assert torch.get_num_threads() == threads  # the runs' one thread is not left set in the caller
    rerun = json.loads((tmp_path / 'growth_vs_scratch_quick.json').read_text())
    assert rerun['config']['seeds'] == [0]

    def numbers(runs):
        return [(r['strategy'], r['size'], [(p['flops'], p['top1'], p['stage']) for p in r['points']])
                for r in runs if r['seed'] == 0]
    assert numbers(rerun['runs']) == numbers(result['runs'])


def test_convergence_mode_trains_every_size_for_each_schedule_length(tmp_path):
    import growth_experiment
    assert growth_experiment.main(['--quick', '--convergence', '--output', str(tmp_path)]) == 0
    result = json.loads((tmp_path / 'growth_convergence_quick.json').read_text())
    cfg = result['config']
    assert cfg['seeds'] == [0]  # one seed unless --seeds
    n, bs = cfg['train_images'], cfg['batch_size']
    assert sorted((tuple(r['size']), r['epochs']) for r in result['runs']) == sorted(
        (tuple(s), f * e) for s, e in zip(cfg['sizes'], cfg['scratch_epochs']) for f in cfg['convergence_factors'])
    for r in result['runs']:
        assert r['strategy'] == 'scratch' and r['flops'] > 0
        assert r['points'][-1]['flops'] == r['flops']  # the last evaluation is at the end of the schedule
        assert result['final_top1'][f'{r["size"][0]}/{r["size"][1]}'][str(r['epochs'])] == r['points'][-1]['top1']
    assert not (tmp_path / 'growth_vs_scratch_quick.json').exists()


def test_bad_schedules_and_process_counts_are_refused(tmp_path):
    import growth_experiment
    config = tmp_path / 'bad.yaml'
    config.write_text((REPO / 'configs' / 'growth_experiment.yaml').read_text().replace(
        'scratch_epochs:', 'scratch_epochs: [1, 2]  #'))
    with pytest.raises(SystemExit, match='scratch_epochs has 2 entries for 3 sizes'):
        growth_experiment.main(['--config', str(config), '--output', str(tmp_path)])
    with pytest.raises(SystemExit, match='at least 1'):
        growth_experiment.main(['--quick', '--jobs', '0', '--output', str(tmp_path)])


def test_reuse_adds_a_labelled_ladder_and_replaces_what_it_reruns(quick, tmp_path):
    import growth_experiment
    result, out = quick
    earlier = str(out / 'growth_vs_scratch_quick.json')
    assert growth_experiment.main(['--quick', '--seeds', '0,1', '--strategies', 'paper', '--ladder-epochs',
                                   '0.02,0.02,0.05', '--reuse', earlier, '--output', str(tmp_path), '--name', 'long']) == 0
    long = json.loads((tmp_path / 'long_quick.json').read_text())
    count = {}
    for r in long['runs']:
        count[r['strategy']] = count.get(r['strategy'], 0) + 1
    assert count == {'scratch': 6, 'preserve': 2, 'paper': 2, 'paper 0.02+0.02+0.05': 2}
    reused = [r for r in long['runs'] if r['strategy'] == 'scratch']
    assert reused == [r for r in result['runs'] if r['strategy'] == 'scratch' and r['seed'] in (0, 1)]
    largest = long['config']['sizes'][-1]
    assert f'paper 0.02+0.02+0.05 {largest[0]}/{largest[1]}' in long['summary']
    # rerunning the config's own paper ladder replaces the reused one instead of counting it twice
    assert growth_experiment.main(['--quick', '--seeds', '0', '--strategies', 'paper', '--reuse', earlier,
                                   '--output', str(tmp_path), '--name', 'again']) == 0
    again = json.loads((tmp_path / 'again_quick.json').read_text())
    assert sum(r['strategy'] == 'paper' for r in again['runs']) == 1
    with pytest.raises(SystemExit, match='other settings'):
        growth_experiment.main(['--quick', '--config', str(REPO / 'configs' / 'growth_experiment.yaml'),
                                '--strategies', 'paper', '--reuse', str(REPO / 'benchmarks' / 'results' /
                                                                         'growth_vs_scratch.json'),
                                '--output', str(tmp_path)])


def test_fewer_evaluations_leave_the_training_unchanged():
    import growth_experiment
    import yaml
    cfg = yaml.safe_load((REPO / 'configs' / 'growth_experiment.yaml').read_text())
    cfg.update(train_images=512, batch_size=128)  # 4 steps an epoch
    data = growth_experiment._data()
    flops = {(8, 32): 1.0}
    unlimited = {k: v for k, v in cfg.items() if k != 'max_evals'}
    every_epoch = growth_experiment.run_scratch(unlimited, data, flops, [8, 32], 0, 6)
    sparse = growth_experiment.run_scratch(dict(cfg, max_evals=2), data, flops, [8, 32], 0, 6)
    assert [p['flops'] for p in every_epoch['points']] == [4 * 128 * k for k in range(1, 7)]
    assert [p['flops'] for p in sparse['points']] == [4 * 128 * 3, 4 * 128 * 6]  # every 3rd epoch
    assert [p['top1'] for p in sparse['points']] == [every_epoch['points'][i]['top1'] for i in (2, 5)]
