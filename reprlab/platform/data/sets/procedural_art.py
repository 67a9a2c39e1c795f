"""The embedded ``procedural_art``: photo crops with or without a pasted object, and three
procedural "artists" that paint them, each with its own texture and its own change to the object,
for the content transformation block of style transfer (Kotovenko et al., CVPR 2019;
specs/style_transfer.md, section "Embedded data procedural_art"). Our design, not the paper's data:
the paper trains on Places365 photos and one WikiArt artist (read by ``style_folders``,
:mod:`reprlab.platform.data.sets.style_folders`). What the spec fixes is marked [spec]; the rest is
our choice.

- **Scenes** [spec]: six shipped photos, :data:`SCENES` (scikit-image's astronaut, chelsea,
  rocket, motorcycle_left; scikit-learn's china and flower), read by
  :func:`~reprlab.platform.data.sets.exposure_photos.shipped_photo`. coffee is held out whole for
  the HD pool. Every photo is first resized (antialiased bilinear) so that its shorter side is
  ``5 x size`` (320 px at 64; a down-scale of 0.63-0.8, except chelsea's 1.07): one pixel scale
  for all photos, and every block (a quarter of each side) is at least 1.25 x ``size`` on its
  shorter side, so a crop always fits inside a block. The resized photos are stored at 8 bits.
- **Blocks** [spec]: each photo is cut into 4 x 4 blocks (edges at ``k * side // 4``); a seeded
  permutation per photo gives 2 to test, 2 to val, 4 to painting_source and 8 to content. *Ours*:
  blocks holding no crop with std >= 0.05 (china's sky) are moved to the end of the permutation,
  i.e. to content, so the small splits always get usable blocks.
- **Crops** [spec]: ``size`` x ``size``, inside one block, photo std (all 3 x size^2 values) >= 0.05.
  Crops are drawn from the accepted positions directly (box sums over the whole photo), which is
  the same as rejection sampling. *Ours*: scenes in equal shares (shuffled), then a usable block of
  the split uniformly, then an accepted position in it uniformly.
- **Objects** [spec]: scikit-image's ``lfw_subset.npy`` (200 x 25 x 25 grey; read with
  importlib.resources). Faces 0-99 are the seen class, split 60 / 20 / 20 (train: content and
  painting_source; val; test) by a seeded permutation; the non-faces 100-199 appear only in the
  ``unseen`` pool. With probability ``object_probability`` (0.5) a crop gets one object: a tile
  stretched to s x s pixels, s uniform in 20..28 at 64 px (scaled with ``size``), tinted (each
  channel x U(0.45, 1)), pasted under the inscribed ellipse with axes 0.8 s x s (a face's
  upright oval), one-pixel soft edge. *Ours*: the centre is drawn so that every artist's change
  stays inside the crop (s = 28 at 64 px: centres 21-43 px).
- **Artists** [spec: the table]. Painting = texture(change(x)); the change works on the 8-bit
  photo, the texture on the whole changed image; ``alter=False`` skips the change (G_a^0):

  ======  ==========================================  ============================================
  artist  change to the object                        texture
  ======  ==========================================  ============================================
  a       re-pasted x 1.35 tall, x 0.85 wide (same    7-px mean along the 45-degree diagonal,
          centre, the photo restored under the old)   a triangle-wave stripe across it (period
                                                      4 px, +-0.1, random phase), nearest of 6
                                                      fixed palette colours
  b       the ellipse filled flat with the mean of    3 x 3 box blur, 4 levels per channel,
          the photo it covers, a 3-px dark outline    pixels with Sobel(luma) > 0.08 set black
  c       a 3-px ring on the ellipse scaled x 1.3,    hue +40 degrees, then 3-px dots: each 3 x 3
          orange (hue 20) so that it is painted       cell (random grid phase) shows its centre's
          yellow (hue 60)                             colour, corners mixed 45 % with canvas
  ======  ==========================================  ============================================

  *Ours*: the numbers in the table's cells beyond the spec's (lengths, thresholds, colours).
  Textures reach 3 (a), 2 (b) and 1 (c) pixels from where their input changed, so the mask
  :func:`paint` returns is the set of pixels the change touched, dilated by that reach: outside
  it G_a(x) and G_a^0(x) are byte-identical. Random phases come from a counter-based hash
  (splitmix64) of (seed, artist, crop uid): painting a crop twice, alone or in any batch, gives
  the same bytes. Paintings are quantized to 8 bits, as the pools are. Strokes, dots, outline and
  ring widths are in pixels at every ``size`` and on the HD regions (objects scale with ``size``).
- **Pools** (:meth:`Material.pool`): ``content`` 3000, ``painting_source`` 1500 (every artist
  paints the same crops: :meth:`Material.paintings`), ``val`` 200, ``test`` 400, ``unseen`` 200
  (test blocks, each crop with a non-face object), ``hd``: the four corner regions of the resized
  coffee (``hd_side`` = 256 px, overlapping), no object, ``scene`` = -1. Each pool is drawn by its
  own generator seeded from (seed, pool), so pools do not depend on each other's sizes.
- **API** (also ``DataSet.extra``: ``art_material``, ``paint``): :func:`art_material` (section)
  -> :class:`Material`; ``.pool(name)`` / ``.paintings(artist)`` -> :class:`Crops`;
  :func:`paint` (crops, artist, alter) -> (painting, mask); :func:`content_change` (the change
  alone, in photo space); :func:`class_matched` (painting indices of the photos' object classes).
  The registered set's ``load`` gives train = content, val, test (labels = scene; meta scene, obj).

Deterministic from ``data.procedural_art.seed``. Built in memory: every default pool and the three
painted pools take 5.8 s of CPU on one thread (1.9 s of it reading the photos, 1.2 s of that
importing sklearn.datasets for china and flower), measured with ``python -c "import time, torch;
torch.set_num_threads(1); from reprlab.platform.data.sets import procedural_art as pa;
t = time.process_time(); m = pa.art_material(pa.ProceduralArtSection()); [m.pool(p) for p in
pa.POOLS]; [m.paintings(a) for a in pa.ARTISTS]; print(time.process_time() - t)"``; the same with
two threads took 12.6-16.5 s of wall time on the shared 2-core machine at load 5 (not measured on
idle cores). One artist paints 512 64-px crops in 0.16-0.22 s of CPU (one thread).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, ValidationInfo, field_validator

from reprlab.platform.core.config import Section
from reprlab.platform.core.errors import ConfigError, DataError
from reprlab.platform.data.camera import quantize
from reprlab.platform.data.catalog import DataSet, get_dataset, register_dataset
from reprlab.platform.data.imageops import (
    band_alpha,
    box_blur,
    dilate,
    ellipse_alpha,
    luminance,
    paste_under_ellipse,
    rotate_hue,
    sobel_magnitude,
)
from reprlab.platform.data.types import Benchmark, ImageSet

SCENES = ("astronaut", "chelsea", "rocket", "motorcycle_left", "china", "flower")
HD_PHOTO = "coffee"
PHOTOS = (*SCENES, HD_PHOTO)  # index = Crops.photo
ARTISTS = ("a", "b", "c")
SPLITS = ("content", "painting_source", "val", "test")  # index = Material.block_split
BLOCKS = {"test": 2, "val": 2, "painting_source": 4, "content": 8}  # per photo, assigned in this order
GRID = 4  # blocks per side
POOLS = ("content", "painting_source", "val", "test", "unseen", "hd")
POOL_BLOCKS = {"content": "content", "painting_source": "painting_source", "val": "val", "test": "test",
               "unseen": "test"}
POOL_FACES = {"content": "train", "painting_source": "train", "val": "val", "test": "test", "unseen": "unseen"}
NO_OBJECT, FACE, UNSEEN = 0, 1, 2  # Crops.obj
SHORT_SIDE = 5  # photos are resized to a shorter side of SHORT_SIDE x size
MIN_STD = 0.05
BASE = 64  # the side the pixel sizes below are given at
FACE_TILES = 100
FACE_SPLIT = {"train": 60, "val": 20, "test": 20}
OBJECT_SIDE = (20, 28)  # px at BASE, inclusive
ELLIPSE_AXES = (0.8, 1.0)  # the object's ellipse axes, fractions of its box's width and height
TINT = (0.45, 1.0)

# artist a: deforms
STRETCH = (0.85, 1.35)  # width, height
STROKE_LENGTH = 7  # px, along the 45-degree diagonal (odd)
STROKE_PERIOD = 4.0  # px, across the strokes
STROKE_AMPLITUDE = 0.1
PALETTE = torch.tensor([[24, 38, 89], [46, 110, 128], [196, 150, 52], [240, 214, 96], [168, 66, 40],
                        [238, 232, 208]], dtype=torch.float32) / 255
# artist b: removes
LEVELS = 4
EDGE = 0.08  # Sobel magnitude of the blurred luma (per pixel) above which a pixel is painted black
OUTLINE_WIDTH = 3.0  # px: wide enough that the 3 x 3 blur keeps its middle black
OUTLINE_VALUE = 0.05
# artist c: adds
HUE_SHIFT = 40.0
RING_SCALE = 1.3
RING_WIDTH = 3.0
RING_RGB = (1.0, 1 / 3, 0.0)  # hue 20 degrees: yellow (60) once hue-shifted
DOT = 3
CANVAS = (0.93, 0.90, 0.82)
DOT_GAP = 0.45  # corner pixels of a dot cell: this share of canvas
REACH = {"a": STROKE_LENGTH // 2, "b": 2, "c": DOT // 2}  # how far each texture spreads a change (px); b: blur + Sobel
CHUNK = 512  # crops painted at once (bounds the temporaries)


class ProceduralArtSection(Section):
    """Six photos cut into block-disjoint splits, LFW faces / non-faces pasted, three procedural
    artists with known changes to the object."""

    size: int = Field(64, ge=32, le=256, description="crop side in pixels")
    seed: int = Field(0, ge=0, description="block and face splits, crops, objects, painting phases")
    content_crops: int = Field(3000, ge=1, le=100_000, description="training photos (content blocks)")
    painting_crops: int = Field(1500, ge=1, le=100_000,
                                description="painting-source crops; every artist paints all of them")
    val_crops: int = Field(200, ge=1, le=100_000)
    test_crops: int = Field(400, ge=1, le=100_000)
    unseen_crops: int = Field(200, ge=1, le=100_000, description="test-block crops with a non-face object")
    object_probability: float = Field(0.5, ge=0.0, le=1.0, description="chance that a crop gets an object")
    hd_side: int = Field(256, ge=32, description="side of the four HD regions of the held-out photo")

    @field_validator("hd_side")
    @classmethod
    def _fits(cls, v: int, info: ValidationInfo) -> int:
        size = info.data.get("size", 64)
        if v > SHORT_SIDE * size:
            raise ValueError(f"must be at most {SHORT_SIDE * size} (the held-out photo's shorter side at "
                             f"size {size})")
        return v


# --------------------------------------------------------------------------------------------
# crops


@dataclass(frozen=True, eq=False)
class Sources:
    """What every crop of a material is cut and pasted from (shared, read-only): the resized
    photos (P x 3 x H x W uint8, padded to the largest), their valid sizes (P x 2: h, w), the
    object tiles (200 x 1 x 25 x 25 float) and the data seed."""

    bank: torch.Tensor
    sizes: torch.Tensor
    tiles: torch.Tensor
    seed: int


@dataclass(frozen=True, eq=False)
class Crops:
    """N crops: the image with its pasted object (8 bits), its scene and object, and what the
    painter needs to redo the object. Indexing keeps the batch dimension (``crops[3]`` holds one)."""

    pixels: torch.Tensor  # N x 3 x H x W uint8
    scene: torch.Tensor  # N int64: index into SCENES (-1: the held-out HD photo)
    obj: torch.Tensor  # N int64: NO_OBJECT, FACE or UNSEEN
    obj_mask: torch.Tensor  # N x H x W bool: the pasted object (alpha > 0.5)
    tile: torch.Tensor  # N int64: index into lfw_subset (-1: no object)
    centre: torch.Tensor  # N x 2 float32: the object's centre (x, y), pixels
    side: torch.Tensor  # N float32: the object's box side s, pixels (0: no object)
    tint: torch.Tensor  # N x 3 float32
    photo: torch.Tensor  # N int64: index into PHOTOS
    block: torch.Tensor  # N int64: block (row * 4 + column) of the photo; -1 for HD regions
    origin: torch.Tensor  # N x 2 int64: the crop's top-left (x, y) in the resized photo
    uid: torch.Tensor  # N int64: the crop's identity (pool code << 32 | index in the pool)
    sources: Sources

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index) -> Crops:
        if isinstance(index, (int, np.integer)):
            index = slice(int(index), int(index) + 1 if int(index) != -1 else None)
        elif isinstance(index, np.ndarray):
            index = torch.from_numpy(index)
        values = {f: getattr(self, f)[index] for f in _PER_CROP}
        return Crops(**values, sources=self.sources)

    @property
    def image(self) -> torch.Tensor:
        """N x 3 x H x W float32 in [0, 1]."""
        return self.pixels.float() / 255

    @property
    def background(self) -> torch.Tensor:
        """N x 3 x H x W float32: the photo under the crop, without its object."""
        return _cut(self.sources.bank, self.photo, self.origin, self.pixels.shape[-1]).float() / 255

    @property
    def radii(self) -> torch.Tensor:
        """N x 2 (rx, ry): the object's ellipse, pixels."""
        return self.side[:, None] / 2 * self.side.new_tensor(ELLIPSE_AXES)

    @property
    def box(self) -> torch.Tensor:
        """N x 4 (x0, y0, x1, y1): the pasted tile's box, pixels."""
        half = self.side[:, None] / 2
        return torch.cat([self.centre - half, self.centre + half], 1)

    def to_imageset(self) -> ImageSet:
        """The crops as the platform's image set: uint8 N x H x W x 3, labels and ``meta`` scene,
        ``meta`` obj."""
        scene = self.scene.numpy().copy()
        return ImageSet(labels=scene, pixels=self.pixels.permute(0, 2, 3, 1).contiguous().numpy(),
                        meta={"scene": scene, "obj": self.obj.numpy().copy()})

    @staticmethod
    def concat(parts: list[Crops]) -> Crops:
        return Crops(**{f: torch.cat([getattr(p, f) for p in parts]) for f in _PER_CROP}, sources=parts[0].sources)


