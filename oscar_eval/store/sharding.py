"""Data parallelism over items without collectives (docs/results.md, "Sharded runs").

Every process of a launch (``torchrun``, ``accelerate launch``, ``srun``) evaluates one contiguous
shard of the same ordered item list and writes its own records under the same run id; the shards are
merged into one run afterwards (:mod:`oscar_eval.store.merge`). The rank and world size come from the
launcher's environment, so no process group is needed.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from oscar_eval.errors import UserError

# (rank, world size, local rank) variables by launcher; the first complete set wins. torchrun and
# accelerate set RANK/WORLD_SIZE (also when started under srun), so they come before SLURM's.
LAUNCHERS = (
    ("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"),
    ("slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
)


@dataclass(frozen=True)
class Shard:
    """This process's place in the launch: ``rank`` of ``world_size`` (``local_rank`` on its node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    source: str = "single"  # which launcher's variables said so

    @property
    def sharded(self) -> bool:
        return self.world_size > 1

    @property
    def tag(self) -> str:
        """``rank<R>-of-<W>``: the suffix of this shard's files in the run folder."""
        return f"rank{self.rank}-of-{self.world_size}"

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise UserError(f"{self.source}: rank {self.rank} / world size {self.world_size} / local rank "
                              f"{self.local_rank} is not a valid place in a launch")


def _int_var(env: Mapping[str, str], name: str) -> int:
    raw = env[name]
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"environment variable {name}={raw!r} is not an integer") from None


def detect(env: Mapping[str, str] | None = None) -> Shard:
    """The shard this process runs, from the launcher's environment (one shard of one without one)."""
    env = os.environ if env is None else env
    for source, rank_var, world_var, local_var in LAUNCHERS:
        if rank_var in env and world_var in env:
            local = _int_var(env, local_var) if local_var in env else 0
            return Shard(_int_var(env, rank_var), _int_var(env, world_var), local, source)
    return Shard()


def item_weights(items: Sequence[Any]) -> list[float]:
    """Cost estimate per item: its ``length`` (LongBench's word count, NIAH's context) when every
    readable item has a positive one, else 1 each. Unreadable rows (no ``length``) cost 0 in the first
    case: they are recorded as failed without running the model."""
    lengths = [getattr(it, "length", None) for it in items]
    readable = [n for it, n in zip(items, lengths, strict=True) if hasattr(it, "prompt")]
    if readable and all(isinstance(n, int | float) and not isinstance(n, bool) and n > 0 for n in readable):
        return [float(n) if hasattr(it, "prompt") else 0.0 for it, n in zip(items, lengths, strict=True)]
    return [1.0] * len(items)


def split(weights: Sequence[float], world_size: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, end)`` ranges, one per rank, whose weight sums are as even as a contiguous
    split allows: cut ``k`` is the boundary whose prefix sum is nearest ``k / world_size`` of the total
    (ties: the earlier one). Deterministic in the weights alone; a rank may get nothing."""
    if world_size < 1:
        raise ValueError(f"world_size must be positive, got {world_size}")
    if any(w < 0 for w in weights):
        raise ValueError("item weights must not be negative")
    prefix = [0.0]
    for w in weights:
        prefix.append(prefix[-1] + w)
    total = prefix[-1]
    if total <= 0:  # nothing to balance: split by count
        prefix = [float(i) for i in range(len(weights) + 1)]
        total = prefix[-1]
    cuts = [0]
    for k in range(1, world_size):
        target = total * k / world_size
        j = bisect.bisect_left(prefix, target, lo=cuts[-1])
        if j > cuts[-1] and (j == len(prefix) or target - prefix[j - 1] <= prefix[j] - target):
            j -= 1
        cuts.append(min(j, len(weights)))
    cuts.append(len(weights))
    return [(cuts[r], cuts[r + 1]) for r in range(world_size)]


def shard_items(items: Sequence[Any], shard: Shard) -> list[Any]:
    """This shard's contiguous part of ``items`` (all of them for a single process)."""
    if not shard.sharded:
        return list(items)
    start, end = split(item_weights(items), shard.world_size)[shard.rank]
    return list(items[start:end])


def bind_device(device: str, shard: Shard) -> str:
    """``auto``/``cuda`` -> ``cuda:<local rank>`` for a rank of a launch, so the ranks of a node use one
    GPU each; an explicit ``cuda:N`` or ``cpu`` is kept."""
    import torch

    if not shard.sharded or device not in ("auto", "cuda") or not torch.cuda.is_available():
        return device
    count = torch.cuda.device_count()
    if shard.local_rank >= count:
        raise UserError(f"rank {shard.rank} has local rank {shard.local_rank} but this node shows {count} "
                          "GPU(s): start at most one process per GPU (--nproc-per-node / --ntasks-per-node)")
    torch.cuda.set_device(shard.local_rank)
    return f"cuda:{shard.local_rank}"
