"""Batch augmentation on the accelerator: fastai's aug_transforms in one sampling grid and one resample.

Pure torch, no Lightning: every function takes a batch and returns a batch, so it serves any training loop.
Coordinates are normalized to [-1, 1] (``grid_sample``'s convention, ``align_corners=False``); a 3x3 matrix
maps an output pixel's homogeneous coordinates to the input position it samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

Generators = torch.Generator | Sequence[torch.Generator] | None  # one for the batch, or one per sample


def to_float(x: Tensor) -> Tensor:
    """uint8 images in [0, 255] -> float32 in [0, 1]; float input is returned as float32 unchanged."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


def _uniform(n: int, low: float, high: float, device: torch.device, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, device=device, generator=generator) * (high - low) + low


def _bernoulli(n: int, p: float, device: torch.device, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, device=device, generator=generator) < p


def _eye(n: int, device: torch.device) -> Tensor:
    return torch.eye(3, device=device).expand(n, 3, 3).clone()


def crop_matrices(scale: Tensor, log_ratio: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """Random resized crop: area fraction ``scale``, aspect ``exp(log_ratio)``, position ``u, v`` in [0, 1]."""
    ratio = log_ratio.exp()
    w = (scale * ratio).sqrt().clamp(max=1.0)  # crop width / image width
    h = (scale / ratio).sqrt().clamp(max=1.0)
    m = _eye(len(scale), scale.device)
    m[:, 0, 0], m[:, 1, 1] = w, h
    m[:, 0, 2] = (2 * u - 1) * (1 - w)  # centre anywhere that keeps the box inside the image
    m[:, 1, 2] = (2 * v - 1) * (1 - h)
    return m


def affine_matrices(flip: Tensor, degrees: Tensor, zoom: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """Flip, rotation (degrees) and zoom (>= 1, towards the point ``u, v`` in [0, 1]), composed."""
    theta = degrees * (math.pi / 180)
    cos, sin = theta.cos() / zoom, theta.sin() / zoom
    sign = 1 - 2 * flip.float()  # a flip negates the output x coordinate before rotating
    m = _eye(len(flip), flip.device)
    m[:, 0, 0], m[:, 0, 1] = cos * sign, -sin
    m[:, 1, 0], m[:, 1, 1] = sin * sign, cos
    m[:, 0, 2] = (2 * u - 1) * (1 - 1 / zoom)
    m[:, 1, 2] = (2 * v - 1) * (1 - 1 / zoom)
    return m


def warp_matrices(mag_x: Tensor, mag_y: Tensor) -> Tensor:
    """fastai's perspective Warp: the homography taking the corners moved by ``mag_x, mag_y`` back to the corners.

    As in fastai's ``_WarpCoord`` (``find_coeffs(orig, targ)`` solves for targ -> orig): an output pixel at a moved
    corner samples the input's corner, so the image content moves with the corners.
    """
    n, device = len(mag_x), mag_x.device
    src = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]], device=device).expand(n, 4, 2)
    mx, my = mag_x[:, None], mag_y[:, None]
    dst = torch.stack(
        [
            torch.cat([-1 - my, -1 + my, 1 + my, 1 - my], 1),
            torch.cat([-1 - mx, 1 + mx, -1 + mx, 1 - mx], 1),
        ],
        -1,
    )  # (n, 4, 2)
    return homography(dst, src)


def homography(src: Tensor, dst: Tensor) -> Tensor:
    """The (n, 3, 3) projective maps taking the four points ``src`` (n, 4, 2) onto ``dst`` (n, 4, 2)."""
    x, y = src.unbind(-1)
    u, v = dst.unbind(-1)
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rows_u = torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], -1)  # (n, 4, 8)
    rows_v = torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], -1)
    a = torch.cat([rows_u, rows_v], 1)  # (n, 8, 8)
    b = torch.cat([u, v], 1)  # (n, 8)
    h = torch.linalg.solve(a, b)
    return torch.cat([h, torch.ones_like(h[:, :1])], 1).view(-1, 3, 3)


def _as_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def sampling_grid(matrices: Tensor, size: tuple[int, int]) -> Tensor:
    """Output pixel centres mapped through ``matrices`` (n, 3, 3) -> a (n, H, W, 2) grid for grid_sample."""
    h, w = size
    device = matrices.device
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * (2 / h) - 1
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * (2 / w) - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    base = torch.stack([gx, gy, torch.ones_like(gx)], -1).view(1, h * w, 3)  # (1, H*W, 3)
    pts = base @ matrices.transpose(1, 2)  # (n, H*W, 3)
    return (pts[..., :2] / pts[..., 2:]).view(-1, h, w, 2)