_PER_CROP = tuple(f for f in Crops.__dataclass_fields__ if f != "sources")


def _cut(bank: torch.Tensor, photo: torch.Tensor, origin: torch.Tensor, side: int) -> torch.Tensor:
    """N x C x side x side windows of ``bank`` (P x C x H x W) at ``origin`` (N x 2: x, y) of ``photo``."""
    out = bank.new_empty(len(photo), bank.shape[1], side, side)
    for p in torch.unique(photo).tolist():  # one gather per photo, over a view of all its windows
        rows = torch.nonzero(photo == p).flatten()
        windows = bank[p].unfold(1, side, 1).unfold(2, side, 1)  # C x H' x W' x side x side
        out[rows] = windows[:, origin[rows, 1], origin[rows, 0]].transpose(0, 1)
    return out


# --------------------------------------------------------------------------------------------
# material


@dataclass(frozen=True)
class _Table:
    """The usable blocks of one split and their accepted crop positions."""

    scene_first: torch.Tensor  # len(SCENES): first row of the scene's blocks below
    scene_blocks: torch.Tensor  # len(SCENES): how many usable blocks the scene has here
    block: torch.Tensor  # B: block id within its photo
    start: torch.Tensor  # B: first accepted position in ``positions``
    count: torch.Tensor  # B: accepted positions
    positions: torch.Tensor  # M x 2 (x, y) top-left corners


