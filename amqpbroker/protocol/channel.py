"""One channel's protocol state: open or closing, and content assembly.

Content arrives as three kinds of frame: a content-bearing method (``Basic.Publish``), one
content header, then body frames until the declared body size is reached. Assembly is an
explicit state: any other frame in between is a 505 UNEXPECTED_FRAME connection error, as is a
header or body frame when no content is expected, or a body larger than its header declared.
"""

from __future__ import annotations

from amqpbroker.codec.content import (
    BASIC_CLASS_ID, FIXED_PROPERTY_LENGTHS, check_properties, parse_content_header,
)
from amqpbroker.codec.methods import PUBLISH_ID, Publish
from amqpbroker.errors import AMQPError, ChannelError, ConnectionError, ReplyCode

__all__ = ["ChannelMachine", "MAX_MESSAGE_SIZE"]

MAX_MESSAGE_SIZE = 16 * 1024 * 1024  # RabbitMQ 4's default max_message_size (3.x: 128 MiB)
# whole_content() remembers the last header it took up to this size (a channel pins no more)
WHOLE_HEADER_KEPT = 2048


def unexpected_frame(text: str) -> ConnectionError:
    return ConnectionError(ReplyCode.UNEXPECTED_FRAME, text)


def unexpected_content_frame(text: str) -> ConnectionError:
    """Mid-content errors name the content method being assembled, as RabbitMQ does."""
    return ConnectionError(ReplyCode.UNEXPECTED_FRAME, text, *PUBLISH_ID)


def _check_property_list(header: bytes) -> None:
    """Walk a content header's property list, unless its flags name fixed-size properties only
    and it is long enough for them (the usual case: one lookup)."""
    flags = header[12] << 8 | header[13]
    if flags and not (flags in FIXED_PROPERTY_LENGTHS and len(header) >= FIXED_PROPERTY_LENGTHS[flags]):
        check_properties(header)


class ChannelMachine:
    """Protocol state of one open channel.

    ``closing`` is set once the broker sent ``channel.close``: from then on every frame but
    ``channel.close`` / ``channel.close-ok`` is discarded, as the spec requires.
    """

    __slots__ = ("number", "closing", "_publish", "_header", "_body_size", "_chunks", "_received",
                 "max_message_size", "_whole_header", "_whole_size")

    def __init__(self, number: int, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self.number = number
        self.max_message_size = max_message_size
        self.closing = False
        self._publish: Publish | None = None
        self._header: bytes | None = None
        self._body_size = 0
        self._chunks: list[bytes] = []
        self._received = 0
        self._whole_header = b""  # the last header whole_content() took, and its body size
        self._whole_size = -1

    @property
    def assembling(self) -> bool:
        return self._publish is not None

    def start_content(self, publish: Publish) -> None:
        if self._publish is not None:
            raise unexpected_content_frame(
                f"expected content header for class {BASIC_CLASS_ID}, got non content header frame instead")
        self._publish = publish
        self._header = None

    def reject_method_mid_content(self) -> None:
        """A method frame arrived: legal only when no content is being assembled."""
        if self._publish is not None:
            what = "content header" if self._header is None else "content body"
            raise unexpected_content_frame(f"expected {what} for class {BASIC_CLASS_ID}, got method frame instead")

    @property
    def mid_content(self) -> bool:
        return self._publish is not None or self._header is not None

    def whole_content(self, header: bytes, body: bytes) -> bool:
        """A publish whose header and whole body (one frame) came right behind it: may they be
        taken at once, without the steps of :meth:`start_content`, :meth:`on_header` and
        :meth:`on_body`? False for anything unusual (content under way, another class, a body
        size that is not this frame's, too large, properties that do not check): those frames
        then take the steps, which answer whatever is wrong. The header taken last, the same
        object again (the frame reader hands a repeated header over so), needs no second look."""
        if self._publish is not None:
            return False
        if header is self._whole_header and len(body) == self._whole_size:
            return True
        if len(header) < 14:
            return False
        class_id, body_size = parse_content_header(header)
        if class_id != BASIC_CLASS_ID or body_size != len(body) or not body_size or body_size > self.max_message_size:
            return False
        try:
            _check_property_list(header)
        except AMQPError:
            return False
        if len(header) <= WHOLE_HEADER_KEPT:
            self._whole_header, self._whole_size = header, body_size
        return True

    def on_header(self, payload: bytes) -> tuple[Publish, bytes, bytes] | None:
        """Take a content header; returns the whole message when the body is empty."""
        if self._publish is None or self._header is not None:
            raise unexpected_frame(f"content header frame on channel {self.number} without a content method")
        class_id, body_size = parse_content_header(payload)
        if class_id != BASIC_CLASS_ID:
            raise unexpected_frame(f"content header for class {class_id}, expected {BASIC_CLASS_ID}")
        if body_size > self.max_message_size:
            self._publish = None
            raise ChannelError(ReplyCode.PRECONDITION_FAILED,
                               f"message size {body_size} is larger than configured max size "
                               f"{self.max_message_size}", 60, 40)
        try:
            _check_property_list(payload)
        except AMQPError:
            self._publish = None
            raise
        if body_size == 0:
            publish, self._publish = self._publish, None
            return publish, payload, b""
        self._header = payload
        self._body_size = body_size
        self._received = 0
        return None

    def on_body(self, payload: bytes) -> tuple[Publish, bytes, bytes] | None:
        """Take a body frame; returns ``(publish, header payload, body)`` once complete."""
        header = self._header
        if header is None:
            raise unexpected_frame(f"content body frame on channel {self.number} without a content header")
        received = self._received + len(payload)
        if received < self._body_size:
            self._chunks.append(payload)
            self._received = received
            return None
        if received > self._body_size:
            raise unexpected_content_frame(f"received body frame with size exceeding content header "
                                           f"({received} > {self._body_size})")
        if self._chunks:
            self._chunks.append(payload)
            payload = b"".join(self._chunks)
            self._chunks = []
        publish = self._publish
        self._publish = self._header = None
        return publish, header, payload
