"""Pattention: Θ against a float64 evaluation of the paper's formulas, the fast path against the
reference path, zero rows, τ as state, gradients, memory, and reduced precision."""
import math

import pytest
import torch
import torch.nn.functional as F

from tokenformer_vit import Pattention, theta
from tokenformer_vit.pattention import _L2GeluPattention

# the CUDA path is exercised where a GPU is present; everything also runs on the CPU
DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])


def reference_theta64(scores: torch.Tensor, norm: str, tau: float) -> torch.Tensor:
    """Θ exactly as docs/design.md ("Pattention") writes it, in float64, with no epsilon."""
    a = scores.double()
    if norm == 'l2_gelu':
        return F.gelu(a / a.norm(dim=-1, keepdim=True) * tau)
    if norm == 'gelu_l2':
        g = F.gelu(a)
        return g / g.norm(dim=-1, keepdim=True) * tau
    e = torch.exp(a)
    return e / e.sum(dim=-1, keepdim=True) * a.shape[-1]


def reference_pattention64(layer: Pattention, x: torch.Tensor) -> torch.Tensor:
    k, v = layer.key_tokens.double(), layer.value_tokens.double()
    return reference_theta64(x.double() @ k.t(), layer.norm, float(layer.tau)) @ v


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('norm', ['l2_gelu', 'gelu_l2', 'softmax'])
@pytest.mark.parametrize('grad', [False, True])
def test_output_matches_float64_formula(norm, grad, device):
    torch.manual_seed(0)
    layer = Pattention(96, 80, 384, norm=norm, device=device)
    x = torch.randn(3, 17, 96, requires_grad=grad, device=device)
    with torch.set_grad_enabled(grad):
        y = layer(x)
    ref = reference_pattention64(layer, x.detach())
    assert y.shape == (3, 17, 80)
    err = (y.double() - ref).abs().max().item()
    assert err <= 1e-5 * ref.abs().max().item(), err


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('norm', ['l2_gelu', 'gelu_l2', 'softmax'])
def test_gradients_match_float64_formula(norm, device):
    torch.manual_seed(1)
    layer = Pattention(48, 40, 160, norm=norm, device=device)
    x = torch.randn(2, 9, 48, requires_grad=True, device=device)
    dy = torch.randn(2, 9, 40, device=device)
    layer(x).backward(dy)
    x64 = x.detach().double().requires_grad_()
    k64 = layer.key_tokens.detach().double().requires_grad_()
    v64 = layer.value_tokens.detach().double().requires_grad_()
    y64 = reference_theta64(x64 @ k64.t(), norm, float(layer.tau)) @ v64
    y64.backward(dy.double())
    for ours, ref in [(x.grad, x64.grad), (layer.key_tokens.grad, k64.grad), (layer.value_tokens.grad, v64.grad)]:
        err = (ours.double() - ref).abs().max().item()
        assert err <= 1e-4 * ref.abs().max().item(), err


def test_fast_path_gradcheck_in_float64():
    torch.manual_seed(2)
    x = torch.randn(7, 12, dtype=torch.float64, requires_grad=True)
    k = torch.randn(20, 12, dtype=torch.float64, requires_grad=True)
    v = torch.randn(20, 5, dtype=torch.float64, requires_grad=True)
    tau = torch.tensor(math.sqrt(20.), dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x, k, v: _L2GeluPattention.apply(1e-6, None, x, k, v, tau), (x, k, v))


