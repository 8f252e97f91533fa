"""An offline, deterministic synthetic data source: procedurally drawn mushrooms.

The photos exist to exercise the pipeline's plumbing (demos and tests) without the
network. Each species gets a fixed look derived only from its taxon id (cap shape, cap
colour, cap texture, gills and stem), so a species looks the same whichever catalog
subset is generated. Each photo varies the background, view, scale, position, rotation,
colour and noise. Photos are grouped into observations: the photos of one observation
show the same individual mushroom on the same ground from slightly different views.

Each observation gets a date (``observed_on``), INVENTED: a day in 2018-2024 of a month drawn from
the species' usual fruiting season (:func:`mushroom.month_prior.fruiting_months`; a species
without one: any month). The dates exist so that the month prior can be exercised end to end;
they say nothing about when these species really fruit beyond the table they were drawn from.

Everything is drawn with Pillow and numpy. Every random draw comes from a numpy
``Generator`` seeded from ``(seed, taxon id, index)``, so a photo does not depend on the
order in which photos or species are generated, and the same seed gives byte-identical
JPEGs (for a given Pillow/libjpeg and numpy version).

One idea, the synthetic source, in one module of more than 500 lines: the drawing of every part
of a mushroom serves only it.
"""

from __future__ import annotations

import calendar
import colorsys
import io
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter
from tqdm import tqdm

from mushroom.fileio import write_bytes_atomic
from mushroom.manifest import PhotoRecord
from mushroom.month_prior import fruiting_months
from mushroom.sources.settings import SyntheticSourceConfig
from mushroom.species import Catalog

log = logging.getLogger(__name__)

CAP_SHAPES = ("convex", "flat", "conical", "bell", "funnel", "umbonate", "globe")
CAP_TEXTURES = ("plain", "spots", "stripes", "scales", "rings")
LICENSE = "cc0"
JPEG_QUALITY = 90

# Drawing happens at this multiple of the output size, then is downscaled (anti-aliasing).
_SUPERSAMPLE = 2
# Distinct first words of the seed sequences keep the random streams independent.
_STYLE_STREAM = 0x5_7E1E
_OBSERVATION_STREAM = 0x0B5
_PHOTO_STREAM = 0xF0_70
_DATE_STREAM = 0xDA7E
_YEARS = (2018, 2024)  # the invented dates' years, inclusive

# Cap height (relative to cap width) and stem height ranges per shape.
_CAP_HEIGHT = {
    "convex": (0.32, 0.45),
    "flat": (0.13, 0.2),
    "conical": (0.5, 0.75),
    "bell": (0.65, 0.95),
    "funnel": (0.3, 0.42),
    "umbonate": (0.24, 0.34),
    "globe": (0.8, 1.0),
}
_GILL_COLOURS = ((238, 230, 210), (222, 182, 170), (120, 88, 62), (62, 52, 46))
_STEM_COLOURS = ((238, 234, 224), (226, 210, 168), (182, 150, 110), (118, 88, 60))
_GROUND_COLOURS = (
    (112, 82, 52),  # leaf litter
    (62, 46, 36),  # dark soil
    (72, 98, 46),  # moss
    (132, 86, 56),  # pine needles
    (150, 140, 92),  # dry grass
    (48, 58, 42),  # forest shade
    (96, 70, 60),  # bark mulch
)
_LEAF_COLOURS = ((160, 96, 40), (182, 140, 52), (120, 70, 38), (96, 112, 50), (140, 60, 34))
_GRASS_COLOURS = ((88, 128, 52), (116, 140, 64), (70, 100, 44), (150, 150, 90))


