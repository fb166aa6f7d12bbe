"""The key/value cache of a decoder, with its own bookkeeping: slots filled, which slots hold real tokens, and the
RoPE position each row continues from.

Every row advances by the same number of slots per forward call (left padding fills slots too), so one integer
`length` says where the next keys go; `key_mask` hides the pad slots from attention and `next_pos` keeps each row's
RoPE positions counted from its first real token. A model calls `begin` once per forward (positions and mask for the
new tokens), `update` once per layer (store and return keys/values), and `end` after the last layer.
"""

from __future__ import annotations

import torch

from plinth.common import PlinthError


def attention_mask(key_mask: torch.Tensor, start: int, T: int) -> torch.Tensor:
    """Bool (B, 1, T, S) mask: query i (at slot start+i) sees real keys j <= start+i, and always itself.

    `key_mask` (B, S) is True at real-token slots. Letting a pad query see itself keeps every row of the mask
    non-empty, so softmax never divides by zero (a fully masked row gives NaN in some SDPA kernels); pad outputs are
    discarded anyway.
    """
    S = key_mask.shape[1]
    q_slot = torch.arange(start, start + T, device=key_mask.device)[:, None]  # (T, 1)
    k_slot = torch.arange(S, device=key_mask.device)[None, :]  # (1, S)
    allowed = (k_slot <= q_slot) & key_mask[:, None, :]  # (B, T, S)
    allowed = allowed | (k_slot == q_slot)
    return allowed[:, None]  # (B, 1, T, S): broadcast over heads


def padded_positions(real: torch.Tensor) -> torch.Tensor:
    """RoPE positions (B, T) counted from each row's first real token; pads before it get 0 (never attended)."""
    return (real.long().cumsum(1) - 1).clamp(min=0)


def segment_positions_and_mask(segment_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE positions (B, T) restarting at each segment, and a bool (B, 1, T, T) mask letting a query see only earlier
    keys of its own segment: several short examples packed into one row then behave exactly as if each ran alone.

    `segment_ids` (B, T) int: consecutive equal values form one segment (padding may be its own segment).
    """
    B, T = segment_ids.shape
    idx = torch.arange(T, device=segment_ids.device)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]  # (B, T) True where a segment begins
    first = torch.where(starts, idx[None, :], torch.zeros_like(idx)[None, :]).cummax(dim=1).values  # (B, T)
    positions = idx[None, :] - first  # (B, T) index within its segment
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # (B, T, T)
    causal = idx[None, :, None] >= idx[None, None, :]  # (1, T, T)
    return positions, (same & causal)[:, None]  # (B, 1, T, T)


class KVCache:
    """Preallocated keys/values for every layer of a batch of `batch_size` rows, up to `max_len` slots each."""

    def __init__(self, n_layer: int, batch_size: int, n_kv_head: int, max_len: int, head_dim: int,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        shape = (batch_size, n_kv_head, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.key_mask = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)  # True = real token
        self.next_pos = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.batch_size, self.max_len = batch_size, max_len
        self.length = 0  # slots filled, the same for every row
        self.has_padding = False  # any pad slot so far; without one, attention can skip the explicit mask
        self.decode_plan: tuple | None = None  # (model, plan) kept here by a model's one-token fast path

    def begin(self, attention_mask_bt: torch.Tensor | None, T: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Record T new slots: return their RoPE positions (B, T) and the attention mask over the cache (or None).

        `attention_mask_bt` (B, T) is True for real tokens (None = all real). Positions are None when no slot so far
        is padding: every row then continues at the same position, `length`, and the model takes RoPE rows
        [length, length + T) of its table as they are (the common decode step costs three small ops here instead of
        ten). Raises PlinthError if the batch size differs or the new tokens do not fit.
        """
        start = self.length
        if start + T > self.max_len:
            raise PlinthError(f"KV cache holds {self.max_len} tokens per row; cannot add {T} after {start}")
        real = attention_mask_bt
        if real is not None:
            if real.shape != (self.batch_size, T):
                raise PlinthError(f"KV cache holds {self.batch_size} rows; got a mask of shape {tuple(real.shape)}")
            if not self.has_padding:
                self.has_padding = not bool(real.all())  # one host sync per masked call, none per decode step
        if not self.has_padding:
            # Every slot so far is real: next_pos == length in every row, so positions are start .. start+T-1.
            self.key_mask[:, start:start + T] = True
            self.next_pos += T
            mask = None if start == 0 or T == 1 else attention_mask(self.key_mask[:, :start + T], start, T)
            return None, mask  # plain causal prefill, or one new token that may see everything
        if real is None:
            real = torch.ones(self.batch_size, T, dtype=torch.bool, device=self.key_mask.device)
        positions = (self.next_pos[:, None] + real.long().cumsum(1) - 1).clamp(min=0)  # (B, T)
        self.key_mask[:, start:start + T] = real
        self.next_pos += real.long().sum(1)
        return positions, attention_mask(self.key_mask[:, :start + T], start, T)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this call's keys/values (B, n_kv_head, T, hd) at the current length; return all held so far."""
        end = self.length + k.shape[2]
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]  # (B, n_kv_head, end, hd)

    def end(self, T: int) -> None:
        """Mark the T slots of this forward call as filled (after every layer has called `update`)."""
        self.length += T

    def select_rows(self, index: torch.Tensor, max_len: int | None = None) -> KVCache:
        """A new cache holding rows `index` (B',) of this one, repeats allowed (one prompt's keys/values continued by
        several different texts, e.g. the answer choices of a question), with `max_len` slots (default: the same)."""
        max_len = self.max_len if max_len is None else max_len
        if max_len < self.length:
            raise PlinthError(f"KV cache holds {self.length} slots; cannot copy them into {max_len}")
        k0 = self.k[0]
        new = KVCache(len(self.k), len(index), k0.shape[1], max_len, k0.shape[3], k0.device, k0.dtype)
        n = self.length
        for layer in range(len(self.k)):
            new.k[layer][:, :, :n] = self.k[layer][index, :, :n]
            new.v[layer][:, :, :n] = self.v[layer][index, :, :n]
        new.key_mask[:, :n] = self.key_mask[index, :n]
        new.next_pos.copy_(self.next_pos[index])
        new.length, new.has_padding = n, self.has_padding
        return new

    def reset(self) -> None:
        """Empty the cache for reuse with a new batch of the same size."""
        self.length, self.has_padding = 0, False
        self.key_mask.zero_()
        self.next_pos.zero_()