def test_stacked_fast_path_gradcheck_in_float64():
    # three layers on one input, each with its own τ: the stacked batched-GEMM path's gradients
    torch.manual_seed(12)
    x = torch.randn(7, 12, dtype=torch.float64, requires_grad=True)
    keys = [torch.randn(20, 12, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    values = [torch.randn(20, 5, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    taus = [torch.tensor(t, dtype=torch.float64) for t in (4.0, 4.5, 2.0)]
    assert torch.autograd.gradcheck(lambda x, *kv: _L2GeluPattention.apply(1e-6, None, x, *kv, *taus),
                                    (x, *keys, *values))


def test_fast_path_equals_reference_path_and_saves_one_score_tensor():
    torch.manual_seed(3)
    layer = Pattention(64, 64, 256)
    x = torch.randn(4, 50, 64, requires_grad=True)
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y_fast = layer(x)
    y_ref = theta(x @ layer.key_tokens.t(), 'l2_gelu', layer.tau) @ layer.value_tokens
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-5, atol=1e-6)
    # x, K, V, τ, the (m × n) normalised scores and one scale per row: nothing else of size m × n
    m, n = 4 * 50, 256
    big = [numel for numel in saved.values() if numel >= m * n]
    assert big == [m * n], saved


@pytest.mark.parametrize('norm', ['l2_gelu', 'gelu_l2', 'softmax'])
def test_all_zero_score_row_stays_finite(norm):
    layer = Pattention(32, 16, 64, norm=norm)
    x = torch.zeros(2, 5, 32, requires_grad=True)
    x.data[1] = torch.randn(5, 32)
    y = layer(x)
    y.sum().backward()
    assert torch.isfinite(y).all()
    assert torch.isfinite(x.grad).all() and torch.isfinite(layer.key_tokens.grad).all()
    if norm != 'softmax':  # GeLU(0) = 0: a zero score row gives a zero output row
        assert y[0].abs().max().item() == 0.0


def test_tau_defaults_to_sqrt_n_and_is_saved_state():
    layer = Pattention(16, 16, 100)
    assert layer.tau.item() == pytest.approx(10.0)
    assert 'tau' in layer.state_dict()
    other = Pattention(16, 16, 100, tau=3.0)
    assert other.tau.item() == 3.0
    other.load_state_dict(layer.state_dict())
    assert other.tau.item() == pytest.approx(10.0)


def test_tau_scales_the_normalised_scores():
    torch.manual_seed(4)
    layer = Pattention(24, 8, 30, tau=2.5)
    x = torch.randn(6, 24)
    ref = F.gelu(F.normalize((x @ layer.key_tokens.t()).double(), dim=-1) * 2.5) @ layer.value_tokens.double()
    torch.testing.assert_close(layer(x).double(), ref, rtol=1e-5, atol=1e-6)


def test_unknown_norm_is_one_clear_error():
    with pytest.raises(ValueError, match="Unknown Pattention norm 'l1'"):
        Pattention(8, 8, 8, norm='l1')


def test_dtype_mismatch_names_the_fix():
    layer = Pattention(8, 8, 8)
    with pytest.raises(TypeError, match='autocast'):
        layer(torch.randn(2, 8, dtype=torch.float64))


@pytest.mark.parametrize('device', DEVICES)
def test_bf16_autocast_is_close_to_fp32(device):
    torch.manual_seed(5)
    layer = Pattention(128, 128, 512, device=device)
    x = torch.randn(4, 64, 128, requires_grad=True, device=device)
    y32 = layer(x)
    y32.square().mean().backward()
    g32 = [x.grad.clone(), layer.key_tokens.grad.clone(), layer.value_tokens.grad.clone()]
    x.grad = None
    layer.zero_grad()
    with torch.autocast(device, dtype=torch.bfloat16):
        y16 = layer(x)
    assert y16.dtype == torch.bfloat16
    y16.float().square().mean().backward()
    g16 = [x.grad, layer.key_tokens.grad, layer.value_tokens.grad]
    rel = lambda a, b: ((a.float() - b).norm() / b.norm()).item()  # noqa: E731
    assert rel(y16, y32) < 0.02
    for a, b in zip(g16, g32):
        assert a.dtype == torch.float32 and rel(a, b) < 0.04


def test_fp16_normalisation_does_not_overflow():
    torch.manual_seed(6)
    layer = Pattention(64, 32, 1024)
    x = torch.randn(8, 64) * 400.0
    ref = reference_pattention64(layer, x)
    layer.half()
    scores = x.half() @ layer.key_tokens.t()
    # scores of ~64 over 1024 tokens: their squared norm (~4e6) overflows fp16 (max 65504)
    assert torch.isinf(scores.square().sum(-1)).all()
    y = layer(x.half())
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-2


def test_torchscript_matches_eager():
    torch.manual_seed(7)
    layer = Pattention(16, 12, 40).eval()
    x = torch.randn(3, 16)
    scripted = torch.jit.script(layer)
    torch.testing.assert_close(scripted(x), layer(x), rtol=1e-5, atol=1e-6)



def test_frozen_tokens_get_no_gradient_and_the_input_gradient_stays_exact():
    # the fast path computes only the gradients asked for (a frozen layer, as in fine-tuning a head)
    torch.manual_seed(13)
    print('seed 13')
    layer = Pattention(24, 16, 40)
    layer.requires_grad_(False)
    x = torch.randn(5, 24, requires_grad=True)
    layer(x).square().sum().backward()
    assert layer.key_tokens.grad is None and layer.value_tokens.grad is None
    x64 = x.detach().double().requires_grad_()
    (reference_theta64(x64 @ layer.key_tokens.double().t(), 'l2_gelu', float(layer.tau))
     @ layer.value_tokens.double()).square().sum().backward()
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-6)
