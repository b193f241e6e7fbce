"""A binding: what a collection's (or a head's) vectors are, so that they are only ever compared with vectors of
the same kind: one output of one model version, pooled and preprocessed one way; or, with model empty, the caller's
own vectors of dim values."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Binding:
    model: str = ""
    version: int = 0
    output: str = ""
    pooling: str = ""
    preprocessing_hash: str = ""  # sha256 of the model card's preprocessing
    dim: int = 0


def describe(binding: Binding) -> str:
    return (
        f"{binding.model} v{binding.version} output {binding.output!r} ({binding.dim}-d, {binding.pooling} "
        f"pooling, preprocessing {binding.preprocessing_hash[:12]})"
    )
