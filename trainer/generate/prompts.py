"""Prompts for generation: the prefixes of tokens-store rows, or lines of a text file.

Both give right-padded prompts with per-row lengths and the row id that keys
each row's sampling (`trainer.model.sampling`): the store row for store
prompts, the 0-based line number for text prompts.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from trainer.model.tokenizer import load_tokenizer, tokenizer_info


class PromptError(ValueError):
    """Bad prompt input: an empty file, a prompt length outside the store's rows."""


@dataclasses.dataclass(frozen=True)
class Prompts:
    """Right-padded prompts and where they came from."""

    tokens_NxP: np.ndarray  # int32, row n's prompt is tokens_NxP[n, :lengths_N[n]]
    lengths_N: np.ndarray  # int32 in [1, P]
    row_ids_N: np.ndarray  # int64: store row, or line number of a text file
    tokenizer: dict[str, Any]  # {"sha256", "vocab_size", "bos_id", "eos_id", "pad_id"} or {}
    vocab_size: int  # of the tokenizer (a store's schema V)
    source: dict[str, Any]  # what the prompts are (recorded with the outputs)

    @property
    def width(self) -> int:
        return int(self.tokens_NxP.shape[1])


def from_store(url: str, prompt_len: int, limit: int | None = None) -> Prompts:
    """The first `prompt_len` tokens of each committed row of a tokens store.

    Trailing padding inside the prefix (the store tokenizer's pad id) is not
    part of a prompt; a row whose prefix is all padding is refused.

    Raises:
        PromptError: prompt_len outside [1, T], no committed rows, an all-padding prefix.
        store.errors.StoreError: the store cannot be opened or read.
    """
    from store import StoreReader

    reader = StoreReader(url)
    T = int(reader.schema.seq_len)
    if not 1 <= prompt_len <= T:
        raise PromptError(
            f"--prompt-len {prompt_len} is outside the store's rows (T={T}); pass a value in [1, {T}]"
        )
    rows = np.asarray(reader.committed_rows())[: limit or None]
    if not len(rows):
        raise PromptError(f"store {url!r} has no committed rows; finish its dump or pass another")
    tokens = reader.read(rows, fields=("tokens",))["tokens"][:, :prompt_len].astype(np.int32)
    tok = dict(reader.schema.tokenizer)
    pad_id = tok.get("pad_id")
    lengths = np.full(len(rows), prompt_len, np.int32)
    if pad_id is not None and pad_id >= 0:
        # Length = up to the last non-pad token of the prefix.
        real = tokens != pad_id
        lengths = np.where(real.any(1), prompt_len - np.argmax(real[:, ::-1], axis=1), 0)
        empty = rows[lengths == 0]
        if len(empty):
            raise PromptError(
                f"store row {int(empty[0])} has only padding in its first {prompt_len} tokens; "
                f"pass --limit to stop before it or a larger --prompt-len"
            )
    return Prompts(
        tokens_NxP=tokens,
        lengths_N=lengths.astype(np.int32),
        row_ids_N=rows.astype(np.int64),
        tokenizer=tok,
        vocab_size=int(reader.schema.vocab_size),
        source={"store": reader.url, "prompt_len": int(prompt_len)},
    )


def from_text(path: str, tokenizer: str, limit: int | None = None) -> Prompts:
    """One prompt per non-empty line of a UTF-8 file, encoded as [BOS] + ids.

    Raises:
        PromptError: unreadable or empty file.
        trainer.model.tokenizer.TokenizerError: unreadable tokenizer.
    """
    sp, info = load_tokenizer(tokenizer), tokenizer_info(tokenizer)
    try:
        with open(path, encoding="utf-8") as f:
            lines = [(n, line.rstrip("\n")) for n, line in enumerate(f) if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise PromptError(
            f"cannot read prompts file {path!r} ({e}); pass a UTF-8 text file"
        ) from None
    lines = lines[: limit or None]
    if not lines:
        raise PromptError(f"prompts file {path!r} has no non-empty line; write one prompt per line")
    encoded = [[info["bos_id"]] + sp.encode(text) for _, text in lines]
    width = max(len(ids) for ids in encoded)
    pad = info["pad_id"] if info.get("pad_id", -1) >= 0 else 0
    tokens = np.full((len(encoded), width), pad, np.int32)
    for n, ids in enumerate(encoded):
        tokens[n, : len(ids)] = ids
    return Prompts(
        tokens_NxP=tokens,
        lengths_N=np.array([len(ids) for ids in encoded], np.int32),
        row_ids_N=np.array([n for n, _ in lines], np.int64),
        tokenizer=info,
        vocab_size=int(info["vocab_size"]),
        source={"prompts": path, "tokenizer_sha256": info["sha256"]},
    )
