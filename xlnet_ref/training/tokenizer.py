"""Tokenizers that need no download: UTF-8 bytes, or a SentencePiece model trained here.

XLNet itself uses a SentencePiece unigram model (32k pieces, ``spiece.model``). Downloading it is not
allowed here, so there are two local choices with one interface:

- :class:`ByteTokenizer` — ids 0..255 are the UTF-8 bytes, then four special ids. Nothing to train,
  vocabulary 260, every string round-trips exactly. The default: small embedding tables, fast on a CPU.
- :class:`SentencePieceTokenizer` — a unigram SentencePiece model (XLNet's tokenizer type) trained on
  the training text with the same special symbols and ids as XLNet's ``spiece.model``
  (``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, ``<cls>`` 3, ``<sep>`` 4, ``<pad>`` 5, ``<mask>`` 6, ``<eod>`` 7, ``<eop>`` 8).

Both have ``encode(str) -> list[int]``, ``decode(ids) -> str``, ``vocab_size``, ``pad_id``, ``sep_id``,
``cls_id``, ``unk_id``, ``word_starts(ids) -> bool tensor``, ``save(directory)`` and ``load(directory)``.
``save`` writes ``xlnet_ref_tokenizer.json`` (plus ``spiece.model`` for SentencePiece) into a checkpoint folder;
:func:`load_tokenizer` reads either kind back.

Word starts. XLNet's span masking (data_utils.py ``_sample_mask``) starts a masked span only where
``_is_start_piece`` holds: a piece that begins with "▁" (a new word), a special "<...>" piece, or a
punctuation piece. ``word_starts`` gives that flag per id, so the permutation objective can start spans
at word boundaries with either tokenizer.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

# Not "tokenizer.json": that name means a fast tokenizer to transformers, and export_hf writes into a
# folder transformers reads. "spiece.model" is the name XLNet (and transformers' XLNetTokenizer) use.
TOKENIZER_FILE = "xlnet_ref_tokenizer.json"
SENTENCEPIECE_FILE = "spiece.model"

# data_utils.py `_is_start_piece`: a punctuation piece always starts a new "word". The original lists
# string.punctuation less "'<=>" ("<" is covered by its startswith("<") rule); we take all of it.
PUNCTUATION = string.punctuation
# ASCII whitespace bytes: space, \t, \n, \v, \f, \r.
WHITESPACE_BYTES = (32, 9, 10, 11, 12, 13)


def _as_long_tensor(ids, *, name: str = "ids") -> torch.Tensor:
    if isinstance(ids, torch.Tensor):
        if ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise ValueError(f"{name}: expected integer token ids, got a tensor of dtype {ids.dtype}")
        return ids.long()
    return torch.as_tensor(list(ids), dtype=torch.long)


class ByteTokenizer:
    """UTF-8 bytes as tokens: id b (0..255) is the byte b; ids 256.. are the special tokens.

    The special ids come after the bytes so that ``id < 256`` reads directly as "a byte of text".
    ``unk_id`` exists only so both tokenizers share one interface: every string is made of bytes, so
    ``encode`` never produces it.
    """

    kind = "byte"
    n_bytes = 256

    def __init__(self):
        self.pad_id = 256
        self.sep_id = 257
        self.cls_id = 258
        self.unk_id = 259
        self.vocab_size = 260

    @property
    def special_ids(self) -> tuple[int, ...]:
        return (self.pad_id, self.sep_id, self.cls_id, self.unk_id)

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"ByteTokenizer.encode: text: expected a str, got {type(text).__name__}")
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        """Text of the byte ids; special ids are dropped, a broken UTF-8 sequence becomes U+FFFD."""
        ids = _as_long_tensor(ids).reshape(-1).tolist()
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ByteTokenizer.decode: ids: expected ids in [0, {self.vocab_size}), got {bad[:5]}")
        return bytes(i for i in ids if i < self.n_bytes).decode("utf-8", errors="replace")

    def word_starts(self, ids) -> torch.Tensor:
        """bool tensor, same shape as ``ids``: True where a word begins (along the last axis).

        Byte version of ``_is_start_piece``: a special id, an ASCII punctuation byte, or the first byte of
        a run of non-whitespace that follows whitespace, punctuation, a special id or the start of ``ids``.
        UTF-8 continuation bytes (0x80-0xBF) are never starts, so a multi-byte character is not split.
        """
        ids = _as_long_tensor(ids)
        if ids.dim() == 0:
            raise ValueError("ByteTokenizer.word_starts: ids: expected at least one axis, got a scalar")
        whitespace = torch.tensor(WHITESPACE_BYTES, dtype=torch.long, device=ids.device)
        punctuation = torch.tensor(list(PUNCTUATION.encode("ascii")), dtype=torch.long, device=ids.device)
        is_special = ids >= self.n_bytes
        is_space = torch.isin(ids, whitespace)
        is_punct = torch.isin(ids, punctuation)
        is_continuation = (ids >= 0x80) & (ids < 0xC0)
        is_break = is_space | is_punct | is_special
        # prev_is_break[..., t] = is_break[..., t-1]; the start of ids counts as a break.
        prev_is_break = torch.cat([torch.ones_like(is_break[..., :1]), is_break[..., :-1]], dim=-1)
        return is_special | is_punct | (~is_space & ~is_continuation & prev_is_break)

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "pad_id": self.pad_id,
            "sep_id": self.sep_id,
            "cls_id": self.cls_id,
            "unk_id": self.unk_id,
        }
        path = directory / TOKENIZER_FILE
        path.write_text(json.dumps(meta, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> ByteTokenizer:
        meta = _read_tokenizer_meta(directory)
        if meta.get("kind") != cls.kind:
            raise ValueError(
                f"ByteTokenizer.load: {str(Path(directory) / TOKENIZER_FILE)!r} describes a "
                f"{meta.get('kind')!r} tokenizer, expected {cls.kind!r}; use load_tokenizer()"
            )
        tok = cls()
        for key in ("vocab_size", "pad_id", "sep_id", "cls_id", "unk_id"):
            if meta.get(key) != getattr(tok, key):
                raise ValueError(
                    f"ByteTokenizer.load: {key}: expected {getattr(tok, key)}, the saved file has {meta.get(key)!r}"
                )
        return tok

    def __repr__(self) -> str:
        return f"ByteTokenizer(vocab_size={self.vocab_size}, pad_id={self.pad_id}, sep_id={self.sep_id}, cls_id={self.cls_id})"


class SentencePieceTokenizer:
    """A SentencePiece unigram model with XLNet's special symbols, trained locally by :meth:`train`."""

    kind = "sentencepiece"
    # XLNet's spiece.model was trained with these (README of zihangdai/xlnet, "Pretraining with XLNet").
    control_symbols = ("<cls>", "<sep>", "<pad>", "<mask>", "<eod>")
    user_defined_symbols = ("<eop>", ".", "(", ")", '"', "-", "–", "£", "€")

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self.model_proto = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor()
        self.sp.LoadFromSerializedProto(self.model_proto)
        self.vocab_size = self.sp.get_piece_size()
        self.unk_id = self.sp.unk_id()
        self.pad_id = self._special("<pad>")
        self.sep_id = self._special("<sep>")
        self.cls_id = self._special("<cls>")
        self.special_ids = tuple(i for i in range(self.vocab_size) if self.sp.is_control(i) or self.sp.is_unknown(i))
        # One flag per piece, looked up by id in word_starts; same rule as data_utils._is_start_piece.
        pieces = [self.sp.id_to_piece(i) for i in range(self.vocab_size)]
        self._start_table = torch.tensor(
            [p.startswith("\u2581") or p.startswith("<") or p in PUNCTUATION for p in pieces], dtype=torch.bool
        )

    def _special(self, piece: str) -> int:
        i = self.sp.piece_to_id(piece)
        if i == self.sp.unk_id():
            raise ValueError(
                f"SentencePieceTokenizer: the model has no {piece!r} piece; expected a model trained "
                f"with control symbols {self.control_symbols}"
            )
        return i

    @classmethod
    def train(
        cls, text: str, *, vocab_size: int = 2000, model_type: str = "unigram", seed: int = 0
    ) -> SentencePieceTokenizer:
        """Train on ``text`` (one sentence per non-empty line) in memory; a few seconds for ~0.5 M characters."""
        import io

        import sentencepiece as spm

        if not isinstance(text, str) or not text.strip():
            raise ValueError("SentencePieceTokenizer.train: text: expected a non-empty str")
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 20:
            raise ValueError(f"SentencePieceTokenizer.train: vocab_size: expected an int >= 20, got {vocab_size!r}")
        lines = [line for line in text.splitlines() if line.strip()]
        spm.set_random_generator_seed(seed)  # the trainer samples sentences; fix it for repeatable runs
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(lines),
                model_writer=model,
                vocab_size=vocab_size,
                model_type=model_type,
                character_coverage=0.99995,
                control_symbols=list(cls.control_symbols),
                user_defined_symbols=list(cls.user_defined_symbols),
                num_threads=1,
                minloglevel=2,
            )
        except RuntimeError as err:
            # e.g. "Vocabulary size is too high (2000). Please set it to a value <= 1500."
            raise ValueError(
                f"SentencePieceTokenizer.train: vocab_size={vocab_size} could not be trained on "
                f"{len(text)} characters: {err}"
            ) from None
        return cls(model.getvalue())

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"SentencePieceTokenizer.encode: text: expected a str, got {type(text).__name__}")
        return self.sp.encode(text, out_type=int)

    def decode(self, ids) -> str:
        ids = _as_long_tensor(ids).reshape(-1).tolist()
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(
                f"SentencePieceTokenizer.decode: ids: expected ids in [0, {self.vocab_size}), got {bad[:5]}"
            )
        return self.sp.decode(ids)

    def word_starts(self, ids) -> torch.Tensor:
        """bool tensor, same shape as ``ids``: True for pieces that begin with "▁", "<" or are punctuation."""
        ids = _as_long_tensor(ids)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(
                f"SentencePieceTokenizer.word_starts: ids: expected ids in [0, {self.vocab_size}), "
                f"got min {int(ids.min())}, max {int(ids.max())}"
            )
        return self._start_table.to(ids.device)[ids]

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / SENTENCEPIECE_FILE).write_bytes(self.model_proto)
        meta = {
            "kind": self.kind,
            "model_file": SENTENCEPIECE_FILE,
            "vocab_size": self.vocab_size,
            "pad_id": self.pad_id,
            "sep_id": self.sep_id,
            "cls_id": self.cls_id,
            "unk_id": self.unk_id,
        }
        path = directory / TOKENIZER_FILE
        path.write_text(json.dumps(meta, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> SentencePieceTokenizer:
        meta = _read_tokenizer_meta(directory)
        if meta.get("kind") != cls.kind:
            raise ValueError(
                f"SentencePieceTokenizer.load: {str(Path(directory) / TOKENIZER_FILE)!r} describes a "
                f"{meta.get('kind')!r} tokenizer, expected {cls.kind!r}; use load_tokenizer()"
            )
        model_path = Path(directory) / meta.get("model_file", SENTENCEPIECE_FILE)
        if not model_path.is_file():
            raise FileNotFoundError(
                f"SentencePieceTokenizer.load: {str(model_path)!r} is missing; "
                f"expected the SentencePiece model next to {TOKENIZER_FILE}"
            )
        try:
            tok = cls(model_path.read_bytes())
        except (RuntimeError, OSError) as err:
            raise ValueError(
                f"SentencePieceTokenizer.load: {str(model_path)!r} is not a valid SentencePiece model ({err})"
            ) from None
        if tok.vocab_size != meta.get("vocab_size"):
            raise ValueError(
                f"SentencePieceTokenizer.load: vocab_size: {TOKENIZER_FILE} says {meta.get('vocab_size')!r}, "
                f"the model file has {tok.vocab_size}"
            )
        return tok

    def __repr__(self) -> str:
        return (
            f"SentencePieceTokenizer(vocab_size={self.vocab_size}, pad_id={self.pad_id}, "
            f"sep_id={self.sep_id}, cls_id={self.cls_id})"
        )


def _read_tokenizer_meta(directory: str | Path) -> dict:
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"tokenizer: {str(path)!r} is missing; expected the {TOKENIZER_FILE} that tokenizer.save(directory) writes"
        )
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"tokenizer: {str(path)!r} is not valid JSON ({err}); the file is corrupt") from None
    if not isinstance(meta, dict) or "kind" not in meta:
        raise ValueError(f"tokenizer: {str(path)!r}: expected a JSON object with a 'kind' field, got {meta!r:.80}")
    return meta


