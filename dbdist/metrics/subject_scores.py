"""The DreamBooth paper's scores, from embeddings (Ruiz et al. 2022, arXiv:2208.12242, Sec. 4.1).

- DINO: mean pairwise cosine similarity between the DINO ViT [CLS] embeddings of generated and
  real (instance) images: every generated image against every real one;
- CLIP-I: the same with CLIP image embeddings;
- CLIP-T: mean cosine similarity between the CLIP image embedding of each generated image and
  the CLIP text embedding of its prompt.
The paper prefers DINO for subject fidelity: self-supervised, it was not trained to ignore the
differences between two subjects of one class, as CLIP's text supervision lets it.
Pure numpy: backbones.py makes the embeddings.
"""

import numpy as np


def _unit_rows(embeddings, name):
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (N, D) array of embeddings, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.all(norms > 0):
        raise ValueError(f"{name} has an all-zero embedding (rows {np.flatnonzero(norms[:, 0] == 0).tolist()}); "
                         "its cosine similarity is undefined")
    return x / norms


def mean_pairwise_cosine(generated, real):
    """Mean of cos(g, r) over every (generated, real) pair: DINO and CLIP-I."""
    g, r = _unit_rows(generated, "generated"), _unit_rows(real, "real")
    if g.shape[1] != r.shape[1]:
        raise ValueError(f"generated and real embeddings must have one width, got {g.shape[1]} and {r.shape[1]}")
    return float(np.mean(g @ r.T))


def mean_paired_cosine(images, texts):
    """Mean of cos(image i, text i) over paired rows: CLIP-T (each image with its own prompt)."""
    i, t = _unit_rows(images, "images"), _unit_rows(texts, "texts")
    if i.shape != t.shape:
        raise ValueError(f"images and texts must pair row by row, got shapes {i.shape} and {t.shape}")
    return float(np.mean(np.sum(i * t, axis=1)))


def score(generated, real):
    """{metric: score} from per-prompt embeddings.

    generated: {prompt key: {"dino": (N, D), "clip_image": (N, C), "clip_text": (C,)}};
    real: {"dino": (M, D), "clip_image": (M, C)} of the real instance images.
    "dino", "clip_i", "clip_t" pool every generated image of every prompt, as the paper
    averages over all its prompts; "<metric>/<key>" is each prompt's own.
    """
    if not generated:
        raise ValueError("score needs the embeddings of at least one prompt's images, got none")
    result = {}
    for name, pairwise, use in (("dino", True, "dino"), ("clip_i", True, "clip_image"), ("clip_t", False, None)):
        per_key = {}
        for key, e in generated.items():
            if pairwise:
                per_key[key] = (mean_pairwise_cosine(e[use], real[use]), len(e[use]))
            else:
                texts = np.repeat(np.asarray(e["clip_text"])[None], len(e["clip_image"]), axis=0)
                per_key[key] = (mean_paired_cosine(e["clip_image"], texts), len(e["clip_image"]))
        # Pooled over images (a prompt with more images weighs more), as one mean over all of them.
        total = sum(n for _, n in per_key.values())
        result[name] = sum(s * n for s, n in per_key.values()) / total
        result.update({f"{name}/{key}": s for key, (s, _) in per_key.items()})
    return result
