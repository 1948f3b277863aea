"""clipipe agent: runs segments of piped shell commands on a remote host, speaking frames on stdin/stdout.

This file is the protocol specification. It is stdlib-only and Python 3.8+ because it is sent to every
host (compressed, over the transport's stdin; nothing is written to the remote disk) and must run on
whatever `python3` the host has. The controller imports the constants below from this same file.

Boot
----
The controller starts ``python3 -c LOADER`` (see ``clipipe.wire.bootstrap``) and writes to its stdin::

    +----------------+---------------------------+----------------+------------------------------+
    | u32 BE: n      | n bytes: zlib(agent src)  | u32 BE: m      | m bytes: repr(config dict)   |
    +----------------+---------------------------+----------------+------------------------------+

The loader execs the source as ``__main__`` with ``CLIPIPE_CONFIG`` set to the config text, a Python
literal read with ``ast.literal_eval`` (never pickle). From then on stdin and stdout carry frames only;
the agent moves its own ``sys.stdout`` to stderr so a stray print can't corrupt the stream.
The agent's first frame is HELLO on channel 0.

Frames
------
::

    +-------------------+--------------------------------------------------+
    | u32 BE: body size | msgpack body: [channel: int, kind: int, payload] |
    +-------------------+--------------------------------------------------+

A body larger than MAX_FRAME is a protocol error that can't be resynchronised: the agent answers
ERROR and exits. A body that does not decode, or is not a 3-list of ints and a payload, is answered
with ERROR and skipped. Channel 0 is control; data channels are ids > 0 chosen by the controller.

Control kinds (channel 0; payload is a map; requests carry ``id``, replies carry the same ``id``)
    HELLO        agent -> ctl at boot: {version, protocol, python, platform, hostname, pid, cwd,
                 max_frame, window, chunk}; also sent as a reply to a HELLO request {id}.
    RUN_SEGMENT  ctl -> agent {id, procs: [{name, command, env, cwd}], stdin: ch|nil,
                 stdout: ch|nil, stderr: [ch|nil per proc], checksums: ["sha256", ...]}.
                 nil channel = /dev/null. The segment id is the request id.
    STARTED      agent -> ctl {id, pids: [pid|nil per proc]} once every proc is started (or failed).
    EXIT         agent -> ctl {id, procs: [{name, exit_code, signal, error, started, ended}],
                 stdin_bytes, stdout_bytes, stderr_bytes: [..], digests: {name: hex}}. Sent after
                 every proc is reaped and every output channel has sent EOF (or was closed by ctl).
    KILL         ctl -> agent {id, segment, signal}: signal every process group of the segment; if it
                 is still running KILL_GRACE seconds later, SIGKILL.
    ERROR        agent -> ctl {id?, channel?, message, traceback}.
    PING / PONG  {id} -> {id, time}.
    SHUTDOWN     ctl -> agent {id}: kill everything and exit (same as closing the agent's stdin).

Data kinds (channel = a data channel id)
    DATA         payload: bytes (at most CHUNK per frame, and never more than the sender's credit).
    EOF          payload: nil. From the writer's side: no more data. From the reader's side: "I will
                 not read any more" (the agent closes the pipe, so the producer gets SIGPIPE; the
                 controller stops feeding stdin).
    WINDOW       payload: int > 0, credit granted to the other side's sender on this channel.

Flow control
    Each data channel starts with WINDOW bytes of credit for its sender. The sender never has more
    unacknowledged DATA bytes than its credit; the receiver grants credit back (WINDOW frames, batched
    to GRANT bytes) as its consumer drains. A slow consumer throttles only its own producer, and each
    side buffers at most WINDOW bytes per channel. Frames for unknown channels are ignored (they may
    be in flight while a segment ends).

Processes
    Each command runs as ``/bin/sh -c COMMAND`` in its own session (its own process group), with
    default signal dispositions (SIGPIPE included); neighbours are joined by os.pipe() on this host.
    The agent exits when its stdin closes, on SHUTDOWN, SIGTERM or SIGHUP, or when its stdout is gone
    (EPIPE), killing every process group it started: SIGTERM, then SIGKILL after KILL_GRACE.
"""
import ast
import errno
import hashlib
import os
import platform
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
import traceback
from collections import deque

