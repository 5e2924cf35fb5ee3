import os

os.environ.setdefault("KERAS_BACKEND", "torch")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


# Without a GPU, Triton kernels run in Triton's interpreter on CPU tensors. The variable is read when
# triton is first imported, and torch may import triton early (torch.compile), so it is set here, in
# the first file pytest loads, for the whole process.
if "TRITON_INTERPRET" not in os.environ and not _cuda_available():
    os.environ["TRITON_INTERPRET"] = "1"
