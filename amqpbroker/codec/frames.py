"""Frame splitting and frame building.

A :class:`FrameReader` keeps one ``bytearray`` of unread input. ``feed()`` appends what the
socket gave, ``read_frames()`` splits every complete frame with ``struct.unpack_from`` at an
offset and drops the consumed prefix once per call, so the cost is O(bytes consumed), never
O(frames x buffer).
"""

from __future__ import annotations

import struct

from amqpbroker.errors import ConnectionError, ReplyCode

__all__ = [
    "FRAME_METHOD", "FRAME_HEADER", "FRAME_BODY", "FRAME_HEARTBEAT", "FRAME_END",
    "PROTOCOL_HEADER", "HEARTBEAT_FRAME", "FRAME_OVERHEAD", "FRAME_MIN_SIZE",
    "FrameReader", "build_frame",
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
    """

    __slots__ = ("_buffer", "frame_max")

    def __init__(self, frame_max: int = FRAME_MIN_SIZE) -> None:
        self._buffer = bytearray()
        self.frame_max = frame_max

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def take_bytes(self, count: int) -> bytes | None:
        """The first ``count`` raw bytes (the protocol header), or None until they arrived."""
        if len(self._buffer) < count:
            return None
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    def read_frames(self) -> list[tuple[int, int, bytes]]:
        """Every complete frame buffered so far; an invalid frame raises once those before it
        have been returned."""
        buffer = self._buffer
        end_of_data = len(buffer)
        # RabbitMQ tolerates frames up to 8 bytes over (clients disagree on whether frame_max
        # counts the header and frame-end); so do we
        limit = self.frame_max if self.frame_max else 0xFFFFFFFF
        unpack_head = FRAME_HEAD.unpack_from
        frames: list[tuple[int, int, bytes]] = []
        append = frames.append
        offset = 0
        view = memoryview(buffer)
        try:
            while end_of_data - offset >= 7:  # a header is enough to check the size
                frame_type, channel, size = unpack_head(buffer, offset)
                if size > limit:
                    if frames:  # hand over the good frames first; the bad one stays buffered
                        break
                    raise frame_error(f"frame size {size} larger than negotiated maximum {limit}")
                end = offset + 7 + size
                if end >= end_of_data:
                    break
                if buffer[end] != FRAME_END:
                    if frames:
                        break
                    raise frame_error(f"invalid frame end byte 0x{buffer[end]:02x}, expected 0xce")
                append((frame_type, channel, bytes(view[offset + 7:end])))
                offset = end + 1
        finally:
            view.release()
            if offset:
                del buffer[:offset]
        return frames
