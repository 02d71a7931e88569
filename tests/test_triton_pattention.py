"""The fused Triton path of `l2_gelu` Pattention against a float64 evaluation of the formula.

On a machine without a GPU the kernels run on CPU tensors under TRITON_INTERPRET=1 (conftest.py),
in fp32 and fp16: the interpreter mishandles bf16, which is tested on CUDA only. On a GPU the same
tests run on CUDA tensors, bf16 included, and also check inductor's compilation of the op.
"""
import math

import pytest
import torch
import torch.nn.functional as F

triton = pytest.importorskip('triton')

import timm  # noqa: E402

from tokenformer_vit import Pattention, grow_model, set_pattention_impl  # noqa: E402
from tokenformer_vit import triton_pattention as tp  # noqa: E402
from tokenformer_vit.pattention import NORM_EPS  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = 'cuda' if CUDA else 'cpu'
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if CUDA else [])
# ‖fused − float64‖ / ‖float64‖ for the output and each gradient (bf16: METHOD's 1e-3..1e-2 band)
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


@pytest.fixture(autouse=True)
def _fp32_matmuls_in_full_precision():
    # the fp32 bound is for true fp32 matmuls, not TF32
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


def inputs(seed, m, d_in, d_out, n, dtype, zero_rows=()):
    """x (m × d_in), K, V and dY, drawn in fp32 with a fixed seed, then cast to `dtype`."""
    print(f'seed={seed}')
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, d_in, generator=g)
    x[list(zero_rows)] = 0.
    key = torch.randn(n, d_in, generator=g) * 0.5
    value = torch.randn(n, d_out, generator=g) * 0.5
    dy = torch.randn(m, d_out, generator=g)
    return [t.to(DEVICE, dtype) for t in (x, key, value, dy)]


def reference64(x, key, value, tau, dy):
    """Output and (dX, dK, dV) of GeLU(τ·A/√(‖A‖² + ε))·V in float64, from the same rounded inputs."""
    x, key, value = [t.detach().double().cpu().requires_grad_() for t in (x, key, value)]
    a = x @ key.t()
    y = F.gelu(a * (tau / torch.sqrt(a.square().sum(-1, keepdim=True) + NORM_EPS))) @ value
    y.backward(dy.double().cpu())
    return y.detach(), x.grad, key.grad, value.grad


def fused(x, key, value, tau, dy):
    x, key, value = [t.detach().clone().requires_grad_() for t in (x, key, value)]
    y = tp.l2_gelu_pattention(x, key, value, torch.tensor(tau, device=DEVICE), NORM_EPS)
    y.backward(dy)
    return y.detach(), x.grad, key.grad, value.grad


