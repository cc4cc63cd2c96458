"""Klipper's MCU wire protocol, the micro-controller's side: message blocks, integers, message formats.

The facts, from Klipper's ``docs/Protocol.md`` (this is our own code):

- A **message block** is ``len seq payload crc16 sync``: ``len`` counts the whole block (5 … 64 bytes),
  ``seq`` is ``0x10 | (sequence & 0x0f)``, the CRC is CRC-16/CCITT (initial value ``0xffff``, the
  "ccitt" byte-wise form) over ``len``, ``seq`` and the payload, sent high byte first, and ``sync`` is
  ``0x7e``. A receiver that meets a bad block discards bytes up to the next ``0x7e``.
- The **payload** is messages back to back: a message id then its parameters, every integer as a
  *variable-length quantity* (VLQ): 7 bits per byte, high bit set on all but the last byte, sign-extended
  from bit 5 of the first byte (so −32 … 95 take one byte); a buffer (``%*s``, ``%.*s``) is a length
  followed by its bytes. The declared width (``%c``, ``%hu``, ``%u`` …) does not change the encoding.
- **Sequencing**: the host numbers its blocks; the MCU processes a block only if its number is the one it
  expects, and every block the MCU sends carries the number it expects next. An MCU block with no payload
  is an ack (or, repeated, a nak: the host then retransmits).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

MESSAGE_MIN = 5
MESSAGE_MAX = 64
MESSAGE_HEADER = 2
MESSAGE_TRAILER = 3
MESSAGE_PAYLOAD_MAX = MESSAGE_MAX - MESSAGE_MIN
MESSAGE_SEQ_MASK = 0x0F
MESSAGE_DEST = 0x10
MESSAGE_SYNC = 0x7E


class ProtocolError(ValueError):
    """A message that does not decode against the data dictionary (names the message id and bytes)."""


def crc16_ccitt(data: bytes) -> int:
    """The block checksum (CRC-16/CCITT as Klipper computes it, initial value 0xffff)."""
    crc = 0xFFFF
    for byte in data:
        byte ^= crc & 0xFF
        byte = (byte ^ (byte << 4)) & 0xFF
        crc = (((byte << 8) | (crc >> 8)) ^ (byte >> 4) ^ (byte << 3)) & 0xFFFF
    return crc


def encode_vlq(value: int, out: bytearray) -> None:
    """Append ``value`` (a 32-bit integer, signed or unsigned) as a variable-length quantity."""
    v = value & 0xFFFFFFFF
    sv = v - (1 << 32) if v & 0x80000000 else v
    if not -(1 << 5) <= sv < (3 << 5):
        if not -(1 << 12) <= sv < (3 << 12):
            if not -(1 << 19) <= sv < (3 << 19):
                if not -(1 << 26) <= sv < (3 << 26):
                    out.append(((v >> 28) & 0x7F) | 0x80)
                out.append(((v >> 21) & 0x7F) | 0x80)
            out.append(((v >> 14) & 0x7F) | 0x80)
        out.append(((v >> 7) & 0x7F) | 0x80)
    out.append(v & 0x7F)


def decode_vlq(data: bytes, pos: int) -> tuple[int, int]:
    """The unsigned 32-bit value at ``data[pos:]`` and the position after it."""
    c = data[pos]
    pos += 1
    v = c & 0x7F
    if (c & 0x60) == 0x60:
        v |= -0x20
    while c & 0x80:
        c = data[pos]
        pos += 1
        v = (v << 7) | (c & 0x7F)
    return v & 0xFFFFFFFF, pos


def to_signed32(value: int) -> int:
    return value - (1 << 32) if value & 0x80000000 else value


@dataclass(frozen=True)
class MessageFormat:
    """One message of the dictionary: ``queue_step oid=%c interval=%u count=%hu add=%hi``."""

    msgid: int
    name: str
    params: tuple[tuple[str, str], ...]
    """(name, type) pairs in wire order; a type is ``%c``, ``%hu``, ``%hi``, ``%u``, ``%i``, ``%*s``, ``%.*s``."""

    @classmethod
    def parse(cls, fmt: str, msgid: int) -> MessageFormat:
        name, *pairs = fmt.split()
        params = []
        for pair in pairs:
            key, _, kind = pair.partition("=")
            if kind not in ("%c", "%hu", "%hi", "%u", "%i", "%*s", "%.*s"):
                raise ProtocolError(f"message {fmt!r}: parameter {pair!r} has no known type")
            params.append((key, kind))
        return cls(msgid, name, tuple(params))

    def encode(self, values: dict[str, int | bytes], out: bytearray) -> None:
        encode_vlq(self.msgid, out)
        for key, kind in self.params:
            value = values.get(key, 0)
            if kind in ("%*s", "%.*s"):
                raw = value if isinstance(value, bytes) else str(value).encode()
                encode_vlq(len(raw), out)
                out += raw
            else:
                encode_vlq(int(value), out)


class Codec:
    """Commands decoded and responses encoded against one data dictionary (its ``commands``/``responses``)."""

    def __init__(self, dictionary: dict[str, object]) -> None:
        commands = dictionary.get("commands")
        responses = dictionary.get("responses")
        if not isinstance(commands, dict) or not isinstance(responses, dict):
            raise ProtocolError("data dictionary has no 'commands'/'responses' tables")
        self.commands = {msgid: MessageFormat.parse(fmt, msgid) for fmt, msgid in commands.items()}
        self.responses = {(f := MessageFormat.parse(fmt, msgid)).name: f for fmt, msgid in responses.items()}

    def decode(self, payload: bytes) -> Iterator[tuple[str, dict[str, int | bytes]]]:
        """The messages of one block's payload, as (name, parameters); integers as unsigned 32-bit."""
        pos = 0
        end = len(payload)
        while pos < end:
            msgid, pos = decode_vlq(payload, pos)
            fmt = self.commands.get(to_signed32(msgid))
            if fmt is None:
                raise ProtocolError(f"unknown command id {to_signed32(msgid)} in block {payload.hex()}")
            values: dict[str, int | bytes] = {}
            for key, kind in fmt.params:
                if pos >= end:
                    raise ProtocolError(f"{fmt.name}: block ends before {key} ({payload.hex()})")
                value, pos = decode_vlq(payload, pos)
                if kind in ("%*s", "%.*s"):
                    values[key] = payload[pos:pos + value]
                    pos += value
                else:
                    values[key] = value
            yield fmt.name, values

    def encode(self, name: str, **values: int | bytes) -> bytes:
        """One response message's payload bytes."""
        fmt = self.responses.get(name)
        if fmt is None:
            raise ProtocolError(f"response {name!r} is not in the data dictionary")
        out = bytearray()
        fmt.encode(values, out)
        if len(out) > MESSAGE_PAYLOAD_MAX:
            raise ProtocolError(f"response {name!r} is {len(out)} bytes; a block holds {MESSAGE_PAYLOAD_MAX}")
        return bytes(out)


