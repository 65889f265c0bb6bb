"""Topic exchange: binding keys are dot-separated words where ``*`` matches exactly one word and
``#`` zero or more.

The bindings form a trie keyed by word, with ``*`` and ``#`` as children of their own; a routing
key walks the trie once (``#`` nodes try every suffix). Results are cached per routing key by the
base class, so the walk happens once per distinct key between binding changes.
"""

from __future__ import annotations

from amqpbroker.broker.exchanges.base import Binding, Exchange, unique
from amqpbroker.broker.message import Message

__all__ = ["TopicExchange", "TopicTrie"]


def _words(key: str) -> list[str]:
    """The words of a key; the empty key has none (so ``*`` does not match it, ``#`` does)."""
    return key.split(".") if key else []


class _Node:
    __slots__ = ("children", "bindings")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.bindings: list[Binding] = []


class TopicTrie:
    """Binding patterns -> values, matched against routing keys."""

    def __init__(self) -> None:
        self._root = _Node()

    def add(self, pattern: str, binding: Binding) -> None:
        node = self._root
        for word in _words(pattern):
            node = node.children.setdefault(word, _Node())
        node.bindings.append(binding)

    def remove(self, pattern: str, binding: Binding) -> None:
        path = [self._root]
        words = _words(pattern)
        for word in words:
            path.append(path[-1].children[word])
        path[-1].bindings.remove(binding)
        for depth in range(len(words), 0, -1):  # prune empty branches
            node = path[depth]
            if node.bindings or node.children:
                break
            del path[depth - 1].children[words[depth - 1]]

    def match(self, routing_key: str) -> list[Binding]:
        found: list[Binding] = []
        words = _words(routing_key)
        self._walk(self._root, words, 0, found, set())
        return found

    def _walk(self, node: _Node, words: list[str], index: int, found: list[Binding],
              seen: set[tuple[int, int]]) -> None:
        state = (id(node), index)
        if state in seen:  # '#' sequences reach the same (node, position) many ways
            return
        seen.add(state)
        children = node.children
        hash_node = children.get("#")
        if hash_node is not None:
            for rest in range(index, len(words) + 1):  # '#' eats 0..all remaining words
                self._walk(hash_node, words, rest, found, seen)
        if index == len(words):
            found.extend(node.bindings)
            return
        word = words[index]
        exact = children.get(word)
        if exact is not None:
            self._walk(exact, words, index + 1, found, seen)
        if word != "*":  # a literal '*' word already took the '*' child as its exact match
            star = children.get("*")
            if star is not None:
                self._walk(star, words, index + 1, found, seen)


class TopicExchange(Exchange):
    type_name = "topic"
    __slots__ = ("_trie",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._trie = TopicTrie()

    def _add(self, binding: Binding) -> None:
        self._trie.add(binding.routing_key, binding)

    def _remove(self, binding: Binding) -> None:
        self._trie.remove(binding.routing_key, binding)

    def _match(self, routing_key: str, message: Message) -> tuple:
        return unique(binding.destination for binding in self._trie.match(routing_key))
