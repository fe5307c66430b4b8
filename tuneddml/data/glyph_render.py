"""Rendering characters into a glyph dataset: one class per character, one image per font.

:func:`build_glyph_set` turns fonts (see :mod:`tuneddml.data.fonts`) into classes in five steps:

1. keep the characters covered by at least ``min_fonts`` fonts;
2. render each (font, character) at a fixed *analysis* size of 32 px, white ink on black
   (:func:`render_glyph`); drop renderings that are empty or equal to the font's ``.notdef`` box;
3. merge homoglyphs: characters ``a`` and ``b`` join one class when their renderings are
   near-identical, ``||x_a - x_b||^2 < merge_threshold`` (pixels in [0, 1], so the threshold is in
   "pixels' worth" of difference), in at least half of the fonts that render both
   (Latin A / Greek Alpha / Cyrillic A; union-find over such pairs, :func:`homoglyph_pairs`);
4. a class takes one image per font, of its first member (lowest code point) that font renders,
   and is kept if it has at least ``min_fonts`` images;
5. re-render the kept (font, character) pairs at ``image_size`` when that is not 32.

Layout of an image (size ``S``): the font is set at ``0.72 S`` pixels per em, the baseline sits at
row ``0.72 S``; the ink is centred horizontally, and shifted vertically only as far as needed to
fit. A fixed baseline keeps what tells ``,`` from ``'`` and ``o`` from ``O``. Ink larger than the
image is scaled down to fit and centred. Working at a fixed analysis size makes the class list
the same for every ``image_size``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tuneddml.data.fonts import FontFace

ANALYSIS_SIZE = 32
EM_FRACTION = 0.72
BASELINE_FRACTION = 0.72
MERGE_THRESHOLD = 2.0  # squared L2 distance at the analysis size, in pixel units (see module doc)
_NOT_IN_ANY_CMAP = 0x10FFFD  # a private-use code point: renders as the font's .notdef glyph
_POOL = 4  # the candidate filter of homoglyph_pairs averages 4x4 blocks


@dataclass
class GlyphSet:
    """Rendered glyph classes: ``images[i]`` is ``codepoints[i]`` in font ``fonts[font_index[i]]``."""

    images: np.ndarray  # uint8 [N, 1, S, S]
    labels: np.ndarray  # int64 [N], index into ``classes``
    font_index: np.ndarray  # int32 [N]
    codepoints: np.ndarray  # int32 [N]
    classes: list[str]  # the characters of each class; the first one names it
    fonts: list[str]
    merged_pairs: int  # homoglyph pairs found (before union)


class GlyphRenderer:
    """Renders characters of one font face at one image size (see the module doc for the layout)."""

    def __init__(self, face: FontFace, size: int) -> None:
        self.face = face
        self.size = size
        self._fonts: dict[int, ImageFont.FreeTypeFont] = {}
        # one canvas, cleared after each character: creating an image per glyph costs a third
        self._canvas = Image.new("L", (2 * size, 2 * size))
        self._draw_on = ImageDraw.Draw(self._canvas)
        self.notdef = self.render(_NOT_IN_ANY_CMAP)

    def _font(self, pixels: int) -> ImageFont.FreeTypeFont:
        if pixels not in self._fonts:
            # BASIC layout: no shaping (raqm fails on some lone code points and would substitute)
            self._fonts[pixels] = ImageFont.truetype(
                self.face.path, size=pixels, index=self.face.index, layout_engine=ImageFont.Layout.BASIC
            )
        return self._fonts[pixels]

    def render(self, codepoint: int) -> np.ndarray | None:
        """``[S, S]`` uint8 image of the character, or None if it draws nothing."""
        s = self.size
        pixels = max(1, round(EM_FRACTION * s))
        canvas = self._canvas
        try:
            for _ in range(4):
                box = self._draw(codepoint, pixels)
                if box is None:
                    return None
                left, top, right, bottom = box
                width, height = right - left, bottom - top
                clipped = left == 0 or top == 0 or right == canvas.width or bottom == canvas.height
                if width <= s and height <= s and not clipped:
                    x0 = (left + right - s) // 2
                    y0 = min(max(s // 2, bottom - s), top)  # default window, moved only to fit the ink
                    if 0 <= x0 <= canvas.width - s:
                        return np.asarray(canvas)[y0 : y0 + s, x0 : x0 + s].copy()
                    return np.asarray(canvas.crop((x0, y0, x0 + s, y0 + s)))
                if not clipped and pixels == 1:
                    break
                extent = max(width, height, *self._metric_extent(codepoint, pixels))
                pixels = max(1, min(pixels - 1, int(pixels * (s - 2) / extent)))
                canvas.paste(0, (0, 0, *canvas.size))
            # still too large (a font with absurd metrics): shrink the ink box into the image
            x0, y0 = (left + right) // 2, (top + bottom) // 2
            half = max(width, height) // 2 + 1
            crop = canvas.crop((x0 - half, y0 - half, x0 + half, y0 + half))
            return np.asarray(crop.resize((s, s), Image.Resampling.BOX))
        finally:
            canvas.paste(0, (0, 0, *canvas.size))

    def _draw(self, codepoint: int, pixels: int) -> tuple[int, int, int, int] | None:
        s = self.size
        origin = (s, s // 2 + round(BASELINE_FRACTION * s))
        self._draw_on.text(origin, chr(codepoint), fill=255, font=self._font(pixels), anchor="ls")
        return self._canvas.getbbox()

    def _metric_extent(self, codepoint: int, pixels: int) -> tuple[int, int]:
        left, top, right, bottom = self._font(pixels).getbbox(chr(codepoint), anchor="ls")
        return int(right - left), int(bottom - top)


def homoglyph_pairs(images: np.ndarray, threshold: float) -> np.ndarray:
    """Index pairs ``(i, j)``, ``i < j``, with ``||x_i - x_j||^2 < threshold`` (x in [0, 1]).

    Exact, but filtered cheaply first. On 4x4-averaged images ``p`` Cauchy-Schwarz gives
    ``||p_i - p_j||^2 <= ||x_i - x_j||^2 / 16``, and ``| ||p_i|| - ||p_j|| | <= ||p_i - p_j||``; so
    after sorting by ``||p||`` each block of rows is compared only with the columns whose norm is
    within ``sqrt(threshold / 16)``, and only pairs under ``threshold / 16`` are checked exactly.
    numpy rather than torch: many small products, where torch's thread start-up dominates.
    """
    n = len(images)
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    h, w = images.shape[-2:]
    x = images.reshape(n, h, w).astype(np.float32) / 255.0
    padded = np.zeros((n, -(-h // _POOL) * _POOL, -(-w // _POOL) * _POOL), dtype=np.float32)
    padded[:, :h, :w] = x
    pooled = padded.reshape(n, padded.shape[1] // _POOL, _POOL, -1, _POOL).mean((2, 4)).reshape(n, -1)
    x = x.reshape(n, -1)
    norm = (pooled * pooled).sum(1)
    order = np.argsort(norm, kind="stable")
    pooled, x, norm = pooled[order], x[order], norm[order]
    root = np.sqrt(norm)
    coarse = threshold / _POOL**2
    band = np.sqrt(coarse) + 1e-6
    found = []
    for start in range(0, n, 512):
        stop = min(start + 512, n)
        hi = int(np.searchsorted(root, root[stop - 1] + band, side="right"))
        # columns before ``start`` were paired with these rows already
        dist = norm[start:stop, None] + norm[None, start:hi] - 2.0 * (pooled[start:stop] @ pooled[start:hi].T)
        rows, cols = np.nonzero(dist < coarse + 1e-6)
        rows, cols = rows + start, cols + start
        keep = rows < cols
        rows, cols = rows[keep], cols[keep]
        close = ((x[rows] - x[cols]) ** 2).sum(1) < threshold
        found.append(np.stack([order[rows[close]], order[cols[close]]], 1))
    return np.sort(np.concatenate(found), axis=1).astype(np.int64)


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def build_glyph_set(
    faces: list[FontFace],
    *,
    image_size: int,
    min_fonts: int,
    merge_threshold: float = MERGE_THRESHOLD,
    chars: Iterable[int] | None = None,
) -> GlyphSet:
    """Render ``faces`` into classes (see the module doc). ``chars`` limits the code points."""
    coverage = Counter(cp for face in faces for cp in face.codepoints)
    allowed = None if chars is None else set(chars)
    codepoints = sorted(
        cp for cp, n in coverage.items() if n >= min_fonts and (allowed is None or cp in allowed)
    )
    column = {cp: i for i, cp in enumerate(codepoints)}

    # step 2: analysis renderings; rendered[f][cp] -> image
    rendered: list[dict[int, np.ndarray]] = []
    usable: list[FontFace] = []
    for face in faces:
        try:
            renderer = GlyphRenderer(face, ANALYSIS_SIZE)
        except (OSError, ValueError):  # FreeType cannot scale it (e.g. a bitmap-only colour emoji font)
            continue
        usable.append(face)
        images: dict[int, np.ndarray] = {}
        notdef = None if renderer.notdef is None else renderer.notdef.astype(np.float32) / 255.0
        for cp in codepoints:
            if cp not in face.codepoints:
                continue
            try:
                image = renderer.render(cp)
            except (OSError, ValueError):
                image = None
            if image is None:
                continue
            if notdef is not None and np.square(image / 255.0 - notdef).sum() < merge_threshold:
                continue
            images[cp] = image
        rendered.append(images)

    faces = usable
    # step 3: homoglyphs, counted per font over the fonts that render both characters
    renders = np.zeros((len(faces), len(codepoints)), dtype=bool)
    close_counts: Counter[tuple[int, int]] = Counter()
    for f, images in enumerate(rendered):
        cps = list(images)
        renders[f, [column[cp] for cp in cps]] = True
        if len(cps) < 2:
            continue
        pairs = homoglyph_pairs(np.stack([images[cp] for cp in cps]), merge_threshold)
        close_counts.update((column[cps[i]], column[cps[j]]) for i, j in pairs)
    parent = list(range(len(codepoints)))
    merged_pairs = 0
    for (a, b), close in close_counts.items():
        shared = int(np.count_nonzero(renders[:, a] & renders[:, b]))
        if 2 * close >= shared:
            merged_pairs += 1
            parent[_find(parent, a)] = _find(parent, b)
    groups: dict[int, list[int]] = {}
    for i in range(len(codepoints)):
        groups.setdefault(_find(parent, i), []).append(i)

    # step 4: one image per font per class, from the class's first member that font renders
    classes: list[str] = []
    picks: list[tuple[int, int, int]] = []  # (class, font, codepoint)
    for members in sorted(groups.values(), key=lambda m: codepoints[m[0]]):
        member_cps = [codepoints[i] for i in members]  # ascending
        chosen = [(f, next((cp for cp in member_cps if cp in rendered[f]), None)) for f in range(len(faces))]
        chosen = [(f, cp) for f, cp in chosen if cp is not None]
        if len(chosen) < min_fonts:
            continue
        label = len(classes)
        classes.append("".join(map(chr, member_cps)))
        picks.extend((label, f, cp) for f, cp in chosen)

    # step 5: final images
    s = image_size
    images_out = np.zeros((len(picks), 1, s, s), dtype=np.uint8)
    renderers: dict[int, GlyphRenderer] = {}
    for n, (_, f, cp) in enumerate(picks):
        if s == ANALYSIS_SIZE:
            images_out[n, 0] = rendered[f][cp]
            continue
        if f not in renderers:
            renderers[f] = GlyphRenderer(faces[f], s)
        image = renderers[f].render(cp)
        if image is None:  # a dot can vanish at a tiny size: shrink the analysis image instead
            image = np.asarray(Image.fromarray(rendered[f][cp]).resize((s, s), Image.Resampling.BOX))
        images_out[n, 0] = image
    return GlyphSet(
        images=images_out,
        labels=np.array([p[0] for p in picks], dtype=np.int64),
        font_index=np.array([p[1] for p in picks], dtype=np.int32),
        codepoints=np.array([p[2] for p in picks], dtype=np.int32),
        classes=classes,
        fonts=[face.label for face in faces],
        merged_pairs=merged_pairs,
    )
