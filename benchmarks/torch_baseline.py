"""The paper-variant train step written in PyTorch, for timing against svreid_jax in the same run.

Written in this file from docs/METHOD.md §3–§6 and svreid_jax's paper variant (docs/METHOD.md §1.2), not taken from
the authors' code; torchvision is not needed (the ResNet below has torchvision's structure and names).
One step, like `svreid_jax.variants.make_train_step` with every loss weight > 0:

  * inputs: uint8 clips [B, T, H, W, 3] → /255, ImageNet mean/std, NCHW; Random Erasing (p = 0.5, the
    reference's clip semantics: one corner per clip, area/aspect per frame) on source and target;
  * teacher (EMA copy of the student, train-mode BN, `torch.no_grad`) on its own flip + erasing of the
    target clips;
  * student forward on source and on target, as two train-mode forwards (BN statistics per domain);
  * network: ResNet (last stride 1) per frame → global max pool over H×W → mean over T → BN-neck
    (BatchNorm1d, weight N(1, 0.02)) → Linear classifier (N(0, 0.001)); frame and clip domain
    discriminators GRL(β) → Linear(D, 256) → ReLU → Dropout(0.5) → Linear(256, 2) on the RMS-normalised
    frame / clip embeddings; the GRL is an autograd Function;
  * losses: CE + batch-hard triplet (cosine, margin 0.3) on source; frame and clip domain CE (source 0,
    target 1); mean-teacher consistency: k-means on the teacher's L2-normalised target embeddings
    (k-means++ seeding + a fixed number of Lloyd iterations, in torch), CE of the student's soft
    assignment softmax(cos / 0.1) against the teacher's clusters + mean distance to the assigned centroid;
  * backward, gradient norm, non-finite guard (skip the update), Adam with L2 5e-4 added to the gradient
    on conv/linear weights only (the JAX default `decay_bn_and_bias=False`), EMA teacher update with
    decay min(1 − 1/(step+1), 0.999);
  * no host↔device sync inside a step: random numbers (erasing, flip, k-means++) drawn on the device, the step
    counter, β and the EMA decay on the device, fused Adam whose `found_inf` skips a non-finite update on the
    device, metrics returned as device tensors. `compile=True` runs the forwards and losses under torch.compile.

`--dtype bfloat16` runs the backbone under `torch.autocast(device, torch.bfloat16)`; the pooled embeddings
and everything after them stay float32, as in svreid_jax (`model.dtype` only affects the backbone).

Standalone: `python benchmarks/torch_baseline.py --depth tiny --batch 2 --steps 3 [--compile]` prints one markdown
row. `benchmarks/train_step.py --torch` calls `run(...)` on the same uint8 batch as the JAX step.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from memory import proc_status, reset_peak_rss  # benchmarks/memory.py, beside this file
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ERASE_FILL = (0.4914, 0.4822, 0.4465)

# depth → (blocks per stage, block kind, default width); the same presets as svreid_jax.models.resnet.
PRESETS = {"tiny": ((1, 1, 1, 1), "basic", 8), "18": ((2, 2, 2, 2), "basic", 64),
           "34": ((3, 4, 6, 3), "basic", 64), "50": ((3, 4, 6, 3), "bottleneck", 64),
           "101": ((3, 4, 23, 3), "bottleneck", 64)}


# ---------------------------------------------------------------------------------------------
# Network


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """torchvision Bottleneck V1.5 (stride on the 3×3 conv)."""

    expansion = 4

    def __init__(self, cin, planes, stride):
        super().__init__()
        out = planes * 4
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or cin != out:
            self.downsample = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """torchvision-compatible ResNet trunk (no fc): conv1, bn1, maxpool, layer1..4. [N,3,H,W] → [N,C,h,w]."""

    def __init__(self, depth="50", width=None, last_stride=1):
        super().__init__()
        stages, kind, default_width = PRESETS[str(depth)]
        width = width or default_width
        block = Bottleneck if kind == "bottleneck" else BasicBlock
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = width
        for s, n in enumerate(stages):
            stride = 1 if s == 0 else (last_stride if s == len(stages) - 1 else 2)
            blocks = []
            for i in range(n):
                blocks.append(block(cin, width * 2**s, stride if i == 0 else 1))
                cin = width * 2**s * block.expansion
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.out_channels = cin
        for m in self.modules():  # torchvision's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by −beta."""

    @staticmethod
    def forward(ctx, x, beta):
        ctx.save_for_backward(beta)  # a 0-d device tensor: reading it back as a float would sync
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        (beta,) = ctx.saved_tensors
        return -beta.to(grad.dtype) * grad, None


