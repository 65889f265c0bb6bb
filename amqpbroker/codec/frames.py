"""Frame splitting and frame building.

A :class:`FrameReader` keeps the unread input as one ``bytes`` object and an offset. ``feed()``
adds what the socket gave (copying only a partial frame left over from before), ``read_frames()``
splits complete frames with ``struct.unpack_from`` at the offset and slices each payload out
once, so the cost is O(bytes consumed), never O(frames x buffer).
"""

from __future__ import annotations

import struct

from amqpbroker.errors import ConnectionError, ReplyCode

__all__ = [
    "FRAME_METHOD", "FRAME_HEADER", "FRAME_BODY", "FRAME_HEARTBEAT", "FRAME_END",
    "PROTOCOL_HEADER", "HEARTBEAT_FRAME", "FRAME_OVERHEAD", "FRAME_MIN_SIZE",
    "PUBLISH_CONTENT", "FrameReader", "build_frame",
]

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE
FRAME_END_BYTE = b"\xce"
FRAME_OVERHEAD = 8  # 7-byte header + frame-end octet
FRAME_MIN_SIZE = 4096  # spec: frame_max may not be below this; also the limit before tune
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
# not a frame type (those are octets): a frames tuple holding a basic.publish with its content
PUBLISH_CONTENT = -1
PUBLISH_PREFIX = b"\x00\x3c\x00\x28"  # a method payload's class and method ids: basic.publish

FRAME_HEAD = struct.Struct(">BHI")
HEARTBEAT_FRAME = FRAME_HEAD.pack(FRAME_HEARTBEAT, 0, 0) + FRAME_END_BYTE


def build_frame(frame_type: int, channel: int, payload: bytes) -> bytes:
    """One whole frame around ``payload``."""
    return FRAME_HEAD.pack(frame_type, channel, len(payload)) + payload + FRAME_END_BYTE


def frame_error(text: str) -> ConnectionError:
    return ConnectionError(ReplyCode.FRAME_ERROR, text)


