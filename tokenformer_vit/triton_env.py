"""Whether Triton kernels run through Triton's CPU interpreter: read by the layer, the kernels and
the job, none of which may import the others for it (the kernels need Triton itself)."""
import os

__all__ = ['interpreting']


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1), where the
    fused path also takes CPU tensors."""
    return os.environ.get('TRITON_INTERPRET', '0') not in ('', '0')