class SlotCache:
    """Keys/values of up to `slots` independent sequences, one row each, every row with its own length: the
    per-sequence KV cache of a continuous-batching server.

    Rows [0, n) hold live sequences; a sequence that leaves has the last live row moved into its place
    (`move_row`), so a decode step over the first n rows reads views of the memory, never a gathered copy. Slot j
    of row b is real iff j < lengths[b] (right padding), and each row's RoPE position is its length. The memory
    grows by doubling (`reserve`) up to `max_len` slots per row and shrinks back with `shrink` when idle.
    A model sees this cache through `decode` (one new token for each of rows [0, n)) and `prefill` (T new tokens
    for one row), objects with the `begin`/`update`/`end` protocol of `KVCache`.
    """

    def __init__(self, n_layer: int, slots: int, n_kv_head: int, head_dim: int, max_len: int, capacity: int = 64,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        self.n_layer, self.slots, self.n_kv_head, self.head_dim = n_layer, slots, n_kv_head, head_dim
        self.max_len, self.device, self.dtype = max_len, device, dtype
        self.initial = min(capacity, max_len)
        self.lengths = [0] * slots
        self._allocate(self.initial)

    def _allocate(self, capacity: int) -> None:
        shape = (self.slots, self.n_kv_head, capacity, self.head_dim)
        self.k = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(self.n_layer)]
        self.v = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(self.n_layer)]
        self.capacity = capacity

    def nbytes(self) -> int:
        """Bytes held by the key/value memory."""
        return 2 * sum(t.numel() * t.element_size() for t in self.k)

    def reserve(self, needed: int) -> None:
        """Make room for `needed` slots per row (doubling, capped at max_len), keeping what is stored."""
        if needed > self.max_len:
            raise PlinthError(f"a sequence of {needed} tokens does not fit the cache's {self.max_len} per row")
        if needed <= self.capacity:
            return
        capacity = self.capacity
        while capacity < needed:
            capacity = min(self.max_len, capacity * 2)
        old_k, old_v, old = self.k, self.v, self.capacity
        self._allocate(capacity)
        for layer in range(self.n_layer):
            self.k[layer][:, :, :old] = old_k[layer]
            self.v[layer][:, :, :old] = old_v[layer]

    def shrink(self) -> None:
        """Release the memory grown beyond the initial capacity; only when no row holds anything."""
        if any(self.lengths) or self.capacity == self.initial:
            return
        self._allocate(self.initial)

    def clear_row(self, row: int) -> None:
        """Forget row `row` (its memory is simply overwritten by the next sequence)."""
        self.lengths[row] = 0

    def move_row(self, src: int, dst: int) -> None:
        """Copy row `src` (its filled slots) into row `dst` and empty `src`."""
        if src == dst:
            return
        n = self.lengths[src]
        for layer in range(self.n_layer):
            self.k[layer][dst, :, :n] = self.k[layer][src, :, :n]
            self.v[layer][dst, :, :n] = self.v[layer][src, :, :n]
        self.lengths[dst], self.lengths[src] = n, 0

    def swap_rows(self, a: int, b: int) -> None:
        """Exchange rows `a` and `b`."""
        if a == b:
            return
        n = max(self.lengths[a], self.lengths[b])
        idx = torch.tensor([a, b], device=self.k[0].device)
        rev = torch.tensor([b, a], device=self.k[0].device)
        for layer in range(self.n_layer):
            self.k[layer][idx, :, :n] = self.k[layer][rev, :, :n]
            self.v[layer][idx, :, :n] = self.v[layer][rev, :, :n]
        self.lengths[a], self.lengths[b] = self.lengths[b], self.lengths[a]

    def decode(self, n: int) -> _DecodeView:
        """The cache as a batch of rows [0, n), each taking one new token at its own length."""
        self.reserve(max(self.lengths[:n]) + 1)
        return _DecodeView(self, n)

    def prefill(self, row: int, T: int) -> _PrefillView:
        """The cache as a batch of one row taking `T` new tokens after the ones it holds."""
        self.reserve(self.lengths[row] + T)
        return _PrefillView(self, row, T)


