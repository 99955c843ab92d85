"""Similarity search over embeddings: a faiss HNSW index, checked against exact search."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from loc2vec.io import atomic_path


@dataclass(frozen=True)
class IndexReport:
    n_vectors: int
    dim: int
    recall_at_10: float
    exact_ms_per_query: float
    hnsw_ms_per_query: float
    build_seconds: float


def build_hnsw(vectors: np.ndarray, m: int = 32, ef_construction: int = 200, ef_search: int = 64) -> faiss.Index:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.IndexHNSWFlat(vectors.shape[1], m)
    index.hnsw.efConstruction = ef_construction
    index.hnsw.efSearch = ef_search
    index.add(vectors)
    return index


def measure(
    index: faiss.Index,
    vectors: np.ndarray,
    n_queries: int = 500,
    k: int = 10,
    seed: int = 0,
    build_seconds: float = float("nan"),
) -> IndexReport:
    """Recall@k of ``index`` against exact L2 search, and per-query latency of both (single queries);
    ``build_seconds`` is what building ``index`` took, when the caller timed it."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    exact = faiss.IndexFlatL2(vectors.shape[1])
    exact.add(vectors)
    rng = np.random.default_rng(seed)
    queries = vectors[rng.choice(len(vectors), min(n_queries, len(vectors)), replace=False)]
    k = min(k, len(vectors))
    timings = {}
    results = {}
    for name, idx in (("exact", exact), ("hnsw", index)):
        started = time.perf_counter()
        found = [idx.search(q[None, :], k)[1][0] for q in queries]
        timings[name] = (time.perf_counter() - started) * 1000 / len(queries)
        results[name] = np.stack(found)
    hits = [len(set(a) & set(b)) / k for a, b in zip(results["exact"], results["hnsw"], strict=True)]
    recall = float(np.mean(hits))
    return IndexReport(len(vectors), vectors.shape[1], recall, timings["exact"], timings["hnsw"], build_seconds)


def save_index(index: faiss.Index, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))
    return Path(path)


def load_index(path: str | Path) -> faiss.Index:
    return faiss.read_index(str(path))
