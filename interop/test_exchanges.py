"""Exchange interop: declare/delete rules, equivalence, reserved names and routing per type.

Every expectation here was checked against RabbitMQ 3.10.8.
"""

from __future__ import annotations

import pika
import pika.exceptions
import pytest

from interop.support import drain as _drain

pytestmark = pytest.mark.timeout(30)


def _queue(ch, cleanup, name: str) -> str:
    ch.queue_declare(cleanup.queue(name))
    return name


def _publish_all(ch, exchange: str, keys, headers_list=None) -> None:
    """Publish with publisher confirms so every message is routed before we look."""
    if not getattr(ch, "_delivery_confirmation", False):
        ch.confirm_delivery()
    if headers_list is None:
        for key in keys:
            ch.basic_publish(exchange, key, key.encode() or b"<empty>")
    else:
        for name, headers in headers_list:
            ch.basic_publish(exchange, "ignored", name.encode(), pika.BasicProperties(headers=headers))


def _channel_error(ch, fn):
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        fn()
        # publishes are async: a round trip surfaces the channel close
        ch.basic_qos(prefetch_count=0)
    return info.value


# --------------------------------------------------------------------------- declare


@pytest.mark.parametrize("kind", ["direct", "fanout", "topic", "headers"])
def test_declare_each_type_and_redeclare_and_passive(ch, cleanup, unique, kind):
    name = cleanup.exchange(f"{unique}-{kind}")
    ch.exchange_declare(name, kind)
    ch.exchange_declare(name, kind)  # identical redeclare is fine
    ch.exchange_declare(name, kind, passive=True)
    ch.exchange_delete(name)
    err = _channel_error(ch, lambda: ch.exchange_declare(name, kind, passive=True))
    assert err.reply_code == 404


@pytest.mark.parametrize(
    "name,kind",
    [
        ("amq.direct", "direct"),
        ("amq.fanout", "fanout"),
        ("amq.topic", "topic"),
        ("amq.headers", "headers"),
        ("amq.match", "headers"),
    ],
)
def test_predeclared_exchanges_exist(ch, name, kind):
    ch.exchange_declare(name, kind, passive=True)
    # an equivalent full redeclare of a predeclared exchange is accepted (they are durable)
    ch.exchange_declare(name, kind, durable=True)


def test_predeclared_exchange_inequivalent_redeclare_is_406(ch):
    err = _channel_error(ch, lambda: ch.exchange_declare("amq.direct", "direct", durable=False))
    assert err.reply_code == 406
    assert "PRECONDITION_FAILED" in err.reply_text
    assert "durable" in err.reply_text


def test_passive_declare_missing_exchange_is_404(conn, ch, unique):
    name = f"{unique}-missing"
    err = _channel_error(ch, lambda: ch.exchange_declare(name, "direct", passive=True))
    assert err.reply_code == 404
    assert err.reply_text.startswith("NOT_FOUND")
    assert f"no exchange '{name}'" in err.reply_text
    assert conn.is_open
    conn.channel().exchange_declare("amq.direct", "direct", passive=True)


def test_passive_declare_ignores_type_and_flags(ch, cleanup, unique):
    name = cleanup.exchange(f"{unique}-x")
    ch.exchange_declare(name, "direct")
    ch.exchange_declare(name, "fanout", passive=True, durable=True, auto_delete=True)


@pytest.mark.parametrize(
    "change,field",
    [
        ({"exchange_type": "fanout"}, "type"),
        ({"durable": True}, "durable"),
        ({"auto_delete": True}, "auto_delete"),
        ({"internal": True}, "internal"),
        ({"arguments": {"alternate-exchange": "elsewhere"}}, "alternate-exchange"),
    ],
)
def test_inequivalent_redeclare_is_406(conn, ch, cleanup, unique, change, field):
    name = cleanup.exchange(f"{unique}-x")
    ch.exchange_declare(name, "direct")
    kwargs = {"exchange_type": "direct", **change}
    err = _channel_error(ch, lambda: ch.exchange_declare(name, **kwargs))
    assert err.reply_code == 406
    assert err.reply_text.startswith("PRECONDITION_FAILED")
    assert f"inequivalent arg '{field}'" in err.reply_text
    assert name in err.reply_text
    # the original is untouched
    conn.channel().exchange_declare(name, "direct")


