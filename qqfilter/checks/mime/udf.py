"""UDF file systems (ECMA-167, OSTA UDF 1.02-2.60): every file's path and bytes, as Windows
shows a UDF or UDF bridge image (it reads the UDF tree when there is one, not ISO 9660's).

libarchive has no UDF reader, so the structures are walked here, with struct, from the file
in blocks (nothing is held whole but one directory's descriptors): the Anchor Volume
Descriptor Pointer (sector 256, else 256 sectors before the end, else the last sector;
sectors of 2048 bytes, else 512 or 4096), the Main Volume Descriptor Sequence (the Partition
Descriptors, the Logical Volume Descriptor and its partition maps), the File Set Descriptor,
then the directories from the root: File Identifier Descriptors naming File Entries (or
Extended File Entries) whose allocation descriptors (short, long, extended, or the data in the
entry itself) say where the bytes are.

Partition maps: type 1 (physical); type 2 "*UDF Metadata Partition" (UDF 2.50: the
descriptors live in the metadata file, a file in the physical partition; its mirror if it
cannot be read), "*UDF Sparable Partition" (rewritable discs: packets the sparing table moved
are read where it moved them) and "*UDF Virtual Partition" (a disc written once, CD-R to
BD-R: the VAT in the image's last sector maps each block). Names are OSTA CS0 (8 and 254:
a byte a character; 16 and 255: UTF-16BE); a name's "/" becomes "_". What an entry is, a
directory or a file, its File Entry's type says (not the identifier's bit); links, devices
and named streams (UDF 2.x's alternate data streams, which Explorer does not show) are not
members.

Hostile images are expected: every descriptor's tag checksum, CRC and location are checked
(a bad one ends the listing with a ValueError the layer notes; what was listed before was
judged), every offset is checked against the file's size, the directory tree is walked with a
stack, not recursion, and a directory met twice is not walked again (loops), and counts are
bounded: directory entries in all, a directory's bytes, allocation descriptors per file,
indirect entries followed. Only ValueError, EOFError, OSError and struct.error leave here.
"""

from __future__ import annotations

import binascii
import bisect
import struct

from qqfilter.checks.mime.archives import CHUNK, Entry

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import BinaryIO

    Run = tuple[int, int]  # (offset in the file, or -1 for zeros; length)
    Extent = tuple[int, int, int, bool]  # (partition reference, block, length, recorded)

MAX_ENTRIES = 100_000
"""Directory entries (File Identifier Descriptors) walked in all, per image."""
MAX_DIRECTORY = 16 << 20
"""Bytes of one directory's descriptors read at most."""
MAX_EXTENTS = 65_536
"""Allocation descriptors of one file (or of the metadata file) at most."""
MAX_HOPS = 64
"""Allocation extent descriptors, indirect entries and descriptor sequence pointers followed
per chain, at most."""
MAX_SEQUENCE = 256
"""Volume descriptors read in the Main Volume Descriptor Sequence, at most."""
SECTOR_SIZES = (2048, 512, 4096)

_AVDP, _VDP, _PD, _LVD, _TD = 2, 3, 5, 6, 8
_FSD, _FID, _AED, _IE, _FE, _EFE = 256, 257, 258, 259, 261, 266
_DIRECTORY, _FILES = 4, (0, 5, 249)  # ICB file types: a directory; unspecified, bytes, real-time
_FID_DELETED, _FID_PARENT = 0x04, 0x08
_SHORT, _LONG, _EXTENDED, _EMBEDDED = 0, 1, 2, 3
_NEXT = 3  # an allocation descriptor's type: the next extent of allocation descriptors


