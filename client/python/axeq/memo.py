"""Reuse of a block's sub-results across the pipeline's passes over it (axeq.pipeline).

Quantizing a block true-sequentially runs the calibration set through it once per layer group
(each pass stopping at the group's first layer) and once more for its output: the attention of a
Llama block is computed four times although only its input projections change before the first
of these passes and its output projection before the second. BlockMemo wraps the forward of every
submodule of the block that is not an nn.Linear, and the block itself (the float copy of a block,
which nothing quantizes, is then computed once per batch): a call returns the output stored by the previous
pass over the same calibration batch when nothing it depends on has changed, i.e.
- the module's parameters and buffers (and those of its submodules) were not modified in place
  (tensor version counters: SmoothQuant folding, weight write-back) and its forward hooks
  (activation quantizers) are the same objects, and
- its arguments are the same tensors, unmodified, or equal ones (torch.equal).
Outputs a caller modified in place are never reused. The result is exact: a reused output is the
one the same computation gave. Memory: what is stored, within a byte budget.

keep_freed_memory() is the other half of making these passes cheap where fresh pages are expensive
(virtual machines): glibc keeps freed heap memory in the process instead of returning it.
release_freed_memory() is its opposite, for the pipeline's peak memory on large models: glibc's
heap keeps hundreds of MiB of freed buffers (fragmented among live ones) that it would not reuse.
"""
from __future__ import annotations

import ctypes

import torch

_kept = False  # keep_freed_memory() was called: release_freed_memory() leaves the heap alone


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def _versions(obj) -> tuple:
    return tuple(t._version for t in _tensors(obj))


def _same(new, old) -> bool:
    """Whether argument `new` equals the stored argument `old` (the same unmodified tensor, or an
    equal one; other values by ==)."""
    if isinstance(old, torch.Tensor):
        return (isinstance(new, torch.Tensor) and new.shape == old.shape and new.dtype == old.dtype
                and new.device == old.device and (new is old or bool(torch.equal(new, old))))
    if isinstance(old, (tuple, list)):
        return isinstance(new, (tuple, list)) and len(new) == len(old) and all(map(_same, new, old))
    if isinstance(old, dict):
        return isinstance(new, dict) and new.keys() == old.keys() and all(_same(new[k], old[k]) for k in old)
    return type(new) is type(old) and new == old


def _state(module) -> tuple:
    """What a module's function depends on besides its arguments: its tensors' identities and
    versions and its hooks."""
    out = []
    for m in module.modules():
        out += [(id(t), t._version) for t in m._parameters.values() if t is not None]
        out += [(id(t), t._version) for t in m._buffers.values() if t is not None]
        out += [tuple(map(id, d.values())) for d in (m._forward_pre_hooks, m._forward_hooks)]
    return tuple(out)