def test_redeclare_with_other_arguments_is_accepted(ch, cleanup, unique):
    """Only alternate-exchange takes part in exchange equivalence."""
    name = cleanup.exchange(f"{unique}-x")
    ch.exchange_declare(name, "direct", arguments={"alternate-exchange": "ae"})
    ch.exchange_declare(name, "direct", arguments={"alternate-exchange": "ae", "foo": "bar"})
    ch.exchange_declare(name, "direct", arguments={"alternate-exchange": "ae", "x-custom": 1})
    err = _channel_error(ch, lambda: ch.exchange_declare(name, "direct"))
    assert err.reply_code == 406
    assert "alternate-exchange" in err.reply_text


def test_declare_reserved_amq_prefix_is_403(conn, ch, cleanup, unique):
    name = f"amq.{unique}"
    err = _channel_error(ch, lambda: ch.exchange_declare(name, "direct"))
    assert err.reply_code == 403
    assert err.reply_text.startswith("ACCESS_REFUSED")
    assert name in err.reply_text
    ch = conn.channel()
    err = _channel_error(ch, lambda: ch.exchange_declare(name, "direct", passive=True))
    assert err.reply_code == 404
    # the prefix check is case-sensitive
    upper = cleanup.exchange(f"AMQ.{unique}")
    conn.channel().exchange_declare(upper, "direct")


@pytest.mark.parametrize("op", ["declare", "passive", "delete"])
def test_default_exchange_cannot_be_declared_or_deleted(ch, op):
    fns = {
        "declare": lambda: ch.exchange_declare("", "direct"),
        "passive": lambda: ch.exchange_declare("", "direct", passive=True),
        "delete": lambda: ch.exchange_delete(""),
    }
    err = _channel_error(ch, fns[op])
    assert err.reply_code == 403
    assert err.reply_text.startswith("ACCESS_REFUSED")
    assert "default exchange" in err.reply_text


@pytest.mark.parametrize("name", ["amq.direct", "amq.topic"])
def test_deleting_predeclared_exchange_is_403(conn, ch, name):
    err = _channel_error(ch, lambda: ch.exchange_delete(name))
    assert err.reply_code == 403
    assert err.reply_text.startswith("ACCESS_REFUSED")
    assert name in err.reply_text
    conn.channel().exchange_declare(name, name.split(".")[1], passive=True)


def test_unknown_exchange_type_closes_connection_503(conn, unique):
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        ch.exchange_declare(f"{unique}-x", "no-such-type")
    assert info.value.reply_code == 503
    assert info.value.reply_text.startswith("COMMAND_INVALID")
    assert "no-such-type" in info.value.reply_text
    assert conn.is_closed


def test_unknown_x_exchange_type_closes_connection_503(conn, unique):
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        ch.exchange_declare(f"{unique}-x", "x-not-a-plugin")
    assert info.value.reply_code == 503
    assert info.value.reply_text.startswith("COMMAND_INVALID")
    assert "x-not-a-plugin" in info.value.reply_text


def test_unknown_type_on_passive_declare_is_ignored(ch, cleanup, unique):
    name = cleanup.exchange(f"{unique}-x")
    ch.exchange_declare(name, "direct")
    ch.exchange_declare(name, "no-such-type", passive=True)


# --------------------------------------------------------------------------- delete


def test_delete_missing_exchange_is_ok(ch, unique):
    ch.exchange_delete(f"{unique}-missing")
    ch.exchange_delete(f"{unique}-missing", if_unused=True)
    assert ch.is_open