VERSION = "0.1.0"
PROTOCOL = 1  #: bumped on any incompatible change; the controller refuses an agent that differs

CONTROL = 0  #: channel 0 carries control maps; data channels are 1..2**31-1

HELLO = 1
RUN_SEGMENT = 2
STARTED = 3
DATA = 4
EOF = 5
WINDOW = 6
EXIT = 7
KILL = 8
ERROR = 9
PING = 10
PONG = 11
SHUTDOWN = 12
KIND_NAMES = {HELLO: "HELLO", RUN_SEGMENT: "RUN_SEGMENT", STARTED: "STARTED", DATA: "DATA", EOF: "EOF",
              WINDOW: "WINDOW", EXIT: "EXIT", KILL: "KILL", ERROR: "ERROR", PING: "PING", PONG: "PONG",
              SHUTDOWN: "SHUTDOWN"}

CHUNK = 256 * 1024  #: largest DATA payload: 4 pipe buffers per read, few frames per MB, small latency
WINDOW_SIZE = 1024 * 1024  #: initial credit per channel: 4 chunks in flight keep a LAN link busy
GRANT = 256 * 1024  #: credit is returned in batches of this size, one WINDOW frame per chunk at most
MAX_FRAME = 1024 * 1024 + 64 * 1024  #: 1 MiB bodies (4 chunks) plus slack for the msgpack envelope
READ_SIZE = 1024 * 1024  #: bytes read from the agent's stdin at once: a whole window, few syscalls
OUTBUF_HIGH = 4 * 1024 * 1024  #: stop reading pipes (and stdin) while this much awaits the controller
KILL_GRACE = 2.0  #: seconds between SIGTERM and SIGKILL: time to flush, short enough to not hang a run
MAX_DEPTH = 32  #: msgpack nesting the agent accepts; real messages nest 4 deep, fuzz goes deeper
PIPE_SIZE = 1024 * 1024  #: Linux F_SETPIPE_SZ for the agent's pipes: a 1 MiB read per wakeup
F_SETPIPE_SZ = 1031  #: from <linux/fcntl.h>; fcntl.F_SETPIPE_SZ only exists on Python >= 3.10
IOV_MAX = 512  #: frames handed to one writev(); well under Linux's 1024


# --------------------------------------------------------------------------------------------- codec
class CodecError(ValueError):
    """A value can't be encoded, or bytes are not the msgpack subset the protocol uses."""


def pack(obj):
    """Encode obj as msgpack, byte-identical to ``msgpack.packb(obj)`` for the types the protocol uses."""
    parts = []
    _pack(obj, parts, 0)
    return b"".join(parts)


def _pack(obj, parts, depth):
    if depth > MAX_DEPTH:
        raise CodecError("nested too deep")
    if obj is None:
        parts.append(b"\xc0")
    elif obj is True:
        parts.append(b"\xc3")
    elif obj is False:
        parts.append(b"\xc2")
    elif isinstance(obj, int):
        parts.append(_pack_int(obj))
    elif isinstance(obj, float):
        parts.append(struct.pack(">Bd", 0xCB, obj))
    elif isinstance(obj, str):
        data = obj.encode("utf-8")
        n = len(data)
        if n < 32:
            parts.append(bytes((0xA0 | n,)))
        elif n < 0x100:
            parts.append(struct.pack(">BB", 0xD9, n))
        elif n < 0x10000:
            parts.append(struct.pack(">BH", 0xDA, n))
        else:
            parts.append(struct.pack(">BI", 0xDB, n))
        parts.append(data)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        n = len(obj)
        if n < 0x100:
            parts.append(struct.pack(">BB", 0xC4, n))
        elif n < 0x10000:
            parts.append(struct.pack(">BH", 0xC5, n))
        else:
            parts.append(struct.pack(">BI", 0xC6, n))
        parts.append(bytes(obj))
    elif isinstance(obj, (list, tuple)):
        n = len(obj)
        if n < 16:
            parts.append(bytes((0x90 | n,)))
        elif n < 0x10000:
            parts.append(struct.pack(">BH", 0xDC, n))
        else:
            parts.append(struct.pack(">BI", 0xDD, n))
        for item in obj:
            _pack(item, parts, depth + 1)
    elif isinstance(obj, dict):
        n = len(obj)
        if n < 16:
            parts.append(bytes((0x80 | n,)))
        elif n < 0x10000:
            parts.append(struct.pack(">BH", 0xDE, n))
        else:
            parts.append(struct.pack(">BI", 0xDF, n))
        for key, value in obj.items():
            _pack(key, parts, depth + 1)
            _pack(value, parts, depth + 1)
    else:
        raise CodecError("can't encode %s" % type(obj).__name__)


