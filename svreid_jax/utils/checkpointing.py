"""orbax checkpoints of the full run: train state, data iterator positions and run metadata.

A step directory holds `state` (params, optimiser, teacher, BN stats, RNG, step), one item per data
iterator (grain state, so a resumed run sees the same batches) and `meta` (JSON: the step, and from
train.py the run's config). Saving is async; `close()` waits for the last save, so a finished or
interrupted-by-exception run keeps it.

What goes wrong on disk is said in one line (CheckpointError): a step that cannot be restored (a file
cut short, a missing item) is skipped for the next older one, naming it and the cause, and with
`set_aside_broken`, once an older step has restored, renamed to `<step>.unreadable` so that the run
can write that step again; a save
that fails (a full disk) names its cause and the newest step still on disk, which orbax leaves in
place because a step only replaces it once completely written. The partial folder of a failed save
(`<step>.orbax-checkpoint-tmp…`) is removed then, and the ones a killed run left are removed before this
process's first save.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from collections.abc import Callable
from typing import Any, Mapping

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or restored; the message is one line naming the folder,
    the step and the cause."""


# orbax writes a step into `<step>.orbax-checkpoint-tmp[-<timestamp>]` and renames it when complete.
_PARTIAL_SAVE = re.compile(r"^\d+\.orbax-checkpoint-tmp")
_TENSORSTORE_ANNOTATION = re.compile(r"\s\[(tensorstore_spec|source locations)=")


def cause(err: BaseException, limit: int = 240) -> str:
    """The innermost cause of an error, first line only: orbax wraps tensorstore's one-line reason in
    a long message (and chains it), e.g. 'OUT_OF_RANGE: Error reading "params.…" … is not valid for
    value of size 195866'."""
    while (err.__cause__ or err.__context__) is not None:
        err = err.__cause__ or err.__context__
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = f"{type(err).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    # tensorstore may append the whole spec of the array it was opening (hundreds of characters of
    # JSON) after the reason; the reason is what a user needs, so the spec goes.
    annotation = _TENSORSTORE_ANNOTATION.search(text)
    if annotation:
        text = text[:annotation.start()]
    # The reason tends to come last ('… Failed to write 278494 bytes to file 8: File too large'), so
    # a long message keeps its head and its tail.
    head = limit // 3
    return text if len(text) <= limit else f"{text[:head]} … {text[-(limit - head - 3):]}"


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


