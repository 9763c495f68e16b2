"""Pictures of an evaluation, drawn with Pillow only: ranked lists and a PCA of the two domains.

`--mode=visualize` writes into `<workdir>/visualize/` (replaced whole: a failed run leaves the previous
pictures), from folder or packed data alike:

  ranked_top10.png  one row per query (eval.visualize_queries of them, spread evenly over the queries that
                    have a true match): a few frames of the query tracklet, then its 10 nearest gallery
                    tracklets, each framed green (same identity) or red (another identity) and labelled
                    with its rank and distance. The ranking is the metric's: same-identity tracklets from
                    the query's own camera (junk) are left out, so rank k here is rank k in the CMC.
  pca_domains.png   the first two principal components (numpy SVD of the centred features) of source
                    training tracklets and target test tracklets (up to eval.visualize_points each,
                    L2-normalised first when eval.distance is cosine), coloured by domain.
"""
from __future__ import annotations

import dataclasses
import io
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from absl import logging
from PIL import Image, ImageDraw, ImageFont

from svreid_jax import builders, ops, parallel
from svreid_jax.data import pack
from svreid_jax.data.records import DatasetSplits, Tracklet
from svreid_jax.evaluation import features, protocols
from svreid_jax.utils import atomic

GREEN = (0, 160, 60)
RED = (215, 30, 30)
QUERY_FRAME = (70, 70, 70)
TEXT = (20, 20, 20)
MUTED = (95, 95, 95)
SOURCE_COLOUR = (31, 119, 180)
TARGET_COLOUR = (255, 127, 14)


def _safe(text: str) -> str:
    """Pillow's built-in font has no arrow glyph."""
    return text.replace("→", "->")


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


# ---------------------------------------------------------------------------------------------------------
# Ranked lists


@dataclasses.dataclass(frozen=True)
class RankedList:
    """The top of one query's ranking, junk removed."""

    query: int  # index into the query split
    gallery: np.ndarray  # int64 [k] gallery indices, nearest first
    distances: np.ndarray  # float [k]
    correct: np.ndarray  # bool [k]: same identity as the query


def choose_queries(query: Sequence[Tracklet], gallery: Sequence[Tracklet], num: int) -> np.ndarray:
    """Up to `num` query indices, evenly spread over the queries that have a true match (same identity,
    another camera) in the gallery."""
    cams_of: dict[int, set] = {}
    for t in gallery:
        cams_of.setdefault(t.pid, set()).add(t.camid)
    valid = np.array([i for i, t in enumerate(query) if cams_of.get(t.pid, set()) - {t.camid}], np.int64)
    if num <= 0 or len(valid) == 0:
        return valid[:0]
    picks = np.unique(np.round(np.linspace(0, len(valid) - 1, min(num, len(valid)))).astype(np.int64))
    return valid[picks]


def ranked_lists(distmat, query: Sequence[Tracklet], gallery: Sequence[Tracklet], query_indices: Sequence[int],
                 top_k: int = 10) -> list[RankedList]:
    """The `top_k` nearest gallery tracklets of each chosen query (stable order on ties), junk removed."""
    d = np.asarray(distmat, np.float32)
    g_pids = np.array([t.pid for t in gallery])
    g_cams = np.array([t.camid for t in gallery])
    out = []
    for qi in query_indices:
        q = query[int(qi)]
        order = np.argsort(d[qi], kind="stable")
        keep = ~((g_pids[order] == q.pid) & (g_cams[order] == q.camid))
        top = order[keep][:top_k]
        out.append(RankedList(query=int(qi), gallery=top.astype(np.int64), distances=d[qi, top],
                              correct=g_pids[top] == q.pid))
    return out


FrameOpener = Callable[[str], Any]  # a frame reference → what Image.open takes (a path or a file object)