def rel(ours, ref):
    return ((ours.double().cpu() - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize('dtype', DTYPES, ids=str)
@pytest.mark.parametrize('m, d_in, d_out, n', [
    (1, 8, 8, 3), (37, 24, 16, 7), (64, 32, 48, 64), (130, 48, 40, 100), (19, 40, 24, 257), (200, 16, 32, 384)])
def test_fused_output_and_gradients_match_float64(m, d_in, d_out, n, dtype):
    x, key, value, dy = inputs(10 + n, m, d_in, d_out, n, dtype)
    tau = math.sqrt(n)
    got = fused(x, key, value, tau, dy)
    assert all(t.dtype == dtype for t in got)
    for name, ours, ref in zip(('y', 'dx', 'dkey', 'dvalue'), got, reference64(x, key, value, tau, dy)):
        assert torch.isfinite(ours).all(), name
        assert rel(ours, ref) <= TOL[dtype], (name, rel(ours, ref))


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize('n', [1, 2])
def test_fused_one_or_two_tokens_match_float64_up_to_the_cancellation_torch_shares(n, dtype):
    # Θ normalises the row, so with n = 1 it is ±τ and with n = 2 it depends on one angle. y and dV
    # are ordinary; dA = S·(dZ − Z·(Z·dZ)/τ²) removes nearly all of dZ (all of it, to O(ε), for
    # n = 1), so dX and dK are small differences of large terms, and any float evaluation (the
    # torch path too) gets them to within rounding of those terms, |S·dZ|, not of the result.
    x, key, value, dy = inputs(1, 33, 12, 8, n, dtype)
    tau = math.sqrt(n)
    got = fused(x, key, value, tau, dy)
    ref = reference64(x, key, value, tau, dy)
    for i in (0, 3):
        assert rel(got[i], ref[i]) <= TOL[dtype]
    x64, key64, value64, dy64 = (t.double().cpu() for t in (x, key, value, dy))
    a = x64 @ key64.t()
    s = tau / a.norm(dim=-1, keepdim=True)
    cancelled = s * (dy64 @ value64.t()).abs()  # |S·dZ| up to GeLU' ≤ 1.13
    u = torch.finfo(dtype).eps
    assert (got[1].double().cpu() - ref[1]).norm() <= 16 * u * (cancelled @ key64.abs()).norm()
    assert (got[2].double().cpu() - ref[2]).norm() <= 16 * u * (cancelled.t() @ x64.abs()).norm()


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16], ids=str)
def test_fused_all_zero_rows_give_zero_output_and_finite_gradients(dtype):
    x, key, value, dy = inputs(2, 21, 16, 12, 50, dtype, zero_rows=(0, 5, 20))
    got = list(fused(x, key, value, math.sqrt(50), dy))
    ref = reference64(x, key, value, math.sqrt(50), dy)
    assert got[0][[0, 5, 20]].abs().max().item() == 0.0
    # a zero row's dX is τ/√ε = 1000·τ times its dZ·K (8.6e4 here): beyond fp16's 65504, on the torch
    # path as well, so in fp16 only the other rows' dX are checked
    rows = [i for i in range(21) if dtype == torch.float32 or i not in (0, 5, 20)]
    got[1], ref = got[1][rows], (ref[0], ref[1][rows], ref[2], ref[3])
    for name, ours, r in zip(('y', 'dx', 'dkey', 'dvalue'), got, ref):
        assert torch.isfinite(ours).all(), name
        assert rel(ours, r) <= TOL[dtype], (name, rel(ours, r))


def test_fused_rows_longer_than_one_program_are_walked_in_chunks():
    n = tp.MAX_BLOCK_N + 37
    x, key, value, dy = inputs(3, 5, 16, 8, n, torch.float32)
    assert not tp._block_n(n)[1]
    got = fused(x, key, value, math.sqrt(n), dy)
    for name, ours, ref in zip(('y', 'dx', 'dkey', 'dvalue'), got, reference64(x, key, value, math.sqrt(n), dy)):
        assert rel(ours, ref) <= TOL[torch.float32], (name, rel(ours, ref))


def test_fused_empty_batch_gives_empty_output_and_zero_parameter_gradients():
    x, key, value, dy = inputs(12, 0, 16, 8, 40, torch.float32)
    y, dx, dkey, dvalue = fused(x, key, value, math.sqrt(40), dy)
    assert y.shape == (0, 8) and dx.shape == (0, 16)
    assert dkey.abs().max().item() == 0.0 and dvalue.abs().max().item() == 0.0


def test_fused_inference_matches_training_forward():
    x, key, value, _ = inputs(4, 40, 24, 24, 96, torch.float32)
    tau = torch.tensor(math.sqrt(96), device=DEVICE)
    with torch.no_grad():
        y_infer = tp.l2_gelu_pattention(x, key, value, tau, NORM_EPS)
    y_train = tp.l2_gelu_pattention(x, key.requires_grad_(), value, tau, NORM_EPS)
    assert torch.equal(y_infer, y_train.detach())


def test_fused_layer_saves_one_score_tensor_like_the_torch_path():
    torch.manual_seed(5)
    print('seed=5')
    layer = Pattention(64, 48, 256, impl='triton', device=DEVICE)
    x = torch.randn(4, 50, 64, requires_grad=True, device=DEVICE)
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    m, n = 4 * 50, 256
    assert [numel for numel in saved.values() if numel >= m * n] == [m * n], saved