class _Refused(Exception):
    """Carries a check's refusal of a step past the damage handling."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


class Checkpointer:
    def __init__(self, directory: str, *, max_to_keep: int = 2, asynchronous: bool = True):
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=asynchronous,
            ),
        )
        self._saving: int | None = None  # the step of an asynchronous save not yet waited for
        self._saved_before = False  # partial saves of earlier processes are removed before the first save
        self._closed = False

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def steps(self) -> list[int]:
        """The steps on disk, newest first."""
        return sorted(self._manager.all_steps(), reverse=True)

    def remove_partial_saves(self) -> list[str]:
        """Remove the folders of saves that never completed (a failed save, a killed run) from the
        directory; returns their paths. Only a writer may call this: another process's save in flight
        looks the same."""
        removed = []
        names = os.listdir(self.directory) if os.path.isdir(self.directory) else []
        for name in sorted(names):
            if _PARTIAL_SAVE.match(name):
                path = os.path.join(self.directory, name)
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
                logging.info("removed the partial checkpoint %s", path)
        return removed

    def _write_failed(self, step: int, err: BaseException) -> CheckpointError:
        self.remove_partial_saves()
        self._manager.reload()
        kept = [s for s in self.steps() if s != step]
        previous = (f"the newest checkpoint left is step {kept[0]} in {self.directory}" if kept
                    else f"no earlier checkpoint is in {self.directory}")
        return CheckpointError(f"could not write checkpoint step {step} to {self.directory}: {cause(err)}; "
                               f"{previous}")

    def save(self, step: int, state: Any, iterators: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
        """Start saving step `step`; a failure (this save's or the previous asynchronous one's) raises
        CheckpointError."""
        self.wait()
        if not self._saved_before:
            self.remove_partial_saves()
            self._saved_before = True
        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(dict(meta))}
        for name, it in iterators.items():
            items[name] = grain.checkpoint.CheckpointSave(_for_grain(it))
        try:
            self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        except Exception as err:  # noqa: BLE001 — orbax raises whatever the file system did
            raise self._write_failed(step, err) from err
        self._saving = step

    def _first_intact(self, attempt: Callable[[int], Any], check: Callable[[int, dict], None] | None,
                      set_aside_broken: bool, step: int | None) -> tuple[int, dict, Any]:
        """(step, meta, attempt(step)) of the newest step (or just `step`) whose meta and attempt succeed.

        check(step, meta) runs before attempt and its errors pass through (a refusal, not damage).
        With set_aside_broken the steps skipped are renamed once an older one has restored: when none
        does, the cause is more likely the code than the files (a train state of another structure),
        and nothing is renamed.
        """
        self.wait()
        candidates = self.steps() if step is None else [step]
        if not candidates:
            raise FileNotFoundError(f"no checkpoint under {self.directory}")
        failures = []
        for s in candidates:
            try:
                meta = self.read_meta(s)
                if check is not None:
                    try:
                        check(s, meta)
                    except Exception as refusal:  # noqa: BLE001 — passed through below, not counted as damage
                        raise _Refused(refusal) from None
                result = attempt(s)
            except _Refused as refused:
                raise refused.error from None
            except Exception as err:  # noqa: BLE001 — whatever orbax or the file system raised
                failures.append((s, err))
                older = [c for c in candidates if c < s]
                logging.warning("checkpoint step %d cannot be restored (%s); %s", s, cause(err),
                                f"trying step {older[0]}" if older else "no older step is left")
                continue
            for bad, err in failures:
                where = self._set_aside(bad) if set_aside_broken else os.path.join(self.directory, str(bad))
                logging.warning("skipped checkpoint step %d (%s): %s %s", bad, cause(err),
                                "set aside as" if set_aside_broken else "left in place at", where)
            return s, meta, result
        raise CheckpointError(f"no checkpoint under {self.directory} can be restored: "
                              + "; ".join(f"step {s}: {cause(e)}" for s, e in failures)
                              + " (damaged, or written by a version of the code with another train state; "
                              "move the folder away to start over)")

    def _set_aside(self, step: int) -> str:
        """Rename a broken step's folder out of orbax's sight (it lists numeric names only)."""
        source = os.path.join(self.directory, str(step))
        target, n = f"{source}.unreadable", 1
        while os.path.exists(target):
            n += 1
            target = f"{source}.unreadable-{n}"
        os.rename(source, target)
        self._manager.reload()
        return target

    def restore(self, state: Any, iterators: Mapping[str, Any], step: int | None = None, *,
                check: Callable[[int, dict], None] | None = None, set_aside_broken: bool = False
                ) -> tuple[Any, dict]:
        """Restore into the structure of `state` (same shardings); iterators are set in place.

        The newest step that can be restored is used (or exactly `step`); each one skipped is named in
        a warning with its cause, and set aside with `set_aside_broken`. check(step, meta) may refuse
        a step by raising. None restorable → CheckpointError; none at all → FileNotFoundError.
        Returns (state, meta).
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)

        def attempt(s):
            target, from_saved = self._restore_target(s, abstract)
            items = {"state": ocp.args.StandardRestore(target)}
            for name, it in iterators.items():
                items[name] = grain.checkpoint.CheckpointRestore(_for_grain(it))
            return from_saved(self._manager.restore(s, args=ocp.args.Composite(**items))["state"])

        _, meta, restored = self._first_intact(attempt, check, set_aside_broken, step)
        return restored, meta

    def _restore_target(self, step: int, abstract: Any) -> tuple[Any, Callable[[Any], Any]]:
        """(what orbax restores step `step` into, a function from what it restores to `abstract`'s type).

        A state class may name fields that earlier checkpoints stored under another name
        (`SAVED_AS = {field: name on disk}`, e.g. TrainState); a step that has the old name and not the
        new one is restored field by field under the names on disk. Any other step restores into
        `abstract` itself.
        """
        saved_as = getattr(abstract, "SAVED_AS", None)
        if not saved_as or not dataclasses.is_dataclass(abstract):
            return abstract, lambda restored: restored
        with ocp.StandardCheckpointer() as reader:  # closed: its pending reads would outlive the call
            metadata = reader.metadata(os.path.join(self.directory, str(step), "state"))
        on_disk = set(getattr(metadata, "item_metadata", metadata).keys())
        old = {field: name for field, name in saved_as.items() if name in on_disk and field not in on_disk}
        if not old:
            return abstract, lambda restored: restored
        fields = [f.name for f in dataclasses.fields(abstract) if f.metadata.get("pytree_node", True)]
        target = {old.get(name, name): getattr(abstract, name) for name in fields}
        logging.info("checkpoint step %d stores %s under the earlier name(s) %s", step, ", ".join(old),
                     ", ".join(old.values()))
        return target, lambda restored: abstract.replace(**{name: restored[old.get(name, name)] for name in fields})

    def restore_saved(self, step: int | None = None) -> tuple[int, dict, dict]:
        """(step, meta, the train state as saved: nested dicts of arrays) of the newest restorable step,
        without a target structure (evaluation builds the model from what it finds)."""
        def attempt(s):
            return self._manager.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]

        return self._first_intact(attempt, None, False, step)

    def restore_state_only(self, state: Any, step: int | None = None) -> Any:
        """Restore just the train state (evaluation of a checkpoint); data iterators are left alone."""
        return self.restore(state, {}, step)[0]

    def read_meta(self, step: int | None = None) -> dict:
        """The JSON metadata saved with a step (the latest by default)."""
        step = self.latest_step() if step is None else step
        restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def wait(self) -> None:
        """Wait for the asynchronous save in flight; its failure raises CheckpointError."""
        try:
            self._manager.wait_until_finished()
        except Exception as err:  # noqa: BLE001
            step, self._saving = self._saving, None
            raise self._write_failed(step if step is not None else -1, err) from err
        self._saving = None

    def close(self) -> None:
        """Wait for the last save and release orbax's threads; closing again does nothing."""
        if self._closed:
            return
        try:
            self.wait()
        finally:
            self._closed = True
            self._manager.close()


