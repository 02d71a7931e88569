"""Without a GPU, Triton kernels run on CPU tensors through Triton's interpreter.

`triton.jit` reads TRITON_INTERPRET when a kernel is defined, so it is set here, before any test
module imports tokenformer_vit.triton_pattention. On a CUDA machine the kernels compile for the GPU.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')
