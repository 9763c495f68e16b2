"""orbax checkpoints of the full run: train state, data iterator positions and run metadata.

A step directory holds `state` (params, optimiser, teacher, BN stats, RNG, step), one item per data
iterator (grain state, so a resumed run sees the same batches) and `meta` (JSON). Saving is async;
`close()` waits for the last save, so a finished or interrupted-by-exception run keeps it.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import grain
import jax
import orbax.checkpoint as ocp


class _JsonStateIterator:
    """Presents a wrapper of a grain iterator (pipeline.DevicePrefetch) to grain's checkpoint handler.

    The handler writes `get_state()` of a grain DatasetIterator as indented JSON and of anything
    else as bytes; this writes the wrapped dict state as the same JSON text, so the file does not
    depend on whether device prefetching was on. The state is taken when the save is requested, in
    case the handler runs after the train loop has moved on.
    """

    def __init__(self, iterator):
        self._iterator = iterator
        self._state = json.dumps(iterator.get_state(), indent=4).encode()

    def get_state(self) -> bytes:
        return self._state

    def set_state(self, state: bytes) -> None:
        self._iterator.set_state(json.loads(state.decode()))

    def start_prefetch(self) -> None:
        self._iterator.start_prefetch()


def _for_grain(iterator):
    return iterator if isinstance(iterator, grain.DatasetIterator) else _JsonStateIterator(iterator)


class Checkpointer:
    def __init__(self, directory: str, *, max_to_keep: int = 2, asynchronous: bool = True):
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=asynchronous,
            ),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, iterators: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(dict(meta))}
        for name, it in iterators.items():
            items[name] = grain.checkpoint.CheckpointSave(_for_grain(it))
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, state: Any, iterators: Mapping[str, Any], step: int | None = None) -> tuple[Any, dict]:
        """Restore into the structure of `state` (same shardings); iterators are set in place.

        Returns (state, meta).
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        items = {"state": ocp.args.StandardRestore(abstract), "meta": ocp.args.JsonRestore()}
        for name, it in iterators.items():
            items[name] = grain.checkpoint.CheckpointRestore(_for_grain(it))
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"], dict(restored["meta"])

    def restore_state_only(self, state: Any, step: int | None = None) -> Any:
        """Restore just the train state (evaluation of a checkpoint); data iterators are left alone."""
        return self.restore(state, {}, step)[0]

    def read_meta(self, step: int | None = None) -> dict:
        """The JSON metadata saved with a step (the latest by default)."""
        step = self.latest_step() if step is None else step
        restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


class BestCheckpoint:
    """Model selection's pick: the state with the highest selection rank-1 so far, kept in one
    checkpoint directory (<workdir>/best) with its score, so a resumed run keeps competing against it.

    offer(step, state, rank1) saves the state when it beats the best so far (or, with `ties=True`, equals
    it); restore(state) gives the kept state back.
    """

    def __init__(self, directory: str):
        self._checkpointer = Checkpointer(directory, max_to_keep=1)
        self.step: int | None = self._checkpointer.latest_step()
        self.rank1 = -1.0
        if self.step is not None:
            self.rank1 = float(self._checkpointer.read_meta().get("select_rank1", -1.0))

    @property
    def directory(self) -> str:
        return self._checkpointer.directory

    def offer(self, step: int, state: Any, rank1: float, *, ties: bool = False) -> bool:
        better = self.step is None or rank1 > self.rank1 or (ties and rank1 >= self.rank1)
        if better:
            self.rank1, self.step = float(rank1), int(step)
            self._checkpointer.save(step, state, {}, {"step": int(step), "select_rank1": float(rank1)})
        return better

    def restore(self, state: Any) -> Any:
        self._checkpointer.wait()
        return self._checkpointer.restore_state_only(state)

    def close(self) -> None:
        self._checkpointer.close()
