"""Data and model for the TinyStories overfitting experiment: a small decoder-only transformer.

Stories are separated by ``<|endoftext|>``; they are split (whole stories, never mid-story) into
train/validation with a fixed seed, and a fraction of the training stories is kept. Tokens are
characters or words (and punctuation); the vocabulary is built on the *training* split only, with
an unknown symbol for what it lacks.
"""

from __future__ import annotations

import math
import os
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch as th
from torch import nn
from torch.nn import functional as F

SEPARATOR = "<|endoftext|>"
UNK = "\x00"


@dataclass
class Corpus:
    """Encoded train/validation text and the vocabulary."""

    train: th.Tensor
    val: th.Tensor
    vocab: list[str]
    n_train_stories: int
    n_val_stories: int


#: word-level tokens: words, numbers, single punctuation marks and newlines (spaces are dropped)
WORD_PATTERN = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?|[0-9]+|\n|[^\sA-Za-z0-9]")


def tokenize(text: str, tokenizer: str) -> list[str]:
    """Split ``text`` into characters (``char``) or words and punctuation (``word``)."""
    if tokenizer == "char":
        return list(text)
    if tokenizer == "word":
        return WORD_PATTERN.findall(text)
    raise ValueError(f"unknown tokenizer {tokenizer!r}; choose 'char' or 'word'")


def load_corpus(
    path: str | os.PathLike,
    *,
    val_fraction: float = 0.1,
    train_fraction: float = 1.0,
    seed: int = 0,
    tokenizer: str = "char",
    min_count: int = 2,
) -> Corpus:
    """Read a file of stories, split by story with ``seed`` and encode them.

    The vocabulary is built on the training split only. With the ``word`` tokenizer, words seen
    fewer than ``min_count`` times in training map to the unknown symbol, so the model learns how
    likely an unseen word is (validation words outside the vocabulary map to it too).

    :param path: plain-text file of stories separated by ``<|endoftext|>`` (or blank lines).
    :param val_fraction: fraction of stories held out for validation.
    :param train_fraction: fraction of the training stories kept (the rest is unused).
    :param seed: seed of the shuffle that assigns stories to the splits.
    :raises ValueError: if the file holds fewer than 2 stories or the fractions are out of range.
    """
    if not 0 < val_fraction < 1 or not 0 < train_fraction <= 1:
        raise ValueError(f"bad fractions: val_fraction={val_fraction}, train_fraction={train_fraction}")
    text = Path(path).read_text(encoding="utf-8")
    parts = text.split(SEPARATOR) if SEPARATOR in text else text.split("\n\n")
    stories = [s.strip() for s in parts if s.strip()]
    if len(stories) < 2:
        raise ValueError(f"{path}: found {len(stories)} stories, need at least 2")
    order = list(range(len(stories)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(stories) * val_fraction))
    val_ids, train_ids = order[:n_val], order[n_val:]
    train_ids = train_ids[: max(1, round(len(train_ids) * train_fraction))]
    train_text = "\n\n".join(stories[i] for i in train_ids) + "\n\n"
    val_text = "\n\n".join(stories[i] for i in val_ids) + "\n\n"
    train_tokens = tokenize(train_text, tokenizer)
    if tokenizer == "char":
        vocab = [UNK, *sorted(set(train_tokens))]
    else:
        counts = Counter(train_tokens)
        vocab = [UNK, *sorted(w for w, n in counts.items() if n >= min_count)]
    index = {c: i for i, c in enumerate(vocab)}

    def encode(s: str) -> th.Tensor:
        return th.tensor([index.get(c, 0) for c in tokenize(s, tokenizer)], dtype=th.long)

    return Corpus(encode(train_text), encode(val_text), vocab, len(train_ids), len(val_ids))


def random_batch(
    data: th.Tensor, batch_size: int, context: int, generator: th.Generator
) -> tuple[th.Tensor, th.Tensor]:
    """Random windows of ``context + 1`` characters: inputs and next-character targets."""
    starts = th.randint(0, len(data) - context - 1, (batch_size,), generator=generator)
    idx = starts[:, None] + th.arange(context + 1)[None, :]
    windows = data[idx]
    return windows[:, :-1], windows[:, 1:]


def eval_windows(data: th.Tensor, context: int, max_windows: int) -> tuple[th.Tensor, th.Tensor]:
    """Fixed, evenly spaced windows for a deterministic validation loss."""
    n = (len(data) - 1) // context
    if n < 1:
        raise ValueError(f"validation text ({len(data)} chars) is shorter than the context {context}")
    picks = th.linspace(0, n - 1, min(n, max_windows)).long() * context
    idx = picks[:, None] + th.arange(context + 1)[None, :]
    windows = data[idx]
    return windows[:, :-1], windows[:, 1:]


class Block(nn.Module):
    """Pre-norm transformer block with causal self-attention."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.drop_attn = nn.Dropout(dropout)
        self.drop_mlp = nn.Dropout(dropout)

    def forward(self, x: th.Tensor) -> th.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.drop_attn(self.proj(y.transpose(1, 2).reshape(b, t, c)))
        return x + self.drop_mlp(self.mlp(self.ln2(x)))


class CharTransformer(nn.Module):
    """A small decoder-only transformer over characters.

    :param vocab_size: number of symbols.
    :param context: largest sequence length.
    :param width: model width.
    :param layers: number of blocks.
    :param heads: attention heads.
    :param dropout: dropout probability of every :class:`torch.nn.Dropout` (the recipe's starts at 0).
    """

    def __init__(
        self, vocab_size: int, context: int, width: int = 192, layers: int = 4, heads: int = 4, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.context = context
        self.tok = nn.Embedding(vocab_size, width)
        self.pos = nn.Embedding(context, width)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([Block(width, heads, dropout) for _ in range(layers)])
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, x: th.Tensor) -> th.Tensor:
        t = x.shape[1]
        h = self.drop(self.tok(x) + self.pos(th.arange(t, device=x.device)))
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln(h))

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


@th.no_grad()
def evaluate_loss(model: nn.Module, x: th.Tensor, y: th.Tensor, batch_size: int = 64) -> float:
    """Mean next-character cross-entropy (nats) over fixed windows, in eval mode."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(x), batch_size):
        logits = model(x[i : i + batch_size])
        total += F.cross_entropy(logits.flatten(0, 1), y[i : i + batch_size].flatten(), reduction="sum").item()
        count += y[i : i + batch_size].numel()
    model.train(was_training)
    loss = total / count
    return loss if math.isfinite(loss) else float("nan")