@dataclass(frozen=True, eq=False)
class Material:
    """Everything the pools are drawn from, and the pools themselves (drawn on first use, then
    kept). Read-only; shared by every user in the process (:func:`art_material`)."""

    size: int
    seed: int
    counts: dict[str, int]  # crops per pool
    object_probability: float
    hd_side: int
    sources: Sources
    block_split: torch.Tensor  # len(SCENES) x 16: index into SPLITS
    block_bounds: torch.Tensor  # len(PHOTOS) x 16 x 4: (x0, y0, x1, y1) in the resized photo
    faces: dict[str, torch.Tensor]  # train / val / test / unseen: tile ids
    tables: dict[str, _Table]
    _pools: dict = field(default_factory=dict, repr=False)
    artists: ClassVar[tuple[str, ...]] = ARTISTS
    scenes: ClassVar[tuple[str, ...]] = SCENES

    def pool(self, name: str) -> Crops:
        """One of :data:`POOLS` (see the module docstring)."""
        if name not in POOLS:
            raise ConfigError(f"procedural_art: pool {name!r} is not one of {', '.join(POOLS)}")
        if name not in self._pools:
            self._pools[name] = _hd_pool(self) if name == "hd" else _draw_pool(self, name)
        return self._pools[name]

    def paintings(self, artist: str) -> Crops:
        """The painted pool of ``artist``: G_a of the painting_source crops (``image``), with the
        sources' scene, object and geometry (``obj_mask`` is the source's, before the change)."""
        _check_artist(artist)
        key = f"paintings/{artist}"
        if key not in self._pools:
            src = self.pool("painting_source")
            painted, _ = paint(src, artist)
            values = {f: getattr(src, f) for f in _PER_CROP}
            values["pixels"] = _uint8(painted)
            self._pools[key] = Crops(**values, sources=src.sources)
        return self._pools[key]