class DomainDiscriminator(nn.Module):
    def __init__(self, dim, hidden=256, dropout=0.5):
        super().__init__()
        self.fc1, self.drop, self.fc2 = nn.Linear(dim, hidden), nn.Dropout(dropout), nn.Linear(hidden, 2)

    def forward(self, x, beta):
        return self.fc2(self.drop(F.relu(self.fc1(GradientReversal.apply(x, beta)))))


def rms_normalise(x, eps=1e-6):
    x = x.float()
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)


class ReIDNet(nn.Module):
    """Per-frame ResNet → max pool → temporal mean → BN-neck → classifier, + two discriminators."""

    def __init__(self, num_classes, depth="50", width=None, disc_hidden=256, autocast_dtype=None):
        super().__init__()
        self.backbone = ResNet(depth, width, last_stride=1)
        dim = self.backbone.out_channels
        self.bnneck = nn.BatchNorm1d(dim)
        nn.init.normal_(self.bnneck.weight, 1.0, 0.02)
        nn.init.zeros_(self.bnneck.bias)
        self.classifier = nn.Linear(dim, num_classes)
        nn.init.normal_(self.classifier.weight, 0.0, 0.001)
        nn.init.zeros_(self.classifier.bias)
        self.frame_discriminator = DomainDiscriminator(dim, disc_hidden)
        self.clip_discriminator = DomainDiscriminator(dim, disc_hidden)
        self.autocast_dtype = autocast_dtype

    def forward(self, video, beta):
        """video: float [B, T, 3, H, W] (normalised) → dict of float32 outputs."""
        b, t = video.shape[:2]
        x = video.flatten(0, 1)
        if self.autocast_dtype is not None:
            with torch.autocast(x.device.type, dtype=self.autocast_dtype):
                fmap = self.backbone(x)
        else:
            fmap = self.backbone(x)
        frames = fmap.float().amax(dim=(2, 3)).reshape(b, t, -1)  # [B, T, D]
        clip = frames.mean(1)
        bn = self.bnneck(clip)
        return {"frame_embeddings": frames, "clip_embedding": clip, "bn_embedding": bn,
                "logits": self.classifier(bn),
                "frame_domain_logits": self.frame_discriminator(rms_normalise(frames), beta),
                "clip_domain_logits": self.clip_discriminator(rms_normalise(clip), beta)}


# ---------------------------------------------------------------------------------------------
# Data transforms (every random number is drawn on the step's device: no host round trip per step)


def normalise(video_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, memory_format) -> torch.Tensor:
    """uint8 [B, T, H, W, 3] → float32 [B, T, 3, H, W], ImageNet-normalised (mean, std: [3] on the device)."""
    x = (video_uint8.float() / 255.0 - mean) / std
    x = x.permute(0, 1, 4, 2, 3)
    if memory_format is torch.channels_last:
        # [B, T, 3, H, W] whose (3, H, W) part is NHWC in memory, so flatten(0, 1) gives channels_last.
        return x  # the permute of a contiguous NHWC tensor already has that layout
    return x.contiguous()


def random_erasing(x: torch.Tensor, fill: torch.Tensor, probability=0.5, area=(0.02, 0.4), aspect=(0.3, 1 / 0.3),
                   attempts=10) -> torch.Tensor:
    """Random Erasing on [B, T, C, H, W] like svreid_jax.data.augment.random_erasing (vectorised; fill: [C])."""
    b, t, c, h, w = x.shape
    dev = x.device
    u = lambda *shape: torch.rand(*shape, device=dev)  # noqa: E731
    apply = u(b) < probability
    pos = u(b, 1, 2)
    ar = (area[0] + (area[1] - area[0]) * u(b, t, attempts)) * h * w
    asp = torch.exp(math.log(aspect[0]) + (math.log(aspect[1]) - math.log(aspect[0])) * u(b, t, attempts))
    eh, ew = torch.round(torch.sqrt(ar * asp)).long(), torch.round(torch.sqrt(ar / asp)).long()
    fits = (eh < h) & (ew < w)
    first = fits.int().argmax(-1, keepdim=True)
    any_fit = fits.any(-1)
    eh, ew = eh.gather(-1, first)[..., 0], ew.gather(-1, first)[..., 0]
    top = torch.floor(pos[..., 0] * (h - eh + 1)).long()
    left = torch.floor(pos[..., 1] * (w - ew + 1)).long()
    rows = torch.arange(h, device=dev)[None, None, :, None]
    cols = torch.arange(w, device=dev)[None, None, None, :]
    inside = ((rows >= top[..., None, None]) & (rows < (top + eh)[..., None, None])
              & (cols >= left[..., None, None]) & (cols < (left + ew)[..., None, None]))
    mask = (inside & (apply[:, None] & any_fit)[..., None, None])[:, :, None]  # [B, T, 1, H, W]
    return torch.where(mask, fill.to(x.dtype)[None, None, :, None, None], x)


