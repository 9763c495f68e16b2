"""Numpy transcriptions of pieces of the authors' PyTorch code (XiangqunZhang/UDA_Video_ReID, e416d56),
written for the tests that check the reference variant against it. Our own words, their arithmetic.
"""
import numpy as np


def infonce(x, ni, tau):
    """A numpy transcription of the authors' `InfoNce.forward` (utils/losses.py, UDA_Video_ReID e416d56)
    on projections x [B, C, T] (their layout): groups of ni clips, rows ordered time-major, mask of equal
    time steps, positives = that mask off the diagonal as a (1, N, N) array, negatives = other time steps;
    the loss is minus the sum of log-probabilities over the positives of every group divided by the
    positive count of ONE group."""
    b, c, t = x.shape
    f = x.reshape(b // ni, ni, c, t).transpose(0, 3, 1, 2).reshape(b // ni, t * ni, c)
    f = f / np.linalg.norm(f, axis=-1, keepdims=True)
    time = np.repeat(np.arange(t), ni)
    mask = (time[:, None] == time[None, :]).astype(np.float64)
    mask_pos = (mask * (1 - np.eye(t * ni)))[None]
    logits = f @ f.transpose(0, 2, 1) / tau
    exp_neg = (np.exp(logits) * (1 - mask)).sum(-1, keepdims=True)
    log_prob = logits - np.log(exp_neg + np.exp(logits))
    return -(log_prob * mask_pos).sum() / mask_pos.sum()


def erasing_boxes(rng, n, h, w, probability=0.5, sl=0.02, sh=0.4, r1=0.3):
    """Their `RandomErasing` (transforms/spatial_transforms.py) for n
    single-frame clips: per clip an erase decision and a relative corner, then up to 100 tries of
    area ~ U(sl, sh)·H·W, aspect ~ U(r1, 1/r1), h = round(√(A r)), w = round(√(A/r)), the first with
    w < W and h < H, placed at (round(u_y (H − h)), round(u_x (W − w))). Returns the same dict as
    augment.erasing_boxes with a frame axis of 1 (np.round and Python's round are both half-to-even).
    """
    erase = rng.uniform(size=n) < probability
    u_y, u_x = rng.uniform(size=n), rng.uniform(size=n)
    area = rng.uniform(sl, sh, size=(n, 100)) * h * w
    aspect = rng.uniform(r1, 1 / r1, size=(n, 100))
    bh = np.round(np.sqrt(area * aspect)).astype(int)
    bw = np.round(np.sqrt(area / aspect)).astype(int)
    fits = (bw < w) & (bh < h)
    first = np.argmax(fits, axis=1)
    bh, bw = bh[np.arange(n), first], bw[np.arange(n), first]
    top, left = np.round(u_y * (h - bh)).astype(int), np.round(u_x * (w - bw)).astype(int)
    return {"top": top, "left": left, "height": bh, "width": bw, "erase": erase & fits.any(axis=1)}


def batch_norm_running_stats(mean, var, batches, momentum=0.1):
    """PyTorch's BatchNorm running-statistics rule (their BN-neck `self.bn`) in float64, one call per
    batch [n, D] in call order:
    r ← (1 − m)·r + m·s with the batch mean and the UNBIASED batch variance."""
    for x in batches:
        x = np.asarray(x, np.float64)
        mean = (1 - momentum) * mean + momentum * x.mean(0)
        var = (1 - momentum) * var + momentum * x.var(0, ddof=1)
    return mean, var