def _pack_int(n):
    if 0 <= n < 0x80:
        return bytes((n,))
    if -32 <= n < 0:
        return struct.pack(">b", n)
    if n >= 0:
        if n < 0x100:
            return struct.pack(">BB", 0xCC, n)
        if n < 0x10000:
            return struct.pack(">BH", 0xCD, n)
        if n < 0x100000000:
            return struct.pack(">BI", 0xCE, n)
        if n < 0x10000000000000000:
            return struct.pack(">BQ", 0xCF, n)
        raise CodecError("integer too large")
    if n >= -0x80:
        return struct.pack(">Bb", 0xD0, n)
    if n >= -0x8000:
        return struct.pack(">Bh", 0xD1, n)
    if n >= -0x80000000:
        return struct.pack(">Bi", 0xD2, n)
    if n >= -0x8000000000000000:
        return struct.pack(">Bq", 0xD3, n)
    raise CodecError("integer too small")


#: fixed-width msgpack types: first byte -> (struct format, size)
_FIXED = {0xCA: (">f", 4), 0xCB: (">d", 8), 0xCC: (">B", 1), 0xCD: (">H", 2), 0xCE: (">I", 4),
          0xCF: (">Q", 8), 0xD0: (">b", 1), 0xD1: (">h", 2), 0xD2: (">i", 4), 0xD3: (">q", 8)}
#: length-prefixed types: first byte -> (kind, struct format of the length, its size)
_SIZED = {0xC4: ("bin", ">B", 1), 0xC5: ("bin", ">H", 2), 0xC6: ("bin", ">I", 4),
          0xD9: ("str", ">B", 1), 0xDA: ("str", ">H", 2), 0xDB: ("str", ">I", 4),
          0xDC: ("list", ">H", 2), 0xDD: ("list", ">I", 4), 0xDE: ("map", ">H", 2), 0xDF: ("map", ">I", 4)}


def unpack(data, bin_view=False):
    """Decode one msgpack value that fills data exactly; bin_view returns memoryview slices for bin."""
    view = memoryview(data)
    obj, pos = _unpack(view, 0, 0, bin_view)
    if pos != len(view):
        raise CodecError("%d trailing bytes" % (len(view) - pos))
    return obj


def _take(view, pos, n):
    end = pos + n
    if end > len(view):
        raise CodecError("truncated")
    return view[pos:end], end


def _unpack(view, pos, depth, bin_view):
    if depth > MAX_DEPTH:
        raise CodecError("nested too deep")
    if pos >= len(view):
        raise CodecError("truncated")
    b = view[pos]
    pos += 1
    if b < 0x80:
        return b, pos
    if b >= 0xE0:
        return b - 0x100, pos
    if 0xA0 <= b <= 0xBF:
        return _decode_str(view, pos, b & 0x1F)
    if 0x90 <= b <= 0x9F:
        return _unpack_list(view, pos, b & 0x0F, depth, bin_view)
    if 0x80 <= b <= 0x8F:
        return _unpack_map(view, pos, b & 0x0F, depth, bin_view)
    if b == 0xC0:
        return None, pos
    if b == 0xC2:
        return False, pos
    if b == 0xC3:
        return True, pos
    if b in _FIXED:
        fmt, size = _FIXED[b]
        raw, pos = _take(view, pos, size)
        return struct.unpack(fmt, raw)[0], pos
    if b in _SIZED:
        kind, fmt, size = _SIZED[b]
        raw, pos = _take(view, pos, size)
        n = struct.unpack(fmt, raw)[0]
        if kind == "bin":
            raw, pos = _take(view, pos, n)
            return (raw if bin_view else raw.tobytes()), pos
        if kind == "str":
            return _decode_str(view, pos, n)
        if kind == "list":
            return _unpack_list(view, pos, n, depth, bin_view)
        return _unpack_map(view, pos, n, depth, bin_view)
    raise CodecError("unsupported msgpack type 0x%02x" % b)