def frame(sequence: int, payload: bytes = b"") -> bytes:
    """A message block carrying ``payload`` and the sequence number the sender expects next."""
    block = bytearray((len(payload) + MESSAGE_MIN, MESSAGE_DEST | (sequence & MESSAGE_SEQ_MASK)))
    block += payload
    crc = crc16_ccitt(block)
    block += bytes((crc >> 8, crc & 0xFF, MESSAGE_SYNC))
    return bytes(block)


class BlockReader:
    """Splits a byte stream into valid blocks, dropping garbage up to the next sync byte."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._need_sync = False
        self.bytes_invalid = 0
        """Bytes discarded as not part of a valid block (noise, a bootloader probe, a cut block)."""

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        """Add bytes; yield (sequence bits, payload) for every complete valid block."""
        buf = self._buffer
        buf += data
        while buf:
            if self._need_sync:
                sync = buf.find(MESSAGE_SYNC)
                if sync < 0:
                    self.bytes_invalid += len(buf)
                    buf.clear()
                    return
                self.bytes_invalid += sync + 1
                del buf[:sync + 1]
                self._need_sync = False
                continue
            if len(buf) < MESSAGE_MIN:
                return
            length = buf[0]
            if not MESSAGE_MIN <= length <= MESSAGE_MAX or (buf[1] & ~MESSAGE_SEQ_MASK) != MESSAGE_DEST:
                self._need_sync = True
                continue
            if len(buf) < length:
                return
            crc = (buf[length - 3] << 8) | buf[length - 2]
            if buf[length - 1] != MESSAGE_SYNC or crc16_ccitt(bytes(buf[:length - 3])) != crc:
                self._need_sync = True
                continue
            sequence = buf[1] & MESSAGE_SEQ_MASK
            payload = bytes(buf[MESSAGE_HEADER:length - MESSAGE_TRAILER])
            del buf[:length]
            yield sequence, payload
