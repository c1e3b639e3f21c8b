"""Text to train on, with nothing to download.

The default corpus is the English reference documentation that ships inside CPython itself:
``pydoc_data.topics.topics`` is a dict ``{topic name: documentation text}`` used by ``help()``
(about 80 topics, ~0.46 M characters on Python 3.11). It is plain English prose with some code,
it is on every machine that has Python, and it needs no network. Its exact text depends on the
Python version, so runs are repeatable on one Python version, not across versions.

A user's own text comes in with ``--corpus PATH``: a text file, or a folder whose ``*.txt`` files
(searched recursively) are read in sorted path order.

Documents are joined with a blank line in a fixed order (sorted keys / sorted paths) so that the
same corpus always gives the same token stream, which a repeatable run needs.
"""

from __future__ import annotations

from pathlib import Path

DOCUMENT_SEPARATOR = "\n\n"


def default_corpus_text() -> str:
    """CPython's built-in documentation topics, joined in sorted-key order."""
    from pydoc_data.topics import topics  # a dict str -> str shipped with CPython

    return DOCUMENT_SEPARATOR.join(topics[key].strip() for key in sorted(topics))


def _read_text_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"corpus: expected UTF-8 text in {str(path)!r}, but byte {err.start} could not be decoded ({err.reason})"
        ) from None


def load_corpus(path: str | Path | None = None) -> str:
    """The training text: CPython's documentation when ``path`` is None, else a file or a folder of .txt files.

    Raises FileNotFoundError for a path that does not exist and ValueError for a corpus that holds no text;
    both messages name the path and say what was expected.
    """
    if path is None:
        text = default_corpus_text()
        source = "pydoc_data.topics (CPython's built-in documentation)"
    else:
        path = Path(path).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"corpus: {str(path)!r} does not exist; expected a UTF-8 text file or a folder of .txt files"
            )
        if path.is_dir():
            files = sorted(p for p in path.rglob("*.txt") if p.is_file())
            if not files:
                raise ValueError(
                    f"corpus: the folder {str(path)!r} holds no .txt files; expected at least one UTF-8 .txt file"
                )
            text = DOCUMENT_SEPARATOR.join(_read_text_file(p).strip() for p in files)
            source = f"{len(files)} .txt files under {str(path)!r}"
        else:
            text = _read_text_file(path)
            source = repr(str(path))
    if not text.strip():
        raise ValueError(f"corpus: {source} is empty (only whitespace); expected some text to train on")
    return text


def split_corpus(text: str, *, eval_fraction: float = 0.05, block_chars: int = 4000) -> tuple[str, str]:
    """Split ``text`` into (train, held-out): every k-th block of about ``block_chars`` characters is held out,
    k = round(1 / eval_fraction).

    Blocks end at a line break when the block holds one, so ordinary text is never cut mid-line; a
    single line longer than a block is cut at the block boundary.
    Interleaved blocks sample the whole corpus; a held-out tail would not (the last of CPython's
    sorted topics are tables that are easier than the rest, ~0.5 nats lower). For a short text the
    blocks shrink to ``len(text) * eval_fraction`` characters so that there are enough of them.
    """
    if not isinstance(text, str) or not text.strip():
        got = f"a str of length {len(text)}" if isinstance(text, str) else type(text).__name__
        raise ValueError(f"split_corpus: text: expected a non-empty str, got {got}")
    if not (isinstance(eval_fraction, float) and 0.0 < eval_fraction < 1.0):
        raise ValueError(f"split_corpus: eval_fraction: expected a float in (0, 1), got {eval_fraction!r}")
    if isinstance(block_chars, bool) or not isinstance(block_chars, int) or block_chars < 1:
        raise ValueError(f"split_corpus: block_chars: expected a positive int, got {block_chars!r}")
    size = max(1, min(block_chars, int(len(text) * eval_fraction)))
    blocks, start = [], 0
    while start < len(text):
        end = min(len(text), start + size)
        newline = text.rfind("\n", start, end)
        if end < len(text) and newline > start:
            end = newline + 1  # end the block at a line break
        blocks.append(text[start:end])
        start = end
    k = max(2, round(1.0 / eval_fraction))
    train_text = "".join(b for i, b in enumerate(blocks) if i % k != k - 1)
    eval_text = "".join(b for i, b in enumerate(blocks) if i % k == k - 1)
    if not train_text.strip() or not eval_text.strip():
        raise ValueError(
            f"split_corpus: a corpus of {len(text)} characters is too short to split with eval_fraction={eval_fraction}; "
            "expected some text on both sides"
        )
    return train_text, eval_text