def _generator(*key: int) -> torch.Generator:
    """A torch generator seeded from a key (independent streams for different keys)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1)[0]))


def _tiles() -> torch.Tensor:
    """scikit-image's lfw_subset.npy: 200 x 1 x 25 x 25 float32 in [0, 1] (faces, then non-faces)."""
    from importlib.resources import files

    with (files("skimage") / "data" / "lfw_subset.npy").open("rb") as f:
        tiles = np.load(f)
    return torch.from_numpy(tiles.astype(np.float32))[:, None]


def _resized(name: str, size: int) -> torch.Tensor:
    """A shipped photo resized (antialiased) to a shorter side of SHORT_SIDE x size: 3 x h x w uint8."""
    from reprlab.platform.data.sets.exposure_photos import shipped_photo

    px = torch.from_numpy(shipped_photo(name).copy()).permute(2, 0, 1).float() / 255
    h, w = px.shape[1:]
    scale = SHORT_SIDE * size / min(h, w)
    nh, nw = max(SHORT_SIDE * size, round(h * scale)), max(SHORT_SIDE * size, round(w * scale))
    small = F.interpolate(px[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
    return (small.clamp(0, 1) * 255).round().to(torch.uint8)


def _window_std(photo: torch.Tensor, side: int) -> torch.Tensor:
    """(h - side + 1) x (w - side + 1): std of all 3 x side^2 values of every window (box sums of
    cumulative sums, float64)."""
    x = photo.double() / 255

    def box_mean(v: torch.Tensor) -> torch.Tensor:
        c = F.pad(v.cumsum(0).cumsum(1), (1, 0, 1, 0))
        return (c[side:, side:] - c[:-side, side:] - c[side:, :-side] + c[:-side, :-side]) / side**2

    mean, sq = box_mean(x.mean(0)), box_mean(x.square().mean(0))
    return (sq - mean.square()).clamp_min(0).sqrt()


def _bounds(h: int, w: int) -> torch.Tensor:
    """16 x 4 (x0, y0, x1, y1) blocks of an h x w photo, row-major."""
    ys = [k * h // GRID for k in range(GRID + 1)]
    xs = [k * w // GRID for k in range(GRID + 1)]
    return torch.tensor([[xs[c], ys[r], xs[c + 1], ys[r + 1]] for r in range(GRID) for c in range(GRID)])


def build_material(size: int = 64, seed: int = 0, counts: dict[str, int] | None = None,
                   object_probability: float = 0.5, hd_side: int = 256) -> Material:
    """The material for these settings (pools are drawn on first use); see the module docstring."""
    counts = {**DEFAULT_COUNTS, **(counts or {})}
    photos = [_resized(name, size) for name in PHOTOS]
    sizes = torch.tensor([p.shape[1:] for p in photos])
    bank = torch.zeros(len(photos), 3, int(sizes[:, 0].max()), int(sizes[:, 1].max()), dtype=torch.uint8)
    for i, p in enumerate(photos):
        bank[i, :, : p.shape[1], : p.shape[2]] = p
    bounds = torch.stack([_bounds(*p.shape[1:]) for p in photos])
    ok = [_window_std(p, size) >= MIN_STD for p in photos[: len(SCENES)]]  # accepted top-left corners

    accepted: list[list[torch.Tensor]] = []  # per scene, per block: M x 2 (x, y)
    split = torch.empty(len(SCENES), GRID * GRID, dtype=torch.int64)
    for s in range(len(SCENES)):
        per_block = []
        for b in range(GRID * GRID):
            x0, y0, x1, y1 = bounds[s, b].tolist()
            ys, xs = torch.nonzero(ok[s][y0 : y1 - size + 1, x0 : x1 - size + 1], as_tuple=True)
            per_block.append(torch.stack([xs + x0, ys + y0], 1))
        accepted.append(per_block)
        order = torch.from_numpy(np.random.default_rng([seed, 0xB10C, s]).permutation(GRID * GRID))
        usable = torch.tensor([len(per_block[b]) > 0 for b in order.tolist()])
        order = order[torch.argsort((~usable).to(torch.int8), stable=True)]  # unusable blocks last
        first = 0
        for name, k in BLOCKS.items():
            split[s, order[first : first + k]] = SPLITS.index(name)
            first += k

    tables = {}
    for name in SPLITS:
        rows, starts, counts_, scene_first, scene_blocks, positions, total = [], [], [], [], [], [], 0
        for s in range(len(SCENES)):
            blocks = [b for b in range(GRID * GRID) if split[s, b] == SPLITS.index(name) and len(accepted[s][b])]
            if not blocks:
                raise DataError(f"data: procedural_art: scene {SCENES[s]} has no {name} block with a crop of "
                                f"std >= {MIN_STD} at size {size}")
            scene_first.append(len(rows))
            scene_blocks.append(len(blocks))
            for b in blocks:
                rows.append(b)
                starts.append(total)
                counts_.append(len(accepted[s][b]))
                positions.append(accepted[s][b])
                total += len(accepted[s][b])
        tables[name] = _Table(torch.tensor(scene_first), torch.tensor(scene_blocks), torch.tensor(rows),
                              torch.tensor(starts), torch.tensor(counts_), torch.cat(positions))

    face_order = torch.from_numpy(np.random.default_rng([seed, 0xFACE]).permutation(FACE_TILES))
    a, b = FACE_SPLIT["train"], FACE_SPLIT["train"] + FACE_SPLIT["val"]
    faces = {"train": face_order[:a], "val": face_order[a:b], "test": face_order[b:],
             "unseen": torch.arange(FACE_TILES, 2 * FACE_TILES)}
    return Material(size, seed, counts, object_probability, hd_side, Sources(bank, sizes, _tiles(), seed),
                    split, bounds, faces, tables)


DEFAULT_COUNTS = {"content": 3000, "painting_source": 1500, "val": 200, "test": 400, "unseen": 200}


def art_material(section) -> Material:
    """The material of a ``data`` config section (``section.procedural_art``) or of a
    :class:`ProceduralArtSection` itself; one per distinct setting in a process."""
    c = getattr(section, "procedural_art", section)
    return _material(c.size, c.seed, c.content_crops, c.painting_crops, c.val_crops, c.test_crops,
                     c.unseen_crops, c.object_probability, c.hd_side)


def art_material_of(cfg):
    """The material, painter, artists and scenes of an experiment config's data set (the style
    judge's and style transfer's), or one ConfigError line when the set has no such material.
    Sets of real paintings (``style_folders``) have a material but no painter (None)."""
    extra = get_dataset(cfg.data.name, "data.name").extra
    if "art_material" not in extra:
        raise ConfigError(f"config: data.name: {cfg.data.name} has no photos and paintings for style transfer "
                          f"(data.name=procedural_art or style_folders)")
    material = extra["art_material"](cfg.data)
    return material, extra.get("paint"), material.artists, material.scenes


@lru_cache(maxsize=4)
def _material(size: int, seed: int, content: int, painting: int, val: int, test: int, unseen: int,
              object_probability: float, hd_side: int) -> Material:
    counts = {"content": content, "painting_source": painting, "val": val, "test": test, "unseen": unseen}
    return build_material(size, seed, counts, object_probability, hd_side)


# --------------------------------------------------------------------------------------------
# pools


def _reach(side: torch.Tensor) -> torch.Tensor:
    """How far from the object's centre any artist's change can reach (pixels)."""
    half = side / 2
    return torch.stack([STRETCH[1] * ELLIPSE_AXES[1] * half + 0.5,
                        RING_SCALE * half * max(ELLIPSE_AXES) + RING_WIDTH / 2 + 0.5,
                        half * max(ELLIPSE_AXES) + OUTLINE_WIDTH / 2 + 0.5], 1).amax(1)


def _draw_pool(m: Material, name: str) -> Crops:
    n, size = m.counts[name], m.size
    g = _generator(m.seed, 0xC0, POOLS.index(name))
    table = m.tables[POOL_BLOCKS[name]]
    # where: scenes in equal shares, a usable block of the scene, an accepted position in it
    scene = (torch.arange(n) % len(SCENES))[torch.randperm(n, generator=g)]
    u = torch.rand(n, 2, generator=g, dtype=torch.float64)
    row = table.scene_first[scene] + (u[:, 0] * table.scene_blocks[scene]).long()
    origin = table.positions[table.start[row] + (u[:, 1] * table.count[row]).long()]
    # what: an object or none
    unseen = name == "unseen"
    has = torch.ones(n, dtype=torch.bool) if unseen else torch.rand(n, generator=g) < m.object_probability
    ids = m.faces[POOL_FACES[name]]
    tile = ids[torch.randint(len(ids), (n,), generator=g)]
    side = torch.randint(OBJECT_SIDE[0], OBJECT_SIDE[1] + 1, (n,), generator=g).float() * (size / BASE)
    tint = TINT[0] + (TINT[1] - TINT[0]) * torch.rand(n, 3, generator=g)
    margin = _reach(side) + 1
    centre = margin[:, None] + torch.rand(n, 2, generator=g) * (size - 2 * margin)[:, None]

    photo = scene
    background = _cut(m.sources.bank, photo, origin, size).float() / 255
    image, alpha = paste_under_ellipse(background, m.sources.tiles, tile, centre, torch.stack([side, side], 1),
                                       tint, ELLIPSE_AXES, present=has)
    obj = torch.where(has, UNSEEN if unseen else FACE, NO_OBJECT)
    uid = (POOLS.index(name) << 32) + torch.arange(n)
    return Crops(pixels=_uint8(image), scene=scene, obj=obj, obj_mask=alpha > 0.5,
                 tile=torch.where(has, tile, -1), centre=torch.where(has[:, None], centre, 0.0),
                 side=torch.where(has, side, 0.0), tint=torch.where(has[:, None], tint, 1.0), photo=photo,
                 block=table.block[row], origin=origin, uid=uid, sources=m.sources)


def _uint8(img: torch.Tensor) -> torch.Tensor:
    return img.clamp(0, 1).mul(255).round_().to(torch.uint8)


def _hd_pool(m: Material) -> Crops:
    """The four corner regions (hd_side square, overlapping) of the resized held-out photo."""
    p = PHOTOS.index(HD_PHOTO)
    h, w = m.sources.sizes[p].tolist()
    s = m.hd_side
    origin = torch.tensor([[0, 0], [w - s, 0], [0, h - s], [w - s, h - s]])
    n = len(origin)
    photo = torch.full((n,), p)
    return Crops(pixels=_cut(m.sources.bank, photo, origin, s), scene=torch.full((n,), -1),
                 obj=torch.full((n,), NO_OBJECT), obj_mask=torch.zeros(n, s, s, dtype=torch.bool),
                 tile=torch.full((n,), -1), centre=torch.zeros(n, 2), side=torch.zeros(n), tint=torch.ones(n, 3),
                 photo=photo, block=torch.full((n,), -1), origin=origin,
                 uid=(POOLS.index("hd") << 32) + torch.arange(n), sources=m.sources)


def class_matched(pool_obj: torch.Tensor, want: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For every entry of ``want`` (object classes), the index of a uniformly drawn pool entry of
    that class (``pool_obj``: the pool's ``obj``): class-matched painting batches. A class the pool
    lacks is one DataError line."""
    classes = torch.unique(want)
    counts = torch.bincount(pool_obj, minlength=int(classes.max()) + 1)
    lacking = [int(c) for c in classes if counts[c] == 0]
    if lacking:
        raise DataError(f"data: procedural_art: the pool has no crop with obj={lacking[0]}")
    order = torch.argsort(pool_obj, stable=True)
    first = torch.cumsum(counts, 0) - counts
    u = torch.rand(len(want), generator=generator, dtype=torch.float64)
    return order[first[want] + (u * counts[want]).long()]


# --------------------------------------------------------------------------------------------
# the artists


def _check_artist(artist: str) -> None:
    if artist not in ARTISTS:
        raise ConfigError(f"procedural_art: artist {artist!r} is not one of {', '.join(ARTISTS)}")


def content_change(crops: Crops, artist: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The artist's change to the object, in photo space, before any texture: (N x 3 x H x W in
    8-bit levels, N x H x W bool: the pixels it changed). Crops without an object are returned as
    they are."""
    _check_artist(artist)
    x = crops.image
    touched = torch.zeros(x.shape[0], *x.shape[2:], dtype=torch.bool)
    rows = torch.nonzero(crops.obj != NO_OBJECT).flatten()
    if not len(rows):
        return x, touched
    sub = crops[rows]
    before = x[rows]
    h, w = x.shape[-2:]
    centre, radii = sub.centre, sub.radii
    if artist == "a":  # the photo restored under the object, the object re-pasted stretched
        restored = torch.where((ellipse_alpha(h, w, centre, radii) > 0)[:, None], sub.background, before)
        size = torch.stack([sub.side * STRETCH[0], sub.side * STRETCH[1]], 1)
        after, _ = paste_under_ellipse(restored, sub.sources.tiles, sub.tile, centre, size, sub.tint, ELLIPSE_AXES)
    elif artist == "b":  # filled flat with what it covers on average, outlined dark
        a0 = ellipse_alpha(h, w, centre, radii)[:, None]
        fill = (sub.background * a0).sum((2, 3)) / a0.sum((2, 3)).clamp_min(1e-6)
        filled = before + a0 * (fill[:, :, None, None] - before)
        outline = band_alpha(h, w, centre, radii, OUTLINE_WIDTH)[:, None]
        after = filled + outline * (OUTLINE_VALUE - filled)
    else:  # a ring around it
        ring = band_alpha(h, w, centre, radii * RING_SCALE, RING_WIDTH)[:, None]
        after = before + ring * (x.new_tensor(RING_RGB)[None, :, None, None] - before)
    after = quantize(after)
    out = x.clone()
    out[rows] = after
    touched[rows] = (after != before).any(1)
    return out, touched


def texture_a(img: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """45-degree strokes and a 6-colour palette: the mean along the (1, -1) diagonal over
    STROKE_LENGTH pixels, plus a triangle-wave stripe across the strokes (``phase``: N in [0, 1)),
    mapped to the nearest PALETTE colour."""
    _, _, h, w = img.shape
    dev = img.device
    r = STROKE_LENGTH // 2
    p = F.pad(img, (r, r, r, r), mode="replicate")
    acc = torch.zeros_like(img)
    for k in range(-r, r + 1):  # pixel (x + k, y - k)
        acc += p[:, :, r - k : r - k + h, r + k : r + k + w]
    acc /= STROKE_LENGTH
    t = (torch.arange(w, device=dev)[None, :] + torch.arange(h, device=dev)[:, None]).to(img.dtype)[None]
    t = t / STROKE_PERIOD + phase.to(img)[:, None, None]
    stripe = 4 * (t - t.floor() - 0.5).abs() - 1  # in [-1, 1]
    v = acc + STROKE_AMPLITUDE * stripe[:, None]
    palette = PALETTE.to(img)
    # nearest colour: argmin_k |p_k|^2 - 2 <v, p_k> (N x 6 x H x W, never N x 6 x 3 x H x W)
    score = torch.einsum("nchw,kc->nkhw", v, -2 * palette) + palette.square().sum(1)[None, :, None, None]
    return palette[score.argmin(1)].permute(0, 3, 1, 2).contiguous()


def texture_b(img: torch.Tensor) -> torch.Tensor:
    """4-level posterize with dark edges: a 3 x 3 box blur, each channel rounded to LEVELS levels,
    pixels whose blurred luma has a Sobel magnitude above EDGE painted black."""
    blur = box_blur(img, 1)
    poster = (blur * (LEVELS - 1)).round() / (LEVELS - 1)
    edge = sobel_magnitude(luminance(blur)) > EDGE
    return torch.where(edge, torch.zeros_like(poster), poster)


def texture_c(img: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """Hue +40 degrees, then 3-px dots: every DOT x DOT cell (grid offset ``phase``: N x 2 ints
    (x, y) in 0..DOT-1) shows the colour of its centre pixel, its corner pixels mixed with the
    canvas colour."""
    n, c, h, w = img.shape
    rot = rotate_hue(img, HUE_SHIFT)
    xs, ys, phase = torch.arange(w, device=img.device), torch.arange(h, device=img.device), phase.to(img.device)
    off_x = (xs[None] + phase[:, :1]) % DOT  # N x W: position in the cell
    off_y = (ys[None] + phase[:, 1:]) % DOT
    cx = (xs[None] - off_x + DOT // 2).clamp(0, w - 1)
    cy = (ys[None] - off_y + DOT // 2).clamp(0, h - 1)
    index = (cy[:, :, None] * w + cx[:, None, :]).flatten(1)  # N x HW
    dots = rot.flatten(2).gather(2, index[:, None].expand(n, c, h * w)).view(n, c, h, w)
    corner = ((off_x != DOT // 2)[:, None, :] & (off_y != DOT // 2)[:, :, None])[:, None]
    canvas = img.new_tensor(CANVAS)[None, :, None, None]
    return torch.where(corner, (1 - DOT_GAP) * dots + DOT_GAP * canvas, dots)


_M1, _M2, _GOLDEN = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on a uint64 array (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def crop_uniform(seed: int, uid: torch.Tensor, stream: int, k: int) -> torch.Tensor:
    """N x k float64 uniforms in [0, 1), a function of (seed, stream, uid) only: a counter-based
    generator, so a crop draws the same numbers alone or in any batch."""
    key = _mix(np.array([seed], np.uint64) * _GOLDEN + np.uint64(stream))
    z = _mix(uid.numpy().astype(np.uint64) * _GOLDEN ^ key)
    cols = _mix(z[:, None] + np.arange(1, k + 1, dtype=np.uint64)[None] * _GOLDEN)
    return torch.from_numpy((cols >> np.uint64(11)).astype(np.float64) * 2.0**-53)


def _texture(artist: str, img: torch.Tensor, crops: Crops) -> torch.Tensor:
    u = crop_uniform(crops.sources.seed, crops.uid, 1 + ARTISTS.index(artist), 2)
    if artist == "a":
        return texture_a(img, u[:, 0].float())
    if artist == "b":
        return texture_b(img)
    return texture_c(img, (u * DOT).long())


def paint(crops: Crops, artist: str, alter: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The painting of ``crops`` by ``artist``: G_a(x) (``alter``) or G_a^0(x) (the same texture,
    the object unchanged), N x 3 x H x W float32 in 8-bit levels, and the N x H x W bool mask of
    what the content change altered: the pixels it changed grown by the texture's reach (empty
    without an object or with ``alter=False``). Outside the mask G_a and G_a^0 are byte-identical."""
    _check_artist(artist)
    if len(crops) > CHUNK:
        parts = [paint(crops[lo : lo + CHUNK], artist, alter) for lo in range(0, len(crops), CHUNK)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    if alter:
        x, touched = content_change(crops, artist)
    else:
        x = crops.image
        touched = torch.zeros(x.shape[0], *x.shape[2:], dtype=torch.bool)
    return quantize(_texture(artist, x, crops)), dilate(touched, REACH[artist])


# --------------------------------------------------------------------------------------------
# the registered set


@lru_cache(maxsize=2)
def _benchmark(material: Material) -> Benchmark:
    return Benchmark("procedural_art", material.pool("content").to_imageset(),
                     test=material.pool("test").to_imageset(), val=material.pool("val").to_imageset())


def _load(section, root) -> Benchmark:
    return _benchmark(art_material(section))


register_dataset(DataSet(
    name="procedural_art",
    description="style transfer: six shipped photos in block-disjoint splits, LFW faces / non-faces pasted, three "
                "procedural artists (deform / remove / add the object) with exact masks (generated in memory)",
    load=_load,
    provides=frozenset({"labels", "metadata"}),
    Config=ProceduralArtSection,
    root="none",
    extra={"art_material": art_material, "paint": paint},
))
