"""`clipipe transfer SRC... DST`: files and directories between contexts, verified, atomic, resumable.

Endpoints are `[CONTEXT:]PATH`: `./f` and `local:./f` are this machine, `prod:/backups/` a context,
`k8s-prod:POD:/var/log/` a pod of a Kubernetes context. Everything on a target is done by a short POSIX
`sh` command run as a segment of its own (so an SSH host takes the OpenSSH mux data plane, a pod its exec
channel): nothing is installed; `sha256sum` is used, else `python3`.

One file:
1. the source is inspected (kind, size); the destination is DST itself, or DST/NAME when DST is an
   existing directory or ends with `/` (then it is created);
2. the bytes stream from `cat` (or `tail -c +N`) on the source into `cat > DST.clipipe-part` on the
   destination through the controller's stream core: progress, and the sha256 of what left the source;
3. the destination hashes what it wrote; equal digests rename the part file into place (`mv -f`,
   atomic on one filesystem), unequal ones remove it and fail: a partial file never looks complete;
4. an interrupted transfer leaves its part file; the next one hashes the part and the same-size prefix
   of the source, and when they agree sends only the rest (`resumed_from` in the record).

A directory travels as one tar stream (`tar cf -` into `tar xf -` in a part directory), is verified by a
sha256 manifest of its files computed on both sides, then renamed into place (an existing destination
directory is refused unless `force`; it is then replaced, not merged). Directories are not resumed.
"""
from __future__ import annotations

import asyncio
import os
import posixpath
import shlex
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from clipipe import fastpipe
from clipipe.aiopipe import read_chunks
from clipipe.engine.wiring import close_fd, run_in_thread
from clipipe.errors import ClipipeError, TargetError, TransferError, UserError, did_you_mean
from clipipe.targets.base import ProcSpec, SegmentIO, Target

#: Suffix of a file being received; kept after a failure so the next transfer can resume it.
PART = ".clipipe-part"
#: Most bytes of a helper command's output kept (stat lines, digests, manifests of big trees).
CAPTURE_LIMIT = 64 * 1024 * 1024

#: `sha256sum` reading stdin, else Python's hashlib (a host with python3 but no coreutils).
_SHA = ("{ if command -v sha256sum >/dev/null 2>&1; then sha256sum; else python3 -c "
        "'import hashlib,sys;h=hashlib.sha256();[h.update(b) for b in iter(lambda: sys.stdin.buffer.read(1<<20),b\"\")]"
        ";print(h.hexdigest())'; fi; }")

#: Per-file digests of a tree: `DIGEST  ./path` lines sorted by path, the same text on both sides.
_MANIFEST = ("if command -v sha256sum >/dev/null 2>&1; then "
             "find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum; else python3 -c '"
             "import hashlib,os\n"
             "fs=sorted(os.path.join(d,f) for d,_,n in os.walk(\".\") for f in n if not os.path.islink(os.path.join(d,f)) and os.path.isfile(os.path.join(d,f)))\n"
             "for f in fs:\n"
             " h=hashlib.sha256()\n"
             " with open(f,\"rb\") as x:\n"
             "  [h.update(b) for b in iter(lambda: x.read(1<<20),b\"\")]\n"
             " print(h.hexdigest()+\"  \"+f)'; fi")


@dataclass
class Endpoint:
    """Where a transfer reads or writes: a context (optionally a pod of it) and a path there."""

    context: str
    path: str
    pod: str | None = None

    @property
    def label(self) -> str:
        """`ctx:path` or `ctx:pod:path`, as the user would write it."""
        return ":".join(x for x in (self.context, self.pod, self.path) if x is not None)


def parse_endpoint(text: str, contexts: Any) -> Endpoint:
    """`[CONTEXT:][POD:]PATH` against the loaded contexts (a bare path, or an unknown prefix, is local)."""
    if not text:
        raise UserError("an empty transfer endpoint", hint="write PATH or CONTEXT:PATH")
    head, sep, rest = text.partition(":")
    names = set(contexts.names()) | {"local"} if contexts else {"local"}
    if not sep or "/" in head or head not in names:
        if sep and "/" not in head and not os.path.exists(text):
            raise UserError(f"unknown context {head!r} in {text!r}" + did_you_mean(head, sorted(names)),
                            hint="write CONTEXT:PATH with a context of `clipipe context list`, or ./PATH "
                                 "for a local path with a colon")
        return Endpoint("local", text)
    pod = None
    kind = contexts.get(head).type if contexts and head != "local" else "local"
    if kind == "kubernetes":
        maybe_pod, sep2, path = rest.partition(":")
        if sep2 and maybe_pod and not maybe_pod.startswith("/"):
            pod, rest = maybe_pod, path
    if not rest:
        raise UserError(f"no path after the context in {text!r}", hint=f"for example {head}:/tmp/")
    return Endpoint(head, rest, pod)