class BlockMemo:
    """Installed on one block for the time of its quantization (a context manager). Entries are
    kept per calibration batch (the block's first argument). Memory: a module holding a layer in
    `pending` (not quantized yet: it will change) is not stored; an entry replaces those of the
    module's descendants (they are not called while it is reused); a stale entry is dropped before
    its module runs again; tensors are counted once (the block's input, held by the stream, not
    at all); at most max_bytes are stored. hits/misses count the calls."""

    def __init__(self, block: torch.nn.Module, max_bytes: int):
        self.block, self.max_bytes, self.bytes = block, max_bytes, 0
        self.entries, self.batch, self.hits, self.misses = {}, None, 0, 0
        self.pending, self.held = set(), {}  # data_ptr -> [references, bytes]
        self.wrapped = [m for m in block.modules() if m is not block and not isinstance(m, torch.nn.Linear)
                        and "forward" not in vars(m)]
        ids = {id(m) for m in self.wrapped}
        every = [block] + self.wrapped
        self.inside = {id(m): [id(d) for d in m.modules() if d is not m and id(d) in ids] for m in every}
        self.linears = {id(m): {d for d in m.modules() if isinstance(d, torch.nn.Linear)} for m in every}

    def __enter__(self):
        outer = self._wrap(self.block, self.block.forward)

        def block_forward(x, *args, **kwargs):
            self.batch = x
            return outer(x, *args, **kwargs)

        self.block.forward = block_forward
        for m in self.wrapped:
            m.forward = self._wrap(m, m.forward)
        return self

    def __exit__(self, *exc):
        for m in [self.block] + self.wrapped:
            del m.forward
        self.entries.clear()
        self.held.clear()
        self.bytes, self.batch = 0, None

    def forget(self, batch):
        """Drops the entries of one calibration batch (its last pass over the block is done)."""
        for key in [k for k in self.entries if k[1] == id(batch)]:
            self._drop(key)

    def _wrap(self, module, forward):
        def memo_forward(*args, **kwargs):
            key = (id(module), id(self.batch))
            e = self.entries.get(key)
            if e is not None:
                if (e["state"] == _state(module) and _versions(e["kept"]) == e["versions"]
                        and _same(args, e["args"]) and _same(kwargs, e["kwargs"])):
                    self.hits += 1
                    return e["out"]
                self._drop(key)
            self.misses += 1
            out = forward(*args, **kwargs)
            if not self.linears[id(module)] & self.pending:
                self._store(key, module, args, kwargs, out)
            return out
        return memo_forward

    def _drop(self, key):
        for t in _tensors(self.entries.pop(key)["kept"]):
            h = self.held[t.data_ptr()]
            h[0] -= 1
            if not h[0]:
                self.bytes -= h[1]
                del self.held[t.data_ptr()]

    def _store(self, key, module, args, kwargs, out):
        for d in self.inside[id(module)]:
            if (d, key[1]) in self.entries:
                self._drop((d, key[1]))
        kept = (args, kwargs, out)
        new = {t.data_ptr(): t.numel() * t.element_size() for t in _tensors(kept)
               if t.data_ptr() not in self.held and t is not self.batch}
        if self.bytes + sum(new.values()) > self.max_bytes:
            return
        for t in _tensors(kept):
            h = self.held.setdefault(t.data_ptr(), [0, new.get(t.data_ptr(), 0)])
            h[0] += 1
        self.bytes += sum(new.values())
        self.entries[key] = dict(state=_state(module), args=args, kwargs=kwargs, out=out, kept=kept,
                                 versions=_versions(kept))


def keep_freed_memory(trim_bytes: int = 1 << 30) -> bool:
    """Asks glibc's malloc to keep up to trim_bytes of freed heap in the process rather than return
    it to the kernel, with the mmap threshold fixed at glibc's maximum (32 MiB) so that buffers below
    it come from that heap. Every pass over a block frees and reallocates the same buffers; on this
    project's 2-vCPU VM a fresh page costs ~4 ms per MiB, more than the arithmetic on small models
    (docs/pipeline-benchmarks.md). Process-wide and lasting, so scripts call it (examples/
    stories260k.py); the library never does. Returns False where it does not apply (no glibc)."""
    global _kept
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    _kept = bool(mallopt(m_trim_threshold, int(trim_bytes))) and bool(mallopt(m_mmap_threshold, 32 << 20))
    return _kept


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def release_freed_memory(min_bytes: int = 64 << 20) -> int:
    """Returns glibc's free heap memory to the kernel (malloc_trim) when more than min_bytes of it
    are free, unless keep_freed_memory() asked to keep it. The pipeline calls it between phases
    (after a group's inputs are caught, after each trial's statistics, after each group and
    block): without it, freed buffers fragmented among live ones kept the ~100M-parameter run's
    RSS ~0.3-0.8 GiB above what it used (docs/pipeline-benchmarks.md). Costs the page faults of
    reusing that memory. Returns the bytes that were free (0 when nothing was done)."""
    if _kept:
        return 0
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        free = libc.mallinfo2().fordblks
    except (OSError, AttributeError):
        return 0
    if free <= min_bytes:
        return 0
    libc.malloc_trim(0)
    return free