def resample(x: Tensor, matrices: Tensor, size: int | tuple[int, int], padding_mode: str = "reflection") -> Tensor:
    """ONE bilinear grid_sample of the float batch ``x`` through per-sample ``matrices`` to ``size``.

    A sample that shrinks by 2x or more is first area-averaged by the integer factor that keeps its remaining
    shrink in [1, 2) (``prepool_factors``, the rule ``resize`` follows too): bilinear sampling alone would alias.
    Samples are grouped by factor, so one big shrink in a batch never blurs or aliases the others. ``matrices``
    may live on the host (then nothing waits for the device) or on ``x``'s device.
    """
    hw = _as_hw(size)
    factors = prepool_factors(matrices, (x.shape[-2], x.shape[-1]), hw)
    grid = sampling_grid(matrices.to(x.device, non_blocking=True), hw)
    kinds = sorted(set(factors))
    if len(kinds) == 1:  # the common case: one call for the whole batch
        return _sample(x, grid, kinds[0], padding_mode)
    out = x.new_empty((x.shape[0], x.shape[1], *hw))
    for factor in kinds:
        rows = torch.tensor([i for i, f in enumerate(factors) if f == factor]).to(x.device, non_blocking=True)
        out[rows] = _sample(x[rows], grid[rows], factor, padding_mode)
    return out