def packed_frames(*splits: Sequence[Tracklet]) -> FrameOpener:
    """A FrameOpener that also reads 'packed://<split>/<index>/<frame>' references (data/pack.py) from the
    stored bytes of the packed splits among `splits`; other references are opened as files."""
    directories = {s.split: s.directory for s in splits if isinstance(s, pack.PackedTracklets)}
    whole: dict[str, pack.PackedTracklets] = {}

    def open_frame(ref: str):
        if not ref.startswith("packed://"):
            return ref
        split, index, frame = ref[len("packed://"):].split("/")
        if split not in directories:
            raise ValueError(f"frame {ref} is a packed reference, but no packed {split!r} split was given to read it")
        if split not in whole:  # the index in a reference counts in the whole split, not in a slice of it
            whole[split] = pack.PackedTracklets(directories[split], split)
        return io.BytesIO(whole[split].frame_bytes(int(index), int(frame)))

    return open_frame


def tracklet_strip(tracklet: Tracklet, num_frames: int, height: int, width: int,
                   open_frame: FrameOpener | None = None) -> Image.Image:
    """`num_frames` evenly spaced frames of the tracklet, each resized to height × width, side by side
    with 1-pixel gaps (a short tracklet repeats frames). open_frame: how a frame reference is opened
    (default: as a file path; `packed_frames` for packed tracklets)."""
    idx = np.round(np.linspace(0, len(tracklet) - 1, num_frames)).astype(int)
    strip = Image.new("RGB", (num_frames * width + (num_frames - 1), height), (255, 255, 255))
    for k, i in enumerate(idx):
        ref = tracklet.frames[i]
        with Image.open(open_frame(ref) if open_frame else ref) as im:
            frame = im.convert("RGB").resize((width, height), Image.BILINEAR)
        strip.paste(frame, (k * (width + 1), 0))
    return strip


@dataclasses.dataclass(frozen=True)
class GridLayout:
    """Sizes (pixels) of the ranked-list grid."""

    frame_height: int = 96
    frame_width: int = 48
    frames_per_tracklet: int = 3
    top_k: int = 10
    border: int = 4  # coloured frame around each tracklet
    gap: int = 6  # between gallery cells
    separator: int = 22  # between the query and its gallery (a grey line in the middle)
    row_gap: int = 12
    label_height: int = 32  # two lines of text under each cell
    header_height: int = 44  # title and legend lines
    margin: int = 12

    @property
    def cell_width(self) -> int:
        return self.frames_per_tracklet * self.frame_width + (self.frames_per_tracklet - 1) + 2 * self.border

    @property
    def cell_height(self) -> int:
        return self.frame_height + 2 * self.border + self.label_height

    def size(self, num_rows: int) -> tuple[int, int]:
        """(width, height) of a grid with `num_rows` queries."""
        width = (2 * self.margin + (1 + self.top_k) * self.cell_width + self.separator
                 + (self.top_k - 1) * self.gap)
        height = (2 * self.margin + self.header_height + num_rows * self.cell_height
                  + max(num_rows - 1, 0) * self.row_gap)
        return width, height

    def cell_x(self, column: int) -> int:
        """Left edge of column 0 (the query) .. top_k."""
        if column == 0:
            return self.margin
        return self.margin + self.cell_width + self.separator + (column - 1) * (self.cell_width + self.gap)

    def row_y(self, row: int) -> int:
        return self.margin + self.header_height + row * (self.cell_height + self.row_gap)


