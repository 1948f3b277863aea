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
                 max_frame, window, chunk, features: ["tee", "watchdog", "pdeathsig"?]}; also sent
                 as a reply to a HELLO request {id}. A controller sends `tee` only when features
                 lists it (an older agent would ignore the key and run a plain chain).
    RUN_SEGMENT  ctl -> agent {id, procs: [{name, command, env, cwd}], stdin: ch|nil,
                 stdout: ch|nil, stderr: [ch|nil per proc], checksums: ["sha256", ...], tee?}.
                 nil channel = /dev/null. The segment id is the request id. Without `tee` the
                 procs form one chain: stdin -> procs[0] | procs[1] | ... -> stdout.
    STARTED      agent -> ctl {id, pids: [pid|nil per proc]} once every proc is started (or failed).
    PROGRESS     agent -> ctl {id, bytes}: bytes the segment's tee has read so far; at most every
                 PROGRESS_INTERVAL seconds, only when the tee asked for progress and bytes moved.
    EXIT         agent -> ctl {id, procs: [{name, exit_code, signal, error, started, ended}],
                 stdin_bytes, stdout_bytes, stderr_bytes: [..], digests: {name: hex}, tee?}. Sent
                 after every proc is reaped and every output channel has sent EOF (or was closed by
                 ctl).
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

Tee segments (a fan-out node on the host)
    RUN_SEGMENT may carry ``tee: {after, branches, checksums, progress}`` (``stdout`` and the
    top-level ``checksums`` must then be nil/empty). procs[0..after] are the producer chain (stdin ->
    procs[0] | ... | procs[after]); the agent reads procs[after]'s stdout once and writes every chunk
    to each branch, hashing (hashlib names in ``checksums``) and counting it. Each branch is a map:

        {procs: [i, j, ...], stdout: ch|nil, on_exit: "fail"|"drop", count: bool}
            a chain on this host: the tee feeds procs i's stdin, i | j | ... by pipes, the last
            stdout goes to channel ch (nil = /dev/null). count: the agent relays (and counts) the
            bytes between the chain's procs instead of joining them directly.
        {channel: ch, on_exit: ...}
            the branch runs elsewhere: the tee's bytes leave the host as DATA frames on ch, within
            its credit; an EOF from ctl on ch means that reader is gone.

    Every proc index > after belongs to exactly one branch. The slowest live branch throttles the
    producer: the tee reads again only when every live branch took the previous chunk, so memory
    stays at one chunk per tee (plus the usual windows). A branch that stops reading (EPIPE, or EOF
    from ctl) is handled by its on_exit: ``drop`` closes it and the others go on (like ``tee -p``;
    when every branch is gone and no checksum is wanted the tee stops reading and the producer gets
    SIGPIPE); ``fail`` stops the tee, SIGTERMs the whole segment and sends no EOF to the other
    branches until their processes are gone, so no partial output ends cleanly. EXIT then carries::

        tee: {bytes, digests: {name: hex}, started, ended, failed: branch index|nil,
              branches: [{status: "ok"|"dropped"|"failed", error: "EPIPE"|nil, bytes, links: [n..]}]}

    where ``bytes`` per branch is what that branch took and ``links`` the bytes between its procs
    (counted branches only).

Flow control
    Each data channel starts with WINDOW bytes of credit for its sender. The sender never has more
    unacknowledged DATA bytes than its credit; the receiver grants credit back (WINDOW frames, batched
    to GRANT bytes) as its consumer drains. A slow consumer throttles only its own producer, and each
    side buffers at most WINDOW bytes per channel. Frames for unknown channels are ignored (they may
    be in flight while a segment ends).

