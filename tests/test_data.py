from __future__ import annotations

import pytest
import torch

from autoshrink.data import EOS, UNK, Vocab, batchify, bptt_windows, load_corpus, load_lm_data, tokenize
from autoshrink.errors import UserError


def test_tokenize_lowercases_words_and_splits_punctuation():
    assert tokenize("And God said, Let there be light: and there was light.") == [
        "and",
        "god",
        "said",
        ",",
        "let",
        "there",
        "be",
        "light",
        ":",
        "and",
        "there",
        "was",
        "light",
        ".",
    ]
    assert tokenize("the <unk> man's 12 sheep") == ["the", "<unk>", "man's", "12", "sheep"]


def test_vocab_is_frequency_ordered_with_specials_and_caps_words():
    lines = [["a", "b", "a", "a", EOS], ["c", "a", "b", EOS], ["d", EOS]]
    v = Vocab.build(lines, max_words=2)
    assert v.words[0] == "a" and set(v.words) == {"a", "b", EOS, UNK}
    assert list(v.counts) == sorted(v.counts, reverse=True)
    assert dict(zip(v.words, v.counts))[UNK] == 2  # c and d fall outside the 2 kept words
    ids = v.encode([["a", "zzz", EOS]])
    assert ids.tolist() == [v.index["a"], v.index[UNK], v.index[EOS]]
    assert Vocab.from_json(v.to_json()) == v
    assert torch.equal(v.freqs, torch.tensor(v.counts, dtype=torch.float32))


def test_text_file_splits_90_5_5_by_lines(text_file):
    c = load_corpus(str(text_file))
    n = len(c.train) + len(c.valid) + len(c.test)
    assert n == 600 and len(c.train) == 540 and len(c.valid) == 30 and len(c.test) == 30
    assert all(line[-1] == EOS for line in c.train)


def test_folder_in_ptb_layout(corpus_folder):
    data = load_lm_data(str(corpus_folder))
    assert len(data.train) > len(data.valid) > 0 and len(data.test) > 0
    assert data.vocab.index[EOS] in data.train.tolist()


@pytest.mark.parametrize("content", ["", "\n\n   \n"])
def test_empty_corpus_is_a_clear_error(tmp_path, content):
    f = tmp_path / "empty.txt"
    f.write_text(content)
    with pytest.raises(UserError, match="empty"):
        load_corpus(str(f))


def test_missing_corpus_and_incomplete_folder_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="no corpus"):
        load_corpus(str(tmp_path / "nope.txt"))
    (tmp_path / "train.txt").write_text("a b c\n")
    with pytest.raises(UserError, match="valid.txt"):
        load_corpus(str(tmp_path))


def test_kjv_split_matches_the_benchmark():
    data = load_lm_data("kjv")
    assert len(data.vocab) == 10_002
    assert 840_000 < data.train.numel() < 850_000
    assert 45_000 < data.valid.numel() < 52_000 and 48_000 < data.test.numel() < 54_000
    unk = data.vocab.index[UNK]
    assert (data.train == unk).float().mean() < 0.004  # the 10k words cover 99.7%


def test_batchify_and_bptt_windows_shift_targets_by_one():
    ids = torch.arange(103)
    cols = batchify(ids, 4)
    assert cols.shape == (25, 4) and cols[:, 1].tolist() == list(range(25, 50))
    windows = list(bptt_windows(cols, 10))
    assert [x.size(0) for x, _ in windows] == [10, 10, 4]
    for x, y in windows:
        assert torch.equal(y, x + 1)
    with pytest.raises(ValueError):
        batchify(torch.arange(5), 4)