def entries(stream: BinaryIO, size: int) -> Iterator[Entry]:
    """Every file of the image, in directory order, named by its path from the root."""
    volume = _Volume(stream, size)
    root = volume.file_set_root()
    stack: list[tuple[str, tuple[int, int]]] = [("", root)]
    visited: set[tuple[int, int]] = set()
    walked = 0
    while stack:
        path, address = stack.pop()
        if address in visited:
            continue  # a directory met again: a loop, or a link
        visited.add(address)
        node = volume.node(address)
        if node.kind != _DIRECTORY:
            continue
        directories: list[tuple[str, tuple[int, int]]] = []
        for characteristics, name, child in _identifiers(volume.directory(node)):
            walked += 1
            if walked > MAX_ENTRIES:
                raise ValueError(f"stopped: more than {MAX_ENTRIES} UDF directory entries")
            if characteristics & (_FID_DELETED | _FID_PARENT):
                continue
            full = f"{path}/{name}" if path else name
            member = volume.node(child)  # its type, not the identifier's bit, says what it is
            if member.kind == _DIRECTORY:
                directories.append((full, child))
            elif member.kind in _FILES:  # not links, devices, stream directories
                yield Entry(
                    (full,),
                    encrypted=False,
                    size=member.length,
                    unread="",
                    read=volume.reader(member),
                )
        stack.extend(reversed(directories))


class _Node:
    """A File Entry as read: its file type, information length, the partition its
    allocation descriptors point into by default, and its extents (or embedded data)."""

    __slots__ = ("ad_type", "ads", "kind", "length", "partition")

    def __init__(self, kind: int, length: int, partition: int, ad_type: int, ads: bytes) -> None:
        self.kind = kind
        self.length = length
        self.partition = partition
        self.ad_type = ad_type
        self.ads = ads


