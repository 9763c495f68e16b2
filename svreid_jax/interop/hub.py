"""ImageNet ResNet weights by depth, fetched from the Hugging Face hub (`model.init_from='imagenet'`).

What: torchvision's ImageNet-1k ResNets (`IMAGENET1K_V1`, the weights the authors' code starts from,
docs/METHOD.md §6.1) as timm republishes them: one `model.safetensors` per depth in the
`timm/resnet<depth>.tv_in1k` repositories, under torchvision's tensor names (so
interop/torchvision.py maps them, and every tensor is checked there against the depth's shapes).

How: `huggingface_hub.hf_hub_download` at a pinned commit, so the bytes cannot change under a run; the
file's size and SHA-256 are then checked against the table below, and it is read with safetensors'
numpy API (no torch). `fetch` only downloads when the file is not already cached.

Where: huggingface_hub's cache, `$HF_HUB_CACHE` (default `~/.cache/huggingface/hub`, or
`$HF_HOME/hub`), as `models--timm--resnet50.tv_in1k/snapshots/<revision>/model.safetensors`
(≈ 98 MiB for ResNet-50). huggingface_hub's own variables apply: `HF_ENDPOINT` points at a mirror
with the hub's URL layout, `HF_HUB_OFFLINE=1` reads the cache only.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import threading

import huggingface_hub
import huggingface_hub.errors
from huggingface_hub import constants as hf_constants

_HEX = frozenset("0123456789abcdef")


class HubError(OSError):
    """The weights could not be had from the hub: neither cached nor downloadable (offline, no connection,
    an HTTP error). The message is one line naming the file, where it was looked for and what to do."""


class WeightsMismatch(HubError, ValueError):
    """A hub file whose size or SHA-256 is not the pinned one; one line naming the file, what it has and
    what was expected."""


@dataclasses.dataclass(frozen=True)
class HubWeights:
    """One weight file on the hub, pinned: `repo_id` at commit `revision`, `filename` of `size` bytes
    whose SHA-256 is `sha256` (lower-case hex)."""

    repo_id: str
    revision: str
    filename: str
    size: int
    sha256: str
    origin: str  # what the tensors are, for messages and the README

    def __post_init__(self):
        # A branch name would let the file change under a run; only a full commit hash pins it.
        if len(self.revision) != 40 or not set(self.revision) <= _HEX:
            raise ValueError(f"{self.repo_id}: revision {self.revision!r} is not a 40-character commit hash")
        if len(self.sha256) != 64 or not set(self.sha256) <= _HEX:
            raise ValueError(f"{self.repo_id}: sha256 {self.sha256!r} is not 64 lower-case hex digits")

    @property
    def url(self) -> str:
        return f"{hf_constants.ENDPOINT}/{self.repo_id}/resolve/{self.revision}/{self.filename}"


# model.depth → the file `init_from='imagenet'` fetches. Every pin in one place. The commits, sizes and
# SHA-256 are those the hub publishes for these files; they could not be downloaded from the machine this
# was written on (no network), so a wrong pin shows up as a one-line size or SHA-256 mismatch, never as
# silently different weights. ResNet-101 (timm/resnet101.tv_in1k) is not pinned yet: use a local file.
IMAGENET_RESNETS: dict[str, HubWeights] = {
    "18": HubWeights("timm/resnet18.tv_in1k", "bbd144b3e5565108aad885f145491d11bc6ce807", "model.safetensors",
                     46_807_446, "694f673df6520a3158624e8a89af086f59923ee4cd7436fe5bc3bc71d295ad81",
                     "torchvision ResNet18_Weights.IMAGENET1K_V1"),
    "34": HubWeights("timm/resnet34.tv_in1k", "1b7b21cca82ff974d341713f777bf740c2db38c4", "model.safetensors",
                     87_278_522, "0bb82595a564991a9d424708b33f5d843f5aaed7f6c0886ff10849ff97022235",
                     "torchvision ResNet34_Weights.IMAGENET1K_V1"),
    "50": HubWeights("timm/resnet50.tv_in1k", "78f3ecfdb38e06d9b8397f662e7ab8fee96026fa", "model.safetensors",
                     102_469_840, "5d061a3c593d795bfe682d9b152bafbcf550579873492def3515b46db1189888",
                     "torchvision ResNet50_Weights.IMAGENET1K_V1"),
}

_verified: set[tuple[str, int, int]] = set()  # (path, size, mtime_ns) of files whose hash matched
_verified_lock = threading.Lock()


def imagenet_weights(depth: int | str) -> HubWeights:
    """The pinned hub file of the ImageNet ResNet of `depth`; ValueError (one line) if there is none."""
    key = str(depth).strip()
    if key not in IMAGENET_RESNETS:
        raise ValueError(f"model.init_from='imagenet': no pinned ImageNet weights for model.depth={depth!r} "
                         f"(svreid_jax.interop.hub.IMAGENET_RESNETS has depths {', '.join(IMAGENET_RESNETS)}); "
                         "set model.init_from to a local torchvision ResNet file (.safetensors, .npz or .pth)")
    return IMAGENET_RESNETS[key]


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: str, entry: HubWeights) -> None:
    """Check the file's size and SHA-256 against `entry` (hashing once per process and file version);
    WeightsMismatch if either differs."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    with _verified_lock:
        if key in _verified:
            return
    where = f"{path} ({entry.repo_id}@{entry.revision[:7]}/{entry.filename})"
    if stat.st_size != entry.size:
        raise WeightsMismatch(f"{where} has {stat.st_size:,} bytes, expected {entry.size:,}; delete it and fetch again")
    got = _sha256(path)
    if got != entry.sha256:
        raise WeightsMismatch(f"{where} has SHA-256 {got}, expected {entry.sha256}; delete it and fetch again")
    with _verified_lock:
        _verified.add(key)