# ---------------------------------------------------------------------------------------------
# Losses


def batch_hard_triplet(emb, labels, margin=0.3):
    xn = F.normalize(emb.float(), dim=-1, eps=1e-12)
    dist = -xn @ xn.T
    same = labels[:, None] == labels[None, :]
    pos = torch.where(same, dist, torch.full_like(dist, -math.inf)).amax(1)
    neg = torch.where(same, torch.full_like(dist, math.inf), dist).amin(1)
    neg = torch.where(torch.isinf(neg), pos + margin, neg)
    return F.relu(pos - neg + margin).mean()


def domain_cross_entropy(source_logits, target_logits):
    s, t = source_logits.reshape(-1, 2), target_logits.reshape(-1, 2)
    labels = torch.cat([torch.zeros(len(s), dtype=torch.long, device=s.device),
                        torch.ones(len(t), dtype=torch.long, device=s.device)])
    return F.cross_entropy(torch.cat([s, t]), labels)


def _sq_dist(x, c):
    return (x.square().sum(-1)[:, None] + c.square().sum(-1)[None, :] - 2.0 * x @ c.T).clamp_min(0.0)


@torch.no_grad()
def kmeans(points, k, iters):
    """k-means++ seeding, then `iters` Lloyd rounds (an empty cluster keeps its centroid), all on the points'
    device: each seed is drawn by inverting the cumulative D² weights at a device-side uniform number, so no
    index or probability comes back to the host."""
    n = points.shape[0]
    cent = points[torch.randint(n, (1,), device=points.device)]
    for _ in range(1, k):
        cum = torch.cumsum(_sq_dist(points, cent).amin(1), 0)
        draw = torch.rand(1, device=points.device) * cum[-1]
        # The first point whose cumulative weight passes the draw; all-zero weights (every point already a
        # centroid) give n, clamped to the last point.
        pick = torch.searchsorted(cum, draw, right=True).clamp_max(n - 1)
        cent = torch.cat([cent, points[pick]])
    for _ in range(iters):
        onehot = F.one_hot(_sq_dist(points, cent).argmin(1), k).float()
        counts = onehot.sum(0)
        cent = torch.where(counts[:, None] > 0, (onehot.T @ points) / counts.clamp_min(1.0)[:, None], cent)
    return cent, _sq_dist(points, cent).argmin(1)


def teacher_consistency(student, teacher, k, iters, temperature):
    s = F.normalize(student.float(), dim=-1, eps=1e-12)
    t = F.normalize(teacher.float(), dim=-1, eps=1e-12)
    cent, assign = kmeans(t, k, iters)
    ce = F.cross_entropy((s @ F.normalize(cent, dim=-1, eps=1e-12).T) / temperature, assign)
    dist = torch.sqrt((s - cent[assign]).square().sum(-1) + 1e-12).mean()
    return ce, dist


# ---------------------------------------------------------------------------------------------
# Train step


