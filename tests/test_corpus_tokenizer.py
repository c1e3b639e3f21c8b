"""The corpus (no download) and both tokenizers: round trips, special ids, word starts, clear errors."""

from __future__ import annotations

import pytest
import torch

from xlnet_ref.training.corpus import default_corpus_text, load_corpus, split_corpus
from xlnet_ref.training.tokenizer import ByteTokenizer, SentencePieceTokenizer, build_tokenizer, load_tokenizer


@pytest.fixture(scope="module")
def sp_tokenizer():
    train_text, _ = split_corpus(default_corpus_text())
    return SentencePieceTokenizer.train(train_text[:150_000], vocab_size=400)


# ------------------------------------------------------------------------------------------- corpus
def test_default_corpus_is_cpythons_documentation_in_sorted_order():
    from pydoc_data.topics import topics

    text = load_corpus()
    assert len(text) > 100_000
    assert 'The "if" statement' in text
    # documents appear in sorted-key order, whatever order the dict has
    keys = sorted(topics)
    first, last = topics[keys[0]].strip(), topics[keys[-1]].strip()
    assert text.startswith(first[:200]) and text.endswith(last[-200:])
    assert load_corpus() == text  # deterministic


def test_corpus_file_and_folder(tmp_path):
    (tmp_path / "one.txt").write_text("alpha beta\n", encoding="utf-8")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "two.txt").write_text("gamma\n", encoding="utf-8")
    (tmp_path / "skip.md").write_text("not a txt file\n")
    assert load_corpus(tmp_path / "one.txt") == "alpha beta\n"
    folder_text = load_corpus(tmp_path)
    assert "alpha beta" in folder_text and "gamma" in folder_text and "not a txt" not in folder_text
    assert folder_text.index("alpha") < folder_text.index("gamma")  # sorted paths: one.txt < sub/two.txt


def test_missing_corpus_is_a_clear_error(tmp_path):
    path = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError) as err:
        load_corpus(path)
    assert str(path) in str(err.value) and "does not exist" in str(err.value) and "text file" in str(err.value)


def test_empty_corpus_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n ")
    with pytest.raises(ValueError) as err:
        load_corpus(empty)
    assert str(empty) in str(err.value) and "empty" in str(err.value)
    folder = tmp_path / "no_txt"
    folder.mkdir()
    (folder / "a.md").write_text("text")
    with pytest.raises(ValueError) as err:
        load_corpus(folder)
    assert str(folder) in str(err.value) and ".txt" in str(err.value)


def test_split_corpus_holds_out_whole_lines_from_all_over_the_text():
    lines = [f"line {i}\n" for i in range(2000)]
    text = "".join(lines)
    train, held_out = split_corpus(text, eval_fraction=0.1, block_chars=500)
    assert sorted(train.splitlines() + held_out.splitlines(), key=lambda s: int(s.split()[1])) == text.splitlines()
    assert not set(train.splitlines()) & set(held_out.splitlines())  # whole lines, never in both
    assert 0.07 < len(held_out) / len(text) < 0.13
    numbers = [int(line.split()[1]) for line in held_out.splitlines()]
    assert numbers[0] < 600 and numbers[-1] > 1500  # blocks 9, 19, 29 of ~50 lines each: not only the tail
    with pytest.raises(ValueError, match="eval_fraction"):
        split_corpus(text, eval_fraction=1.5)
    with pytest.raises(ValueError, match="too short"):
        split_corpus("ab", eval_fraction=0.1)  # 2 blocks, the 10th would be held out


# ------------------------------------------------------------------------------------ byte tokenizer
def test_byte_tokenizer_round_trip_and_special_ids():
    tok = ByteTokenizer()
    text = "Héllo, wörld — ∑ x² \n\tdef f(): pass"
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    specials = {tok.pad_id, tok.sep_id, tok.cls_id, tok.unk_id}
    assert len(specials) == 4 and min(specials) >= 256 and max(specials) < tok.vocab_size == 260
    assert tok.decode([tok.cls_id] + tok.encode("ab") + [tok.sep_id, tok.pad_id]) == "ab"  # specials dropped
    with pytest.raises(ValueError, match="ids"):
        tok.decode([300])


def test_byte_word_starts_by_hand():
    tok = ByteTokenizer()
    text = "ab cd, é!"
    # bytes: a b ' ' c d , ' ' 0xC3 0xA9 !   (é is two bytes; the second is a continuation byte)
    expected = [True, False, False, True, False, True, False, True, False, True]
    assert tok.word_starts(tok.encode(text)).tolist() == expected
    # a special id is a start, and so is the byte after it
    ids = torch.tensor([[tok.cls_id, ord("x"), ord("y")], [ord(" "), ord("x"), ord("y")]])
    assert tok.word_starts(ids).tolist() == [[True, True, False], [False, True, False]]


def test_byte_tokenizer_save_load(tmp_path):
    tok = ByteTokenizer()
    tok.save(tmp_path)
    back = load_tokenizer(tmp_path)
    assert isinstance(back, ByteTokenizer) and back.encode("xyz") == tok.encode("xyz")


# ------------------------------------------------------------------------------ SentencePiece tokenizer
def test_sentencepiece_has_xlnets_special_ids(sp_tokenizer):
    sp = sp_tokenizer.sp
    assert [sp.id_to_piece(i) for i in range(9)] == [
        "<unk>",
        "<s>",
        "</s>",
        "<cls>",
        "<sep>",
        "<pad>",
        "<mask>",
        "<eod>",
        "<eop>",
    ]
    assert (sp_tokenizer.unk_id, sp_tokenizer.cls_id, sp_tokenizer.sep_id, sp_tokenizer.pad_id) == (0, 3, 4, 5)
    assert sp_tokenizer.vocab_size == 400


def test_sentencepiece_round_trip_and_word_starts(sp_tokenizer):
    text = 'The "while" statement is used for repeated execution.'
    ids = sp_tokenizer.encode(text)
    assert sp_tokenizer.decode(ids) == text
    pieces = [sp_tokenizer.sp.id_to_piece(i) for i in ids]
    expected = [p.startswith("\u2581") or p in '."' for p in pieces]  # data_utils._is_start_piece, by hand
    assert sp_tokenizer.word_starts(ids).tolist() == expected
    assert sum(expected) < len(ids)  # some pieces continue a word, so the check can fail


def test_sentencepiece_save_load_and_training_is_repeatable(tmp_path, sp_tokenizer):
    sp_tokenizer.save(tmp_path)
    back = load_tokenizer(tmp_path)
    assert isinstance(back, SentencePieceTokenizer)
    text = "Assignment statements are used to (re)bind names to values."
    assert back.encode(text) == sp_tokenizer.encode(text)
    train_text, _ = split_corpus(default_corpus_text())
    again = build_tokenizer("sentencepiece", text=train_text[:150_000], vocab_size=400)
    assert again.model_proto == sp_tokenizer.model_proto


def test_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="xlnet_ref_tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "xlnet_ref_tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="kind"):
        build_tokenizer("wordpiece")
    with pytest.raises(ValueError, match="vocab_size"):
        SentencePieceTokenizer.train("a few words only", vocab_size=5000)
