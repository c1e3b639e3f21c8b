r"""Fine-tuning tasks built from text already on the machine (nothing is downloaded).

Four tasks, one per kind of head (two sequence-level), each split into train / held-out **by document** (a document is
wholly on one side: the held-out numbers measure text the fine-tuning never saw):

``next``  — sentence pair, XLNet's ``[A SEP B SEP CLS]`` (segments 0, 1, CLS 2): is B the text that
            directly follows A? The text is the docstrings of CPython's standard-library modules
            (``Lib/*.py``, read with ``ast``); a document is a module. B is cut right after A (positive)
            or taken from another module of the same split (negative); half and half. Pretraining never
            saw this text (it reads ``pydoc_data``), so the task also measures transfer to new text.
``topic`` — single text ``[x SEP CLS]``, 3 classes: which part of the language reference a paragraph
            comes from — statements, expressions, or types and the data model (the ``pydoc_data``
            topics, grouped by :data:`TOPIC_GROUPS`); a document is a topic, so the held-out paragraphs
            come from topics the classifier never saw.
``words`` — a label per byte, ``[x SEP CLS]``: a docstring stretch with its spaces removed
            (``Returnthenumberofitems``); which bytes start a word (followed a removed space)? Token
            classification (word segmentation); padding, SEP and CLS are labelled -100 (ignored).
            Same text and split as ``next``.
``span``  — extractive QA ``[passage SEP question SEP CLS]`` (passage 0, question 1, CLS 2): the question
            is the passage's text around one word with the word replaced by ``?`` (e.g. ``the assert ?
            is a``); the answer is that word, a span of the passage. p_mask = 1 outside the passage.

Tokens are bytes (:class:`~xlnet_ref.training.tokenizer.ByteTokenizer`, the tiny preset's tokenizer).
Rows are padded on the LEFT to ``seq_len`` (XLNet's convention: the CLS stays at the last position).
The split is fixed by a hash of the document name (``held_out_fraction`` of the documents); the
examples are drawn with ``random.Random`` seeded by task and split, so they are the same on every
run on one Python version (the text is that version's).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import random
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

TASKS = ("next", "topic", "span", "words")
TASK_HEADS = {
    "next": "XLNetForSequenceClassification",
    "topic": "XLNetForSequenceClassification",
    "span": "XLNetForQuestionAnswering",
    "words": "XLNetForTokenClassification",
}
TASK_LABELS = {
    "next": ["random B", "B follows A"],
    "topic": ["statements", "expressions", "types and data model"],
    "span": None,
    "words": ["inside a word", "starts a word"],
}
IGNORE = -100  # label of positions that are not text (padding, SEP, CLS)

SEG_A, SEG_B, SEG_CLS = 0, 1, 2  # the original's SEG_ID_A / SEG_ID_B / SEG_ID_CLS

# pydoc_data topics by the part of the language reference they document
TOPIC_GROUPS = {
    "statements": [
        "assert",
        "assignment",
        "async",
        "augassign",
        "break",
        "class",
        "compound",
        "continue",
        "del",
        "for",
        "function",
        "global",
        "if",
        "import",
        "nonlocal",
        "pass",
        "raise",
        "return",
        "try",
        "while",
        "with",
        "else",
        "exceptions",
        "execmodel",
        "naming",
        "dynamic-features",
    ],
    "expressions": [
        "atom-identifiers",
        "atom-literals",
        "attribute-references",
        "await",
        "binary",
        "bitwise",
        "booleans",
        "calls",
        "comparisons",
        "conversions",
        "exprlists",
        "in",
        "lambda",
        "operator-summary",
        "power",
        "shifting",
        "slicings",
        "subscriptions",
        "unary",
        "yield",
        "formatstrings",
        "identifiers",
        "strings",
        "integers",
        "floating",
        "imaginary",
        "lists",
        "dict",
    ],
    "types and data model": [
        "types",
        "typesfunctions",
        "typesmapping",
        "typesmethods",
        "typesmodules",
        "typesseq",
        "typesseq-mutable",
        "string-methods",
        "specialnames",
        "customization",
        "numeric-types",
        "sequence-types",
        "attribute-access",
        "callable-types",
        "bltin-code-objects",
        "bltin-ellipsis-object",
        "bltin-null-object",
        "bltin-type-objects",
        "numbers",
        "truth",
        "specialattrs",
        "objects",
        "id-classes",
        "context-managers",
    ],
}


@dataclass
class TaskExamples:
    """One split of a task as tensors. Axis letters: b example, i position."""

    task: str
    split: str
    input_ids: torch.Tensor  # [b, i] long, left-padded
    token_type_ids: torch.Tensor  # [b, i] long: 0 A/passage, 1 B/question, 2 CLS (padding 0)
    attention_mask: torch.Tensor  # [b, i] float, 1 = real token
    labels: torch.Tensor | None = None  # [b] long (next, topic); [b, i] (words, -100 = not text)
    start_positions: torch.Tensor | None = None  # [b] long (span): first byte of the answer
    end_positions: torch.Tensor | None = None  # [b] long (span): last byte of the answer (inclusive)
    p_mask: torch.Tensor | None = None  # [b, i] float (span): 1 = cannot be in the answer
    documents: list[str] | None = None  # the document each example comes from

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def batch(self, index: torch.Tensor) -> dict:
        """The head's keyword arguments for the rows ``index`` (labels included)."""
        out = {
            "input_ids": self.input_ids[index],
            "token_type_ids": self.token_type_ids[index],
            "attention_mask": self.attention_mask[index],
        }
        if self.labels is not None:
            out["labels"] = self.labels[index]
        if self.start_positions is not None:
            out.update(
                start_positions=self.start_positions[index],
                end_positions=self.end_positions[index],
                p_mask=self.p_mask[index],
            )
        return out