class _DecodeView:
    """Rows [0, n) of a SlotCache, one new token each (B = n, T = 1), written at each row's own length."""

    def __init__(self, cache: SlotCache, n: int) -> None:
        self.cache, self.batch_size = cache, n
        self.lens = cache.lengths[:n]
        self.length = max(self.lens)  # Decoder: start + T bounds the RoPE positions used
        device = cache.k[0].device
        self._rows = torch.arange(n, device=device)
        self._at = torch.tensor(self.lens, device=device)  # (n,) the slot each row writes

    def begin(self, attention_mask_bt: torch.Tensor | None, T: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if T != 1 or attention_mask_bt is not None:
            raise PlinthError("a decode step over a SlotCache takes exactly one real token per row")
        positions = self._at[:, None]  # (n, 1): RoPE position = tokens already held
        if min(self.lens) == self.length:
            return positions, None  # all rows equally long: the one new query may see every key
        S = self.length + 1
        mask = torch.arange(S, device=self._at.device)[None, :] <= self._at[:, None]  # (n, S)
        return positions, mask[:, None, None, :]  # (n, 1, 1, S)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store each row's new key/value (n, n_kv_head, 1, hd) at its own slot; return rows [0, n) up to the
        longest (n, n_kv_head, S, hd), views of the memory."""
        K, V = self.cache.k[layer], self.cache.v[layer]
        K[self._rows, :, self._at] = k[:, :, 0]
        V[self._rows, :, self._at] = v[:, :, 0]
        S = self.length + 1
        return K[:self.batch_size, :, :S], V[:self.batch_size, :, :S]

    def end(self, T: int) -> None:
        for b in range(self.batch_size):
            self.cache.lengths[b] += 1


class _PrefillView:
    """One row of a SlotCache taking T new tokens (B = 1) after its `start` filled slots."""

    def __init__(self, cache: SlotCache, row: int, T: int) -> None:
        self.cache, self.row, self.batch_size = cache, row, 1
        self.length = cache.lengths[row]  # start of the new tokens

    def begin(self, attention_mask_bt: torch.Tensor | None, T: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if attention_mask_bt is not None:
            raise PlinthError("a SlotCache prefill takes unpadded tokens")
        start = self.length
        device = self.cache.k[0].device
        positions = torch.arange(start, start + T, device=device)[None, :]  # (1, T)
        if start == 0:
            return positions, None  # plain causal attention over the new tokens
        key_mask = torch.ones(1, start + T, dtype=torch.bool, device=device)
        return positions, attention_mask(key_mask, start, T)  # (1, 1, T, start + T)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.length, self.length + k.shape[2]
        r = self.row
        self.cache.k[layer][r:r + 1, :, start:end] = k
        self.cache.v[layer][r:r + 1, :, start:end] = v
        return self.cache.k[layer][r:r + 1, :, :end], self.cache.v[layer][r:r + 1, :, :end]

    def end(self, T: int) -> None:
        self.cache.lengths[self.row] += T
