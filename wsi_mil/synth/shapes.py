"""Tissue and lesion regions: where a slide has tissue, and where its lesions are, in level-0 pixels.

* Tissue: a few irregular pieces on glass, described by a coarse signed-distance grid (level-0 px,
  positive inside) that is interpolated bilinearly wherever a tile needs it; no full-resolution mask
  ever exists.
* Lesions: star-shaped regions ``r(t) = R (1 + sum_k a_k cos(k t + p_k))`` placed well inside the
  tissue. The polygon (ground truth) and the rendered region come from the same function, and the
  rendered border is a soft cross-fade whose half-way line is the polygon.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from wsi_mil.errors import ConfigError

#: coarse grid nodes along the longer side of a slide for the tissue shape
TISSUE_GRID = 320
#: lesion border cross-fade width, micrometres
LESION_BLEND_UM = 16.0
#: polygon vertices per lesion
POLYGON_VERTICES = 160
#: angles tabulated for rendering a lesion boundary
RADIUS_TABLE = 4096


def _interp_matrix(pos: np.ndarray, spacing: float, n: int) -> tuple[np.ndarray, int]:
    """(len(pos), m) float32 bilinear weights of grid nodes lo..lo+m-1 at positions ``pos``, and lo."""
    f = np.clip(pos / spacing, 0, n - 1.000001)
    i0 = f.astype(np.int64)
    t = (f - i0).astype(np.float32)
    lo = int(i0.min())
    m = int(i0.max()) + 2 - lo
    mat = np.zeros((len(pos), m), np.float32)
    rows = np.arange(len(pos))
    mat[rows, i0 - lo] = 1 - t
    mat[rows, i0 - lo + 1] = t
    return mat, lo


def interpolate_grid(grid: np.ndarray, spacing: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of ``grid`` (gh, gw) with nodes at (j * spacing, i * spacing) level-0 px.

    xs: (w,), ys: (h,) level-0 positions -> (h, w) float32. Positions beyond the grid are clamped.
    Computed as two small matrix products (the interpolation is separable).
    """
    gh, gw = grid.shape
    wy, ylo = _interp_matrix(ys, spacing, gh)
    wx, xlo = _interp_matrix(xs, spacing, gw)
    sub = grid[ylo:ylo + wy.shape[1], xlo:xlo + wx.shape[1]].astype(np.float32)
    return (wy @ sub) @ wx.T