# ------------------------------------------------------------------------------------- documents
def _clean(text: str) -> str:
    """One line of text: whitespace runs become one space; only printable ASCII kept (byte = character)."""
    text = re.sub(r"\s+", " ", text)
    return "".join(ch for ch in text if 32 <= ord(ch) < 127).strip()


@functools.lru_cache(maxsize=1)
def stdlib_docstrings() -> dict[str, str]:
    """{module name: its module, class and function docstrings (>= 80 characters each), joined}, for the
    top-level modules of the running Python's standard library (``Lib/*.py``), in sorted order."""
    folder = Path(sysconfig.get_paths()["stdlib"])
    docs = {}
    for path in sorted(folder.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        nodes = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
        strings = [ast.get_docstring(n) for n in ast.walk(tree) if isinstance(n, nodes)]
        text = " ".join(_clean(s) for s in strings if s and len(s) >= 80)
        if len(text) >= 400:
            docs[path.stem] = text
    if not docs:
        raise FileNotFoundError(
            f"stdlib_docstrings: no documented modules under {str(folder)!r}; expected CPython's Lib/"
        )
    return docs


@functools.lru_cache(maxsize=1)
def reference_topics() -> dict[str, str]:
    """{pydoc topic: its text on one line} for the topics in :data:`TOPIC_GROUPS`."""
    from pydoc_data.topics import topics

    return {key: _clean(topics[key]) for group in TOPIC_GROUPS.values() for key in group if key in topics}


def is_held_out(document: str, *, held_out_fraction: float = 0.25) -> bool:
    """A fixed, order-free choice: the document's sha256 decides which side it is on."""
    h = int(hashlib.sha256(document.encode("utf-8")).hexdigest()[:8], 16)
    return h / 16**8 < held_out_fraction


def split_documents(names, *, split: str, held_out_fraction: float = 0.25) -> list[str]:
    if split not in ("train", "held_out"):
        raise ValueError(f"split: expected 'train' or 'held_out', got {split!r}")
    return [n for n in sorted(names) if is_held_out(n, held_out_fraction=held_out_fraction) == (split == "held_out")]


# ---------------------------------------------------------------------------------- encoding
def _row(segments: list[tuple[bytes, int]], *, seq_len: int, sep_id: int, cls_id: int, pad_id: int):
    """[seg_1 SEP seg_2 SEP ... CLS] left-padded to seq_len: (ids, token types, attention mask, start of each segment)."""
    ids, types, starts = [], [], []
    for text, seg in segments:
        starts.append(len(ids))
        ids += list(text) + [sep_id]
        types += [seg] * (len(text) + 1)
    ids.append(cls_id)
    types.append(SEG_CLS)
    if len(ids) > seq_len:
        raise ValueError(f"seq_len: expected at least {len(ids)} for this example, got {seq_len}")
    pad = seq_len - len(ids)
    return ([pad_id] * pad + ids, [SEG_A] * pad + types, [0.0] * pad + [1.0] * len(ids), [s + pad for s in starts])


def _stack(task, split, rows, documents, **extra) -> TaskExamples:
    ids, types, mask = zip(*[(r[0], r[1], r[2]) for r in rows])
    return TaskExamples(
        task=task,
        split=split,
        input_ids=torch.tensor(ids),
        token_type_ids=torch.tensor(types),
        attention_mask=torch.tensor(mask),
        documents=list(documents),
        **{k: (torch.tensor(v) if k != "p_mask" else torch.tensor(v, dtype=torch.float)) for k, v in extra.items()},
    )


def _word_cut(text: str, start: int, length: int) -> str:
    return text[start : start + length]


# ------------------------------------------------------------------------------------- tasks
def next_examples(
    split: str, n: int, *, seq_len: int = 64, tokenizer=None, held_out_fraction: float = 0.25
) -> TaskExamples:
    """``n`` [A SEP B SEP CLS] pairs, label 1 when B is the text right after A, 0 when B is from another module."""
    tok = _tokenizer(tokenizer)
    docs = stdlib_docstrings()
    names = split_documents(docs, split=split, held_out_fraction=held_out_fraction)
    half = (seq_len - 3) // 2  # bytes of A and of B
    rng = random.Random(f"next-{split}")
    rows, labels, used = [], [], []
    for index in range(n):
        name = rng.choice(names)
        text = docs[name]
        start = rng.randrange(0, len(text) - 2 * half)
        a = text[start : start + half]
        if index % 2 == 0:
            b, label = text[start + half : start + 2 * half], 1
        else:
            other = rng.choice([m for m in names if m != name])
            other_start = rng.randrange(0, len(docs[other]) - half)
            b, label = docs[other][other_start : other_start + half], 0
        rows.append(
            _row(
                [(a.encode(), SEG_A), (b.encode(), SEG_B)],
                seq_len=seq_len,
                sep_id=tok.sep_id,
                cls_id=tok.cls_id,
                pad_id=tok.pad_id,
            )
        )
        labels.append(label)
        used.append(name)
    return _stack("next", split, rows, used, labels=labels)


def topic_examples(
    split: str, n: int, *, seq_len: int = 64, tokenizer=None, held_out_fraction: float = 0.25
) -> TaskExamples:
    """``n`` [x SEP CLS] rows, x a stretch of a reference topic; label = its group; classes in turn (balanced)."""
    tok = _tokenizer(tokenizer)
    topics = reference_topics()
    groups = list(TOPIC_GROUPS)
    length = seq_len - 2
    rng = random.Random(f"topic-{split}")
    by_group = [
        split_documents(
            [k for k in TOPIC_GROUPS[g] if k in topics and len(topics[k]) > length],
            split=split,
            held_out_fraction=held_out_fraction,
        )
        for g in groups
    ]
    for g, names in zip(groups, by_group):
        if not names:
            raise ValueError(f"topic: split {split!r} has no document of group {g!r}; change held_out_fraction")
    rows, labels, used = [], [], []
    for index in range(n):
        label = index % len(groups)
        name = rng.choice(by_group[label])
        start = rng.randrange(0, len(topics[name]) - length)
        rows.append(
            _row(
                [(topics[name][start : start + length].encode(), SEG_A)],
                seq_len=seq_len,
                sep_id=tok.sep_id,
                cls_id=tok.cls_id,
                pad_id=tok.pad_id,
            )
        )
        labels.append(label)
        used.append(name)
    return _stack("topic", split, rows, used, labels=labels)


def span_examples(
    split: str, n: int, *, seq_len: int = 64, tokenizer=None, held_out_fraction: float = 0.25
) -> TaskExamples:
    """``n`` [passage SEP question SEP CLS] rows; the answer is one word of the passage (a span of bytes).

    Question = up to two words before the answer, ``?``, and the word after it; the words before the
    answer occur once in the passage, so the answer is determined."""
    tok = _tokenizer(tokenizer)
    topics = reference_topics()
    names = split_documents(topics, split=split, held_out_fraction=held_out_fraction)
    passage_len = 40
    question_room = seq_len - passage_len - 3
    rng = random.Random(f"span-{split}")
    rows, starts, ends, p_masks, used = [], [], [], [], []
    while len(rows) < n:
        name = rng.choice(names)
        text = topics[name]
        if len(text) <= passage_len:
            continue
        at = rng.randrange(0, len(text) - passage_len)
        passage = text[at : at + passage_len]
        words = [(m.start(), m.end()) for m in re.finditer(r"[A-Za-z_]+", passage)]
        choices = [w for w in range(2, len(words) - 1) if words[w][1] - words[w][0] >= 3 and words[w][1] < passage_len]
        if not choices:
            continue
        w = rng.choice(choices)
        left = passage[words[w - 2][0] : words[w][0]]
        right = passage[words[w][1] : words[w + 1][1]]
        question = f"{left}?{right}"
        if passage.count(left) != 1 or len(question) > question_room:
            continue
        ids, types, mask, seg_starts = _row(
            [(passage.encode(), SEG_A), (question.encode(), SEG_B)],
            seq_len=seq_len,
            sep_id=tok.sep_id,
            cls_id=tok.cls_id,
            pad_id=tok.pad_id,
        )
        p_mask = [1.0] * seq_len
        for i in range(seg_starts[0], seg_starts[0] + passage_len):
            p_mask[i] = 0.0
        rows.append((ids, types, mask))
        starts.append(seg_starts[0] + words[w][0])
        ends.append(seg_starts[0] + words[w][1] - 1)
        p_masks.append(p_mask)
        used.append(name)
    return _stack("span", split, rows, used, start_positions=starts, end_positions=ends, p_mask=p_masks)


def words_examples(
    split: str, n: int, *, seq_len: int = 64, tokenizer=None, held_out_fraction: float = 0.25
) -> TaskExamples:
    """``n`` [x SEP CLS] rows: docstring text without its spaces; labels [b, i]: 1 where a word starts
    (a space was removed before it), 0 elsewhere in the text, -100 outside the text."""
    tok = _tokenizer(tokenizer)
    docs = stdlib_docstrings()
    names = split_documents(docs, split=split, held_out_fraction=held_out_fraction)
    length = seq_len - 2
    rng = random.Random(f"words-{split}")
    rows, labels, used = [], [], []
    for _ in range(n):
        name = rng.choice(names)
        start = rng.randrange(0, len(docs[name]) - 2 * length)
        chars, flags, after_space = [], [], False
        for ch in docs[name][start:]:
            if len(chars) == length:
                break
            if ch == " ":
                after_space = True
                continue
            chars.append(ch)
            flags.append(int(after_space))
            after_space = False
        ids, types, mask, seg_starts = _row(
            [("".join(chars).encode(), SEG_A)], seq_len=seq_len, sep_id=tok.sep_id, cls_id=tok.cls_id, pad_id=tok.pad_id
        )
        row_labels = [IGNORE] * seq_len
        row_labels[seg_starts[0] : seg_starts[0] + len(chars)] = flags
        rows.append((ids, types, mask))
        labels.append(row_labels)
        used.append(name)
    return _stack("words", split, rows, used, labels=labels)


def _tokenizer(tokenizer):
    from .tokenizer import ByteTokenizer

    tokenizer = tokenizer or ByteTokenizer()
    if getattr(tokenizer, "kind", None) != "byte":
        raise ValueError(
            f"tokenizer: expected the byte tokenizer (the tasks are laid out in bytes), got "
            f"{getattr(tokenizer, 'kind', type(tokenizer).__name__)!r}"
        )
    return tokenizer


BUILDERS = {"next": next_examples, "topic": topic_examples, "span": span_examples, "words": words_examples}


def task_examples(task: str, split: str, n: int, *, seq_len: int = 64, tokenizer=None) -> TaskExamples:
    """``n`` examples of ``task`` ('next', 'topic', 'span' or 'words') from ``split`` ('train' or 'held_out')."""
    if task not in BUILDERS:
        raise ValueError(f"task: expected one of {TASKS}, got {task!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"n: expected a positive int, got {n!r}")
    return BUILDERS[task](split, n, seq_len=seq_len, tokenizer=tokenizer)