TOKENIZER_KINDS = ("byte", "sentencepiece")


def load_tokenizer(directory: str | Path) -> ByteTokenizer | SentencePieceTokenizer:
    """Read back whichever tokenizer ``save(directory)`` wrote."""
    kind = _read_tokenizer_meta(directory)["kind"]
    if kind == "byte":
        return ByteTokenizer.load(directory)
    if kind == "sentencepiece":
        return SentencePieceTokenizer.load(directory)
    raise ValueError(
        f"tokenizer: {str(Path(directory) / TOKENIZER_FILE)!r}: kind: expected one of {TOKENIZER_KINDS}, got {kind!r}"
    )


def build_tokenizer(kind: str, *, text: str | None = None, vocab_size: int = 2000, seed: int = 0):
    """A new tokenizer of ``kind``: 'byte' needs nothing, 'sentencepiece' is trained on ``text``."""
    if kind == "byte":
        return ByteTokenizer()
    if kind == "sentencepiece":
        if text is None:
            raise ValueError("build_tokenizer: text: expected the training text for kind='sentencepiece', got None")
        return SentencePieceTokenizer.train(text, vocab_size=vocab_size, seed=seed)
    raise ValueError(f"build_tokenizer: kind: expected one of {TOKENIZER_KINDS}, got {kind!r}")
