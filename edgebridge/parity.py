"""Parity metrics and gates, in numpy (used at export, in tests and in benchmarks).

A gate is a dict of bounds keyed by metric name. Each metric has a direction: ``max_abs`` and
``kl_mean`` are upper bounds (lower is better), ``cosine_min`` / ``cosine_mean`` /
``top1_agreement`` are lower bounds (higher is better).

Shapes: ``a`` and ``b`` are ``[..., D]`` arrays compared row by row over the last axis (one
row per embedding vector or per next-token distribution).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from edgebridge.errors import ParityError, ShapeMismatchError

UPPER_BOUNDS = {"max_abs", "kl_mean", "kl_max", "mean_abs"}
LOWER_BOUNDS = {"cosine_min", "cosine_mean", "top1_agreement", "token_agreement"}


def _rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(-1, x.shape[-1]) if x.ndim > 1 else x.reshape(1, -1)


def embedding_metrics(actual: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """max-abs difference and per-row cosine similarity (min and mean) of two same-shape arrays."""
    if actual.shape != reference.shape:
        raise ShapeMismatchError(
            f"output shape {tuple(actual.shape)} differs from the reference shape {tuple(reference.shape)}."
        )
    a, r = _rows(actual), _rows(reference)
    diff = np.abs(a - r)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(r, axis=1)
    cos = np.where(norms > 0, (a * r).sum(axis=1) / np.maximum(norms, 1e-300), 1.0)
    return {
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "cosine_min": float(cos.min()),
        "cosine_mean": float(cos.mean()),
    }


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def logit_metrics(actual: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Logits ``[positions, vocab]``: max-abs, top-1 agreement, KL(reference || actual) mean/max."""
    if actual.shape != reference.shape:
        raise ShapeMismatchError(
            f"logits shape {tuple(actual.shape)} differs from the reference shape {tuple(reference.shape)}."
        )
    a, r = _rows(actual), _rows(reference)
    lp_a, lp_r = _log_softmax(a), _log_softmax(r)
    kl = (np.exp(lp_r) * (lp_r - lp_a)).sum(axis=1)
    return {
        "max_abs": float(np.abs(a - r).max()),
        "top1_agreement": float((a.argmax(axis=1) == r.argmax(axis=1)).mean()),
        "kl_mean": float(kl.mean()),
        "kl_max": float(kl.max()),
    }


def violations(metrics: Mapping[str, float], tolerance: Mapping[str, float]) -> list[tuple[str, float, float]]:
    """The (metric, value, limit) triples that break ``tolerance``; empty when the gate passes."""
    broken = []
    for key, limit in tolerance.items():
        value = metrics.get(key)
        if value is None or not np.isfinite(value):
            broken.append((key, float("nan") if value is None else value, limit))
        elif key in UPPER_BOUNDS and value > limit:
            broken.append((key, value, limit))
        elif key in LOWER_BOUNDS and value < limit:
            broken.append((key, value, limit))
        elif key not in UPPER_BOUNDS | LOWER_BOUNDS:
            raise ValueError(f"unknown parity metric {key!r}")
    return broken


def enforce(component: str, metrics: Mapping[str, float], tolerance: Mapping[str, float], hint: str | None = None):
    """Raise ``ParityError`` naming the component and the first broken figure."""
    broken = violations(metrics, tolerance)
    if broken:
        key, value, limit = broken[0]
        raise ParityError(component, key, value, limit, hint=hint)
