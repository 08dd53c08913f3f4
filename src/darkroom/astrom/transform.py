"""2-D affine transforms between pixel frames, and their least-squares fits.

A transform maps 0-based pixel positions (x, y) of one frame to those of another:
``(x', y') = matrix @ (x, y) + offset``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["AffineTransform", "fit_affine", "fit_similarity"]


@dataclass(frozen=True)
class AffineTransform:
    """``(x', y') = matrix @ (x, y) + offset``, positions in pixels (0-based)."""

    matrix: np.ndarray  #: (2, 2)
    offset: np.ndarray  #: (2,) [pixels]

    @classmethod
    def identity(cls) -> AffineTransform:
        return cls(np.eye(2), np.zeros(2))

    def apply(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        m, o = self.matrix, self.offset
        return m[0, 0] * x + m[0, 1] * y + o[0], m[1, 0] * x + m[1, 1] * y + o[1]

    def inverse(self) -> AffineTransform:
        inv = np.linalg.inv(self.matrix)
        return AffineTransform(inv, -inv @ self.offset)

    def then(self, other: AffineTransform) -> AffineTransform:
        """The transform that applies ``self`` first, then ``other``."""
        return AffineTransform(other.matrix @ self.matrix, other.matrix @ self.offset + other.offset)

    @property
    def scale(self) -> float:
        """Mean linear scale factor, sqrt(|det|)."""
        return float(np.sqrt(abs(np.linalg.det(self.matrix))))

    @property
    def rotation_deg(self) -> float:
        """Rotation angle [deg] of the matrix (of its proper part when it reflects)."""
        m = self.matrix
        if np.linalg.det(m) < 0:
            m = m @ np.diag([1.0, -1.0])
        return float(np.degrees(np.arctan2(m[1, 0] - m[0, 1], m[0, 0] + m[1, 1])))

    @property
    def reflects(self) -> bool:
        return bool(np.linalg.det(self.matrix) < 0)

    def as_matrix3(self) -> np.ndarray:
        """3 x 3 homogeneous matrix."""
        out = np.eye(3)
        out[:2, :2] = self.matrix
        out[:2, 2] = self.offset
        return out


def fit_affine(
    x: np.ndarray, y: np.ndarray, x_ref: np.ndarray, y_ref: np.ndarray, *, weights: np.ndarray | None = None
) -> AffineTransform:
    """Least-squares affine transform taking (x, y) to (x_ref, y_ref); needs >= 3 pairs."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    design = np.column_stack([x, y, np.ones_like(x)])
    w = np.ones_like(x) if weights is None else np.sqrt(np.asarray(weights, float))
    cx = np.linalg.lstsq(design * w[:, None], np.asarray(x_ref, float) * w, rcond=None)[0]
    cy = np.linalg.lstsq(design * w[:, None], np.asarray(y_ref, float) * w, rcond=None)[0]
    return AffineTransform(np.array([[cx[0], cx[1]], [cy[0], cy[1]]]), np.array([cx[2], cy[2]]))


def fit_similarity(
    x: np.ndarray, y: np.ndarray, x_ref: np.ndarray, y_ref: np.ndarray, *, reflect: bool = False
) -> AffineTransform:
    """Least-squares similarity (rotation, scale, shift; optionally with a reflection of x).

    With complex numbers z = x + iy, w = x_ref + i y_ref: w = a z + b (or a conj(z) + b).
    """
    z = np.asarray(x, float) + 1j * np.asarray(y, float)
    w = np.asarray(x_ref, float) + 1j * np.asarray(y_ref, float)
    if reflect:
        z = np.conj(z)
    z_mean, w_mean = z.mean(), w.mean()
    zc, wc = z - z_mean, w - w_mean
    a = np.add.reduce(wc * np.conj(zc)) / np.add.reduce(np.abs(zc) ** 2)  # np.sum's own reduction
    b = w_mean - a * z_mean
    m = np.array([[a.real, -a.imag], [a.imag, a.real]])
    if reflect:
        m = m @ np.diag([1.0, -1.0])
    return AffineTransform(m, np.array([b.real, b.imag]))