@dataclass(frozen=True)
class SpeciesStyle:
    """The fixed look of one species; lengths are relative to the cap width.

    Attributes:
        shape: Cap shape, one of ``CAP_SHAPES``.
        texture: Cap texture, one of ``CAP_TEXTURES``.
        cap_hsv: Cap colour as HSV in [0, 1].
        texture_rgb: Colour of spots, stripes, scales or rings.
        gill_rgb: Colour of the gills under the cap.
        stem_rgb: Stem colour.
        cap_height: Cap height.
        stem_height: Stem height.
        stem_width: Stem width.
        texture_count: How many spots, stripes, scales or rings.
        texture_size: Size of one spot or scale, or the width of a stripe.
        has_ring: Whether the stem has a ring (annulus).
        has_bulb: Whether the stem has a bulbous base.
    """

    shape: str
    texture: str
    cap_hsv: tuple[float, float, float]
    texture_rgb: tuple[int, int, int]
    gill_rgb: tuple[int, int, int]
    stem_rgb: tuple[int, int, int]
    cap_height: float
    stem_height: float
    stem_width: float
    texture_count: int
    texture_size: float
    has_ring: bool
    has_bulb: bool


@dataclass(frozen=True, eq=False)
class _Individual:
    """One mushroom (an observation): the species style with per-individual variation."""

    style: SpeciesStyle
    cap_rgb: tuple[int, int, int]
    cap_height: float
    stem_height: float
    stem_width: float
    stem_bend: float
    texture_points: np.ndarray  # (n, 2) in [0, 1]^2, placed within the cap's bounding box
    ground: tuple[tuple[int, int, int], tuple[int, int, int]]


def species_style(taxon_id: int) -> SpeciesStyle:
    """Derive the fixed look of a species from its taxon id alone.

    Args:
        taxon_id: The species' taxon id.

    Returns:
        The species' style; the same for the same taxon id, whatever else is generated.
    """
    rng = np.random.default_rng([_STYLE_STREAM, int(taxon_id)])
    shape = str(rng.choice(CAP_SHAPES))
    texture = str(rng.choice(CAP_TEXTURES))
    hue = float(rng.random())
    sat = float(rng.uniform(0.5, 0.9))
    val = float(rng.uniform(0.55, 0.95))
    contrast = int(rng.integers(3))
    if contrast == 0:  # pale spots/scales, like a fly agaric
        texture_rgb = (242, 236, 222)
    elif contrast == 1:  # a dark shade of the cap
        texture_rgb = _hsv_to_rgb(hue, min(1.0, sat + 0.1), val * 0.42)
    else:  # the opposite hue
        texture_rgb = _hsv_to_rgb((hue + 0.5) % 1.0, sat, val)
    stem_pick = int(rng.integers(len(_STEM_COLOURS) + 1))
    stem_rgb = (
        _STEM_COLOURS[stem_pick] if stem_pick < len(_STEM_COLOURS) else _hsv_to_rgb(hue, sat * 0.45, 0.9)
    )
    globe = shape == "globe"
    return SpeciesStyle(
        shape=shape,
        texture=texture,
        cap_hsv=(hue, sat, val),
        texture_rgb=texture_rgb,
        gill_rgb=_GILL_COLOURS[int(rng.integers(len(_GILL_COLOURS)))],
        stem_rgb=stem_rgb,
        cap_height=float(rng.uniform(*_CAP_HEIGHT[shape])),
        stem_height=float(rng.uniform(0.06, 0.14) if globe else rng.uniform(0.45, 1.15)),
        stem_width=float(rng.uniform(0.35, 0.5) if globe else rng.uniform(0.12, 0.28)),
        texture_count=int(rng.integers(6, 15)),
        texture_size=float(rng.uniform(0.045, 0.09)),
        has_ring=bool(not globe and rng.random() < 0.4),
        has_bulb=bool(not globe and rng.random() < 0.35),
    )