def draw_ranked_grid(query: Sequence[Tracklet], gallery: Sequence[Tracklet], lists: Sequence[RankedList], *,
                     layout: GridLayout = GridLayout(), title: str = "", distance_name: str = "distance",
                     open_frame: FrameOpener | None = None) -> Image.Image:
    """The grid image (RGB) of `layout.size(len(lists))`; frames are read through `open_frame`
    (default: `packed_frames(query, gallery)`, so packed splits draw from their stored bytes)."""
    open_frame = open_frame or packed_frames(query, gallery)
    image = Image.new("RGB", layout.size(len(lists)), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    big, small = _font(15), _font(12)
    draw.text((layout.margin, layout.margin), _safe(title or f"top-{layout.top_k} gallery tracklets per query"),
              fill=TEXT, font=big)
    legend_y = layout.margin + 22
    x = layout.margin
    for colour, text in ((GREEN, "same identity"), (RED, "other identity")):
        draw.rectangle([x, legend_y + 2, x + 12, legend_y + 13], outline=colour, width=3)
        draw.text((x + 18, legend_y), text, fill=TEXT, font=small)
        x += 30 + int(draw.textlength(text, font=small))
    note = (f"#k = rank, d = {distance_name} (smaller = closer); same-identity tracklets from the query's "
            "camera are left out, as in the metric")
    draw.text((x + 10, legend_y), note, fill=MUTED, font=small)

    b, inner_w = layout.border, layout.cell_width - 2 * layout.border
    for row, item in enumerate(lists):
        y = layout.row_y(row)
        q = query[item.query]
        cells = [(0, q, QUERY_FRAME, ("query", f"id {q.pid}  cam {q.camid}"), TEXT)]
        for k, (gi, dist, ok) in enumerate(zip(item.gallery, item.distances, item.correct)):
            g = gallery[int(gi)]
            colour = GREEN if ok else RED
            cells.append((k + 1, g, colour, (f"#{k + 1}  d={dist:.3f}", f"id {g.pid}  cam {g.camid}"), colour))
        for column, tracklet, colour, (line1, line2), text_colour in cells:
            x = layout.cell_x(column)
            draw.rectangle([x, y, x + layout.cell_width - 1, y + layout.frame_height + 2 * b - 1], fill=colour)
            image.paste(tracklet_strip(tracklet, layout.frames_per_tracklet, layout.frame_height, layout.frame_width,
                                       open_frame), (x + b, y + b))
            ty = y + layout.frame_height + 2 * b + 2
            draw.text((x + 1, ty), _fit(draw, line1, small, inner_w + 2 * b), fill=text_colour, font=small)
            draw.text((x + 1, ty + 14), _fit(draw, line2, small, inner_w + 2 * b), fill=MUTED, font=small)
        sx = layout.margin + layout.cell_width + layout.separator // 2
        draw.line([sx, y, sx, y + layout.cell_height - 4], fill=(190, 190, 190), width=2)
    return image


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    while text and draw.textlength(text, font=font) > width:
        text = text[:-1]
    return text


# ---------------------------------------------------------------------------------------------------------
# PCA of the two domains


def pca_2d(features) -> tuple[np.ndarray, np.ndarray]:
    """(coordinates [N, 2] on the first two principal components, fraction of the variance each explains [2]).

    numpy SVD of the centred features; each component's sign is fixed so that its largest loading is
    positive (the same input always gives the same picture).
    """
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"PCA needs at least two feature rows [N, D], got shape {x.shape}")
    x = x - x.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    vt = vt[:2]
    if vt.shape[0] < 2:  # one feature dimension: a flat second axis
        vt = np.concatenate([vt, np.zeros_like(vt)], axis=0)
    signs = np.sign(vt[np.arange(2), np.argmax(np.abs(vt), axis=1)])
    vt = vt * np.where(signs == 0, 1.0, signs)[:, None]
    total = float(np.sum(s ** 2))
    explained = np.array([(s[i] ** 2) / total if i < len(s) and total > 0 else 0.0 for i in range(2)])
    return x @ vt.T, explained


def nice_ticks(lo: float, hi: float, count: int = 6) -> np.ndarray:
    """Round tick values (steps of 1, 2, 2.5 or 5 × 10^k) covering [lo, hi]."""
    if not hi > lo:
        return np.array([lo])
    raw = (hi - lo) / count
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.ceil(lo / step) * step
    return np.arange(start, hi + step * 1e-9, step)


def _tick_label(value: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step)) + (1 if round(step / 10 ** math.floor(math.log10(step)), 6) == 2.5 else 0))
    text = f"{value:.{decimals}f}"
    return "0" if float(text) == 0 else text