def tiny(**kwargs):
    return timm.create_model('tokenformer_vit_tiny', img_size=32, patch_size=8, embed_dim=64, depth=2,
                             num_heads=4, attn_tokens=48, ffn_tokens=96, num_classes=10, **kwargs).to(DEVICE)


def test_fused_model_matches_torch_model_forward_and_backward():
    torch.manual_seed(6)
    print('seed=6')
    ref = tiny(pattention_impl='torch')
    ours = tiny(pattention_impl='triton')
    ours.load_state_dict(ref.state_dict())
    assert {m.impl for m in ours.modules() if isinstance(m, Pattention)} == {'triton'}
    x = torch.randn(3, 3, 32, 32, device=DEVICE)
    y_ref, y = ref(x), ours(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    y_ref.square().sum().backward()
    y.square().sum().backward()
    for (name, p_ref), p in zip(ref.named_parameters(), ours.parameters()):
        assert rel(p.grad, p_ref.grad.double().cpu()) <= 1e-4, name


@pytest.mark.parametrize('amp', [torch.float16] + ([torch.bfloat16] if CUDA else []), ids=str)
def test_fused_under_autocast_runs_in_the_autocast_dtype_with_fp32_gradients(amp):
    torch.manual_seed(7)
    print('seed=7')
    layer = Pattention(64, 64, 128, impl='triton', device=DEVICE)
    x = torch.randn(2, 30, 64, device=DEVICE, requires_grad=True)
    y32 = layer(x)
    with torch.autocast(DEVICE, dtype=amp):
        y = layer(x)
    assert y.dtype == amp
    y.float().sum().backward()
    assert layer.key_tokens.grad.dtype == torch.float32 and x.grad.dtype == torch.float32
    assert rel(y, y32.detach().double().cpu()) < 1e-2


def test_fused_ops_pass_opcheck():
    torch.manual_seed(8)
    print('seed=8')
    m, d, n = 20, 16, 50
    x, key, value = (torch.randn(*s, device=DEVICE) for s in ((m, d), (n, d), (n, 12)))
    tau = torch.tensor(math.sqrt(n), device=DEVICE)
    # without a GPU, AOT dispatch would run the interpreted kernel on functional tensors: GPU only
    utils = ('test_schema', 'test_autograd_registration',
             'test_faketensor') + (('test_aot_dispatch_dynamic',) if CUDA else ())
    torch.library.opcheck(tp._pattention_op, (x, key, value, tau, NORM_EPS), test_utils=utils)
    torch.library.opcheck(tp._pattention_train_op, (x.requires_grad_(), key, value, tau, NORM_EPS), test_utils=utils)
    dh, a = torch.randn(m, n, device=DEVICE), torch.randn(m, n, device=DEVICE)
    s = torch.rand(m, device=DEVICE) + 0.5
    torch.library.opcheck(tp._theta_backward_op, (dh, a, s, tau), test_utils=utils)  # dA overwrites dh


def test_fused_model_compiles_as_one_graph_and_matches_eager():
    import torch._dynamo.testing
    torch.manual_seed(9)
    print('seed=9')
    model = tiny(pattention_impl='triton')
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    y_eager = model(x)
    torch._dynamo.reset()
    # on the CPU dynamo alone (the kernels cannot be compiled there); on a GPU inductor too
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(model, fullgraph=True, backend='inductor' if CUDA else counter)
    y = compiled(x)
    y.sum().backward()
    if not CUDA:
        assert counter.frame_count == 1
    torch.testing.assert_close(y, y_eager, rtol=1e-4, atol=1e-4)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_impl_switch_reaches_every_layer_and_leaves_the_state_dict_alone():
    model = tiny(pattention_impl='torch')
    keys = set(model.state_dict())
    set_pattention_impl(model, 'triton')
    assert {m.impl for m in model.modules() if isinstance(m, Pattention)} == {'triton'}
    assert model.pattention_impl == 'triton' and set(model.state_dict()) == keys


def test_the_default_is_the_torch_path_until_the_triton_one_is_measured(monkeypatch):
    monkeypatch.setattr(Pattention, '_forward_triton', lambda self, x: pytest.fail('the default took the triton path'))
    tiny()(torch.randn(1, 3, 32, 32, device=DEVICE))


def test_bad_impl_requests_are_one_clear_error(monkeypatch):
    with pytest.raises(ValueError, match="Unknown Pattention impl 'fused'"):
        Pattention(8, 8, 8, impl='fused')
    with pytest.raises(ValueError, match="kernels for norm='l2_gelu' only"):
        tiny(pattention_impl='triton', pattention_norm='softmax')
    with pytest.raises(ValueError, match="kernels for norm='l2_gelu' only"):
        set_pattention_impl(tiny(pattention_norm='gelu_l2'), 'triton')
    monkeypatch.setenv('TRITON_INTERPRET', '0')
    with pytest.raises(RuntimeError, match="runs on CUDA tensors, got a cpu tensor"):
        Pattention(8, 8, 8, impl='triton')(torch.randn(2, 8))


def test_growth_keeps_the_fused_path_and_the_function():
    torch.manual_seed(11)
    print('seed=11')
    model = tiny(pattention_impl='triton').eval()
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    with torch.no_grad():
        before = model(x)
        grow_model(model, attn_tokens=64, ffn_tokens=160)
        after = model(x)
    assert {m.impl for m in model.modules() if isinstance(m, Pattention)} == {'triton'}
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_block_sizes_are_plain_integers_when_compile_makes_the_token_count_symbolic():
    # On an H200, inductor failed on autotune configs whose BLOCK_M came from a symbolic n
    # (NameError: BitwiseFn_bitwise_or): the block sizes must be ints, with a guard on n instead.
    from torch._dynamo.source import ConstantSource
    from torch.fx.experimental.symbolic_shapes import ShapeEnv
    env = ShapeEnv()
    n = env.create_symintnode(env.create_symbol(3000, ConstantSource('n')), hint=3000)
    block_n, one_tile = tp._block_n(n)
    assert type(block_n) is int and block_n == 4096 and one_tile is True
    assert any('3000' in str(g.expr) for g in env.guards), env.guards


COMPILE_FOR_HOPPER = """
import sys, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from tokenformer_vit import triton_pattention as tp

dtype = sys.argv[1]
kernels = ((tp._l2_gelu_fwd_kernel, {'A': dtype, 'H': dtype, 'S': 'fp32', 'TAU': 'fp32'}),
           (tp._l2_gelu_bwd_kernel, {'DH': dtype, 'A': dtype, 'S': 'fp32', 'TAU': 'fp32', 'DA': dtype, 'H': dtype}))
for kernel, pointers in kernels:
    fn = kernel.fn.fn  # under the autotune and heuristics wrappers
    for block_n, one_tile in ((128, True), (tp.MAX_BLOCK_N, False)):
        const = {'BLOCK_N': block_n, 'ONE_TILE': one_tile, 'TILE': 4096, 'BLOCK_M': max(1, 4096 // block_n)}
        sig = {name: 'constexpr' if name in const else '*' + pointers[name] if name in pointers
               else 'fp32' if name == 'eps' else 'i32' for name in fn.arg_names}
        compiled = triton.compile(ASTSource(fn, sig, const), target=GPUTarget('cuda', 90, 32),
                                  options={'num_warps': 8})
        print(fn.__name__, block_n, len(compiled.asm['cubin']))
"""


@pytest.mark.parametrize('dtype', ['bf16', 'fp16', 'fp32'])
def test_kernels_compile_for_hopper_without_a_gpu(dtype):
    # The interpreter runs the kernels as numpy and never compiles them. This runs Triton's real
    # compiler, in a process without TRITON_INTERPRET, down to a cubin for sm_90 (H100/H200), bf16
    # included: no GPU is needed to compile.
    import os
    import subprocess
    import sys
    env = dict(os.environ, TRITON_INTERPRET='0')
    res = subprocess.run([sys.executable, '-c', COMPILE_FOR_HOPPER, dtype], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    sizes = [int(line.split()[-1]) for line in res.stdout.split('\n') if line]
    assert len(sizes) == 4 and min(sizes) > 1000, res.stdout
