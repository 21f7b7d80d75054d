"""A small deterministic text embedding, so the reference app uses pgvector for real without a
model download: the character trigrams of the lower-cased words (a few stop words left out),
each hashed to one of DIM dimensions with a sign, L2-normalised.

Texts that share words share trigrams, so their cosine distance is small. The real app replaces
this with its model's embeddings (and DIM with the model's dimension, in a new migration).
"""

import hashlib
import math
import re

DIM = 32  # the `vector(32)` column of migration 0002
STOP_WORDS = frozenset({"a", "an", "and", "for", "in", "of", "on", "or", "the", "to", "with"})


def embed(text: str, dim: int = DIM) -> list[float]:
    """A unit vector of `dim` floats; the same text always gives the same vector."""
    words = [w for w in re.findall(r"\w+", text.lower()) if w not in STOP_WORDS] or [text.lower()]
    vector = [0.0] * dim
    for word in words:
        padded = f" {word} "
        for i in range(len(padded) - 2):
            digest = hashlib.blake2b(padded[i:i + 3].encode(), digest_size=4).digest()
            bucket = int.from_bytes(digest[:3], "big") % dim
            vector[bucket] += 1.0 if digest[3] & 1 else -1.0
    norm = math.sqrt(sum(x * x for x in vector))
    if norm == 0.0:  # the signs cancelled out: any fixed unit vector keeps the distance defined
        return [1.0] + [0.0] * (dim - 1)
    return [round(x / norm, 6) for x in vector]