def test_delete_if_unused_with_queue_binding_is_406(conn, ch, cleanup, unique):
    x = cleanup.exchange(f"{unique}-x")
    q = _queue(ch, cleanup, f"{unique}-q")
    ch.exchange_declare(x, "direct")
    ch.queue_bind(q, x, "k")
    err = _channel_error(ch, lambda: ch.exchange_delete(x, if_unused=True))
    assert err.reply_code == 406
    assert err.reply_text.startswith("PRECONDITION_FAILED")
    assert x in err.reply_text and "in use" in err.reply_text
    ch = conn.channel()
    ch.exchange_declare(x, "direct", passive=True)  # still there
    ch.queue_unbind(q, x, "k")
    ch.exchange_delete(x, if_unused=True)
    err = _channel_error(ch, lambda: ch.exchange_declare(x, "direct", passive=True))
    assert err.reply_code == 404


def test_delete_if_unused_counts_only_bindings_where_exchange_is_source(conn, ch, cleanup, unique):
    src = cleanup.exchange(f"{unique}-src")
    dst = cleanup.exchange(f"{unique}-dst")
    ch.exchange_declare(src, "direct")
    ch.exchange_declare(dst, "fanout")
    ch.exchange_bind(dst, src, "k")
    err = _channel_error(ch, lambda: ch.exchange_delete(src, if_unused=True))
    assert err.reply_code == 406
    # being only the destination of a binding does not count as "in use"
    ch = conn.channel()
    ch.exchange_delete(dst, if_unused=True)
    err = _channel_error(ch, lambda: ch.exchange_declare(dst, "fanout", passive=True))
    assert err.reply_code == 404


def test_deleting_exchange_drops_its_bindings(ch, cleanup, unique):
    x = cleanup.exchange(f"{unique}-x")
    q = _queue(ch, cleanup, f"{unique}-q")
    ch.exchange_declare(x, "fanout")
    ch.queue_bind(q, x)
    ch.exchange_delete(x)
    ch.exchange_declare(x, "fanout")
    _publish_all(ch, x, ["after"])
    assert _drain(ch, q) == []


# --------------------------------------------------------------------------- publish errors


def test_publish_to_missing_exchange_is_404(conn, ch, unique):
    name = f"{unique}-missing"
    err = _channel_error(ch, lambda: ch.basic_publish(name, "k", b"x"))
    assert err.reply_code == 404
    assert err.reply_text.startswith("NOT_FOUND")
    assert f"no exchange '{name}'" in err.reply_text
    assert conn.is_open
    conn.channel().exchange_declare("amq.direct", "direct", passive=True)


def test_publish_to_internal_exchange_is_403(conn, ch, cleanup, unique):
    name = cleanup.exchange(f"{unique}-internal")
    ch.exchange_declare(name, "fanout", internal=True)
    err = _channel_error(ch, lambda: ch.basic_publish(name, "k", b"x"))
    assert err.reply_code == 403
    assert err.reply_text.startswith("ACCESS_REFUSED")
    assert "internal exchange" in err.reply_text and name in err.reply_text
    assert conn.is_open


def test_internal_exchange_receives_through_exchange_binding(ch, cleanup, unique):
    front = cleanup.exchange(f"{unique}-front")
    internal = cleanup.exchange(f"{unique}-internal")
    q = _queue(ch, cleanup, f"{unique}-q")
    ch.exchange_declare(front, "direct")
    ch.exchange_declare(internal, "fanout", internal=True)
    ch.exchange_bind(internal, front, "k")
    ch.queue_bind(q, internal)
    _publish_all(ch, front, ["k", "other"])
    assert _drain(ch, q) == [b"k"]


# --------------------------------------------------------------------------- routing


def test_default_exchange_routes_by_queue_name(ch, cleanup, unique):
    a = _queue(ch, cleanup, f"{unique}-a")
    b = _queue(ch, cleanup, f"{unique}-b")
    ch.confirm_delivery()
    ch.basic_publish("", a, b"to-a")
    ch.basic_publish("", b, b"to-b")
    ch.basic_publish("", f"{unique}-nobody", b"dropped")
    ch.basic_publish("", a.upper(), b"case-sensitive")
    assert _drain(ch, a) == [b"to-a"]
    assert _drain(ch, b) == [b"to-b"]


