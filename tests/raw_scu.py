"""A storage SCU on a raw socket, speaking PS3.8 directly: it sends whatever bytes it is
given as a data set on whatever context it is told, which no real SCU library would (that
is the point: hostile and broken peers). Negotiation PDUs come from pynetdicom."""

from __future__ import annotations

import socket
import struct

from pynetdicom import build_context
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification

from service import dicom_scp

RELEASE_RQ = bytes([0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0])


def associate_rq(contexts: list[tuple[str, str]], calling: str = "RAW") -> bytes:
    """An A-ASSOCIATE-RQ proposing (abstract syntax, transfer syntax) as contexts 1, 3, 5..."""
    rq = A_ASSOCIATE()
    rq.application_context_name = "1.2.840.10008.3.1.1.1"
    rq.calling_ae_title, rq.called_ae_title = calling, "SYNTH"
    cxs = []
    for i, (abstract, syntax) in enumerate(contexts):
        cx = build_context(abstract, [syntax])
        cx.context_id = 2 * i + 1
        cxs.append(cx)
    rq.presentation_context_definition_list = cxs
    ml = MaximumLengthNotification()
    ml.maximum_length_received = 16384
    rq.user_information = [ml]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(rq)
    return bytes(pdu.encode())


def read_exact(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed by the listener")
        out += chunk
    return bytes(out)


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    kind, _, length = struct.unpack(">BBI", read_exact(sock, 6))
    return kind, read_exact(sock, length)


class RawSCU:
    """One association; `store()` sends a data set's bytes and returns the status."""

    def __init__(self, host: str, port: int, contexts: list[tuple[str, str]], *,
                 calling: str = "RAW", timeout: float = 30.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(associate_rq(contexts, calling))
        kind, body = read_pdu(self.sock)
        if kind != 0x02:
            raise ConnectionError(f"association not accepted (PDU type {kind:#04x})")
        ac = A_ASSOCIATE_AC()
        ac.decode(struct.pack(">BBI", kind, 0, len(body)) + body)
        self.results = {int(cx.context_id): cx.result for cx in ac.to_primitive()
                        .presentation_context_definition_results_list}
        self._message_id = 0

    def _send(self, ctx: int, control: int, data: bytes, max_pdv: int = 16000) -> None:
        pdus = []
        for i in range(0, max(len(data), 1), max_pdv):
            chunk = data[i:i + max_pdv]
            last = i + max_pdv >= len(data)
            pdv = struct.pack(">IBB", len(chunk) + 2, ctx, control | (2 if last else 0)) + chunk
            pdus.append(struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv)
        self.sock.sendall(b"".join(pdus))

    def _response(self) -> dict[int, bytes]:
        command = bytearray()
        while True:
            kind, body = read_pdu(self.sock)
            if kind != 0x04:
                raise ConnectionError(f"PDU type {kind:#04x} instead of a response")
            off = 0
            while off < len(body):
                length, _, control = struct.unpack_from(">IBB", body, off)
                command += body[off + 6:off + 4 + length]
                off += 4 + length
                if control & 2:
                    return dicom_scp._parse_command(bytes(command))

    def store(self, ctx: int, sop_class: str, sop_instance: str, data_set: bytes) -> tuple[int, str]:
        """(status, ErrorComment) of a C-STORE of `data_set` (bytes after the file meta)."""
        self._message_id = self._message_id % 0xFFFF + 1
        command = dicom_scp._encode_command([
            (0x0002, dicom_scp._ui(sop_class)), (0x0100, struct.pack("<H", 0x0001)),
            (0x0110, struct.pack("<H", self._message_id)), (0x0700, struct.pack("<H", 0)),
            (0x0800, struct.pack("<H", 0x0000)), (0x1000, dicom_scp._ui(sop_instance))])
        self._send(ctx, 0x01, command)
        self._send(ctx, 0x00, data_set)
        rsp = self._response()
        status = struct.unpack("<H", rsp[0x0900][:2])[0]
        return status, rsp.get(0x0902, b"").decode("ascii", "replace").strip()

    def echo(self, ctx: int) -> int:
        self._message_id = self._message_id % 0xFFFF + 1
        command = dicom_scp._encode_command([
            (0x0002, dicom_scp._ui("1.2.840.10008.1.1")), (0x0100, struct.pack("<H", 0x0030)),
            (0x0110, struct.pack("<H", self._message_id)), (0x0800, struct.pack("<H", 0x0101))])
        self._send(ctx, 0x01, command)
        return struct.unpack("<H", self._response()[0x0900][:2])[0]

    def release(self) -> None:
        try:
            self.sock.sendall(RELEASE_RQ)
            read_pdu(self.sock)
        finally:
            self.sock.close()


def data_set_bytes(part10: bytes) -> tuple[bytes, bytes]:
    """(file meta group, data set) of a Part 10 file's bytes, split at the end of group 2
    by its group length (as a sender does)."""
    (group_length,) = struct.unpack_from("<I", part10, 132 + 8)
    end = 132 + 12 + group_length
    return part10[:end], part10[end:]
