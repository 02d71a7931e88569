"""torch.compile on the torch that is installed: every model traces as one graph (train and eval,
fp32 and bf16 autocast, the torch and the fused Pattention path, whole model and per block), and a
compiled training run compiles each size once per phase through four growths, never reaching
dynamo's recompile limit.

`bash benchmarks/check_torch.sh 2.11.0` runs this file (with the op-count and kernel tests) under
another torch, such as the GPU machines' 2.11, whose dynamo traces less than today's.
"""
import importlib.util

import pytest
import torch
import timm
from torch._dynamo.testing import CompileCounter

import tokenformer_vit  # noqa: F401
from tokenformer_vit.config import job_args, study_config
from tokenformer_vit.run import build_model, build_run, evaluate_run, train_epochs
from tokenformer_vit.triton_env import interpreting

# the fused path runs on CPU tensors only through Triton's interpreter (conftest.py sets it without a GPU)
IMPLS = ['torch'] + (['triton'] if importlib.util.find_spec('triton') and (torch.cuda.is_available() or interpreting())
                     else [])
DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'


def tiny(impl: str, **kwargs):
    kwargs = dict(dict(img_size=32, patch_size=8, depth=2, num_classes=10), **kwargs)
    return timm.create_model('tokenformer_vit_tiny', pattention_impl=impl, **kwargs).to(DEVICE)


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('train', [True, False], ids=['train', 'eval'])
@pytest.mark.parametrize('amp', [False, True], ids=['fp32', 'bf16'])
def test_whole_model_traces_as_one_graph_without_a_break(impl, train, amp):
    torch._dynamo.reset()
    model = tiny(impl).train(train)
    x = torch.randn(2, 3, 32, 32, device=DEVICE)

    def step(x):
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=amp):
            return model(x)

    with torch.set_grad_enabled(train):
        explained = torch._dynamo.explain(step)(x)
    reasons = [str(b.reason).splitlines()[0] for b in explained.break_reasons]
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), reasons


@pytest.mark.parametrize('impl', IMPLS)
def test_each_block_compiles_as_one_full_graph_with_one_compilation_for_all_blocks(impl):
    # regional compilation (benchmarks/bench_model.py --compile-mode regional): identical blocks share
    # one graph; fullgraph=True fails on any break
    torch._dynamo.reset()
    model = tiny(impl, depth=3)
    counter = CompileCounter()
    for block in model.blocks:
        block.compile(fullgraph=True, backend=counter)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        model(torch.randn(2, 3, 32, 32, device=DEVICE)).float().sum().backward()
    assert counter.frame_count == 1


def test_a_compiled_run_compiles_each_size_once_per_phase_through_four_growths(monkeypatch):
    # The job's own Run, compiled, growing at epochs 1-4. Each size compiles two graphs, training and
    # evaluation (the EMA's evaluation reuses the model's graph), and no more; none falls back to
    # eager (with the cache kept and the default limit of 8, the fifth size would: bench_compile_growth.py).
    # A counting backend stands in for inductor.
    counter = CompileCounter()
    compile_ = torch.compile
    modes = []

    def counted_compile(module, mode=None, **kwargs):
        modes.append(mode)
        return compile_(module, backend=counter, **kwargs)

    monkeypatch.setattr(torch, 'compile', counted_compile)
    config = study_config(model='tokenformer_vit_tiny', model_kwargs=dict(depth=1, embed_dim=32, num_heads=2,
                                                                          attn_tokens=8, ffn_tokens=16, patch_size=8,
                                                                          img_size=16),
                          epochs=5, batch_size=4, compile=True, ema_decay=0.9, mixup=0, cutmix=0,
                          grow='1:12:24,2:16:32,3:20:40,4:24:48')
    model, history = build_model(config, num_classes=4)
    run = build_run(config, model, 4, updates_per_epoch=1, growth_history=history)
    g = torch.Generator().manual_seed(0)
    batch = (torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=g), torch.randint(0, 4, (4,),
                                                                                                  generator=g))
    per_size, before = [], [0]

    class OneBatch(list):  # the loader of an epoch of one batch
        dataset = property(lambda self: self)

        def set_epoch(self, epoch, skip_batches=0):
            before[0] = counter.frame_count  # after the epoch's growth, before its steps

    for _ in train_epochs(run, OneBatch([batch])):
        evaluate_run(run, [batch, batch])  # the second batch reuses the graph
        per_size.append(counter.frame_count - before[0])
    assert run.model.attn_tokens == 24
    assert per_size == [2] * 5, per_size
    assert set(modes) == {'default'}


def test_compile_mode_without_compile_is_one_sentence():
    from tokenformer_vit.config import ConfigError
    with pytest.raises(ConfigError, match='--compile-mode reduce-overhead takes effect only with --compile'):
        job_args(compile_mode='reduce-overhead')