@pytest.mark.parametrize("op", ["bind", "unbind"])
def test_binding_to_default_exchange_is_403(ch, cleanup, unique, op):
    q = _queue(ch, cleanup, f"{unique}-q")
    fn = ch.queue_bind if op == "bind" else ch.queue_unbind
    err = _channel_error(ch, lambda: fn(q, "", q))
    assert err.reply_code == 403
    assert "default exchange" in err.reply_text


def test_direct_routing(ch, cleanup, unique):
    x = cleanup.exchange(f"{unique}-x")
    ch.exchange_declare(x, "direct")
    q1 = _queue(ch, cleanup, f"{unique}-q1")
    q2 = _queue(ch, cleanup, f"{unique}-q2")
    q3 = _queue(ch, cleanup, f"{unique}-q3")
    ch.queue_bind(q1, x, "a")
    ch.queue_bind(q2, x, "a")
    ch.queue_bind(q2, x, "b")
    ch.queue_bind(q3, x, "")
    _publish_all(ch, x, ["a", "b", "", "A", "a.b", "c"])
    assert _drain(ch, q1) == [b"a"]
    assert _drain(ch, q2) == [b"a", b"b"]
    assert _drain(ch, q3) == [b"<empty>"]


def test_fanout_ignores_routing_key_and_delivers_once_per_queue(ch, cleanup, unique):
    x = cleanup.exchange(f"{unique}-x")
    ch.exchange_declare(x, "fanout")
    q1 = _queue(ch, cleanup, f"{unique}-q1")
    q2 = _queue(ch, cleanup, f"{unique}-q2")
    ch.queue_bind(q1, x, "one")
    ch.queue_bind(q1, x, "two")  # second binding, still a single copy
    ch.queue_bind(q2, x)
    _publish_all(ch, x, ["x", "", "y.z"])
    assert _drain(ch, q1) == [b"x", b"<empty>", b"y.z"]
    assert _drain(ch, q2) == [b"x", b"<empty>", b"y.z"]


TOPIC_KEYS = [
    "", "a", "b", "a.b", "a.x.b", "a.x.y.b", "a..b", "a.", ".a", ".", "..",
    "a.b.c", "b.a", "x.a.y", "a.b.b",
]

TOPIC_CASES = {
    "#": TOPIC_KEYS,
    "#.#": TOPIC_KEYS,
    "*": ["a", "b"],
    "": [""],
    "a.*": ["a.b", "a."],
    "*.b": ["a.b"],
    "a.#": ["a", "a.b", "a.x.b", "a.x.y.b", "a..b", "a.", "a.b.c", "a.b.b"],
    "#.b": ["b", "a.b", "a.x.b", "a.x.y.b", "a..b", "a.b.b"],
    "a.#.b": ["a.b", "a.x.b", "a.x.y.b", "a..b", "a.b.b"],
    "a.#.#.b": ["a.b", "a.x.b", "a.x.y.b", "a..b", "a.b.b"],
    "a..b": ["a..b"],
    "a.*.b": ["a.x.b", "a..b", "a.b.b"],
    "*.*": ["a.b", "a.", ".a", ".", "b.a"],
    "*.*.*": ["a.x.b", "a..b", "..", "a.b.c", "x.a.y", "a.b.b"],
    "#.*": [k for k in TOPIC_KEYS if k != ""],
    "*.#": [k for k in TOPIC_KEYS if k != ""],
    "#.a.#": ["a", "a.b", "a.x.b", "a.x.y.b", "a..b", "a.", ".a", "a.b.c", "b.a", "x.a.y", "a.b.b"],
    "a.b.#": ["a.b", "a.b.c", "a.b.b"],
}


def test_topic_routing_patterns(ch, cleanup, unique):
    x = cleanup.exchange(f"{unique}-topic")
    ch.exchange_declare(x, "topic")
    queues = {}
    for i, pattern in enumerate(TOPIC_CASES):
        q = _queue(ch, cleanup, f"{unique}-q{i}")
        ch.queue_bind(q, x, pattern)
        queues[pattern] = q
    _publish_all(ch, x, TOPIC_KEYS)
    for pattern, expected in TOPIC_CASES.items():
        got = _drain(ch, queues[pattern])
        want = [k.encode() or b"<empty>" for k in expected]
        assert got == want, f"pattern {pattern!r}"