@dataclass
class Job:
    """One source to one destination, and what became of it (an entry of the record's `transfers`)."""

    src: Endpoint
    dst: Endpoint
    kind: str = "file"                 #: file or dir
    final: str = ""                    #: the destination path written
    size: int = 0                      #: bytes to read (file) or an estimate (dir: du)
    bytes: int = 0                     #: bytes that crossed
    files: int = 0
    resumed_from: int = 0
    sha256: str | None = None          #: file: digest of the whole file; dir: digest of the manifest
    status: str = "pending"
    error: str | None = None
    started: float = 0.0
    ended: float = 0.0
    counter: Any = field(default_factory=fastpipe.Counter)

    def to_json(self) -> dict[str, Any]:
        """The job as the operation record keeps it (seed 003's `transfers` entries, and more)."""
        return {"from": self.src.label, "to": Endpoint(self.dst.context, self.final or self.dst.path,
                                                       self.dst.pod).label,
                "kind": self.kind, "status": self.status, "bytes": self.bytes, "size": self.size,
                "files": self.files, "resumed_from": self.resumed_from, "sha256": self.sha256,
                "duration_ms": int(max(0.0, self.ended - self.started) * 1000), "error": self.error}


# ------------------------------------------------------------------------------------------ commands
async def _read_pipe(fd: int, limit: int) -> bytes:
    """Everything a pipe delivers until EOF (at most `limit` bytes kept); the fd is closed."""
    out = bytearray()
    try:
        async for chunk in read_chunks(fd):
            if len(out) < limit:
                out += chunk[: limit - len(out)]
    finally:
        os.close(fd)
    return bytes(out)


async def capture(target: Target, command: str, limit: int = CAPTURE_LIMIT) -> tuple[int | None, str, str]:
    """Run a short command on a target: (exit status or None, stdout, stderr) as text."""
    r_out, w_out = os.pipe()
    r_err, w_err = os.pipe()
    reads = asyncio.gather(_read_pipe(r_out, limit), _read_pipe(r_err, 65536))
    try:
        outcomes = await target.run_segment([ProcSpec("clipipe-transfer", command)],
                                            SegmentIO(None, w_out, [w_err], bulk=True))
    except BaseException:
        await asyncio.gather(reads, return_exceptions=True)   # the target closed the write ends
        raise
    out, err = await reads
    o = outcomes[0]
    if o.error:
        raise TargetError(f"{target.name}: {o.error}", target=target.name)
    return o.exit_code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace").strip()


async def _must(target: Target, command: str, what: str) -> str:
    code, out, err = await capture(target, command)
    if code != 0:
        raise TransferError(f"{what} failed on {target.name}: {err or f'exit status {code}'}")
    return out


def _q(path: str) -> str:
    return shlex.quote(path)


async def inspect_source(target: Target, path: str) -> tuple[str, int]:
    """(`file` with its size in bytes | `dir` with an estimate in bytes); a missing path fails."""
    p = _q(path)
    out = await _must(target, f"if [ -d {p} ]; then echo dir $(du -sk {p} | cut -f1); "
                              f"elif [ -f {p} ] && [ -r {p} ]; then echo file $(wc -c < {p}); "
                              f"elif [ -e {p} ]; then echo unreadable 0; else echo missing 0; fi",
                      "inspecting the source")
    kind, _, size = out.strip().partition(" ")
    if kind == "missing":
        raise TransferError(f"{target.name}:{path}: no such file or directory")
    if kind == "unreadable":
        raise TransferError(f"{target.name}:{path}: not a readable regular file or directory")
    n = int(size or 0)
    return kind, n * 1024 if kind == "dir" else n