class _Volume:
    """The image's logical volume: its block size, partitions and the reading of blocks."""

    def __init__(self, stream: BinaryIO, size: int) -> None:
        self.stream = stream
        self.size = size
        self.sector, anchor = self._anchor()
        self.block = self.sector
        self.partitions: list[tuple[str, int]] = []  # by reference: (kind, start byte)
        self.spared: dict[int, tuple[int, dict[int, int]]] = {}  # packet blocks, sparing table
        self.metadata: dict[int, list[tuple[int, int, int]]] = {}  # the metadata file's runs
        self.virtual: dict[int, bytes] = {}  # the VAT: a physical block per virtual block
        self._sequence(anchor)

    # Reading the file, bounded by its size.

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise EOFError("a UDF extent beyond the end of the image")
        self.stream.seek(offset)
        data = self.stream.read(length)
        if len(data) < length:
            raise EOFError("the UDF image is cut short")
        return data

    # The volume: anchor, descriptor sequence, partitions.

    def _anchor(self) -> tuple[int, bytes]:
        for sector in SECTOR_SIZES:
            last = self.size // sector - 1
            for at in (256, last - 256, last):
                if at < 0 or (at + 1) * sector > self.size:
                    continue
                data = self.read(at * sector, min(sector, 512))
                if _tag(data, at, strict=False) == _AVDP:
                    return sector, data
        raise ValueError("no UDF anchor volume descriptor pointer")

    def _sequence(self, anchor: bytes) -> None:
        """The main volume descriptor sequence, else the reserve one: the partitions (the
        prevailing descriptor of each number) and the logical volume."""
        for at in (16, 24):
            length, location = struct.unpack_from("<LL", anchor, at)
            described, volume = self._descriptors(length, location)
            if volume:
                break
        else:
            raise ValueError("no UDF logical volume descriptor")
        (block,) = struct.unpack_from("<L", volume, 212)
        if block not in (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536):
            raise ValueError(f"a UDF logical block size of {block}")
        self.block = block
        _extent, fsd_block, fsd_partition = struct.unpack_from("<LLH", volume, 248)
        self.fsd = (fsd_partition, fsd_block)
        table, count = struct.unpack_from("<LL", volume, 264)
        maps = volume[440 : 440 + table]
        at = 0
        for _ in range(min(count, 64)):
            if at + 2 > len(maps):
                raise ValueError("UDF partition maps cut short")
            kind, map_length = maps[at], maps[at + 1]
            entry = maps[at : at + map_length]
            if len(entry) != map_length or map_length != (6 if kind == 1 else 64):
                raise ValueError(f"a UDF partition map of type {kind}, {map_length} bytes")
            (number,) = struct.unpack_from("<H", entry, 4 if kind == 1 else 38)
            if number not in described:
                raise ValueError(f"a UDF partition map to partition {number}, not described")
            start = described[number][1] * self.sector
            if kind == 1:
                self.partitions.append(("physical", start))
            elif kind == 2:
                self._typed_map(entry, start)
            else:
                raise ValueError(f"a UDF partition map of type {kind}")
            at += map_length
        if not self.partitions:
            raise ValueError("no UDF partition maps")

    def _descriptors(
        self, length: int, location: int
    ) -> tuple[dict[int, tuple[int, int, int]], bytes]:
        """The Partition Descriptors (number -> (sequence number, start, length)) and the
        Logical Volume Descriptor of the sequence at ``location``."""
        described: dict[int, tuple[int, int, int]] = {}
        volume = b""
        volume_sequence = -1
        read = hops = 0
        while length >= self.sector and read < MAX_SEQUENCE:
            read += 1
            try:
                data = self.read(location * self.sector, self.sector)
            except EOFError:
                break
            identifier = _tag(data, location, strict=False)
            if identifier in (_TD, -1):
                break
            if identifier == _VDP:
                hops += 1
                if hops > MAX_HOPS:
                    break
                length, location = struct.unpack_from("<LL", data, 20)
                continue
            (number_in_sequence,) = struct.unpack_from("<L", data, 16)
            if identifier == _PD:
                (number,) = struct.unpack_from("<H", data, 22)
                start, extent = struct.unpack_from("<LL", data, 188)
                if number_in_sequence >= described.get(number, (-1, 0, 0))[0]:
                    described[number] = (number_in_sequence, start, extent)
            elif identifier == _LVD and number_in_sequence >= volume_sequence:
                volume_sequence, volume = number_in_sequence, data
            location += 1
            length -= self.sector
        return described, volume

    def _typed_map(self, entry: bytes, start: int) -> None:
        identifier = entry[5:28].rstrip(b"\0")
        if identifier == b"*UDF Metadata Partition":
            # the metadata file lives in the physical partition the map names: read through
            # a physical map in this map's place, which the metadata map then replaces
            location, mirror = struct.unpack_from("<LL", entry, 40)
            mine = len(self.partitions)
            self.partitions.append(("physical", start))
            self.metadata[mine] = self._metadata(mine, location, mirror)
            self.partitions[mine] = ("metadata", start)
        elif identifier == b"*UDF Sparable Partition":
            (packet,) = struct.unpack_from("<H", entry, 40)
            if packet == 0 or packet & (packet - 1):
                raise ValueError(f"a UDF sparable partition of packets of {packet} blocks")
            tables = [
                struct.unpack_from("<L", entry, 48 + 4 * i)[0] for i in range(min(entry[42], 4))
            ]
            self.spared[len(self.partitions)] = (packet, self._sparing(tables))
            self.partitions.append(("sparable", start))
        elif identifier == b"*UDF Virtual Partition":
            mine = len(self.partitions)
            self.partitions.append(("physical", start))
            self.virtual[mine] = self._vat(mine, start)
            self.partitions[mine] = ("virtual", start)
        else:
            name = identifier.decode("latin-1", "replace")
            raise ValueError(f"a UDF partition map {name!r} is not read")

    def _metadata(self, partition: int, location: int, mirror: int) -> list[tuple[int, int, int]]:
        """The metadata file's extents, or its mirror's if it cannot be read."""
        problem: Exception = ValueError("no UDF metadata file")
        for where in (location, mirror):
            try:
                node = self.node((partition, where))
                if node.kind not in (250, 251):
                    raise ValueError("a UDF metadata file of another file type")
                return self._flat(node)
            except (ValueError, EOFError) as exc:
                problem = exc
        raise problem

    def _vat(self, partition: int, start: int) -> bytes:
        """The Virtual Allocation Table of a disc written once (CD-R, DVD-R, BD-R): its file
        entry is in the last sector written, the image's last; UDF 2.00's (file type 248)
        has a header, UDF 1.50's (type 0) a regid at its end."""
        last = (self.size // self.sector - 1) * self.sector
        node = self.node((partition, (last - start) // self.block))
        if node.length > MAX_DIRECTORY:
            raise ValueError(f"a UDF VAT of more than {MAX_DIRECTORY >> 20} MB")
        data = b"".join(self.reader(node)(node.length))
        if node.kind == 248 and len(data) >= 2:
            (header,) = struct.unpack_from("<H", data)
            return data[header:]
        if node.kind == 0 and data[-35:-13] == b"*UDF Virtual Alloc Tbl":
            return data[:-36]
        raise ValueError("no UDF virtual allocation table in the last sector")

    def _sparing(self, tables: list[int]) -> dict[int, int]:
        """The first sparing table that can be read: a packet's first block (in the
        partition) -> the sector it was moved to."""
        for sector in tables:
            try:
                data = self.read(sector * self.sector, self.sector)
                if _tag(data, -1, strict=False, identifier=0) != 0:
                    continue
                if data[17:35] != b"*UDF Sparing Table":
                    continue
                (count,) = struct.unpack_from("<H", data, 48)
                data = self.read(sector * self.sector, 56 + 8 * count)
            except EOFError:
                continue
            moved = {}
            for number in range(count):
                original, mapped = struct.unpack_from("<LL", data, 56 + 8 * number)
                if original < 0xFFFFFFF0:  # else a free or a defective entry
                    moved[original] = mapped
            return moved
        raise ValueError("a UDF sparable partition whose sparing table cannot be read")

    # Blocks of a partition, as runs of the file.

    def runs(self, partition: int, block: int, length: int) -> Iterator[Run]:
        """Where ``length`` bytes from ``block`` of ``partition`` are in the file."""
        if not 0 <= partition < len(self.partitions):
            raise ValueError(f"a UDF address in partition {partition}, which has no map")
        kind, start = self.partitions[partition]
        offset = block * self.block
        if kind == "physical":
            yield start + offset, length
        elif kind == "sparable":
            packet, moved = self.spared[partition]
            packet_bytes = packet * self.block
            while length > 0:
                first, within = divmod(offset, packet_bytes)
                piece = min(length, packet_bytes - within)
                to = moved.get(first * packet)
                yield (start + offset if to is None else to * self.sector + within), piece
                offset += piece
                length -= piece
        elif kind == "virtual":  # each block where the VAT says
            table = self.virtual[partition]
            while length > 0:
                number, within = divmod(offset, self.block)
                if 4 * number + 4 > len(table):
                    raise ValueError("a UDF virtual block beyond the VAT")
                (mapped,) = struct.unpack_from("<L", table, 4 * number)
                if mapped == 0xFFFFFFFF:
                    raise ValueError("a UDF virtual block the VAT does not map")
                piece = min(length, self.block - within)
                yield start + mapped * self.block + within, piece
                offset += piece
                length -= piece
        else:  # metadata: the partition's blocks are the metadata file's bytes
            flat = self.metadata[partition]
            index = bisect.bisect_right(flat, (offset, 1 << 62)) - 1
            while length > 0:
                if not 0 <= index < len(flat):
                    raise ValueError("a UDF address beyond the metadata file")
                begins, at, size = flat[index]
                within = offset - begins
                if within >= size:
                    raise ValueError("a UDF address beyond the metadata file")
                piece = min(length, size - within)
                yield (at + within if at >= 0 else -1), piece
                offset += piece
                length -= piece
                index += 1

    def blocks(self, partition: int, block: int, length: int) -> bytes:
        return b"".join(
            self.read(at, size) if at >= 0 else b"\0" * size
            for at, size in self.runs(partition, block, length)
        )

    # The file tree.

    def file_set_root(self) -> tuple[int, int]:
        partition, block = self.fsd
        data = self.blocks(partition, block, self.block)
        _tag(data, block, identifier=_FSD)
        _length, root_block, root_partition = struct.unpack_from("<LLH", data, 400)
        return root_partition, root_block

    def node(self, address: tuple[int, int]) -> _Node:
        """The File Entry at ``address`` (partition, block), through indirect entries (and
        strategy 4096's: the block after a direct entry may point to a newer one)."""
        for _ in range(MAX_HOPS):
            partition, block = address
            data = self.blocks(partition, block, self.block)
            identifier = _tag(data, block)
            if identifier == _IE:
                _length, next_block, next_partition = struct.unpack_from("<LLH", data, 36)
                address = (next_partition, next_block)
                continue
            if identifier == _FE:
                (length,) = struct.unpack_from("<Q", data, 56)
                extended, ads = struct.unpack_from("<LL", data, 168)
                begins = 176 + extended
            elif identifier == _EFE:
                (length,) = struct.unpack_from("<Q", data, 56)
                extended, ads = struct.unpack_from("<LL", data, 208)
                begins = 216 + extended
            else:
                raise ValueError(f"a UDF descriptor {identifier} where a file entry should be")
            if begins + ads > len(data):
                raise ValueError("UDF allocation descriptors beyond their file entry")
            (strategy,) = struct.unpack_from("<H", data, 20)
            if strategy == 4096:
                newer = self._indirect(partition, block + 1)
                if newer is not None and newer != address:
                    address = newer
                    continue
            (flags,) = struct.unpack_from("<H", data, 34)
            return _Node(data[27], length, partition, flags & 7, data[begins : begins + ads])
        raise ValueError(f"more than {MAX_HOPS} UDF indirect entries in a row")

    def _indirect(self, partition: int, block: int) -> tuple[int, int] | None:
        """Where the indirect entry at ``block`` points, if there is one."""
        try:
            data = self.blocks(partition, block, self.block)
        except (ValueError, EOFError):
            return None
        if _tag(data, block, strict=False) != _IE:
            return None
        length, next_block, next_partition = struct.unpack_from("<LLH", data, 36)
        return (next_partition, next_block) if length else None

    def extents(self, node: _Node) -> Iterator[Extent]:
        """The node's extents in order (never for embedded data), following allocation
        extent descriptors."""
        if node.ad_type == _SHORT:
            width = 8
        elif node.ad_type == _LONG:
            width = 16
        elif node.ad_type == _EXTENDED:
            width = 20
        else:
            raise ValueError(f"a UDF allocation descriptor type {node.ad_type}")
        ads, count, hops = node.ads, 0, 0
        at = 0
        while at + width <= len(ads):
            (raw,) = struct.unpack_from("<L", ads, at)
            kind, length = raw >> 30, raw & 0x3FFFFFFF
            if width == 8:
                (block,) = struct.unpack_from("<L", ads, at + 4)
                partition = node.partition
            elif width == 16:
                block, partition = struct.unpack_from("<LH", ads, at + 4)
            else:
                block, partition = struct.unpack_from("<LH", ads, at + 12)
            at += width
            if length == 0:
                return
            count += 1
            if count > MAX_EXTENTS:
                raise ValueError(f"more than {MAX_EXTENTS} UDF extents in a file")
            if kind == _NEXT:
                hops += 1
                if hops > MAX_HOPS:
                    raise ValueError(f"more than {MAX_HOPS} UDF allocation extents in a file")
                data = self.blocks(partition, block, min(length, self.block))
                _tag(data, block, identifier=_AED)
                (inside,) = struct.unpack_from("<L", data, 20)
                if 24 + inside > len(data):
                    raise ValueError("UDF allocation descriptors beyond their extent")
                ads, at = data[24 : 24 + inside], 0
                continue
            yield partition, block, length, kind == 0

    def _flat(self, node: _Node) -> list[tuple[int, int, int]]:
        """The metadata file as (its offset, the file's offset or -1 for zeros, length)."""
        if node.ad_type == _EMBEDDED:
            raise ValueError("a UDF metadata file embedded in its entry")
        flat: list[tuple[int, int, int]] = []
        offset = 0
        for partition, block, length, recorded in self.extents(node):
            for at, size in self.runs(partition, block, length):
                flat.append((offset, at if recorded else -1, size))
                offset += size
        return flat

    def directory(self, node: _Node) -> bytearray:
        if node.length > MAX_DIRECTORY:
            raise ValueError(f"a UDF directory of more than {MAX_DIRECTORY >> 20} MB")
        data = bytearray()  # grown in place: no list of chunks beside the whole
        for chunk in self.reader(node)(node.length):
            data += chunk
        return data

    def reader(self, node: _Node) -> Callable[[int], Iterator[bytes]]:
        """``Entry.read`` for the node: its extents in order, CHUNK at a time, at most its
        information length and ``limit``."""

        def read(limit: int) -> Iterator[bytes]:
            remaining = min(node.length, limit)
            if node.ad_type == _EMBEDDED:
                yield node.ads[:remaining]
                return
            for partition, block, length, recorded in self.extents(node):
                for at, size in self.runs(partition, block, min(length, remaining)):
                    position, end = at, at + size
                    while position < end:
                        piece = min(CHUNK, end - position)
                        yield self.read(position, piece) if recorded and at >= 0 else bytes(piece)
                        position += piece
                    remaining -= size
                if remaining <= 0:
                    return

        return read


def _identifiers(data: bytearray) -> Iterator[tuple[int, str, tuple[int, int]]]:
    """A directory's File Identifier Descriptors: characteristics, name, ICB address."""
    at = 0
    while at + 38 <= len(data):
        characteristics, name_length = data[at + 18], data[at + 19]
        _extent, block, partition, use = struct.unpack_from("<LLH6xH", data, at + 20)
        end = at + ((38 + use + name_length + 3) & ~3)
        if at + 38 + use + name_length > len(data):
            raise ValueError("a UDF file identifier beyond its directory")
        _tag(data[at:end], -1, identifier=_FID)
        begins = at + 38 + use
        yield characteristics, _cs0(data[begins : begins + name_length]), (partition, block)
        at = end


def _cs0(raw: bytes | bytearray) -> str:
    """An OSTA CS0 name: compression 8 (or 254) one byte a character, 16 (or 255) UTF-16BE.
    A "/" or NUL in it (no desktop shows one) becomes "_", so a path cannot be forged."""
    if not raw:
        return "(unnamed)"
    compression, body = raw[0], raw[1:]
    if compression in (8, 254):
        text = body.decode("latin-1")
    elif compression in (16, 255):
        text = body[: len(body) & ~1].decode("utf-16-be", "replace")
    else:
        raise ValueError(f"a UDF name in compression {compression}")
    return text.replace("/", "_").replace("\0", "_") or "(unnamed)"


def _tag(
    data: bytes | bytearray, location: int, *, strict: bool = True, identifier: int = -1
) -> int:
    """The tag identifier of the descriptor starting ``data``, its checksum, CRC (as far as
    ``data`` holds it) and location (unless -1) checked. A bad tag: ValueError if ``strict``,
    else -1. With ``identifier``, a descriptor of another kind is a bad tag."""
    problem = ""
    if len(data) < 16:
        problem = "a UDF descriptor cut short"
    elif (sum(data[:4]) + sum(data[5:16])) & 0xFF != data[4]:
        problem = "a UDF descriptor tag checksum that does not match"
    else:
        found, crc, crc_length, where = struct.unpack_from("<H6xHHL", data)
        if identifier >= 0 and found != identifier:
            problem = f"a UDF descriptor {found} where {identifier} should be"
        elif location >= 0 and where != location:
            problem = "a UDF descriptor recorded at another place than it names"
        elif (
            16 + crc_length <= len(data) and binascii.crc_hqx(data[16 : 16 + crc_length], 0) != crc
        ):
            problem = "a UDF descriptor CRC that does not match"
    if not problem:
        return found
    if strict:
        raise ValueError(problem)
    return -1