def test_topic_overlapping_bindings_deliver_one_copy(ch, cleanup, unique):
    x = cleanup.exchange(f"{unique}-topic")
    ch.exchange_declare(x, "topic")
    q = _queue(ch, cleanup, f"{unique}-q")
    for pattern in ("a.*", "#", "a.b", "*.b"):
        ch.queue_bind(q, x, pattern)
    _publish_all(ch, x, ["a.b"])
    assert _drain(ch, q) == [b"a.b"]


def test_unbind_stops_routing(ch, cleanup, unique):
    x = cleanup.exchange(f"{unique}-topic")
    ch.exchange_declare(x, "topic")
    q = _queue(ch, cleanup, f"{unique}-q")
    ch.queue_bind(q, x, "a.*")
    _publish_all(ch, x, ["a.one"])
    ch.queue_unbind(q, x, "a.*")
    _publish_all(ch, x, ["a.two"])
    assert _drain(ch, q) == [b"a.one"]


HEADER_MESSAGES = [
    ("none", None),
    ("empty", {}),
    ("a1", {"a": 1}),
    ("a1b2", {"a": 1, "b": "two"}),
    ("a1b2c", {"a": 1, "b": "two", "c": 3}),
    ("astr1", {"a": "1"}),
    ("a1bx", {"a": 1, "b": "x"}),
    ("b2", {"b": "two"}),
    ("xfoo", {"x-foo": "bar"}),
    ("a1xfoo", {"a": 1, "x-foo": "bar"}),
    ("abool", {"a": True}),
    ("avoid", {"a": None}),
]
ALL_NAMES = [name for name, _ in HEADER_MESSAGES]

HEADER_CASES = [
    ("all", {"x-match": "all", "a": 1, "b": "two"}, ["a1b2", "a1b2c"]),
    ("default-is-all", {"a": 1, "b": "two"}, ["a1b2", "a1b2c"]),
    ("any", {"x-match": "any", "a": 1, "b": "two"}, ["a1", "a1b2", "a1b2c", "a1bx", "b2", "a1xfoo"]),
    # binding keys starting with x- are ignored by all/any
    ("all-ignores-x", {"x-match": "all", "a": 1, "x-foo": "bar"}, ["a1", "a1b2", "a1b2c", "a1bx", "a1xfoo"]),
    ("any-only-x", {"x-match": "any", "x-foo": "bar"}, []),
    ("all-nothing", {"x-match": "all"}, ALL_NAMES),
    ("no-args", {}, ALL_NAMES),
    ("any-nothing", {"x-match": "any"}, []),
    # values compare with their type: int 1 is not "1" and not true
    ("str-value", {"a": "1"}, ["astr1"]),
    ("int-value", {"a": 1}, ["a1", "a1b2", "a1b2c", "a1bx", "a1xfoo"]),
    # a void binding value only requires the header to be present
    ("void-value", {"a": None}, ["a1", "a1b2", "a1b2c", "astr1", "a1bx", "a1xfoo", "abool", "avoid"]),
    ("all-with-x", {"x-match": "all-with-x", "a": 1, "x-foo": "bar"}, ["a1xfoo"]),
    ("any-with-x", {"x-match": "any-with-x", "x-foo": "bar"}, ["xfoo", "a1xfoo"]),
]


def test_headers_routing(ch, cleanup, unique):
    x = cleanup.exchange(f"{unique}-headers")
    ch.exchange_declare(x, "headers")
    queues = {}
    for label, args, _ in HEADER_CASES:
        q = _queue(ch, cleanup, f"{unique}-{label}")
        ch.queue_bind(q, x, "ignored-key", arguments=args)
        queues[label] = q
    _publish_all(ch, x, None, HEADER_MESSAGES)
    for label, _, expected in HEADER_CASES:
        got = [b.decode() for b in _drain(ch, queues[label])]
        assert got == expected, label