class Trainer:
    """The paper step in PyTorch. No host↔device traffic inside a step: the random numbers (erasing, flip,
    k-means++) are drawn on the device, the step counter, GRL β and EMA decay live on the device, the
    non-finite guard is fused Adam's `found_inf` (the update is skipped on the device, as GradScaler does), and
    the metrics stay device tensors until `metrics()` reads them.

    compile: run the forwards and losses through torch.compile (inductor; AOTAutograd compiles their
    backward too); the optimiser is fused Adam either way, the EMA update foreach kernels."""

    def __init__(self, num_classes, depth="50", width=None, dtype="float32", device="cpu", lr=3e-4,
                 weight_decay=5e-4, ema=0.999, grl_max_steps=20000, kmeans_clusters=8, kmeans_iters=10,
                 temperature=0.1, channels_last=True, seed=0, compile=False, compile_backend="inductor"):
        torch.manual_seed(seed)  # seeds the CPU and every CUDA generator: the device-side draws repeat
        self.device = torch.device(device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        autocast = {"float32": None, "bfloat16": torch.bfloat16}[dtype]
        self.student = ReIDNet(num_classes, depth, width, autocast_dtype=autocast).to(self.device)
        if channels_last:
            self.student = self.student.to(memory_format=torch.channels_last)
        self.teacher = copy.deepcopy(self.student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.student.train()
        self.teacher.train()
        decay = [p for p in self.student.parameters() if p.ndim > 1]  # conv and linear weights
        no_decay = [p for p in self.student.parameters() if p.ndim <= 1]
        self.opt = torch.optim.Adam([{"params": decay, "weight_decay": weight_decay},
                                     {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.999), eps=1e-8,
                                    fused=True)
        self.ema, self.grl_max_steps = ema, grl_max_steps
        self.k, self.iters, self.temperature = kmeans_clusters, kmeans_iters, temperature
        dev = self.device
        self.mean = torch.tensor(IMAGENET_MEAN, device=dev)
        self.std = torch.tensor(IMAGENET_STD, device=dev)
        self.fill = torch.tensor(ERASE_FILL, device=dev)
        self.step_count = torch.zeros((), device=dev)  # float: β and the EMA decay are computed from it
        self.compiled = bool(compile)
        self.losses = torch.compile(self._losses, backend=compile_backend) if compile else self._losses

    def prepare(self, video, flip=False):
        x = normalise(video, self.mean, self.std, self.memory_format)
        if flip:
            x = torch.where((torch.rand(x.shape[0], device=x.device) < 0.5)[:, None, None, None, None], x.flip(-1), x)
        return random_erasing(x, self.fill)

    def _losses(self, source_video, source_pid, target_video, beta):
        """The forwards and the loss terms: (total, {term: value})."""
        src, tgt = self.prepare(source_video), self.prepare(target_video)
        with torch.no_grad():
            t_out = self.teacher(self.prepare(target_video, flip=True), torch.zeros_like(beta))
        out_s = self.student(src, beta)
        out_t = self.student(tgt, beta)
        terms = {
            "ce": F.cross_entropy(out_s["logits"], source_pid),
            "triplet": batch_hard_triplet(out_s["bn_embedding"], source_pid),
            "frame_domain": domain_cross_entropy(out_s["frame_domain_logits"], out_t["frame_domain_logits"]),
            "clip_domain": domain_cross_entropy(out_s["clip_domain_logits"], out_t["clip_domain_logits"]),
        }
        terms["consistency_ce"], terms["consistency_dist"] = teacher_consistency(
            out_t["bn_embedding"], t_out["bn_embedding"], self.k, self.iters, self.temperature)
        return sum(terms.values()), terms

    def step(self, source_video, source_pid, target_video) -> dict[str, torch.Tensor]:
        """One train step; returns the metrics as device tensors (reading them synchronises)."""
        step = self.step_count
        beta = 2.0 / (1.0 + torch.exp(-10.0 * step / self.grl_max_steps)) - 1.0
        total, terms = self.losses(source_video, source_pid, target_video, beta)
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        grads = [p.grad for p in self.student.parameters() if p.grad is not None]
        grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        finite = torch.isfinite(total) & torch.isfinite(grad_norm)
        self.opt.found_inf = (~finite).float()  # fused Adam leaves parameters and moments alone where set
        self.opt.step()
        # EMA decay min(1 − 1/(step+1), ema), and no teacher move at all on a skipped step: weight 0 leaves the teacher
        # exactly as it was, since the student's parameters stay finite (a non-finite update is never applied).
        weight = (1.0 - torch.clamp(1.0 - 1.0 / (step + 1.0), max=self.ema)) * finite.float()
        with torch.no_grad():
            t_params, s_params = list(self.teacher.parameters()), list(self.student.parameters())
            torch._foreach_mul_(t_params, 1.0 - weight)
            torch._foreach_add_(t_params, torch._foreach_mul(s_params, weight))
        self.step_count = step + 1.0
        return {"loss": total.detach(), **{k: v.detach() for k, v in terms.items()}, "grad_norm": grad_norm,
                "skipped": (~finite).float()}


# ---------------------------------------------------------------------------------------------
# Timing


def matmul_rate(dtype="float32", n=2048, repeats=5, device="cpu") -> float:
    """Best rate (flops/s) of an n×n torch matmul in `dtype`: PyTorch's achieved matmul peak here."""
    a = torch.randn(n, n, device=device).to(getattr(torch, dtype))
    best = float("inf")
    for _ in range(repeats + 1):
        start = time.perf_counter()
        (a @ a).sum().item()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


# Tensor methods that hand a value to Python, i.e. wait for the device (counted by host_reads on any device).
HOST_READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")


class _HostReads(torch.overrides.TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def host_reads(fn) -> list[str]:
    """The Python-level reads of tensor values (float(t), t.item(), `if t:` ...) while fn() runs eagerly."""
    with _HostReads() as mode:
        fn()
    return mode.seen


def cuda_syncs(fn) -> int:
    """Host↔device synchronisations while fn() runs, as CUDA's sync debug mode reports them (CUDA only)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


class Runner:
    """Build the trainer on `batch` (numpy: source video/pid, target video), then time steps: single steps,
    each waited for, and back-to-back runs waited for once at the end.

    Peak memory: the process's peak RSS from just before the model is built (VmHWM reset; Linux), or on a GPU
    torch.cuda.max_memory_allocated minus what was allocated when this runner began (another runner's tensors
    in the same process are not its own). `benchmarks/train_step.py` interleaves `step()` calls with the JAX
    step's, so all see the same machine load.
    """

    def __init__(self, batch: dict, *, num_classes: int, depth="50", width=None, dtype="float32", device=None,
                 kmeans_clusters=8, kmeans_iters=10, channels_last=True, seed=0, num_threads=None,
                 cudnn_benchmark=True, tf32=None, compile=False, compile_backend="inductor"):
        """cudnn_benchmark: let cuDNN time its convolution algorithms on the first steps (what re-ID training code
        sets; the warm-up absorbs it). tf32: None keeps PyTorch's defaults (TF32 for cuDNN convolutions, not for
        matmuls); True/False sets both, True being what XLA does for float32 on Ampere and later GPUs.
        compile: torch.compile the forwards and losses (the first steps compile; `compile_s` is the first
        step's time less a later step's), with compile_backend: "inductor" (Triton kernels on a GPU) or, for a
        CPU dry run, "aot_eager" (the same graph capture and AOTAutograd, no code generation: inductor's C++
        build takes minutes on a small CPU and says nothing about the GPU's Triton kernels)."""
        torch.set_num_threads(num_threads or os.cpu_count())
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.cuda = self.device.startswith("cuda")
        if self.cuda:
            torch.backends.cudnn.benchmark = bool(cudnn_benchmark)
            if tf32 is not None:
                torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
                torch.backends.cudnn.allow_tf32 = bool(tf32)
        self.backend_flags = {"cudnn_benchmark": torch.backends.cudnn.benchmark,
                              "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                              "tf32_cudnn": torch.backends.cudnn.allow_tf32} if self.cuda else {}
        self.rss_reset = reset_peak_rss()
        self.start_rss = proc_status("VmRSS")
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start_allocated = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        self.trainer = Trainer(num_classes, depth, width, dtype, self.device, kmeans_clusters=kmeans_clusters,
                               kmeans_iters=kmeans_iters, channels_last=channels_last, seed=seed, compile=compile,
                               compile_backend=compile_backend)
        self.build_s = time.perf_counter() - t0
        self.sv = torch.from_numpy(np.asarray(batch["source"]["video"])).to(self.device)
        self.sp = torch.from_numpy(np.asarray(batch["source"]["pid"]).astype(np.int64)).to(self.device)
        self.tv = torch.from_numpy(np.asarray(batch["target"]["video"])).to(self.device)
        mode = (f"torch.compile{'' if compile_backend == 'inductor' else ' ' + compile_backend}" if compile
                else "eager")
        self.name = (f"PyTorch {torch.__version__} ({mode}, fused Adam{', channels_last' if channels_last else ''}"
                     f"{', autocast bf16' if dtype == 'bfloat16' else ''}"
                     f"{', TF32' if self.cuda and dtype == 'float32' and torch.backends.cudnn.allow_tf32 else ''})")
        self.compiled = bool(compile)
        self.last = None

    def _sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def step(self) -> tuple[float, float]:
        """One train step, waited for: (wall seconds, process CPU seconds)."""
        wall, cpu = time.perf_counter(), time.process_time()
        self.last = self.trainer.step(self.sv, self.sp, self.tv)
        self._sync()
        return time.perf_counter() - wall, time.process_time() - cpu

    def steps(self, n: int) -> float:
        """n steps back to back, waited for once at the end: wall seconds for all n."""
        self._sync()
        wall = time.perf_counter()
        for _ in range(n):
            self.last = self.trainer.step(self.sv, self.sp, self.tv)
        self._sync()
        return time.perf_counter() - wall

    def host_syncs(self) -> tuple[int | None, str]:
        """(count, how) of host↔device synchronisations in one step: CUDA's own count on a GPU; elsewhere the
        Python-level reads of tensor values in one step (eager only: a compiled step's reads are traced away)."""
        one = lambda: self.trainer.step(self.sv, self.sp, self.tv)  # noqa: E731
        if self.cuda:
            self._sync()
            count = cuda_syncs(one)
            self._sync()
            return count, "torch.cuda sync debug mode"
        if self.compiled:
            return None, "not counted for a compiled step on CPU"
        return len(host_reads(one)), "Python reads of tensor values"

    def peak_memory(self) -> tuple[int | None, str]:
        if self.cuda:
            return (torch.cuda.max_memory_allocated() - self.start_allocated,
                    "torch.cuda.max_memory_allocated over this runner's start")
        if self.rss_reset:
            return proc_status("VmHWM"), "process peak RSS from model build to the end of warm-up (VmHWM reset)"
        return proc_status("VmHWM"), "process peak RSS"

    def metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in (self.last or {}).items()}

    def info(self) -> dict:
        return {"framework": self.name, "device": self.device, "compile_s": None, "build_s": self.build_s,
                "start_rss_bytes": self.start_rss, "metrics": self.metrics(), "backend_flags": self.backend_flags,
                "num_params": sum(p.numel() for p in self.trainer.student.parameters())}


def run(batch: dict, *, steps=3, warmup=1, back_to_back=0, **kwargs) -> dict:
    """Build, warm up and time the PyTorch step alone. Returns a result dict."""
    runner = Runner(batch, **kwargs)
    warm = [runner.step()[0] for _ in range(max(warmup, 1))]
    peak, mem_source = runner.peak_memory()
    timed = [runner.step() for _ in range(steps)]
    times = [t for t, _ in timed]
    out = {**runner.info(), "first_step_s": warm[0], "warmup_s": warm, "step_times_s": times,
           "cpu_times_s": [c for _, c in timed], "step_s": statistics.median(times), "peak_bytes": peak,
           "mem_source": mem_source}
    if back_to_back:
        out["back_to_back_s"] = runner.steps(back_to_back) / back_to_back
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depth", default="50")
    p.add_argument("--model-width", type=int, default=None, help="base channels (default: the depth's preset)")
    p.add_argument("--batch", type=int, default=2, help="source clips (target clips: the same)")
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--num-classes", type=int, default=150)
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the forwards and losses")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (aot_eager: no codegen)")
    a = p.parse_args()
    rng = np.random.default_rng(0)
    shape = (a.batch, a.frames, a.height, a.width, 3)
    k = max(1, min(4, a.batch // 2))
    batch = {"source": {"video": rng.integers(0, 256, shape, dtype=np.uint8),
                        "pid": (np.arange(a.batch) // k).astype(np.int32)},
             "target": {"video": rng.integers(0, 256, shape, dtype=np.uint8)}}
    r = run(batch, num_classes=a.num_classes, depth=a.depth, width=a.model_width, dtype=a.dtype, steps=a.steps,
            warmup=a.warmup, kmeans_clusters=min(8, a.batch), channels_last=not a.no_channels_last,
            compile=a.compile, compile_backend=a.compile_backend, back_to_back=a.steps)
    frames = 3 * a.batch * a.frames
    print("| framework | step (median) | back to back, per step | frames/s (src+tgt+teacher) | first step | peak mem |")
    print("|---|---|---|---|---|---|")
    print(f"| {r['framework']} | {r['step_s']:.3f} s | {r['back_to_back_s']:.3f} s | {frames / r['step_s']:.2f} | "
          f"{r['first_step_s']:.2f} s | {(r['peak_bytes'] or 0) / 2**30:.2f} GiB |")
    print("metrics:", {k: round(v, 4) for k, v in r["metrics"].items()})


if __name__ == "__main__":
    main()