def generate_synthetic(
    config: SyntheticSourceConfig, catalog: Catalog, out_dir: Path, seed: int
) -> list[PhotoRecord]:
    """Draw a synthetic photo set: ``config.photos_per_species`` photos per species.

    Photos are written to ``out_dir/images/<taxon_id>/<photo_id>.jpg`` (atomically; an
    existing file is overwritten with identical bytes).

    Args:
        config: Photos per species, image size and photos per observation.
        catalog: The species to draw, in class order.
        out_dir: The dataset folder; record files are relative to it.
        seed: Seed of every random draw; the same seed gives byte-identical photos.

    Returns:
        One record per photo, species in catalog order, then photo order.
    """
    out_dir = Path(out_dir)
    start = time.monotonic()
    total = len(catalog) * config.photos_per_species
    records = []
    seasons = fruiting_months()
    with tqdm(total=total, desc="synthetic photos", unit="photo", disable=None) as progress:
        for species in catalog:
            style = species_style(species.taxon_id)
            months = seasons.get(species.taxon_id, tuple(range(1, 13)))
            for index in range(config.photos_per_species):
                record = _generate_photo(style, species.taxon_id, index, config, out_dir, seed)
                obs_index = index // config.photos_per_observation
                records.append(replace(record, observed_on=invented_date(species.taxon_id, obs_index, seed, months)))
                progress.update()
    log.info(
        "synthetic: wrote %d photos of %d species (%d px) under %s in %.1fs",
        len(records),
        len(catalog),
        config.image_size,
        out_dir / "images",
        time.monotonic() - start,
    )
    return records


def _generate_photo(
    style: SpeciesStyle, taxon_id: int, index: int, config: SyntheticSourceConfig, out_dir: Path, seed: int
) -> PhotoRecord:
    """Draw, encode and write photo ``index`` of a species; return its record."""
    obs_index, view = divmod(index, config.photos_per_observation)
    observation_id = f"syn-{taxon_id}-{obs_index:05d}"
    photo_id = f"{observation_id}-{view}"
    rel = Path("images") / str(taxon_id) / f"{photo_id}.jpg"
    # The individual depends on the observation only, the view on the photo only.
    individual = _draw_individual(style, _rng(_OBSERVATION_STREAM, seed, taxon_id, obs_index))
    image = _render_photo(individual, config.image_size, _rng(_PHOTO_STREAM, seed, taxon_id, index))
    write_bytes_atomic(out_dir / rel, encode_jpeg(image))
    return PhotoRecord(
        observation_id=observation_id,
        photo_id=photo_id,
        taxon_id=taxon_id,
        file=rel.as_posix(),
        license=LICENSE,
        attribution=f"synthetic (quantized-mushroom generator, seed {seed})",
    )


def invented_date(taxon_id: int, obs_index: int, seed: int, months: tuple[int, ...]) -> str:
    """The invented date (``YYYY-MM-DD``) of a synthetic observation: a month of ``months``, a day
    and a year of :data:`_YEARS`, drawn from their own stream (the photos do not change with it)."""
    rng = _rng(_DATE_STREAM, seed, taxon_id, obs_index)
    month = int(months[int(rng.integers(len(months)))])
    year = int(rng.integers(_YEARS[0], _YEARS[1] + 1))
    day = int(rng.integers(1, calendar.monthrange(year, month)[1] + 1))
    return f"{year:04d}-{month:02d}-{day:02d}"


def encode_jpeg(image: Image.Image) -> bytes:
    """Encode an RGB image as JPEG with fixed settings (same pixels -> same bytes)."""
    buf = io.BytesIO()
    # 4:4:4 keeps the colour detail that matters at small sizes; no optimize/progressive passes.
    image.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False, progressive=False)
    return buf.getvalue()


def _render_photo(individual: _Individual, size: int, rng: np.random.Generator) -> Image.Image:
    """Draw one view of an individual mushroom on its ground, as a ``size`` px RGB image."""
    big = size * _SUPERSAMPLE
    canvas = _draw_background(individual.ground, big, rng)
    _draw_litter(canvas, big, rng)
    canvas = Image.alpha_composite(canvas, _draw_mushroom(individual, big, rng))
    _draw_grass(canvas, big, rng, count=int(rng.integers(0, 3)))
    image = canvas.convert("RGB").reduce(_SUPERSAMPLE)  # box-filter anti-aliasing
    if rng.random() < 0.25:  # slightly out of focus
        image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 0.8))))
    return _jitter(image, rng)


def _rng(stream: int, seed: int, taxon_id: int, index: int) -> np.random.Generator:
    # SeedSequence wants non-negative words: encode the seed's sign separately.
    return np.random.default_rng([stream, abs(int(seed)), int(seed < 0), int(taxon_id), int(index)])


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return (round(r * 255), round(g * 255), round(b * 255))