@pytest.mark.parametrize("exchange", ["amq.match", "amq.headers"])
def test_predeclared_headers_exchanges_route_on_headers(ch, cleanup, unique, exchange):
    # shared exchange: match on a header only this test uses
    q = _queue(ch, cleanup, f"{unique}-q")
    ch.queue_bind(q, exchange, "", arguments={"x-match": "all", "test-tag": unique})
    _publish_all(
        ch,
        exchange,
        None,
        [("mine", {"test-tag": unique}), ("other", {"test-tag": f"{unique}-other"}), ("none", {})],
    )
    assert _drain(ch, q) == [b"mine"]


@pytest.mark.parametrize(
    "value,fragment",
    [("foo", "Invalid x-match field value"), ("ALL", "Invalid x-match field value"), (1, "Invalid x-match field type")],
)
def test_headers_invalid_x_match_is_406(conn, ch, cleanup, unique, value, fragment):
    x = cleanup.exchange(f"{unique}-headers")
    ch.exchange_declare(x, "headers")
    q = _queue(ch, cleanup, f"{unique}-q")
    err = _channel_error(ch, lambda: ch.queue_bind(q, x, "", arguments={"x-match": value, "a": 1}))
    assert err.reply_code == 406
    assert err.reply_text.startswith("PRECONDITION_FAILED")
    assert fragment in err.reply_text
    assert conn.is_open


# --------------------------------------------------------------------------- exchange-to-exchange


def test_exchange_to_exchange_routing(ch, cleanup, unique):
    src = cleanup.exchange(f"{unique}-src")
    dst = cleanup.exchange(f"{unique}-dst")
    ch.exchange_declare(src, "topic")
    ch.exchange_declare(dst, "direct")
    q = _queue(ch, cleanup, f"{unique}-q")
    direct_q = _queue(ch, cleanup, f"{unique}-direct")
    ch.exchange_bind(dst, src, "orders.#")
    ch.queue_bind(q, dst, "orders.new")
    ch.queue_bind(direct_q, src, "#")
    ch.queue_bind(direct_q, dst, "orders.new")  # reachable twice, still one copy
    _publish_all(ch, src, ["orders.new", "orders.old", "other"])
    assert _drain(ch, q) == [b"orders.new"]
    assert _drain(ch, direct_q) == [b"orders.new", b"orders.old", b"other"]
    ch.exchange_unbind(dst, src, "orders.#")
    _publish_all(ch, src, ["orders.new"])
    assert _drain(ch, q) == []


@pytest.mark.parametrize("missing", ["source", "destination"])
def test_exchange_bind_with_missing_exchange_is_404(ch, cleanup, unique, missing):
    present = cleanup.exchange(f"{unique}-present")
    ch.exchange_declare(present, "fanout")
    absent = f"{unique}-absent"
    if missing == "source":
        fn = lambda: ch.exchange_bind(present, absent, "k")  # noqa: E731
    else:
        fn = lambda: ch.exchange_bind(absent, present, "k")  # noqa: E731
    err = _channel_error(ch, fn)
    assert err.reply_code == 404
    assert f"no exchange '{absent}'" in err.reply_text


def test_exchange_unbind_of_missing_binding_is_ok(ch, cleanup, unique):
    a = cleanup.exchange(f"{unique}-a")
    b = cleanup.exchange(f"{unique}-b")
    ch.exchange_declare(a, "fanout")
    ch.exchange_declare(b, "fanout")
    ch.exchange_unbind(b, a, "never-bound")
    assert ch.is_open


def test_alternate_exchange_gets_unroutable_messages(ch, cleanup, unique):
    main = cleanup.exchange(f"{unique}-main")
    ae = cleanup.exchange(f"{unique}-ae")
    ch.exchange_declare(ae, "fanout")
    ch.exchange_declare(main, "direct", arguments={"alternate-exchange": ae})
    routed = _queue(ch, cleanup, f"{unique}-routed")
    caught = _queue(ch, cleanup, f"{unique}-caught")
    ch.queue_bind(routed, main, "known")
    ch.queue_bind(caught, ae)
    _publish_all(ch, main, ["known", "unknown"])
    assert _drain(ch, routed) == [b"known"]
    assert _drain(ch, caught) == [b"unknown"]