def download(entry: HubWeights, *, cache_dir: str | None = None, endpoint: str | None = None) -> str:
    """Path of `entry` in the hub cache, downloaded first if it is not there, then verified.

    cache_dir / endpoint: None uses huggingface_hub's (HF_HUB_CACHE / HF_ENDPOINT). Raises HubError (an
    OSError) with one line when the file is neither cached nor downloadable (offline, no connection, not
    on the hub), WeightsMismatch when it is not the pinned file.
    """
    cache = cache_dir or hf_constants.HF_HUB_CACHE
    source = f"{endpoint or hf_constants.ENDPOINT}/{entry.repo_id} at {entry.revision[:7]}"
    hint = (f"download {entry.filename} of {entry.repo_id} (revision {entry.revision}) yourself and set "
            "model.init_from to its path")
    try:
        path = huggingface_hub.hf_hub_download(entry.repo_id, entry.filename, revision=entry.revision,
                                               cache_dir=cache_dir, endpoint=endpoint)
    except huggingface_hub.errors.LocalEntryNotFoundError as e:
        why = ("HF_HUB_OFFLINE is set" if hf_constants.HF_HUB_OFFLINE
               else f"the hub could not be reached: {_cause(e)}")
        raise HubError(f"model.init_from='imagenet': {entry.filename} of {source} is not in the Hugging Face "
                      f"cache {cache} and {why}; run once with network access, or {hint}") from None
    except huggingface_hub.errors.HfHubHTTPError as e:
        status = getattr(e.response, "status_code", "?")
        raise HubError(f"model.init_from='imagenet': {source} answered HTTP {status} for {entry.filename}; "
                      f"check HF_ENDPOINT, or {hint}") from None
    verify(path, entry)
    return path


def _cause(error: BaseException) -> str:
    """The innermost cause's message, on one line (huggingface_hub's own message is generic)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return " ".join(f"{type(error).__name__}: {error}".split())


def fetch_imagenet_resnet(depth: int | str, *, cache_dir: str | None = None, endpoint: str | None = None) -> str:
    """Local path of the ImageNet ResNet-`depth` weights (`model.safetensors`), fetched if not cached."""
    return download(imagenet_weights(depth), cache_dir=cache_dir, endpoint=endpoint)