def area_average(x: Tensor, factor: int) -> Tensor:
    """``x`` averaged over ``factor`` x ``factor`` blocks; a remainder is spread so the image keeps its extent."""
    if factor <= 1:
        return x
    # adaptive pooling equals avg_pool2d(x, factor) when the sides divide, and never adds a one-pixel edge column.
    return F.adaptive_avg_pool2d(x, (max(x.shape[-2] // factor, 1), max(x.shape[-1] // factor, 1)))


def _sample(x: Tensor, grid: Tensor, factor: int, padding_mode: str) -> Tensor:
    x = area_average(x, factor)
    # align_corners=False: -1 and 1 are the image's outer edges, so the identity map reproduces the input exactly
    # and sizes compose (fastai passes True, which scales the map by (size - 1) / size: under 1% from 128 px).
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


def prepool_factors(matrices: Tensor, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> list[int]:
    """Per sample, the integer area-averaging factor that leaves a bilinear shrink in [1, 2) (1: none).

    Reading them is a host sync when ``matrices`` live on an accelerator: ``Augment`` draws them on the host.
    """
    # Input pixels per output pixel along each axis, from the matrices' linear part (column norms).
    stretch = matrices[:, :2, :2].norm(dim=1)  # (n, 2): x and y
    step = torch.minimum(stretch[:, 0] * in_hw[1] / out_hw[1], stretch[:, 1] * in_hw[0] / out_hw[0])
    return [max(int(s), 1) for s in step.tolist()]


def lighting(x: Tensor, brightness: Tensor, contrast: Tensor, eps: float = 1e-6) -> Tensor:
    """fastai's Brightness then Contrast in logit space; brightness 0.5 and contrast 1 are the identity."""
    b = torch.logit(brightness, eps)[:, None, None, None]
    c = contrast[:, None, None, None]
    return torch.sigmoid((torch.logit(x, eps) + b) * c)


def resize(x: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Deterministic (validation) bilinear resize of a float batch, filtered like the training resample.

    The same rule as ``resample`` (it is ``resample`` through the identity map): area-average by the integer
    factor of a 2x-or-more shrink, then bilinear without antialias. A presize of 460 viewed at 128 px is averaged
    3x3 first, as its training crops are, instead of aliasing.
    """
    hw = _as_hw(size)
    if tuple(x.shape[-2:]) == hw:
        return x
    # prepool_factors' rule for the identity map (stretch 1), on the shapes alone: no tensor is read, so the
    # transform traces into torch.export / ONNX graphs (imagenette_sota.export) with a dynamic batch.
    x = area_average(x, max(int(min(x.shape[-1] / hw[1], x.shape[-2] / hw[0])), 1))
    # No antialias beyond that: training images come from a plain bilinear resample, and validating on smoother
    # images than the network trained on costs accuracy (docs/results.md, the CPU proxy's validation resize).
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=False)


@dataclass(frozen=True)
class Augment:
    """fastai ``aug_transforms(min_scale=...)`` with per-sample parameters, resampled once.

    Defaults are fastai's: flip p 0.5; rotation, zoom and perspective warp each with p 0.75; brightness and
    contrast with p 0.75; reflection padding; bilinear; plus a random resized crop with square aspect. Unlike
    fastai, the crop is drawn per sample (``RandomResizedCropGPU``: one per batch) and a big shrink is not aliased
    (``resample``); benchmarks/recipe_check.py measures both.
    """

    min_scale: float = 0.75  # smallest crop area, as a fraction of the image area
    ratio: tuple[float, float] = (1.0, 1.0)  # crop aspect ratio (width / height) range
    flip_p: float = 0.5
    max_rotate: float = 10.0  # degrees, either way
    max_zoom: float = 1.1  # zoom drawn from [1, max_zoom]
    max_warp: float = 0.2  # perspective corner displacement, normalized units
    p_affine: float = 0.75  # probability of each of rotate / zoom / warp
    max_lighting: float = 0.2  # brightness and contrast strength
    p_lighting: float = 0.75
    padding_mode: str = "reflection"

    def __post_init__(self) -> None:
        if not 0 < self.min_scale <= 1:
            raise ValueError(f"min_scale={self.min_scale} must be in (0, 1]")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio={self.ratio} must be (low, high) with 0 < low <= high")
        if self.max_zoom < 1:
            raise ValueError(f"max_zoom={self.max_zoom} must be >= 1 (1 disables zoom)")
        if not 0 <= self.max_lighting < 1:
            raise ValueError(f"max_lighting={self.max_lighting} must be in [0, 1)")
        for name in ("flip_p", "p_affine", "p_lighting"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}={getattr(self, name)} is a probability: use a value in [0, 1]")

    @classmethod
    def identity(cls) -> Augment:
        """No randomness at all: the output is the input resized."""
        return cls(min_scale=1.0, flip_p=0.0, max_rotate=0.0, max_zoom=1.0, max_warp=0.0, max_lighting=0.0)

    def matrices(self, n: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` per-sample output-to-input maps: crop @ warp @ (flip, rotate, zoom)."""
        device = torch.device(device)

        def draw(low: float, high: float) -> Tensor:
            return _uniform(n, low, high, device, generator)

        def gate(p: float, value: Tensor, neutral: float) -> Tensor:
            return torch.where(_bernoulli(n, p, device, generator), value, torch.full_like(value, neutral))

        log_r = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        crop = crop_matrices(draw(self.min_scale, 1.0), draw(*log_r), draw(0, 1), draw(0, 1))
        flip = _bernoulli(n, self.flip_p, device, generator)
        degrees = gate(self.p_affine, draw(-self.max_rotate, self.max_rotate), 0.0)
        zoom = gate(self.p_affine, draw(1.0, self.max_zoom), 1.0)
        affine = affine_matrices(flip, degrees, zoom, draw(0, 1), draw(0, 1))
        # fastai's Warp gates its x and y displacements with separate draws, each with p_affine.
        mag_x = gate(self.p_affine, draw(-self.max_warp, self.max_warp), 0.0)
        mag_y = gate(self.p_affine, draw(-self.max_warp, self.max_warp), 0.0)
        return crop @ warp_matrices(mag_x, mag_y) @ affine

    def lighting_params(
        self, n: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Per-sample (brightness, contrast); (0.5, 1) where lighting is not drawn."""
        device = torch.device(device)
        ml = self.max_lighting
        on_b = _bernoulli(n, self.p_lighting, device, generator)
        on_c = _bernoulli(n, self.p_lighting, device, generator)
        brightness = torch.where(on_b, _uniform(n, 0.5 * (1 - ml), 0.5 * (1 + ml), device, generator), 0.5)
        log_c = _uniform(n, math.log(1 - ml), -math.log(1 - ml), device, generator)
        contrast = torch.where(on_c, log_c.exp(), 1.0)
        return brightness, contrast

    def _lighting(
        self, n: int, device: torch.device | str, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor] | None:
        """``lighting_params``, or None when lighting is off (nothing drawn)."""
        return self.lighting_params(n, device, generator) if self.max_lighting > 0 and self.p_lighting > 0 else None

    def __call__(self, x: Tensor, size: int | tuple[int, int], generator: Generators = None) -> Tensor:
        """Augment a (B, C, H, W) uint8 or float batch to float (B, C, *size) in [0, 1].

        Parameters are drawn where ``generator`` lives (``x``'s device without one). A host generator keeps an
        accelerator's queue free of host syncs, and draws the same augmentation on every device. A sequence of
        generators, one per sample, draws each sample's parameters from its own (still one resample for the batch).
        """
        n = x.shape[0]
        if isinstance(generator, Sequence):
            if len(generator) != n:
                raise ValueError(f"{len(generator)} generators for a batch of {n}: give one per sample")
            per_sample = [(self.matrices(1, g.device, g), self._lighting(1, g.device, g)) for g in generator]
            matrices = torch.cat([m for m, _ in per_sample])
            lit = [q for _, q in per_sample]
            params = None if lit[0] is None else (torch.cat([b for b, _ in lit]), torch.cat([c for _, c in lit]))
        else:
            where = generator.device if generator is not None else x.device
            matrices, params = self.matrices(n, where, generator), self._lighting(n, where, generator)
        out = resample(to_float(x), matrices, size, self.padding_mode)
        if params is not None:
            brightness, contrast = params
            out = lighting(out, brightness.to(x.device, non_blocking=True), contrast.to(x.device, non_blocking=True))
        return out