class BestCheckpoint:
    """Model selection's pick: the state with the highest selection rank-1 so far, kept in one
    checkpoint directory (<workdir>/best) with its score, so a resumed run keeps competing against it.

    offer(step, state, rank1) saves the state when it beats the best so far (or, with `ties=True`, equals
    it); restore(state) gives the kept state back. A pick that cannot be read back is set aside with a
    warning, and selection starts over.
    """

    def __init__(self, directory: str, meta: Mapping[str, Any] | None = None):
        self._checkpointer = Checkpointer(directory, max_to_keep=1)
        self._meta = dict(meta or {})
        self.step: int | None = None
        self.rank1 = -1.0
        for step in self._checkpointer.steps():
            try:
                self.rank1 = float(self._checkpointer.read_meta(step).get("select_rank1", -1.0))
                self.step = step
                break
            except Exception as err:  # noqa: BLE001
                where = self._checkpointer._set_aside(step)
                logging.warning("the selected checkpoint step %d cannot be read (%s); set aside as %s, "
                                "model selection starts over", step, cause(err), where)

    @property
    def directory(self) -> str:
        return self._checkpointer.directory

    def offer(self, step: int, state: Any, rank1: float, *, ties: bool = False) -> bool:
        better = self.step is None or rank1 > self.rank1 or (ties and rank1 >= self.rank1)
        if better:
            self.rank1, self.step = float(rank1), int(step)
            self._checkpointer.save(step, state, {}, {**self._meta, "step": int(step), "select_rank1": float(rank1)})
        return better

    def restore(self, state: Any) -> Any:
        self._checkpointer.wait()
        return self._checkpointer.restore(state, {}, self.step)[0]

    def close(self) -> None:
        self._checkpointer.close()
