"""Metric writers without TensorFlow: log lines, a JSONL file and TensorBoard events (tensorboardX).

clu's writers import TensorFlow, so this keeps their method names (write_scalars, write_images,
write_texts, flush, close) on top of logging + tensorboardX. Only process 0 writes files.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

import numpy as np
from absl import logging


def _scalar(value: Any) -> float:
    return float(np.asarray(value))


class MetricWriter:
    """Writes scalars to `workdir/metrics.jsonl` and TensorBoard events under `workdir/tensorboard`."""

    def __init__(self, workdir: str, *, enabled: bool = True, log_to_console: bool = True):
        self._enabled = enabled
        self._log = log_to_console
        self._jsonl = None
        self._tb = None
        self._tb_dir = os.path.join(workdir, "tensorboard")
        if enabled:
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")

    @property
    def _events(self):
        """The TensorBoard writer, opened at the first write. A run that fails before it logs anything (a data
        error) then leaves no tensorboardX writer for the interpreter to close at exit, which Python 3.12 cannot
        do (its worker thread may not start during shutdown: a traceback after the real error)."""
        if self._tb is None:
            from tensorboardX import SummaryWriter  # imported lazily: heavy, and unused in workers

            self._tb = SummaryWriter(self._tb_dir)
        return self._tb

    def drop_after(self, step: int, *, final_rows_at_step: bool = False) -> int:
        """Rewrite metrics.jsonl without the rows a resumed run is about to write again: those after
        `step` (logged after its checkpoint, by a run that then died), and with `final_rows_at_step`
        the evaluation rows at `step` itself (a finished run's final evaluation, which a rerun repeats).
        A last line cut short by a kill goes too. Returns how many rows were dropped. TensorBoard shows
        the last value written for a step, so its events are left alone.
        """
        if not self._enabled:
            return 0
        path = self._jsonl.name
        self._jsonl.close()
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        kept = []
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row["step"] > step:
                continue
            if final_rows_at_step and row["step"] == step and not any(k.startswith("train/") for k in row):
                continue
            kept.append(line)
        if len(kept) != len(lines):
            with open(path + ".tmp", "w", encoding="utf-8") as f:
                f.write("".join(line + "\n" for line in kept))
            os.replace(path + ".tmp", path)
        self._jsonl = open(path, "a", encoding="utf-8")
        return len(lines) - len(kept)

    def write_scalars(self, step: int, scalars: Mapping[str, Any], *, prefix: str = "") -> None:
        values = {f"{prefix}{k}": _scalar(v) for k, v in scalars.items()}
        if self._log:
            text = ", ".join(f"{k}={v:.4g}" for k, v in sorted(values.items()))
            logging.info("[%d] %s", step, text)
        if not self._enabled:
            return
        self._jsonl.write(json.dumps({"step": int(step), "time": time.time(), **values}) + "\n")
        self._jsonl.flush()  # so `tail -f metrics.jsonl` and a crash both see every logged step
        for key, value in values.items():
            self._events.add_scalar(key, value, int(step))

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """images: name → uint8 [H, W, 3]."""
        if self._enabled:
            for key, image in images.items():
                self._events.add_image(key, np.asarray(image), int(step), dataformats="HWC")

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        if self._enabled:
            for key, text in texts.items():
                self._events.add_text(key, text, int(step))

    def flush(self) -> None:
        if self._enabled:
            self._jsonl.flush()
            if self._tb is not None:
                self._tb.flush()

    def close(self) -> None:
        if self._enabled:
            self._jsonl.close()
            if self._tb is not None:
                self._tb.close()
            self._enabled = False