def draw_domain_scatter(source_xy, target_xy, explained, *, size: tuple[int, int] = (820, 600),
                        labels: tuple[str, str] = ("source", "target"), title: str = "", seed: int = 0
                        ) -> Image.Image:
    """Scatter (RGB image of `size`) of source [Ns, 2] and target [Nt, 2] points, with axes, ticks, axis
    labels (variance explained) and a legend."""
    source_xy, target_xy = np.asarray(source_xy, float), np.asarray(target_xy, float)
    width, height = size
    left, right, top, bottom = 78, width - 200, 48, height - 64
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image, "RGBA")
    big, small = _font(15), _font(12)

    both = np.concatenate([source_xy, target_xy], axis=0)
    lo, hi = both.min(axis=0), both.max(axis=0)
    pad = np.maximum((hi - lo) * 0.06, 1e-6)
    lo, hi = lo - pad, hi + pad

    def to_px(xy):
        px = left + (xy[:, 0] - lo[0]) / (hi[0] - lo[0]) * (right - left)
        py = bottom - (xy[:, 1] - lo[1]) / (hi[1] - lo[1]) * (bottom - top)
        return px, py

    # axes, grid and ticks
    draw.rectangle([left, top, right, bottom], outline=(60, 60, 60), width=1)
    for axis in (0, 1):
        ticks = nice_ticks(lo[axis], hi[axis])
        step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
        for t in ticks:
            if axis == 0:
                x = left + (t - lo[0]) / (hi[0] - lo[0]) * (right - left)
                draw.line([x, top, x, bottom], fill=(0, 0, 0, 22))
                draw.line([x, bottom, x, bottom + 5], fill=(60, 60, 60))
                label = _tick_label(t, step)
                draw.text((x - draw.textlength(label, font=small) / 2, bottom + 8), label, fill=TEXT, font=small)
            else:
                y = bottom - (t - lo[1]) / (hi[1] - lo[1]) * (bottom - top)
                draw.line([left, y, right, y], fill=(0, 0, 0, 22))
                draw.line([left - 5, y, left, y], fill=(60, 60, 60))
                label = _tick_label(t, step)
                draw.text((left - 9 - draw.textlength(label, font=small), y - 7), label, fill=TEXT, font=small)

    # points, the two domains interleaved in a fixed random order so neither hides the other
    points = [(p, SOURCE_COLOUR) for p in zip(*to_px(source_xy))] + [(p, TARGET_COLOUR) for p in zip(*to_px(target_xy))]
    for i in np.random.default_rng(seed).permutation(len(points)):
        (x, y), colour = points[i]
        draw.ellipse([x - 3.5, y - 3.5, x + 3.5, y + 3.5], fill=colour + (170,), outline=colour + (255,))

    # labels and title
    xlabel = f"PC 1 ({100 * explained[0]:.1f} % of variance)"
    draw.text(((left + right) / 2 - draw.textlength(xlabel, font=small) / 2, bottom + 30), xlabel, fill=TEXT,
              font=small)
    ylabel = f"PC 2 ({100 * explained[1]:.1f} % of variance)"
    text_w = int(draw.textlength(ylabel, font=small)) + 4
    label_im = Image.new("RGB", (text_w, 16), (255, 255, 255))
    ImageDraw.Draw(label_im).text((2, 1), ylabel, fill=TEXT, font=small)
    label_im = label_im.rotate(90, expand=True)
    image.paste(label_im, (12, int((top + bottom) / 2 - label_im.height / 2)))
    draw.text((left, 16), _safe(title or "PCA of tracklet embeddings"), fill=TEXT, font=big)

    # legend
    lx, ly = right + 18, top + 4
    draw.rectangle([lx - 8, ly - 6, width - 10, ly + 44], outline=(170, 170, 170))
    for k, (colour, text, n) in enumerate(((SOURCE_COLOUR, labels[0], len(source_xy)),
                                           (TARGET_COLOUR, labels[1], len(target_xy)))):
        y = ly + 4 + 22 * k
        draw.ellipse([lx, y + 2, lx + 9, y + 11], fill=colour + (200,), outline=colour + (255,))
        draw.text((lx + 16, y), _fit(draw, _safe(f"{text} ({n})"), small, width - lx - 30), fill=TEXT, font=small)
    return image