Processes
    Each command runs as ``/bin/sh -c COMMAND`` in its own session (its own process group), with
    default signal dispositions (SIGPIPE included); neighbours are joined by os.pipe() on this host.
    A SIGKILLed agent leaves nothing running: on Linux each child asks for PR_SET_PDEATHSIG = SIGKILL
    (prctl via ctypes, when ctypes loads; HELLO's features then list "pdeathsig"), and because `sh`
    forks the command's processes (dash does not exec even a simple command), a watchdog forked at
    the first segment (its own session, holding only a pipe from the agent) learns every running
    segment's process groups and SIGKILLs them when that pipe reaches EOF without a goodbye.
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

VERSION = "0.2.0"
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
PROGRESS = 13
KIND_NAMES = {HELLO: "HELLO", RUN_SEGMENT: "RUN_SEGMENT", STARTED: "STARTED", DATA: "DATA", EOF: "EOF",
              WINDOW: "WINDOW", EXIT: "EXIT", KILL: "KILL", ERROR: "ERROR", PING: "PING", PONG: "PONG",
              SHUTDOWN: "SHUTDOWN", PROGRESS: "PROGRESS"}

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
PROGRESS_INTERVAL = 0.2  #: seconds between PROGRESS frames: the progress display redraws at 5 Hz
PR_SET_PDEATHSIG = 1  #: from <linux/prctl.h>: the signal a child gets when its parent thread dies
BRANCH_POLICIES = ("fail", "drop")  #: a tee branch's on_exit, as in the controller's tee
FD_SCAN_LIMIT = 4096  #: fds the watchdog closes where /proc/self/fd can't list them


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


def _hashers(names):
    """hashlib objects for a list of checksum names; ProtocolError for anything else."""
    names = names or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ProtocolError("checksums must be a list of names")
    try:
        return dict((n, hashlib.new(n)) for n in names)
    except (ValueError, TypeError):
        raise ProtocolError("unknown checksum in %r" % (names,))


def _parse_tee(tee, nprocs):
    """Check a RUN_SEGMENT's tee map; return (after, branches, hashers, progress)."""
    if not isinstance(tee, dict):
        raise ProtocolError("tee must be a map")
    after = tee.get("after")
    if type(after) is not int or not 0 <= after < nprocs:
        raise ProtocolError("tee.after must index a proc")
    raw = tee.get("branches") or []
    if not isinstance(raw, list):
        raise ProtocolError("tee.branches must be a list")
    branches, seen = [], []
    for b in raw:
        if not isinstance(b, dict):
            raise ProtocolError("each tee branch is a map")
        chain = b.get("procs") or []
        if not isinstance(chain, list) or not all(type(i) is int and after < i < nprocs for i in chain):
            raise ProtocolError("a tee branch's procs index procs after tee.after")
        seen.extend(chain)
        policy = b.get("on_exit", "fail")
        if policy not in BRANCH_POLICIES:
            raise ProtocolError("on_exit must be fail or drop")
        if bool(chain) == (b.get("channel") is not None):
            raise ProtocolError("a tee branch has either procs or a channel")
        branches.append({"procs": chain, "stdout": b.get("stdout") if chain else None,
                         "channel": b.get("channel"), "on_exit": policy, "count": b.get("count") is True})
    if sorted(seen) != list(range(after + 1, nprocs)):
        raise ProtocolError("every proc after tee.after belongs to exactly one branch")
    progress = tee.get("progress", False)
    if type(progress) is not bool:
        raise ProtocolError("tee.progress must be a bool")
    return after, branches, _hashers(tee.get("checksums")), progress


def _pdeathsig_setter():
    """A preexec_fn asking Linux to SIGKILL the child when the agent dies; None where it can't."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):
        return None  # a Python without ctypes: children may outlive a SIGKILLed agent
    parent = os.getpid()
    option, sig = ctypes.c_int(PR_SET_PDEATHSIG), ctypes.c_ulong(signal.SIGKILL)

    def preexec():
        prctl(option, sig, ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
        if os.getppid() != parent:  # the agent died before prctl took effect
            os._exit(137)
    return preexec


def start_watchdog():
    """Fork a process that SIGKILLs the process groups it is told about if the agent dies first.

    The agent writes ``+PGID`` when a segment starts, ``-PGID`` when it ended, ``q`` on an orderly
    exit; EOF without ``q`` means the agent is gone. Returns the (non-blocking) write end, or None.
    """
    try:
        r, w = os.pipe()
        pid = os.fork()
    except OSError:
        return None
    if pid:
        os.close(r)
        os.set_blocking(w, False)
        return w
    try:  # the watchdog: own session (a group kill of the agent spares it), only its pipe open
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        try:
            fds = [int(x) for x in os.listdir("/proc/self/fd")]
        except OSError:
            fds = list(range(3, FD_SCAN_LIMIT))
        for fd in fds:
            if fd > 2 and fd != r:
                try:
                    os.close(fd)
                except OSError:
                    pass
        for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_IGN)
        groups, buf = set(), b""
        while True:
            data = os.read(r, 4096)
            if not data:
                break
            lines = (buf + data).split(b"\n")
            buf = lines.pop()
            for line in lines:
                if line == b"q":
                    os._exit(0)
                if line[:1] == b"+":
                    groups.add(int(line[1:]))
                elif line[:1] == b"-":
                    groups.discard(int(line[1:]))
        for pgid in groups:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass
    finally:
        os._exit(0)


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


class Sink(object):
    """One reader of a Fanout: a pipe into a branch's first process, or a channel off the host."""

    def __init__(self, fanout, policy, fd=None, cid=None):
        self.fanout = fanout
        self.policy = policy
        self.fd = fd            # non-blocking write end, or None for a channel sink
        self.cid = cid
        self.credit = WINDOW_SIZE if cid is not None else 0
        self.pending = None     # memoryview of the current chunk not yet taken by this sink
        self.bytes = 0
        self.status = "ok"      # ok, dropped, failed
        self.error = None
        self.closed = False
        self.links = []         # Fanouts relaying (and counting) between the branch's processes

    def live(self):
        return not self.closed and self.status == "ok"


class Fanout(object):
    """A stream read once and written to every live sink, hashed and counted; one chunk in memory."""

    def __init__(self, fd, hashers=None):
        self.fd = fd            # non-blocking read end; None once closed
        self.hashers = hashers or {}
        self.sinks = []
        self.count = 0
        self.started = time.time()
        self.ended = 0.0
        self.failed = None      # index of the sink whose `fail` policy stopped the stream
        self.seg = None

    def idle(self):
        """True when every live sink took the last chunk: time to read the next one."""
        return all(s.pending is None for s in self.sinks if s.live())

    def finished(self):
        return self.fd is None and (self.failed is not None or all(s.closed for s in self.sinks))


class Segment(object):
    """The processes and channels of one RUN_SEGMENT request."""

    def __init__(self, sid, procs, stdin, stdout, stderrs, branch_outs=(), fanouts=(), tee=None,
                 progress=False):
        self.id = sid
        self.procs = procs
        self.stdin = stdin
        self.stdout = stdout
        self.stderrs = stderrs
        self.branch_outs = list(branch_outs)  # OutChannels of tee branches' last stdouts
        self.fanouts = list(fanouts)          # the tee first, then counted links
        self.tee = tee
        self.progress = progress
        self.reported = 0                     # bytes in the last PROGRESS frame
        self.progress_at = 0.0
        self.kill_at = None
        for fo in self.fanouts:
            fo.seg = self

    def outs(self):
        return [c for c in [self.stdout] + self.stderrs + self.branch_outs if c is not None]

    def sink_channels(self):
        return [s for fo in self.fanouts for s in fo.sinks if s.cid is not None]

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
        self._pdeathsig = False  # not looked up yet
        self.watchdog = None     # write end of the watchdog's pipe, once a segment started
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
                "cwd": os.getcwd(), "max_frame": MAX_FRAME, "window": WINDOW_SIZE, "chunk": CHUNK,
                "features": ["tee", "watchdog"] + (["pdeathsig"] if self.pdeathsig() else [])}

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
        if isinstance(ch, Sink):
            if kind == WINDOW and type(payload) is int and payload > 0:
                ch.credit += payload
            elif kind == EOF:  # that branch's reader is gone
                self.sink_error(ch, errno.EPIPE, tell=False)
            else:
                raise ProtocolError("a tee branch channel takes only WINDOW and EOF")
        elif kind == DATA:
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
        tee = None
        if req.get("tee") is not None:
            tee = _parse_tee(req.get("tee"), len(procs))
            if req.get("stdout") is not None or req.get("checksums"):
                raise ProtocolError("a tee segment has no stdout or checksums of its own: see tee")
        wanted = [req.get("stdin"), req.get("stdout")] + stderr_ids
        if tee is not None:
            wanted += [b["stdout"] if b["procs"] else b["channel"] for b in tee[1]]
        ids = [c for c in wanted if c is not None]
        for c in ids:
            if type(c) is not int or c <= 0 or c in self.channels:
                raise ProtocolError("channel %r is not a free int > 0" % (c,))
        if len(set(ids)) != len(ids):
            raise ProtocolError("channel ids repeat")
        hashers = _hashers(req.get("checksums"))
        self.start_segment(sid, procs, req.get("stdin"), req.get("stdout"), stderr_ids, hashers, tee)

    def new_pipe(self, fds, agent_reads):
        """os.pipe(): the agent's end kept (non-blocking), the child's closed after spawning."""
        r, w = os.pipe()
        mine, theirs = (r, w) if agent_reads else (w, r)
        fds[0].append(theirs)
        fds[1].append(mine)
        os.set_blocking(mine, False)
        return mine, theirs

    def out_pipe(self, cid, fds, hashers=None):
        """A pipe the agent forwards to channel cid; returns (OutChannel, child's write end)."""
        mine, theirs = self.new_pipe(fds, True)
        _set_pipe_size(mine)
        ch = OutChannel(cid, mine, hashers)
        ch.handler = _bind(self.on_pipe_readable, ch)
        return ch, theirs

    def fan_pipe(self, fds, hashers=None):
        """A pipe whose bytes a new Fanout distributes; returns (Fanout, child's write end)."""
        mine, theirs = self.new_pipe(fds, True)
        _set_pipe_size(mine)
        fo = Fanout(mine, hashers)
        fo.handler = _bind(self.on_fanout_readable, fo)
        return fo, theirs

    def sink_pipe(self, fo, policy, fds):
        """A pipe the Fanout fo writes into; returns (Sink, child's read end)."""
        mine, theirs = self.new_pipe(fds, False)
        _set_pipe_size(mine)
        sink = Sink(fo, policy, fd=mine)
        sink.handler = _bind(self.on_sink_writable, sink)
        fo.sinks.append(sink)
        return sink, theirs

    def start_segment(self, sid, specs, stdin_id, stdout_id, stderr_ids, hashers, tee=None):
        devnull = os.open(os.devnull, os.O_RDWR)
        fds = ([devnull], [])  # (children's ends: closed once spawned, the agent's ends)
        n = len(specs)
        ins, outs, errs = [devnull] * n, [devnull] * n, [devnull] * n
        stdin = stdout = tee_fo = None
        stderrs, branch_outs, fanouts = [], [], []
        try:
            if stdin_id is not None:
                mine, ins[0] = self.new_pipe(fds, False)
                _set_pipe_size(mine)
                stdin = InChannel(stdin_id, mine)
                stdin.handler = _bind(self.on_pipe_writable, stdin)
            for i, cid in enumerate(stderr_ids):
                ch = None
                if cid is not None:
                    ch, errs[i] = self.out_pipe(cid, fds)
                stderrs.append(ch)
            chains = []  # (proc indices, fd the last one writes, the Sink whose links are counted)
            if tee is None:
                last_out = devnull
                if stdout_id is not None:
                    stdout, last_out = self.out_pipe(stdout_id, fds, hashers)
                chains.append((list(range(n)), last_out, None))
            else:
                after, branches, tee_hashers, _ = tee
                tee_fo, w = self.fan_pipe(fds, tee_hashers)
                fanouts.append(tee_fo)
                chains.append((list(range(after + 1)), w, None))
                for b in branches:
                    if not b["procs"]:
                        tee_fo.sinks.append(Sink(tee_fo, b["on_exit"], cid=b["channel"]))
                        continue
                    sink, ins[b["procs"][0]] = self.sink_pipe(tee_fo, b["on_exit"], fds)
                    last_out = devnull
                    if b["stdout"] is not None:
                        ch, last_out = self.out_pipe(b["stdout"], fds)
                        branch_outs.append(ch)
                    chains.append((b["procs"], last_out, sink if b["count"] else None))
            for chain, last_out, counted in chains:
                for a, b in zip(chain, chain[1:]):
                    if counted is None:
                        r, w = os.pipe()
                        fds[0].extend((r, w))
                        outs[a], ins[b] = w, r
                    else:  # relayed through the agent, which counts the bytes from a to b
                        link, outs[a] = self.fan_pipe(fds)
                        _, ins[b] = self.sink_pipe(link, "drop", fds)
                        counted.links.append(link)
                        fanouts.append(link)
                outs[chain[-1]] = last_out
            procs = [self.spawn(i, spec, ins[i], outs[i], errs[i]) for i, spec in enumerate(specs)]
        except BaseException:
            for fd in fds[1]:
                os.close(fd)
            raise
        finally:
            for fd in fds[0]:
                os.close(fd)
        seg = Segment(sid, procs, stdin, stdout, stderrs, branch_outs, fanouts, tee_fo,
                      bool(tee and tee[3]))
        self.tell_watchdog(b"".join(b"+%d\n" % p.popen.pid for p in procs if p.popen))
        self.segments[sid] = seg
        for ch in [stdin] + seg.outs() + seg.sink_channels():
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
                                          restore_signals=True, preexec_fn=self.pdeathsig())
        except Exception as exc:
            proc.error = "%s: %s" % (type(exc).__name__, exc)
            proc.ended = time.time()
        return proc

    def tell_watchdog(self, line):
        if self.watchdog is None:
            self.watchdog = start_watchdog() or -1
        if self.watchdog >= 0 and line:
            try:
                os.write(self.watchdog, line)
            except OSError:  # full (it is stuck) or gone: the agent's own cleanup still applies
                pass

    def pdeathsig(self):
        """A preexec_fn making Linux SIGKILL the child when the agent dies; None where unavailable."""
        if self._pdeathsig is False:
            self._pdeathsig = _pdeathsig_setter()
        return self._pdeathsig

    # ---- tees
    def on_fanout_readable(self, fo):
        if fo.fd is None:
            return
        try:
            data = os.read(fo.fd, CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close_fanout(fo)
            for s in fo.sinks:
                if s.live():
                    self.close_sink(s)
            return
        fo.count += len(data)
        for h in fo.hashers.values():
            h.update(data)
        view = memoryview(data)
        for s in fo.sinks:
            if s.live():
                s.pending = view
                self.write_sink(s)
                if fo.failed is not None:
                    return

    def on_sink_writable(self, sink):
        if sink.live():
            self.write_sink(sink)

    def write_sink(self, s):
        """Give sink s as much of its pending chunk as it takes now, without blocking."""
        if s.cid is not None:
            while s.pending is not None and s.credit > 0 and self.outlen < OUTBUF_HIGH:
                n = min(len(s.pending), s.credit, CHUNK)
                self.send(s.cid, DATA, s.pending[:n])
                self.took(s, n)
            return
        while s.pending is not None:
            try:
                n = os.write(s.fd, s.pending)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EPIPE: that branch stopped reading
                self.sink_error(s, exc.errno or errno.EIO)
                return
            self.took(s, n)

    def took(self, s, n):
        s.bytes += n
        if s.cid is not None:
            s.credit -= n
        s.pending = s.pending[n:] if n < len(s.pending) else None

    def sink_error(self, s, err, tell=True):
        """Apply a sink's on_exit policy to its reader going away."""
        if not s.live():
            return
        fo = s.fanout
        s.error = errno.errorcode.get(err, str(err))
        s.pending = None
        if s.policy == "drop":
            s.status = "dropped"
            self.close_sink(s, tell=tell)
            if not any(x.live() for x in fo.sinks) and not fo.hashers:
                self.close_fanout(fo)  # like tee -p: nobody left to serve, the producer gets SIGPIPE
            return
        s.status = "failed"  # stop the tee and the segment; the other branches see no clean EOF
        fo.failed = fo.sinks.index(s)
        self.close_sink(s, tell=False)
        for other in fo.sinks:
            other.pending = None
        self.close_fanout(fo)
        self.kill_segment(fo.seg, signal.SIGTERM)

    def close_fanout(self, fo):
        if fo.fd is not None:
            self.close_fd(fo.fd)
            fo.fd = None
            fo.ended = time.time()

    def close_sink(self, s, tell=True):
        """End one sink: EOF for its reader (the pipe closed, or an EOF frame on its channel)."""
        if s.closed:
            return
        s.closed = True
        s.pending = None
        if s.fd is not None:
            self.close_fd(s.fd)
            s.fd = None
        elif tell:
            self.send(s.cid, EOF, None)

    def service_sinks(self):
        """Channel sinks move on credit, not readiness: offer them their pending bytes each round."""
        for seg in self.segments.values():
            for s in seg.sink_channels():
                if s.live() and s.pending is not None:
                    self.write_sink(s)

    def report_progress(self, now):
        """PROGRESS frames for tees that asked, at most every PROGRESS_INTERVAL; the next deadline."""
        deadline = None
        for seg in self.segments.values():
            fo = seg.tee
            if fo is None or not seg.progress or fo.count == seg.reported:
                continue
            due = seg.progress_at + PROGRESS_INTERVAL
            if now >= due:
                self.send(CONTROL, PROGRESS, {"id": seg.id, "bytes": fo.count})
                seg.reported, seg.progress_at = fo.count, now
            else:
                deadline = due if deadline is None else min(deadline, due)
        return deadline

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
        if (seg.running() or any(c.fd is not None for c in seg.outs())
                or not all(fo.finished() for fo in seg.fanouts)):
            return
        if seg.stdin is not None:
            seg.stdin.buf.clear()
            self.close_in(seg.stdin, tell=False)
        for fo in seg.fanouts:  # after a `fail`: the other branches' ends, now that nobody reads them
            for sink in fo.sinks:
                self.close_sink(sink)
        for ch in [seg.stdin] + seg.outs() + seg.sink_channels():
            if ch is not None:
                self.channels.pop(ch.cid, None)
        del self.segments[seg.id]
        self.tell_watchdog(b"".join(b"-%d\n" % p.popen.pid for p in seg.procs if p.popen))
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
            "digests": dict((n, h.hexdigest()) for n, h in (stdout.hashers if stdout else {}).items()),
            "tee": _tee_report(seg.tee)})

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
        for seg in self.segments.values():
            for fo in seg.fanouts:
                if fo.fd is not None and fo.idle() and self.outlen < OUTBUF_HIGH:
                    wanted[fo.fd] = (selectors.EVENT_READ, fo.handler)
                for s in fo.sinks:
                    if s.fd is not None and s.pending is not None:
                        wanted[s.fd] = (selectors.EVENT_WRITE, s.handler)
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
        progress_due = None
        while self.running:
            self.service_sinks()
            self.update_interest()
            timeout = 1.0
            now = time.time()
            for seg in self.segments.values():
                if seg.kill_at is not None:
                    timeout = max(0.0, min(timeout, seg.kill_at - now))
            if progress_due is not None:
                timeout = max(0.0, min(timeout, progress_due - now))
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
            progress_due = self.report_progress(now)
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
        if self.watchdog is not None and self.watchdog >= 0:
            self.tell_watchdog(b"q\n")  # everything is killed already: the watchdog may just go
            os.close(self.watchdog)
        self.flush()  # best effort, never blocking: the controller may not be reading any more


def _tee_report(fo):
    """EXIT's tee map (see the module docstring), or None for a segment without a tee."""
    if fo is None:
        return None
    return {"bytes": fo.count, "digests": dict((n, h.hexdigest()) for n, h in fo.hashers.items()),
            "started": fo.started, "ended": fo.ended or time.time(), "failed": fo.failed,
            "branches": [{"status": s.status, "error": s.error, "bytes": s.bytes,
                          "links": [link.count for link in s.links]} for s in fo.sinks]}


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
