"""Topic matching agrees with a direct reading of RabbitMQ's rules, for any keys (hypothesis)."""

from __future__ import annotations

from functools import cache

from hypothesis import given, settings, strategies as st

from amqpbroker.broker.exchanges.topic import TopicTrie

word = st.sampled_from(["a", "b", "c", "", "*", "#", "ab"])
key_word = st.sampled_from(["a", "b", "c", "", "ab", "*", "#"])
pattern = st.lists(word, max_size=5).map(".".join)
routing_key = st.lists(key_word, max_size=5).map(".".join)


def words(key: str) -> tuple[str, ...]:
    return tuple(key.split(".")) if key else ()


def reference_match(pattern: str, key: str) -> bool:
    """'*' is exactly one word, '#' zero or more; other words must be equal."""
    p, k = words(pattern), words(key)

    @cache
    def match(i: int, j: int) -> bool:
        if i == len(p):
            return j == len(k)
        if p[i] == "#":
            return any(match(i + 1, rest) for rest in range(j, len(k) + 1))
        if j == len(k):
            return False
        return (p[i] == "*" or p[i] == k[j]) and match(i + 1, j + 1)

    return match(0, 0)


@given(patterns=st.lists(pattern, min_size=1, max_size=8, unique=True), key=routing_key)
@settings(max_examples=500)
def test_trie_matches_reference(patterns: list[str], key: str) -> None:
    trie = TopicTrie()
    for index, p in enumerate(patterns):
        trie.add(p, index)
    got = sorted(trie.match(key))
    assert got == [index for index, p in enumerate(patterns) if reference_match(p, key)]


@given(patterns=st.lists(pattern, min_size=2, max_size=8, unique=True), key=routing_key)
def test_removing_bindings_forgets_them(patterns: list[str], key: str) -> None:
    trie = TopicTrie()
    for index, p in enumerate(patterns):
        trie.add(p, index)
    removed = patterns[0]
    trie.remove(removed, 0)
    assert 0 not in trie.match(key)
    kept = [index for index, p in enumerate(patterns) if index and reference_match(p, key)]
    assert sorted(trie.match(key)) == kept


def test_known_cases() -> None:
    cases = {
        ("#", ""): True, ("#", "a.b"): True, ("*", ""): False, ("*", "a"): True,
        ("a.#.b", "a.b"): True, ("a.#.b", "a.x.y.b"): True, ("a.*.b", "a.b"): False,
        ("#.#", "a"): True, ("a.#", "a"): True, ("", ""): True, ("", "a"): False,
    }
    for (p, key), expected in cases.items():
        trie = TopicTrie()
        trie.add(p, "x")
        assert (trie.match(key) == ["x"]) is expected, (p, key)
