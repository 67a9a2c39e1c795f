"""Training options that change speed and memory, not what is trained (``train.*``).

``Context.prepare`` applies the first three to every network a method prepares, so they hold for
every method without a line in it:

- ``amp: bf16``: the network's forward runs under ``torch.autocast`` with bfloat16 (on GPU; CPU
  autocast is allowed too, it is how the option is tested on machines without a GPU, and it is
  slower there unless the CPU has bfloat16 units). Floating outputs are cast back to float32, so
  losses, miners and distance matrices stay in full precision. bfloat16 has float32's range, so
  no loss scaling is needed.
- ``channels_last``: parameters and 4-d floating inputs of the forward in channels-last memory
  format (faster convolutions on tensor cores).
- ``compile``: ``torch.compile`` of the forward (the module's own ``forward`` is replaced on the
  instance, so ``state_dict`` keys, checkpoints and DDP wrapping stay as they are). A compiler
  failure (e.g. no C++ toolchain for inductor on CPU) stops the run with one line.

``grad_accumulation: k`` splits each step's batch into k micro-batches (``micro_batched``): the
network runs on them without gradients, the method computes its loss on the whole batch's
outputs (so batch-wide mining and losses see the same batch as without it), and ``backward``
re-runs each micro-batch with gradients and back-propagates the loss's gradient with respect to
its outputs (gradient caching). The gradient equals the full batch's; activations of only one
micro-batch are held at a time. BatchNorm in training mode normalizes each micro-batch with its
own statistics (running statistics are updated once per micro-batch, as with plain accumulation);
with frozen BatchNorm (the ResNet presets) the step is the same as without micro-batches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from torch.utils import _pytree as pytree

from reprlab.platform.core.config import TrainSection
from reprlab.platform.core.errors import ReprlabError


def _float32(out: Any) -> Any:
    return pytree.tree_map(
        lambda t: t.float() if isinstance(t, torch.Tensor) and t.dtype in (torch.bfloat16, torch.float16) else t, out)


def _channels_last(arg: Any) -> Any:
    if isinstance(arg, torch.Tensor) and arg.dim() == 4 and arg.is_floating_point():
        return arg.contiguous(memory_format=torch.channels_last)
    return arg


def apply_speed_options(module: nn.Module, train: TrainSection, device: torch.device) -> nn.Module:
    """Give ``module`` (already on ``device``) the forward that ``train.amp``, ``channels_last``
    and ``compile`` ask for; a no-op when all are off."""
    if train.amp == "none" and not train.channels_last and not train.compile:
        return module
    if train.channels_last:
        module = module.to(memory_format=torch.channels_last)
    forward = module.forward  # the bound original
    amp, channels_last = train.amp == "bf16", train.channels_last

    def fast_forward(*args: Any, **kwargs: Any) -> Any:
        if channels_last:
            args = tuple(_channels_last(a) for a in args)
        if not amp:
            return forward(*args, **kwargs)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = forward(*args, **kwargs)
        return _float32(out)

    module.forward = _compiled(fast_forward, type(module).__name__) if train.compile else fast_forward
    return module


def _compiled(fn: Callable, what: str) -> Callable:
    compiled = torch.compile(fn)

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return compiled(*args, **kwargs)
        except Exception as exc:
            if not type(exc).__module__.startswith(("torch._dynamo", "torch._inductor")):
                raise
            reason = (str(exc).strip().splitlines() or [""])[0][:200]
            raise ReprlabError(f"train.compile: torch.compile of {what} failed ({type(exc).__name__}: {reason}); "
                               "set train.compile=false") from None

    return call


@contextlib.contextmanager
def _buffers_kept(net: nn.Module):
    """Restore the buffers (BatchNorm running statistics) after the gradient-free pass, so that
    the re-run with gradients updates them once, as a plain step would."""
    saved = [b.detach().clone() for b in net.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, s in zip(net.buffers(), saved):
                b.copy_(s)


def micro_batched(net: nn.Module, inputs: tuple, kwargs: dict, k: int) -> tuple[Any, Callable[[torch.Tensor], None]]:
    """``net(*inputs, **kwargs)`` over ``k`` micro-batches (split along dim 0 of every tensor
    input with the batch's length; outputs batch-first). Returns (outputs, backward): the outputs
    are leaves holding the whole batch; ``backward(loss)`` back-propagates ``loss`` into them and
    then through ``net`` one micro-batch at a time (DDP reduces gradients once, on the last)."""
    if k <= 1:
        return net(*inputs, **kwargs), lambda loss: loss.backward()
    n = inputs[0].shape[0]
    parts = [a.tensor_split(k) if isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == n else None
             for a in inputs]
    chunks = [tuple(a if p is None else p[i] for a, p in zip(inputs, parts)) for i in range(min(k, n))]
    with torch.no_grad(), _buffers_kept(net):
        outs = [pytree.tree_flatten(net(*c, **kwargs)) for c in chunks]
    spec = outs[0][1]
    leaves = [torch.cat([o[0][j] for o in outs]).requires_grad_(outs[0][0][j].is_floating_point())
              for j in range(len(outs[0][0]))]
    sizes = [len(c[0]) for c in chunks]

    def backward(loss: torch.Tensor) -> None:
        loss.backward()
        grads = [None if leaf.grad is None else leaf.grad.split(sizes) for leaf in leaves]
        for i, c in enumerate(chunks):
            sync = i == len(chunks) - 1 or not isinstance(net, nn.parallel.DistributedDataParallel)
            with contextlib.nullcontext() if sync else net.no_sync():
                flat = pytree.tree_flatten(net(*c, **kwargs))[0]
                pairs = [(t, g[i]) for t, g in zip(flat, grads) if g is not None]
                if pairs:
                    torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])

    return pytree.tree_unflatten(leaves, spec), backward