def _decode_str(view, pos, n):
    raw, pos = _take(view, pos, n)
    try:
        return str(raw, "utf-8"), pos
    except UnicodeDecodeError:
        raise CodecError("invalid utf-8")


def _unpack_list(view, pos, n, depth, bin_view):
    if n > len(view) - pos:  # every item takes at least one byte
        raise CodecError("truncated")
    items = []
    for _ in range(n):
        item, pos = _unpack(view, pos, depth + 1, bin_view)
        items.append(item)
    return items, pos


def _unpack_map(view, pos, n, depth, bin_view):
    if 2 * n > len(view) - pos:
        raise CodecError("truncated")
    result = {}
    for _ in range(n):
        key, pos = _unpack(view, pos, depth + 1, bin_view)
        value, pos = _unpack(view, pos, depth + 1, bin_view)
        if isinstance(key, (list, dict, memoryview)):
            raise CodecError("unhashable map key")
        result[key] = value
    return result, pos


def encode_frame(channel, kind, payload):
    """One frame as a list of buffers for writev; DATA payloads are not copied."""
    if kind == DATA:
        n = len(payload)
        if n < 0x100:
            binhead = struct.pack(">BB", 0xC4, n)
        elif n < 0x10000:
            binhead = struct.pack(">BH", 0xC5, n)
        else:
            binhead = struct.pack(">BI", 0xC6, n)
        head = b"\x93" + _pack_int(channel) + _pack_int(kind) + binhead
        return [struct.pack(">I", len(head) + n) + head, payload]
    body = pack([channel, kind, payload])
    return [struct.pack(">I", len(body)) + body]


# --------------------------------------------------------------------------------------------- agent
class ProtocolError(Exception):
    """The controller sent something this agent can't accept; answered with an ERROR frame."""


def _set_pipe_size(fd):
    try:
        import fcntl
        fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
    except (ImportError, OSError):
        pass  # not Linux, or over /proc/sys/fs/pipe-max-size: the default size still works


class InChannel(object):
    """Controller -> a process's stdin pipe: buffers at most the window, grants credit as it writes."""

    def __init__(self, cid, fd):
        self.cid = cid
        self.fd = fd
        self.buf = deque()
        self.credit = WINDOW_SIZE  # what the controller may still send
        self.ungranted = 0
        self.eof = False
        self.written = 0


class OutChannel(object):
    """A process's stdout/stderr pipe -> controller: reads only while the controller gave credit."""

    def __init__(self, cid, fd, hashers=None):
        self.cid = cid
        self.fd = fd
        self.credit = WINDOW_SIZE
        self.hashers = hashers or {}
        self.count = 0


class Proc(object):
    """One started (or failed) process of a segment."""

    def __init__(self, name):
        self.name = name
        self.popen = None
        self.error = None
        self.started = 0.0
        self.ended = 0.0
        self.returncode = None


class Segment(object):
    """The processes and channels of one RUN_SEGMENT request."""

    def __init__(self, sid, procs, stdin, stdout, stderrs):
        self.id = sid
        self.procs = procs
        self.stdin = stdin
        self.stdout = stdout
        self.stderrs = stderrs
        self.kill_at = None

    def outs(self):
        return [c for c in [self.stdout] + self.stderrs if c is not None]

    def running(self):
        return [p for p in self.procs if p.popen is not None and p.returncode is None]