# ---------------------------------------------------------------------------------------------------------
# The mode


def write_visualizations(config, model, variables, source: DatasetSplits, target: DatasetSplits, out_dir: str, *,
                         mesh=None, title: str = "") -> dict[str, str]:
    """Extract what is needed and write ranked_top10.png and pca_domains.png into out_dir (replaced whole,
    utils/atomic.py); return their paths. Folder and packed splits (frames drawn from the stored bytes) alike."""
    query, gallery = tuple(target.query), tuple(target.gallery)
    feats = features.tracklet_features(config, model, variables, query + gallery, mesh)
    q_feats, g_feats = feats[:len(query)], feats[len(query):]
    distance = protocols.DistanceSpec.from_config(config)
    distmat = np.asarray(protocols.distances(q_feats, g_feats, distance))
    chosen = choose_queries(query, gallery, int(config.eval.visualize_queries))
    if len(chosen) == 0:
        raise ValueError("no query has a true match in the gallery: nothing to draw")
    lists = ranked_lists(distmat, query, gallery, chosen, top_k=10)
    frame_h = 96
    frame_w = max(8, int(round(frame_h * config.data.width / config.data.height)))
    layout = GridLayout(frame_height=frame_h, frame_width=frame_w)
    grid = draw_ranked_grid(query, gallery, lists, layout=layout, distance_name=distance.describe(),
                            title=f"{title + ': ' if title else ''}top-10 of {len(lists)} queries")

    rng = np.random.default_rng(config.seed)
    limit = int(config.eval.visualize_points)
    src_idx = np.sort(rng.permutation(len(source.train))[:limit])
    tgt_idx = np.sort(rng.permutation(len(feats))[:limit])
    src_feats = features.tracklet_features(config, model, variables, [source.train[i] for i in src_idx], mesh)
    tgt_feats = feats[tgt_idx]
    both = np.concatenate([src_feats, tgt_feats], axis=0).astype(np.float64)
    if distance.metric == "cosine":
        both = ops.l2_normalise(both)
    xy, explained = pca_2d(both)
    names = (f"source: {config.data.source.name} train", f"target: {config.data.target.name} test")
    scatter = draw_domain_scatter(xy[:len(src_feats)], xy[len(src_feats):], explained, labels=names, seed=config.seed,
                                  title=f"{title + ': ' if title else ''}PCA of tracklet embeddings"
                                        f"{' (L2-normalised)' if distance.metric == 'cosine' else ''}")
    images = {"ranked": ("ranked_top10.png", grid), "pca": ("pca_domains.png", scatter)}
    with protocols.writing(out_dir), atomic.replaced_directory(out_dir) as staging:
        for name, image in images.values():
            image.save(os.path.join(staging, name))
    return {key: os.path.join(out_dir, name) for key, (name, _) in images.items()}


def run_visualize(config, workdir: str) -> dict[str, str]:
    """--mode=visualize: restore the checkpoint of workdir and write <workdir>/visualize/*.png."""
    mesh = parallel.data_mesh()
    model, variables, ckpt = builders.restore_variables(config, workdir, mesh)
    source, target = builders.load_datasets(config, workdir)
    title = f"{config.data.source.name} → {config.data.target.name}, step {ckpt.step}"
    paths = write_visualizations(config, model, variables, source, target, os.path.join(workdir, "visualize"),
                                 mesh=mesh, title=title)
    for p in paths.values():
        logging.info("wrote %s", p)
        print(f"wrote {p}", flush=True)
    return paths


__all__ = ["GridLayout", "RankedList", "choose_queries", "draw_domain_scatter", "draw_ranked_grid", "nice_ticks",
           "pca_2d", "ranked_lists", "run_visualize", "tracklet_strip", "write_visualizations"]
