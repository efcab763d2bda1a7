"""Folding French text and the keys an operation is searched by (shared.text)."""

from __future__ import annotations

from shared.text import all_words_prefix, search_key, search_keys, words_of


def test_search_keys_are_the_words_and_their_beginnings_from_three_letters():
    keys = search_keys("PRLV SEPA Électricité", "EDF 12/03")
    assert {"prlv", "sepa", "edf", "12", "03", "electricite"} <= set(keys)
    assert {"ele", "elec", "electricit", "electricite", "pre"} - {"pre"} <= set(keys)
    assert "el" not in keys  # two letters find half the memos: no key
    assert keys == sorted(set(keys))
    # beginnings stop at 12 letters: a longer wanted word is looked up by its first 12, then checked whole
    long = search_keys("ANTICONSTITUTIONNELLEMENT")
    assert "anticonstitu" in long
    assert "anticonstitut" not in long
    assert "anticonstitutionnellement" in long


def test_the_key_of_a_search_is_its_longest_words_beginning():
    assert search_key(words_of("elec EDF")) == "elec"
    assert search_key(words_of("anticonstitutionnellement")) == "anticonstitu"
    assert search_key(words_of("cb 12")) is None  # too short for any key: the search reads by month
    assert search_key([]) is None


def test_what_a_key_finds_is_then_checked_word_by_word():
    stored = search_keys("CB CARREFOUR MARKET 12/03")
    assert all_words_prefix(words_of("carref mark"), stored)
    assert not all_words_prefix(words_of("carrefour auchan"), stored)
    assert not all_words_prefix(words_of("arrefour"), stored)  # the beginning of a word, not its middle