async def resolve_destination(target: Target, path: str, name: str) -> str:
    """The path to write: PATH/NAME for an existing directory or a path ending in `/` (created)."""
    p = _q(path)
    if path.endswith("/"):
        await _must(target, f"mkdir -p {p}", "creating the destination directory")
        return posixpath.join(path, name)
    out = await _must(target, f"if [ -d {p} ]; then echo dir; else echo other; fi", "inspecting the destination")
    return posixpath.join(path, name) if out.strip() == "dir" else path


# ------------------------------------------------------------------------------------------ streams
async def stream(src: Target, src_cmd: str, dst: Target, dst_cmd: str, job: Job,
                 checksums: list[str]) -> Any:
    """Run src_cmd's stdout into dst_cmd's stdin through the stream core; the pump's result."""
    r_src, w_src = os.pipe()
    r_dst, w_dst = os.pipe()
    e_src = os.pipe()
    e_dst = os.pipe()
    errs = asyncio.gather(_read_pipe(e_src[0], 65536), _read_pipe(e_dst[0], 65536))
    sending = asyncio.ensure_future(src.run_segment([ProcSpec("send", src_cmd)],
                                                    SegmentIO(None, w_src, [e_src[1]], bulk=True)))
    receiving = asyncio.ensure_future(dst.run_segment([ProcSpec("receive", dst_cmd)],
                                                      SegmentIO(r_dst, None, [e_dst[1]], bulk=True)))
    job.counter.start()
    pumping = run_in_thread(lambda: fastpipe.pump(r_src, [w_dst], checksums=checksums, counter=job.counter))
    try:
        result = await asyncio.shield(pumping)
    except BaseException:
        # kill both ends first (their targets kill the process groups): the pump thread then sees EOF
        # or EPIPE and returns, and only then are its fds closed (never under a running thread)
        sending.cancel()
        receiving.cancel()
        await asyncio.gather(sending, receiving, return_exceptions=True)
        await asyncio.wait([pumping], timeout=30)
        await asyncio.gather(errs, return_exceptions=True)
        raise
    finally:
        if pumping.done():
            close_fd(r_src)
            close_fd(w_dst)
        job.counter.finish()
    sent, received = await asyncio.gather(sending, receiving, return_exceptions=True)
    err_src, err_dst = await errs
    for side, got, err, t in (("reading", sent, err_src, src), ("writing", received, err_dst, dst)):
        if isinstance(got, BaseException):
            raise got
        o = got[0]
        if not o.ok:
            why = err.decode("utf-8", "replace").strip() or o.error or (
                f"killed by signal {o.signal}" if o.signal else f"exit status {o.exit_code}")
            raise TransferError(f"{side} on {t.name} failed: {why}")
    if result.failed is not None:
        raise TransferError(f"the destination stopped reading: {result.sink_errors.get(result.failed)}")
    return result


async def digest_of(target: Target, path: str, head: int | None = None) -> str:
    """sha256 of a file on a target (of its first `head` bytes when given)."""
    source = f"head -c {int(head)} {_q(path)}" if head is not None else f"cat {_q(path)}"
    out = await _must(target, f"{source} | {_SHA}", "hashing")
    return out.split()[0] if out.split() else ""


async def part_size(target: Target, part: str) -> int:
    """Bytes of a part file left by an earlier transfer (0 when there is none)."""
    out = await _must(target, f"if [ -f {_q(part)} ]; then wc -c < {_q(part)}; else echo 0; fi",
                      "looking for a part file")
    return int(out.strip() or 0)


# ------------------------------------------------------------------------------------------ jobs
Targets = Callable[[Endpoint], Any]