@dataclass(frozen=True)
class TissueShape:
    """Tissue pieces of one slide as a signed distance grid.

    sdf: (gh, gw) float32 level-0 px, > 0 inside tissue; spacing: level-0 px between nodes.
    """

    sdf: np.ndarray
    spacing: float
    width: int
    height: int

    @classmethod
    def draw(cls, rng: np.random.Generator, width: int, height: int,
             tissue_fraction: tuple[float, float] = (0.3, 0.55)) -> TissueShape:
        """1-3 irregular pieces covering ``tissue_fraction`` of the slide, away from its borders."""
        spacing = max(width, height) / TISSUE_GRID
        gh, gw = int(np.ceil(height / spacing)) + 2, int(np.ceil(width / spacing)) + 2
        yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float64)
        yy *= spacing / height
        xx *= spacing / width
        pieces = np.full((gh, gw), -np.inf)
        for _ in range(int(rng.integers(1, 4))):
            cx, cy = rng.uniform(0.3, 0.7, size=2)
            ax, ay = rng.uniform(0.2, 0.45, size=2)
            angle = rng.uniform(0, np.pi)
            dx, dy = xx - cx, yy - cy
            u = (dx * np.cos(angle) + dy * np.sin(angle)) / ax
            v = (-dx * np.sin(angle) + dy * np.cos(angle)) / ay
            pieces = np.maximum(pieces, 1.0 - (u * u + v * v))
        field = pieces
        for sigma, amp in ((TISSUE_GRID / 12, 0.9), (TISSUE_GRID / 40, 0.35)):
            noise = ndi.gaussian_filter(rng.normal(size=(gh, gw)), sigma, mode="wrap")
            field = field + amp * noise / (noise.std() + 1e-12)
        margin = np.minimum.reduce([xx, yy, 1.0 - xx, 1.0 - yy])
        # pieces bend away from the slide borders instead of being cut straight by them
        field = field - 12.0 * np.clip(1.0 - margin / 0.12, 0.0, 1.0) ** 2
        field = np.where(margin < 0.015, -np.inf, field)
        inside_slide = (xx <= 1.0) & (yy <= 1.0)
        target = rng.uniform(*tissue_fraction)
        thr = np.quantile(field[inside_slide], 1.0 - target)
        mask = ndi.binary_fill_holes(field > thr)
        labels, n = ndi.label(mask)
        if n > 1:
            sizes = ndi.sum(mask, labels, index=np.arange(1, n + 1))
            keep = np.flatnonzero(sizes >= 0.03 * sizes.max()) + 1
            mask = np.isin(labels, keep)
        sdf = (ndi.distance_transform_edt(mask) - ndi.distance_transform_edt(~mask)) * spacing
        sdf = ndi.gaussian_filter(sdf, 1.0)
        return cls(sdf=sdf.astype(np.float32), spacing=spacing, width=width, height=height)

    def sample(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """(h, w) float32 signed distance (level-0 px) at level-0 positions xs (w,), ys (h,)."""
        return interpolate_grid(self.sdf, self.spacing, xs, ys)

    def mask(self, downsample: float) -> np.ndarray:
        """(ceil(H/ds), ceil(W/ds)) bool tissue mask sampled at pixel centres."""
        h, w = int(np.ceil(self.height / downsample)), int(np.ceil(self.width / downsample))
        ys = (np.arange(h) + 0.5) * downsample
        xs = (np.arange(w) + 0.5) * downsample
        return self.sample(xs, ys) > 0


@dataclass(frozen=True)
class Lesion:
    """A star-shaped lesion: centre (level-0 px), mean radius (px) and boundary harmonics."""

    cx: float
    cy: float
    radius: float
    orders: tuple[int, ...]
    amplitudes: tuple[float, ...]
    phases: tuple[float, ...]

    def boundary_radius(self, theta: np.ndarray) -> np.ndarray:
        """Radius (level-0 px) of the boundary at angles ``theta`` (radians)."""
        r = np.ones_like(theta, dtype=np.float64)
        for k, a, p in zip(self.orders, self.amplitudes, self.phases):
            r += a * np.cos(k * theta + p)
        return self.radius * r

    @property
    def max_radius(self) -> float:
        return self.radius * (1.0 + float(np.sum(np.abs(self.amplitudes))))

    def polygon(self, n: int = POLYGON_VERTICES) -> np.ndarray:
        """(n, 2) float64 boundary vertices (x, y) in level-0 px, counter-clockwise in image axes."""
        theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
        r = self.boundary_radius(theta)
        return np.stack([self.cx + r * np.cos(theta), self.cy + r * np.sin(theta)], axis=1)

    def area(self) -> float:
        """Area of :meth:`polygon` in level-0 px^2."""
        return polygon_area(self.polygon())

    def signed_distance(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """(h, w) float32: boundary radius minus distance from the centre (radial, level-0 px; > 0 inside).

        The boundary radius is looked up in a table of ``RADIUS_TABLE`` angles (linear interpolation).
        """
        dx = (xs - self.cx).astype(np.float32)[None, :]
        dy = (ys - self.cy).astype(np.float32)[:, None]
        table = self._radius_table()
        pos = (np.arctan2(dy, dx) + np.float32(np.pi)) * np.float32(RADIUS_TABLE / (2 * np.pi))
        i0 = pos.astype(np.int32)
        t = pos - i0
        r = table[i0] * (1 - t) + table[i0 + 1] * t
        r -= np.sqrt(dx * dx + dy * dy)
        return r

    def _radius_table(self) -> np.ndarray:
        theta = np.linspace(-np.pi, np.pi, RADIUS_TABLE + 1)
        return np.append(self.boundary_radius(theta), self.boundary_radius(theta[-1:])).astype(np.float32)

    def bbox(self, margin: float = 0.0) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) level-0 px bounding box grown by ``margin``."""
        r = self.max_radius + margin
        return self.cx - r, self.cy - r, self.cx + r, self.cy + r


def polygon_area(poly: np.ndarray) -> float:
    """Shoelace area of an (n, 2) polygon."""
    x, y = poly[:, 0], poly[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def _draw_outline(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[float, ...], tuple[float, ...]]:
    orders = (2, 3, 4, 5, 7)
    amps = rng.uniform(0.0, 1.0, size=len(orders)) * np.array([0.22, 0.14, 0.1, 0.06, 0.04])
    phases = rng.uniform(0, 2 * np.pi, size=len(orders))
    return orders, tuple(float(a) for a in amps), tuple(float(p) for p in phases)


def place_lesions(rng: np.random.Generator, tissue: TissueShape, total_area: float, mpp: float,
                  n_lesions: int | None = None, max_lesions: int = 12) -> list[Lesion]:
    """A few lesions of ``total_area`` level-0 px^2 in all, each fully inside the tissue.

    Lesions that do not fit are split into two of half the area (up to ``max_lesions``); raises
    :class:`ConfigError` when even that fails (tissue too thin for the requested lesion fraction).
    """
    blend = LESION_BLEND_UM / mpp
    n = int(n_lesions if n_lesions is not None else rng.integers(1, 4))
    areas = list(total_area * rng.dirichlet(np.full(n, 3.0)))
    areas.sort(reverse=True)
    sdf, g = tissue.sdf, tissue.spacing
    gh, gw = sdf.shape
    node_y, node_x = np.mgrid[0:gh, 0:gw].astype(np.float64) * g
    placed: list[Lesion] = []
    while areas:
        area = areas.pop(0)
        orders, amps, phases = _draw_outline(rng)
        unit = Lesion(0.0, 0.0, 1.0, orders, amps, phases)
        radius = float(np.sqrt(area / unit.area()))
        rmax = unit.max_radius * radius
        ok = sdf >= rmax + blend + 1.5 * g
        for other in placed:
            gap = np.hypot(node_x - other.cx, node_y - other.cy)
            ok &= gap >= rmax + other.max_radius + 2 * blend
        cand = np.flatnonzero(ok)
        if cand.size == 0:
            if len(placed) + len(areas) + 2 > max_lesions:
                raise ConfigError(
                    f"lesion_fraction: cannot fit lesions of {total_area:.0f} px^2 inside the tissue of a "
                    f"{tissue.width}x{tissue.height} slide; use a larger --size or a smaller --lesion-fraction")
            areas += [area / 2, area / 2]
            areas.sort(reverse=True)
            continue
        k = int(cand[rng.integers(cand.size)])
        cy, cx = node_y.flat[k] + rng.uniform(-0.5, 0.5) * g, node_x.flat[k] + rng.uniform(-0.5, 0.5) * g
        placed.append(Lesion(float(cx), float(cy), radius, orders, amps, phases))
    return placed


def rasterize_polygons(polygons: list[np.ndarray], width: int, height: int, downsample: float) -> np.ndarray:
    """(ceil(H/ds), ceil(W/ds)) bool: mask pixels whose centre lies inside one of the (K, 2) level-0
    (x, y) polygons."""
    from skimage.draw import polygon as draw_polygon

    h, w = int(np.ceil(height / downsample)), int(np.ceil(width / downsample))
    mask = np.zeros((h, w), bool)
    for poly in polygons:
        rr, cc = draw_polygon(poly[:, 1] / downsample - 0.5, poly[:, 0] / downsample - 0.5, shape=(h, w))
        mask[rr, cc] = True
    return mask