def _shade(rgb: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    """Darken (factor < 1) or lighten towards white (factor > 1)."""
    if factor <= 1:
        return tuple(round(c * factor) for c in rgb)
    t = min(factor - 1.0, 1.0)
    return tuple(round(c + (255 - c) * t) for c in rgb)


def _jitter_rgb(rng: np.random.Generator, rgb: tuple[int, int, int], amount: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.normal(0, amount), 0, 255)) for c in rgb)


def _draw_individual(style: SpeciesStyle, rng: np.random.Generator) -> _Individual:
    """Vary a species style into one individual mushroom on one patch of ground."""
    hue, sat, val = style.cap_hsv
    cap_rgb = _hsv_to_rgb(hue + rng.normal(0, 0.012), sat + rng.normal(0, 0.04), val + rng.normal(0, 0.05))
    top, bottom = rng.choice(len(_GROUND_COLOURS), size=2)
    ground = (
        _jitter_rgb(rng, _shade(_GROUND_COLOURS[top], 1.12), 10),
        _jitter_rgb(rng, _GROUND_COLOURS[bottom], 10),
    )
    return _Individual(
        style=style,
        cap_rgb=cap_rgb,
        cap_height=style.cap_height * float(rng.uniform(0.9, 1.1)),
        stem_height=style.stem_height * float(rng.uniform(0.85, 1.15)),
        stem_width=style.stem_width * float(rng.uniform(0.9, 1.1)),
        stem_bend=float(rng.normal(0, 0.06)),
        texture_points=rng.random((style.texture_count, 2)),
        ground=ground,
    )


# --- background --------------------------------------------------------------------------


def _draw_background(
    ground: tuple[tuple[int, int, int], ...], size: int, rng: np.random.Generator
) -> Image.Image:
    """A forest-floor gradient with soft blotches, as RGBA (grain is added at the end)."""
    grid = 8  # the ground is low-frequency: draw it small, then resize smoothly
    top = np.array(ground[0], dtype=np.float32) * rng.uniform(0.9, 1.1)
    bottom = np.array(ground[1], dtype=np.float32) * rng.uniform(0.9, 1.1)
    t = np.linspace(0.0, 1.0, grid, dtype=np.float32)[:, None, None] ** rng.uniform(0.6, 1.6)
    # Blotches vary mostly in brightness, a little in hue: earthy, not rainbow-coloured.
    blotches = rng.normal(0, 16, (grid, grid, 1)) + rng.normal(0, 5, (grid, grid, 3))
    pixels = top * (1 - t) + bottom * t + blotches
    small = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return small.resize((size, size), Image.Resampling.BICUBIC).convert("RGBA")