async def send_file(job: Job, src: Target, dst: Target, *, resume: bool = True) -> None:
    """One file: resume or start, stream, verify, rename into place."""
    part = job.final + PART
    have = await part_size(dst, part) if resume else 0
    if 0 < have <= job.size and await digest_of(src, job.src.path, have) == await digest_of(dst, part):
        job.resumed_from = have
    job.counter.total = job.size - job.resumed_from
    if job.resumed_from:
        src_cmd, dst_cmd = f"tail -c +{job.resumed_from + 1} {_q(job.src.path)}", f"cat >> {_q(part)}"
    else:
        src_cmd, dst_cmd = f"cat {_q(job.src.path)}", f"cat > {_q(part)}"
    result = await stream(src, src_cmd, dst, dst_cmd, job, [] if job.resumed_from else ["sha256"])
    job.bytes = result.bytes
    want = result.digests["sha256"] if not job.resumed_from else await digest_of(src, job.src.path)
    got = await digest_of(dst, part)
    if got != want:
        await capture(dst, f"rm -f {_q(part)}")
        raise TransferError(f"sha256 differs after the transfer ({want[:12]}... sent, {got[:12]}... "
                            f"written): {job.dst.context}:{part} removed")
    await _must(dst, f"mv -f {_q(part)} {_q(job.final)}", "renaming into place")
    job.sha256 = want
    job.files = 1


async def send_dir(job: Job, src: Target, dst: Target, *, force: bool = False) -> None:
    """One directory: a tar stream into a part directory, manifests compared, renamed into place."""
    parent, name = posixpath.split(job.src.path.rstrip("/") or "/")
    exists = (await _must(dst, f"if [ -e {_q(job.final)} ]; then echo yes; else echo no; fi",
                          "inspecting the destination")).strip() == "yes"
    if exists and not force:
        raise TransferError(f"{job.dst.context}:{job.final} exists",
                            hint="remove it, pick another destination, or pass --force to replace it")
    partdir = job.final.rstrip("/") + PART
    await _must(dst, f"rm -rf {_q(partdir)} && mkdir -p {_q(partdir)}", "preparing the destination")
    job.counter.total = job.size or None
    result = await stream(src, f"tar cf - -C {_q(parent or '/')} {_q(name)}", dst,
                          f"tar xof - -C {_q(partdir)} && cat > /dev/null", job, [])  # tar's end padding
    job.bytes = result.bytes
    mine = await _must(src, f"cd {_q(job.src.path)} && {_MANIFEST}", "listing the source")
    theirs = await _must(dst, f"cd {_q(posixpath.join(partdir, name))} && {_MANIFEST}", "listing the copy")
    if mine != theirs:
        await capture(dst, f"rm -rf {_q(partdir)}")
        raise TransferError(f"the copy of {job.src.label} differs from the source (sha256 manifests); "
                            f"{job.dst.context}:{partdir} removed")
    old = job.final.rstrip("/") + ".clipipe-old"
    swap = (f"rm -rf {_q(old)} && {{ [ ! -e {_q(job.final)} ] || mv {_q(job.final)} {_q(old)}; }} && "
            f"mv {_q(posixpath.join(partdir, name))} {_q(job.final)} && rmdir {_q(partdir)} && rm -rf {_q(old)}")
    await _must(dst, swap, "renaming into place")
    import hashlib
    job.sha256 = hashlib.sha256(mine.encode()).hexdigest()
    job.files = mine.count("\n")


async def run_job(job: Job, targets: Targets, *, resume: bool = True, force: bool = False) -> None:
    """Carry out one job; its status and error tell how it ended (exceptions are kept in it)."""
    job.started = time.time()
    job.status = "running"
    try:
        src, dst = await targets(job.src), await targets(job.dst)
        job.kind, job.size = await inspect_source(src, job.src.path)
        name = posixpath.basename(job.src.path.rstrip("/")) or "root"
        job.final = await resolve_destination(dst, job.dst.path, name)
        if job.kind == "dir":
            await send_dir(job, src, dst, force=force)
        else:
            await send_file(job, src, dst, resume=resume)
        job.status = "ok"
    except asyncio.CancelledError:
        job.status, job.error = "cancelled", "interrupted"
        raise
    except ClipipeError as exc:
        job.status = "unreachable" if isinstance(exc, TargetError) else "failed"
        job.error = exc.message + (f" (hint: {exc.hint})" if exc.hint else "")
    finally:
        job.ended = time.time()


async def run_jobs(jobs: list[Job], targets: Targets, *, parallel: int = 4, resume: bool = True,
                   force: bool = False) -> None:
    """Every job, `parallel` at a time."""
    sem = asyncio.Semaphore(max(1, parallel))

    async def one(job: Job) -> None:
        async with sem:
            await run_job(job, targets, resume=resume, force=force)

    await asyncio.gather(*(one(j) for j in jobs))
