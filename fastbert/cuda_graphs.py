"""CUDA graphs for inference: the packed encoder captured once per bucket and replayed for any batch in it.

At small batches a forward's time is the host's (Python, dispatch, launches); a CUDA graph replays all
of the encoder's kernels with one launch. The padding-free layout varies with every batch, so the graph
is captured for a bucket instead: ``tokens`` packed rows, ``sequences`` sequence slots and a longest
length ``max_seqlen``, each the next power of two (``sequences`` of twice the batch). A batch is loaded
into the bucket's static buffers: its packed tokens first, then the spare rows cut into sequences of at
most ``max_seqlen`` (fewer than the batch's count, as the spare rows are fewer than its tokens), and the
sequence slots left over empty. Spare rows attend only among themselves, so no real token sees them;
every row stays inside some sequence, as every backend of the attention op expects.

Eligible calls: inference (no autograd, eval mode, no autocast), ``input_ids`` with a 0/1 mask on the
padding-free path, without ``output_hidden_states``/``output_attentions``. Everything else runs eagerly.
A graph reads the parameters' memory itself, so in-place edits (an optimizer step) are seen; when a
parameter is replaced (new storage) or its version counter moves, the graphs are dropped and captured
again.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
import weakref
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

MIN_TOKENS = 16
MIN_SEQLEN = 16
MAX_GRAPHS = 64


def bucket(n: int, minimum: int = 1) -> int:
    """The next power of two at or above ``max(n, minimum)``."""
    n = max(n, minimum, 1)
    return 1 << (n - 1).bit_length()


@dataclass(frozen=True)
class BucketKey:
    tokens: int
    sequences: int
    max_seqlen: int

    @classmethod
    def of(cls, total: int, batch: int, longest: int) -> "BucketKey":
        return cls(bucket(total, MIN_TOKENS), bucket(2 * batch), bucket(longest, MIN_SEQLEN))


class StaticBatch:
    """A bucket's input buffers: int64 ``ids``, ``types``, ``positions`` ``(tokens,)`` and int32
    ``cu_seqlens`` ``(sequences + 1,)``."""

    def __init__(self, key: BucketKey, device: torch.device):
        self.key = key
        with torch.inference_mode(False):  # normal tensors: a later call outside inference mode copies in too
            self.ids = torch.zeros(key.tokens, dtype=torch.long, device=device)
            self.types = torch.zeros_like(self.ids)
            self.positions = torch.zeros_like(self.ids)
            self.cu_seqlens = torch.zeros(key.sequences + 1, dtype=torch.int32, device=device)

    def load(self, ids: Tensor, types: Tensor, positions: Tensor, cu_seqlens: Tensor) -> None:
        """Copies one packed batch in: ``(total,)`` index vectors and its ``(batch + 1,)`` boundaries."""
        total, batch = ids.shape[0], cu_seqlens.shape[0] - 1
        self.ids[:total].copy_(ids)
        self.types[:total].copy_(types)
        self.positions[:total].copy_(positions)
        self.cu_seqlens[:batch + 1].copy_(cu_seqlens)
        # The spare rows [total, tokens) as sequences of max_seqlen rows, then empty ones.
        spare = total + self.key.max_seqlen * torch.arange(1, self.key.sequences - batch + 1,
                                                           device=self.cu_seqlens.device)
        self.cu_seqlens[batch + 1:].copy_(spare.clamp_(max=self.key.tokens))


_ENCODERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def graphed_encoder(model, encode: Callable, capture: bool = True) -> "GraphedEncoder":
    """The :class:`GraphedEncoder` running ``encode(model, static_batch)`` for ``model`` (made on first
    use; kept beside the model, not in it, so copies and pickles of the model carry no graphs)."""
    encoder = _ENCODERS.get(model)
    if encoder is None:
        encoder = _ENCODERS[model] = GraphedEncoder(model, encode, capture)
    return encoder


class GraphedEncoder:
    """Runs ``encode(model, static_batch) -> (tokens, hidden)`` through one CUDA graph per bucket and device.

    Batches on the CPU (or all of them with ``capture=False``) run ``encode`` on the bucket's static
    buffers without a graph: the same loading, bucketing and reading back (how the CPU tests check them).
    """

    def __init__(self, model: torch.nn.Module, encode: Callable[[torch.nn.Module, StaticBatch], Tensor],
                 capture: bool = True):
        self.model = weakref.ref(model)  # the model owns this object (through _ENCODERS): no cycle
        self.run_encoder, self.capture = encode, capture
        self.entries: dict[tuple, tuple[StaticBatch, Optional[torch.cuda.CUDAGraph], Optional[Tensor]]] = {}
        self.state: Optional[tuple] = None
        self.pool = None
        self.captures = 0
        self.lock = threading.Lock()

    def encode(self, static: StaticBatch) -> Tensor:
        return self.run_encoder(self.model(), static)

    def _parameters_state(self) -> tuple:
        return tuple((p.data_ptr(), p._version) for p in self.model().parameters())

    def __call__(self, ids: Tensor, types: Tensor, positions: Tensor, cu_seqlens: Tensor, longest: int) -> Tensor:
        """The encoder's ``(total, hidden)`` output for one packed batch; a view of the graph's output
        buffer, valid until the next call."""
        key = BucketKey.of(ids.shape[0], cu_seqlens.shape[0] - 1, longest)
        # Capture and replay on the batch's own device and its current stream.
        on_device = torch.cuda.device(ids.device) if ids.is_cuda else contextlib.nullcontext()
        with self.lock, on_device:
            state = self._parameters_state()
            if state != self.state:  # new or edited parameters: the captured graphs read stale memory
                self.entries.clear()
                self.state = state
            entry = self.entries.get((key, ids.device)) or self._new_entry(key, ids.device)
            static, graph, out = entry
            static.load(ids, types, positions, cu_seqlens)
            if graph is None:
                out = self.encode(static)
            else:
                graph.replay()
            return out[:ids.shape[0]]

    def _new_entry(self, key: BucketKey, device: torch.device):
        static = StaticBatch(key, device)
        if not (self.capture and device.type == "cuda"):
            entry = self.entries[(key, device)] = (static, None, None)
            return entry
        if len(self.entries) >= MAX_GRAPHS:
            warnings.warn(f"fastbert: {MAX_GRAPHS} CUDA graphs captured; dropping them to capture new buckets")
            self.entries.clear()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up off the capture: autotuning and lazy initialisation
            for _ in range(2):
                self.encode(static)
        torch.cuda.current_stream(device).wait_stream(side)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self.encode(static)
        self.captures += 1
        entry = self.entries[(key, device)] = (static, graph, out)
        return entry