class Agent(object):
    """The agent's single-threaded selector loop over its frame fds and every process pipe."""

    def __init__(self, rfd, wfd, config=None):
        self.rfd = rfd
        self.wfd = wfd
        self.config = config or {}
        self.kill_grace = float(self.config.get("kill_grace", KILL_GRACE))
        self.sel = selectors.DefaultSelector()
        self.interest = {}
        self.inbuf = b""
        self.out = deque()
        self.outlen = 0
        self.segments = {}
        self.channels = {}
        self.running = True
        self.stdin_open = True
        self.wake_r, self.wake_w = os.pipe()
        for fd in (rfd, wfd, self.wake_r, self.wake_w):
            os.set_blocking(fd, False)

    # ---- output
    def send(self, channel, kind, payload):
        for buf in encode_frame(channel, kind, payload):
            self.out.append(buf)
            self.outlen += len(buf)

    def error(self, message, rid=None, channel=None, tb=""):
        payload = {"message": message, "traceback": tb}
        if rid is not None:
            payload["id"] = rid
        if channel is not None:
            payload["channel"] = channel
        self.send(CONTROL, ERROR, payload)

    def flush(self):
        while self.out:
            bufs = [self.out[i] for i in range(min(len(self.out), IOV_MAX))]
            try:
                n = os.writev(self.wfd, bufs)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # EPIPE and friends: the controller is gone
                self.out.clear()
                self.outlen = 0
                self.running = False
                return
            self.outlen -= n
            while n:
                head = self.out[0]
                if n >= len(head):
                    n -= len(head)
                    self.out.popleft()
                else:
                    self.out[0] = memoryview(head)[n:]
                    n = 0

    def hello(self):
        return {"version": VERSION, "protocol": PROTOCOL, "python": platform.python_version(),
                "platform": sys.platform, "hostname": socket.gethostname(), "pid": os.getpid(),
                "cwd": os.getcwd(), "max_frame": MAX_FRAME, "window": WINDOW_SIZE, "chunk": CHUNK}

    # ---- input
    def on_stdin(self):
        try:
            data = os.read(self.rfd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.stdin_open = False
            self.running = False
            return
        buf = self.inbuf + data if self.inbuf else data
        pos = 0
        end = len(buf)
        while end - pos >= 4:
            size = struct.unpack_from(">I", buf, pos)[0]
            if size > MAX_FRAME:
                self.error("frame of %d bytes exceeds MAX_FRAME %d; closing" % (size, MAX_FRAME))
                self.running = False
                break
            if end - pos - 4 < size:
                break
            # DATA payloads become memoryviews into buf (bytes: immutable, so safe to keep)
            self.on_frame(memoryview(buf)[pos + 4:pos + 4 + size])
            pos += 4 + size
        self.inbuf = buf[pos:]

    def on_frame(self, body):
        try:
            frame = unpack(body, bin_view=True)
        except CodecError as exc:
            self.error("undecodable frame: %s" % exc)
            return
        if (not isinstance(frame, list) or len(frame) != 3 or type(frame[0]) is not int
                or type(frame[1]) is not int):
            self.error("a frame is [channel, kind, payload]")
            return
        channel, kind, payload = frame
        rid = payload.get("id") if isinstance(payload, dict) else None
        if type(rid) is not int:
            rid = None
        try:
            if channel == CONTROL:
                self.on_control(kind, payload, rid)
            else:
                self.on_data(channel, kind, payload)
        except ProtocolError as exc:
            self.error(str(exc), rid=rid, channel=channel or None)
        except Exception as exc:  # an agent bug must not take down the other segments
            self.error("%s: %s" % (type(exc).__name__, exc), rid=rid, channel=channel or None,
                       tb=traceback.format_exc())

    def on_control(self, kind, payload, rid):
        if not isinstance(payload, dict):
            raise ProtocolError("control payload must be a map")
        if kind == PING:
            self.send(CONTROL, PONG, {"id": rid, "time": time.time()})
        elif kind == HELLO:
            reply = self.hello()
            reply["id"] = rid
            self.send(CONTROL, HELLO, reply)
        elif kind == RUN_SEGMENT:
            if rid is None:
                raise ProtocolError("RUN_SEGMENT needs an int id")
            self.run_segment(rid, payload)
        elif kind == KILL:
            seg = self.segments.get(payload.get("segment"))
            sig = payload.get("signal", signal.SIGTERM)
            if type(sig) is not int or not 0 < sig < 65:
                raise ProtocolError("bad signal %r" % (sig,))
            if seg is not None:
                self.kill_segment(seg, sig)
        elif kind == SHUTDOWN:
            self.running = False
        else:
            raise ProtocolError("unknown control kind %r" % (kind,))

    def on_data(self, channel, kind, payload):
        ch = self.channels.get(channel)
        if ch is None:
            if kind not in (DATA, EOF, WINDOW):
                raise ProtocolError("unknown kind %r on channel %r" % (kind, channel))
            return  # in flight while its segment ended
        if kind == DATA:
            if not isinstance(ch, InChannel) or not isinstance(payload, memoryview):
                raise ProtocolError("DATA must be bytes, on a stdin channel")
            n = len(payload)
            if n > ch.credit:
                raise ProtocolError("DATA of %d bytes exceeds credit %d" % (n, ch.credit))
            ch.credit -= n
            if ch.fd is None or ch.eof:
                self.grant(ch, n)  # the reader is gone: swallow and keep the sender moving
            elif n:
                ch.buf.append(payload)
        elif kind == EOF:
            if isinstance(ch, InChannel):
                ch.eof = True
                if not ch.buf:
                    self.close_in(ch)
            else:
                self.close_out(ch, send_eof=False)
        elif kind == WINDOW:
            if not isinstance(ch, OutChannel) or type(payload) is not int or payload <= 0:
                raise ProtocolError("WINDOW must be a positive int, on an output channel")
            ch.credit += payload
        else:
            raise ProtocolError("unknown data kind %r" % (kind,))

    def grant(self, ch, n):
        ch.ungranted += n
        if ch.ungranted >= GRANT or (not ch.buf and ch.ungranted):
            self.send(ch.cid, WINDOW, ch.ungranted)
            ch.credit += ch.ungranted
            ch.ungranted = 0

    # ---- segments
    def run_segment(self, sid, req):
        procs = req.get("procs")
        if sid in self.segments:
            raise ProtocolError("segment %d already running" % sid)
        if not isinstance(procs, list) or not procs:
            raise ProtocolError("procs must be a non-empty list")
        for p in procs:
            if not isinstance(p, dict) or not isinstance(p.get("command"), str):
                raise ProtocolError("each proc is a map with a str command")
        stderr_ids = req.get("stderr")
        if stderr_ids is None:
            stderr_ids = [None] * len(procs)
        if not isinstance(stderr_ids, list) or len(stderr_ids) != len(procs):
            raise ProtocolError("stderr must list one channel (or nil) per proc")
        wanted = [req.get("stdin"), req.get("stdout")] + stderr_ids
        ids = [c for c in wanted if c is not None]
        for c in ids:
            if type(c) is not int or c <= 0 or c in self.channels:
                raise ProtocolError("channel %r is not a free int > 0" % (c,))
        if len(set(ids)) != len(ids):
            raise ProtocolError("channel ids repeat")
        names = req.get("checksums") or []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ProtocolError("checksums must be a list of names")
        try:
            hashers = dict((n, hashlib.new(n)) for n in names)
        except (ValueError, TypeError):
            raise ProtocolError("unknown checksum in %r" % (names,))
        self.start_segment(sid, procs, req.get("stdin"), req.get("stdout"), stderr_ids, hashers)

    def start_segment(self, sid, specs, stdin_id, stdout_id, stderr_ids, hashers):
        devnull = os.open(os.devnull, os.O_RDWR)
        child_fds = [devnull]
        stdin = stdout = None
        if stdin_id is not None:
            r, w = os.pipe()
            _set_pipe_size(w)
            os.set_blocking(w, False)
            child_fds.append(r)
            stdin = InChannel(stdin_id, w)
            stdin.handler = _bind(self.on_pipe_writable, stdin)
            first_in = r
        else:
            first_in = devnull
        if stdout_id is not None:
            r, w = os.pipe()
            _set_pipe_size(r)
            os.set_blocking(r, False)
            child_fds.append(w)
            stdout = OutChannel(stdout_id, r, hashers)
            stdout.handler = _bind(self.on_pipe_readable, stdout)
            last_out = w
        else:
            last_out = devnull
        stderrs = []
        err_fds = []
        for cid in stderr_ids:
            if cid is None:
                stderrs.append(None)
                err_fds.append(devnull)
                continue
            r, w = os.pipe()
            os.set_blocking(r, False)
            child_fds.append(w)
            ch = OutChannel(cid, r)
            ch.handler = _bind(self.on_pipe_readable, ch)
            stderrs.append(ch)
            err_fds.append(w)
        procs = []
        prev = first_in
        try:
            for i, spec in enumerate(specs):
                if i < len(specs) - 1:
                    r, w = os.pipe()
                    child_fds.extend((r, w))
                    out = w
                else:
                    r, out = None, last_out
                procs.append(self.spawn(i, spec, prev, out, err_fds[i]))
                prev = r
        finally:
            for fd in child_fds:
                os.close(fd)
        seg = Segment(sid, procs, stdin, stdout, stderrs)
        self.segments[sid] = seg
        for ch in [stdin] + seg.outs():
            if ch is not None:
                self.channels[ch.cid] = ch
        self.send(CONTROL, STARTED, {"id": sid, "pids": [p.popen.pid if p.popen else None for p in procs]})
        self.check_done(seg)

    def spawn(self, i, spec, fd_in, fd_out, fd_err):
        name = spec.get("name")
        proc = Proc(name if isinstance(name, str) else "p%d" % i)
        proc.started = time.time()
        try:
            env = dict(os.environ)
            extra = spec.get("env") or {}
            if not isinstance(extra, dict):
                raise TypeError("env must be a map")
            for key, value in extra.items():
                if not isinstance(key, str) or not isinstance(value, str):
                    raise TypeError("env keys and values must be str")
                env[key] = value
            cwd = spec.get("cwd")
            if cwd is not None and not isinstance(cwd, str):
                raise TypeError("cwd must be a str")
            proc.popen = subprocess.Popen(["/bin/sh", "-c", spec["command"]], stdin=fd_in,
                                          stdout=fd_out, stderr=fd_err, env=env, cwd=cwd,
                                          close_fds=True, start_new_session=True,
                                          restore_signals=True)
        except Exception as exc:
            proc.error = "%s: %s" % (type(exc).__name__, exc)
            proc.ended = time.time()
        return proc

    def kill_segment(self, seg, sig):
        for p in seg.procs:
            if p.popen is not None:
                try:
                    os.killpg(p.popen.pid, sig)
                except OSError:
                    pass  # the group is gone already
        if sig != signal.SIGKILL and seg.kill_at is None:
            seg.kill_at = time.time() + self.kill_grace

    def reap(self):
        for seg in list(self.segments.values()):
            for p in seg.running():
                rc = p.popen.poll()
                if rc is not None:
                    p.returncode = rc
                    p.ended = time.time()
            self.check_done(seg)

    def check_done(self, seg):
        if seg.running() or any(c.fd is not None for c in seg.outs()):
            return
        if seg.stdin is not None:
            seg.stdin.buf.clear()
            self.close_in(seg.stdin, tell=False)
        for ch in [seg.stdin] + seg.outs():
            if ch is not None:
                self.channels.pop(ch.cid, None)
        del self.segments[seg.id]
        outcomes = []
        for p in seg.procs:
            rc = p.returncode
            outcomes.append({"name": p.name, "exit_code": rc if rc is not None and rc >= 0 else None,
                             "signal": -rc if rc is not None and rc < 0 else None, "error": p.error,
                             "started": p.started, "ended": p.ended})
        stdout = seg.stdout
        self.send(CONTROL, EXIT, {
            "id": seg.id, "procs": outcomes,
            "stdin_bytes": seg.stdin.written if seg.stdin else 0,
            "stdout_bytes": stdout.count if stdout else 0,
            "stderr_bytes": [c.count if c else 0 for c in seg.stderrs],
            "digests": dict((n, h.hexdigest()) for n, h in (stdout.hashers if stdout else {}).items())})

    def close_fd(self, fd):
        """Unregister before closing: a closed fd number is reused by the next pipe."""
        self.want(fd, 0, None)
        os.close(fd)

    def close_in(self, ch, tell=False):
        if ch.fd is not None:
            self.close_fd(ch.fd)
            ch.fd = None
            if tell:
                self.send(ch.cid, EOF, None)

    def close_out(self, ch, send_eof=True):
        if ch.fd is not None:
            self.close_fd(ch.fd)
            ch.fd = None
            if send_eof:
                self.send(ch.cid, EOF, None)

    def on_pipe_writable(self, ch):
        while ch.buf and ch.fd is not None:
            head = ch.buf[0]
            try:
                n = os.write(ch.fd, head)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # EPIPE: the first process stopped reading
                dropped = sum(len(b) for b in ch.buf)
                ch.buf.clear()
                self.close_in(ch, tell=True)
                self.grant(ch, dropped)
                return
            ch.written += n
            if n == len(head):
                ch.buf.popleft()
            else:
                ch.buf[0] = head[n:]
            self.grant(ch, n)
        if not ch.buf and ch.eof:
            self.close_in(ch)

    def on_pipe_readable(self, ch):
        if ch.fd is None:
            return  # closed earlier in this round of events
        try:
            data = os.read(ch.fd, min(ch.credit, CHUNK))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close_out(ch)
            return
        ch.credit -= len(data)
        ch.count += len(data)
        for h in ch.hashers.values():
            h.update(data)
        self.send(ch.cid, DATA, data)

    # ---- loop
    def want(self, fd, events, callback):
        old = self.interest.get(fd)
        if old == (events, callback) or (not events and not old):
            return
        if not events:
            self.sel.unregister(fd)
            del self.interest[fd]
        elif old:
            self.sel.modify(fd, events, callback)
            self.interest[fd] = (events, callback)
        else:
            self.sel.register(fd, events, callback)
            self.interest[fd] = (events, callback)

    def update_interest(self):
        """Register exactly the fds that can make progress now; epoll_ctl only on a change."""
        wanted = {self.wake_r: (selectors.EVENT_READ, self.on_wake)}
        if self.stdin_open and self.outlen < OUTBUF_HIGH:
            wanted[self.rfd] = (selectors.EVENT_READ, self.on_stdin)
        if self.out:
            wanted[self.wfd] = (selectors.EVENT_WRITE, self.flush)
        for ch in self.channels.values():
            if ch.fd is None:
                continue
            if isinstance(ch, InChannel):
                if ch.buf:
                    wanted[ch.fd] = (selectors.EVENT_WRITE, ch.handler)
            elif ch.credit > 0 and self.outlen < OUTBUF_HIGH:
                wanted[ch.fd] = (selectors.EVENT_READ, ch.handler)
        for fd in list(self.interest):
            if fd not in wanted:
                self.want(fd, 0, None)
        for fd, (events, callback) in wanted.items():
            self.want(fd, events, callback)

    def on_wake(self):
        try:
            while os.read(self.wake_r, 512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def on_signal(self, signum, frame):
        if signum in (signal.SIGTERM, signal.SIGHUP):
            self.running = False

    def serve(self):
        """Run until stdin closes, SHUTDOWN, SIGTERM/SIGHUP or a dead stdout; then kill what we started."""
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # EPIPE as an error; children get SIG_DFL back
        signal.set_wakeup_fd(self.wake_w)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, self.on_signal)  # a handler (not SIG_IGN) so children get SIG_DFL
        self.send(CONTROL, HELLO, self.hello())
        self.flush()
        while self.running:
            self.update_interest()
            timeout = 1.0
            now = time.time()
            for seg in self.segments.values():
                if seg.kill_at is not None:
                    timeout = max(0.0, min(timeout, seg.kill_at - now))
            for key, _ in self.sel.select(timeout):
                key.data()
                if not self.running:
                    break
            self.reap()
            now = time.time()
            for seg in list(self.segments.values()):
                if seg.kill_at is not None and now >= seg.kill_at:
                    seg.kill_at = None
                    self.kill_segment(seg, signal.SIGKILL)
            self.flush()
        self.shutdown()

    def shutdown(self):
        """SIGTERM every process group, SIGKILL what is left after the grace period, reap."""
        segs = list(self.segments.values())
        for seg in segs:
            self.kill_segment(seg, signal.SIGTERM)
        deadline = time.time() + self.kill_grace
        while time.time() < deadline and any(seg.running() for seg in segs):
            time.sleep(0.02)
            for seg in segs:
                for p in seg.running():
                    rc = p.popen.poll()
                    if rc is not None:
                        p.returncode = rc
        for seg in segs:
            self.kill_segment(seg, signal.SIGKILL)  # also members that outlived their leader
            for p in seg.running():
                try:
                    p.popen.wait(1.0)
                except subprocess.TimeoutExpired:
                    pass
        self.flush()  # best effort, never blocking: the controller may not be reading any more


def _bind(method, arg):
    return lambda: method(arg)


def main(config_text=None):
    """Take over fds 0 and 1 for frames, point the rest of Python at stderr, and serve."""
    config = ast.literal_eval(config_text) if config_text else {}
    rfd = os.dup(0)
    wfd = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)  # a stray print (ours or a library's) goes to stderr, never into the frames
    os.close(devnull)
    sys.stdout = sys.stderr
    if config.get("cwd"):
        os.chdir(config["cwd"])
    Agent(rfd, wfd, config).serve()


if __name__ == "__main__":
    main(globals().get("CLIPIPE_CONFIG"))