def _draw_litter(canvas: Image.Image, size: int, rng: np.random.Generator) -> None:
    """Scatter fallen leaves, twigs and grass behind the mushroom."""
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(1, 6))):
        colour = _jitter_rgb(rng, _LEAF_COLOURS[int(rng.integers(len(_LEAF_COLOURS)))], 12)
        length = size * rng.uniform(0.12, 0.3)
        leaf = _leaf_outline(length, length * rng.uniform(0.3, 0.5))
        leaf = _rotate(leaf, rng.uniform(0, 2 * np.pi)) + rng.uniform(0, size, 2)
        draw.polygon(_flat(leaf), fill=colour)
        draw.line(_flat(leaf[[0, len(leaf) // 2]]), fill=_shade(colour, 0.7), width=max(1, size // 96))
    for _ in range(int(rng.integers(0, 3))):
        start = rng.uniform(0, size, 2)
        end = start + _rotate(np.array([[size * rng.uniform(0.15, 0.4), 0.0]]), rng.uniform(0, np.pi))[0]
        draw.line(
            _flat(np.array([start, end])),
            fill=(70, 50, 36),
            width=max(1, int(size * rng.uniform(0.01, 0.025))),
        )
    _draw_grass(canvas, size, rng, count=int(rng.integers(0, 9)))


def _leaf_outline(length: float, width: float, n: int = 12) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)
    half = 0.5 * width * np.sin(np.pi * t) ** 0.8
    upper = np.stack([t * length, half], axis=1)
    lower = np.stack([t[::-1] * length, -half[::-1]], axis=1)
    return np.concatenate([upper, lower[1:-1]]) - [length / 2, 0]


def _draw_grass(canvas: Image.Image, size: int, rng: np.random.Generator, count: int) -> None:
    """Draw ``count`` curved grass blades rising from the bottom edge."""
    draw = ImageDraw.Draw(canvas)
    for _ in range(count):
        colour = _jitter_rgb(rng, _GRASS_COLOURS[int(rng.integers(len(_GRASS_COLOURS)))], 12)
        x0 = rng.uniform(0, size)
        height = size * rng.uniform(0.2, 0.6)
        lean = size * rng.uniform(-0.15, 0.15)
        width = size * rng.uniform(0.012, 0.028)
        t = np.linspace(0.0, 1.0, 8)
        xs = x0 + lean * t**2
        ys = size * 1.02 - height * t
        half = width * (1 - t)
        blade = np.concatenate([np.stack([xs - half, ys], 1), np.stack([xs[::-1] + half[::-1], ys[::-1]], 1)])
        draw.polygon(_flat(blade), fill=colour)


# --- the mushroom --------------------------------------------------------------------------


def _draw_mushroom(ind: _Individual, size: int, rng: np.random.Generator) -> Image.Image:
    """The mushroom (and its shadow) on a transparent RGBA layer, in a random view."""
    style = ind.style
    cap = _cap_outline(style.shape, ind.cap_height, ind.stem_width) + [0.0, ind.stem_height]
    height = ind.stem_height + float(cap[:, 1].max())
    to_px = _random_view(height, size, rng)
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    shadow = _ellipse(0.0, 0.0, 0.5, 0.07)
    draw.polygon(_flat(to_px(shadow)), fill=(20, 16, 10, 90))
    _draw_stem(draw, ind, to_px)
    if style.shape == "funnel":
        _draw_funnel_gills(draw, ind, to_px)
    elif style.shape != "globe":
        gills = _ellipse(0.0, ind.stem_height, 0.46, 0.05)
        draw.polygon(_flat(to_px(gills)), fill=style.gill_rgb + (255,))
    draw.polygon(_flat(to_px(cap)), fill=ind.cap_rgb + (255,))
    _draw_cap_texture(layer, ind, cap, to_px)
    outline_width = max(1, size // 80)
    draw.line(
        _flat(to_px(np.vstack([cap, cap[:1]]))), fill=_shade(ind.cap_rgb, 0.6) + (255,), width=outline_width
    )
    return layer


def _random_view(height: float, size: int, rng: np.random.Generator):
    """A random scale, rotation, mirror, squash and position; returns local -> pixel map."""
    extent = max(1.0, height)
    scale = size * rng.uniform(0.5, 0.85) / extent
    angle = rng.uniform(-0.35, 0.35)
    flip = 1.0 if rng.random() < 0.5 else -1.0
    squash = rng.uniform(0.85, 1.0)
    centre = size * (0.5 + rng.uniform(-0.12, 0.12, 2))
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    linear = scale * rotation @ np.diag([flip * squash, -1.0])  # local y points up, pixel y down
    base = centre - linear @ np.array([0.0, height / 2])

    def to_px(points: np.ndarray) -> np.ndarray:
        return np.asarray(points) @ linear.T + base

    return to_px


def _draw_stem(draw: ImageDraw.ImageDraw, ind: _Individual, to_px) -> None:
    style = ind.style
    t = np.linspace(0.0, 1.0, 10)
    half = 0.5 * ind.stem_width * (1.0 - 0.15 * t)
    if style.has_bulb:
        half = half * (1.0 + 0.6 * np.exp(-((t / 0.18) ** 2)))
    centre = ind.stem_bend * np.sin(np.pi * t)
    ys = t * (ind.stem_height + 0.02)
    left = np.stack([centre - half, ys], 1)
    right = np.stack([centre + half, ys], 1)
    draw.polygon(_flat(to_px(np.concatenate([left, right[::-1]]))), fill=style.stem_rgb + (255,))
    # A shaded strip down one side gives the stem some roundness.
    shaded = np.stack([centre + 0.35 * half, ys], 1)
    draw.polygon(
        _flat(to_px(np.concatenate([shaded, right[::-1]]))), fill=_shade(style.stem_rgb, 0.8) + (255,)
    )
    if style.has_ring:
        ring = _ellipse(float(centre[7]), 0.78 * ind.stem_height, 0.75 * ind.stem_width, 0.035)
        draw.polygon(_flat(to_px(ring)), fill=_shade(style.stem_rgb, 1.1) + (255,))


def _draw_funnel_gills(draw: ImageDraw.ImageDraw, ind: _Individual, to_px) -> None:
    """The outside of a funnel cap: decurrent gills running from the rim down the stem."""
    y0, ch, sw = ind.stem_height, ind.cap_height, ind.stem_width
    rim = y0 + ch
    under = np.array([[-0.5, rim], [-0.45 * sw, y0 - 0.05], [0.45 * sw, y0 - 0.05], [0.5, rim]])
    draw.polygon(_flat(to_px(under)), fill=ind.style.gill_rgb + (255,))
    dark = _shade(ind.style.gill_rgb, 0.7) + (255,)
    for x in np.linspace(-0.42, 0.42, 7):
        line = np.array([[x * sw, y0 - 0.03], [x, rim]])
        draw.line(_flat(to_px(line)), fill=dark, width=1)


def _draw_cap_texture(layer: Image.Image, ind: _Individual, cap: np.ndarray, to_px) -> None:
    """Shading and the species' texture, clipped to the cap outline."""
    size = layer.size
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).polygon(_flat(to_px(cap)), fill=255)
    tex = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(tex)
    (x0, y0), (x1, y1) = cap.min(axis=0), cap.max(axis=0)
    highlight = _ellipse(x0 + 0.35 * (x1 - x0), y0 + 0.7 * (y1 - y0), 0.18, 0.3 * (y1 - y0))
    draw.polygon(_flat(to_px(highlight)), fill=_shade(ind.cap_rgb, 1.18) + (255,))
    texture = ind.style.texture
    points = [x0, y0] + ind.texture_points * [x1 - x0, y1 - y0]
    colour = ind.style.texture_rgb + (255,)
    r = ind.style.texture_size
    if texture == "spots":
        for x, y in points:
            draw.polygon(_flat(to_px(_ellipse(x, y, r, r * 0.85))), fill=colour)
    elif texture == "scales":
        for x, y in np.vstack([points, points * [0.6, 1.0] + [0.0, 0.02]]):
            scale = np.array([[x - r, y + r * 0.6], [x + r, y + r * 0.6], [x, y - r * 0.7]])
            draw.polygon(_flat(to_px(scale)), fill=colour)
    elif texture == "stripes":
        width = max(1, round(float(np.linalg.norm(to_px([[r * 0.35, 0.0]]) - to_px([[0.0, 0.0]])))))
        for a in np.linspace(0.15, np.pi - 0.15, ind.style.texture_count):
            ray = np.array([[0.0, y0 - 0.3], [2.0 * np.cos(a), y0 - 0.3 + 2.0 * np.sin(a)]])
            draw.line(_flat(to_px(ray)), fill=colour, width=width)
    elif texture == "rings":
        centre_y = y0 - 0.05
        step = 1.4 / ind.style.texture_count
        for k in range(ind.style.texture_count, 0, -2):
            ring = _ellipse(0.0, centre_y, k * step * 0.5, k * step * 0.5 * (y1 - y0 + 0.3))
            draw.polygon(_flat(to_px(ring)), fill=colour)
            inner = _ellipse(0.0, centre_y, (k - 1) * step * 0.5, (k - 1) * step * 0.5 * (y1 - y0 + 0.3))
            draw.polygon(_flat(to_px(inner)), fill=(0, 0, 0, 0))
    # Rim shading: a darker band along the lower edge of the cap.
    rim = np.array([[x0 - 0.1, y0 - 0.1], [x1 + 0.1, y0 - 0.1], [x1 + 0.1, y0 + 0.05], [x0 - 0.1, y0 + 0.05]])
    draw.polygon(_flat(to_px(rim)), fill=_shade(ind.cap_rgb, 0.78) + (200,))
    layer.paste(tex, (0, 0), ImageChops.multiply(tex.getchannel("A"), mask))


def _cap_outline(shape: str, ch: float, stem_w: float, n: int = 25) -> np.ndarray:
    """The cap outline, closed, in cap coordinates: width 1, (0, 0) where it meets the stem."""
    t = np.linspace(0.0, np.pi, n)
    x = 0.5 * np.cos(t)  # right to left
    if shape == "convex":
        top = np.stack([x, ch * np.sin(t) ** 0.8], 1)
    elif shape == "flat":
        top = np.stack([0.5 * np.sign(np.cos(t)) * np.abs(np.cos(t)) ** 0.5, ch * np.sin(t) ** 0.5], 1)
    elif shape == "conical":
        top = np.stack([x, ch * (1 - np.abs(2 * x)) ** 0.8 + 0.05 * ch * np.sin(t)], 1)
    elif shape == "bell":
        h = np.concatenate([np.linspace(0, 1, n // 2 + 1), np.linspace(1, 0, n // 2 + 1)[1:]])
        side = np.where(np.arange(len(h)) <= n // 2, 1.0, -1.0)
        half = 0.5 * np.sqrt(1 - h**3) * (1 + 0.15 * (1 - h) ** 6) / 1.15
        top = np.stack([side * half, ch * h], 1)
    elif shape == "funnel":
        # Seen from a little above: the funnel's rim as an ellipse (its gills are drawn apart).
        return _ellipse(0.0, ch, 0.5, 0.12 + 0.15 * ch, n=2 * n)
    elif shape == "umbonate":
        top = np.stack([x, ch * (0.65 * np.sin(t) ** 0.6 + 0.35 * np.exp(-((x / 0.13) ** 2)))], 1)
    elif shape == "globe":
        t = np.linspace(0.0, 2 * np.pi, 2 * n, endpoint=False)
        pear = 1.0 - 0.12 * (1 - np.sin(t)) / 2  # a little narrower below
        return np.stack([0.5 * np.cos(t) * pear, ch / 2 * (1 + np.sin(t)) - 0.05], 1)
    else:
        raise ValueError(f"cap shape {shape!r} is not one of {list(CAP_SHAPES)}")
    # The underside bulges up slightly between the cap edges.
    ux = np.linspace(-0.5, 0.5, 9)[1:-1]
    underside = np.stack([ux, 0.08 * ch * (1 - (2 * ux) ** 2)], 1)
    return np.vstack([top, underside])


# --- helpers -----------------------------------------------------------------------------


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 20) -> np.ndarray:
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.asarray(points) @ np.array([[c, s], [-s, c]])


def _flat(points: np.ndarray) -> list[float]:
    """Points as the flat coordinate list ImageDraw takes."""
    return np.asarray(points, dtype=np.float64).ravel().tolist()


def _jitter(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Mild colour cast, brightness change and sensor noise."""
    pixels = np.asarray(image, dtype=np.float32)
    gain = rng.normal(1.0, 0.04, 3) * rng.uniform(0.85, 1.15)
    noise = rng.standard_normal(pixels.shape, dtype=np.float32) * rng.uniform(2.0, 6.0)
    pixels = pixels * gain.astype(np.float32) + noise
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "RGB")


def collect_synthetic(config: SyntheticSourceConfig, catalog: Catalog, out_dir: Path, seed: int,
                      ignore: Catalog | None = None) -> list[PhotoRecord]:
    """The registry's collector (:mod:`mushroom.sources.registry`): :func:`generate_synthetic`."""
    return generate_synthetic(config, catalog, out_dir, seed)