class FrameReader:
    """Split a byte stream into ``(frame_type, channel, payload)`` tuples.

    ``frame_max`` is the negotiated maximum frame size, header and frame-end included
    (0 means no limit, as the spec allows). A frame over it, or a frame whose last octet is
    not 0xCE, raises a 501 FRAME_ERROR connection error.

    The unread input is one ``bytes`` object and an offset into it: a payload is one slice of it
    (one copy, no intermediate view), and what was read is dropped only when more input comes.
    A large frame that arrives in many small pieces is collected as a list and joined once it is
    complete, so a client trickling bytes costs linear time, not a copy of the frame per piece.

    With ``publishes``, a ``basic.publish`` method frame followed, in what is buffered, by its
    content header and a one-frame body on the same channel comes out as one tuple,
    ``(PUBLISH_CONTENT, channel, method payload, header payload, body)``, counted as three
    frames. A publisher usually repeats its method frame (exchange, routing key, flags) and often
    its content header: the last of each is kept, raw, and an input that repeats it byte for
    byte yields the same payload object again, found with one comparison in place and no copy.
    Anything else about those frames (another channel, a body in several frames, a size over
    the limit, a bad frame end) leaves them to the frame by frame split, which answers it.
    """

    __slots__ = ("_buffer", "_offset", "_need", "_pieces", "_pieces_size", "_frame_max", "frames_taken",
                 "_publishes", "_publish_frame", "_publish_payload", "_header_frame", "_header_payload")

    def __init__(self, frame_max: int = FRAME_MIN_SIZE, publishes: bool = False) -> None:
        self._buffer = b""
        self._offset = 0
        self._need = 0  # bytes (from the offset) that complete the frame under way, when known
        self._pieces: list[bytes] = []
        self._pieces_size = 0
        self._frame_max = frame_max
        self.frames_taken = 0  # frames the last read_frames() took (a publish with content: three)
        self._publishes = publishes
        # the last publish method frame and content header frame, whole (None: none yet)
        self._publish_frame: bytes | None = None
        self._publish_payload = b""
        self._header_frame: bytes | None = None
        self._header_payload = b""

    @property
    def frame_max(self) -> int:
        return self._frame_max

    @frame_max.setter
    def frame_max(self, value: int) -> None:
        self._frame_max = value
        self._publish_frame = self._header_frame = None  # (they were checked against the old limit)

    def feed(self, data: bytes) -> None:
        pieces = self._pieces
        if pieces:
            pieces.append(data)
            self._pieces_size += len(data)
            if self._pieces_size >= self._need:
                self._buffer = b"".join(pieces)
                pieces.clear()
            return
        offset = self._offset
        rest = len(self._buffer) - offset
        self._offset = 0
        if not rest:
            self._buffer = bytes(data)
        elif rest + len(data) < self._need:  # still not the whole frame: collect, join later
            pieces += (self._buffer[offset:], data)
            self._pieces_size = rest + len(data)
            self._buffer = b""
        else:  # the partial frame left over, then the new input: one copy
            with memoryview(self._buffer) as view:
                self._buffer = b"".join((view[offset:], data))

    @property
    def buffered(self) -> int:
        return len(self._buffer) - self._offset + (self._pieces_size if self._pieces else 0)

    def take_bytes(self, count: int) -> bytes | None:
        """The first ``count`` raw bytes (the protocol header), or None until they arrived."""
        if self.buffered < count:
            return None
        start = self._offset
        self._offset = start + count
        return self._buffer[start:start + count]

    def read_frames(self, max_frames: int = 0) -> list[tuple]:
        """Every complete frame buffered so far (at most ``max_frames`` if given; the rest stay
        buffered); an invalid frame raises once those before it have been returned.
        ``frames_taken`` says how many frames that was."""
        self.frames_taken = 0
        if self._pieces:  # a large frame is still being collected
            return []
        buffer = self._buffer
        end_of_data = len(buffer)
        # RabbitMQ tolerates frames up to 8 bytes over (clients disagree on whether frame_max
        # counts the header and frame-end); so do we
        limit = self._frame_max if self._frame_max else 0xFFFFFFFF
        unpack_head = FRAME_HEAD.unpack_from
        frames: list[tuple] = []
        append = frames.append
        offset = self._offset
        taken = 0
        publishes = self._publishes
        publish_frame, publish_payload = self._publish_frame, self._publish_payload
        publish_length = len(publish_frame) if publish_frame is not None else 0
        publish_channel = (publish_frame[1] << 8 | publish_frame[2]) if publish_frame is not None else -1
        header_frame, header_payload = self._header_frame, self._header_payload
        self._need = 0
        try:
            while end_of_data - offset >= 7:  # a header is enough to check the size
                if (publish_frame is not None and (not max_frames or taken + 3 <= max_frames)
                        and buffer.startswith(publish_frame, offset)):
                    # the last publish again: its content header and body, if they are all here
                    position = offset + publish_length
                    header = None
                    if header_frame is not None and buffer.startswith(header_frame, position):
                        header = header_payload
                        position += len(header_frame)
                    elif end_of_data - position >= 7:
                        frame_type, channel, size = unpack_head(buffer, position)
                        end = position + 7 + size
                        if (frame_type == FRAME_HEADER and channel == publish_channel and size <= limit
                                and end < end_of_data and buffer[end] == FRAME_END):
                            header_frame = self._header_frame = buffer[position:end + 1]
                            header = header_payload = self._header_payload = header_frame[7:-1]
                            position = end + 1
                    if header is not None and end_of_data - position >= 7:
                        frame_type, channel, size = unpack_head(buffer, position)
                        end = position + 7 + size
                        if (frame_type == FRAME_BODY and channel == publish_channel and size <= limit
                                and end < end_of_data and buffer[end] == FRAME_END):
                            append((PUBLISH_CONTENT, channel, publish_payload, header, buffer[position + 7:end]))
                            offset = end + 1
                            taken += 3
                            if taken == max_frames:
                                break
                            continue
                    # not all here, or not as usual: the method frame goes on its own
                frame_type, channel, size = unpack_head(buffer, offset)
                if size > limit:
                    if frames:  # hand over the good frames first; the bad one stays buffered
                        break
                    raise frame_error(f"frame size {size} larger than negotiated maximum {limit}")
                end = offset + 7 + size
                if end >= end_of_data:
                    self._need = end + 1 - offset
                    break
                if buffer[end] != FRAME_END:
                    if frames:
                        break
                    raise frame_error(f"invalid frame end byte 0x{buffer[end]:02x}, expected 0xce")
                if (frame_type == FRAME_METHOD and publishes and buffer.startswith(PUBLISH_PREFIX, offset + 7)
                        and not (publish_frame is not None and buffer.startswith(publish_frame, offset))):
                    # a publish method frame unlike the last: kept, and tried again as the last
                    publish_frame = self._publish_frame = buffer[offset:end + 1]
                    publish_payload = self._publish_payload = publish_frame[7:-1]
                    if channel != publish_channel:  # (the header kept is always on the publish's channel)
                        header_frame = self._header_frame = None
                    publish_length, publish_channel = len(publish_frame), channel
                    continue
                append((frame_type, channel, buffer[offset + 7:end]))
                offset = end + 1
                taken += 1
                if taken == max_frames:
                    break
        finally:
            if offset == end_of_data:  # all read: keep no reference to the last input
                self._buffer, self._offset = b"", 0
            else:
                self._offset = offset
            self.frames_taken = taken
        return frames
