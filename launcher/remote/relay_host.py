"""A host's end of the relay (``launcher.run.relay``): keep the files of one stream, and forward it as it arrives.

    python -c SOURCE ROOT

What every host needs (code, a validation set or model sent whole, a ``--sync-dir`` folder) is one stream: its
files one after the other. The launcher sends it once into the head of each chain of hosts; each host writes the
bytes into its files and forwards them, as they arrive, to the next host over TCP. Which host feeds which is the
launcher's to decide and to change (``launcher.run.relay_routes``): a host that stops forwarding is routed around.

On stdin, frames (a 4-byte big-endian length, then JSON), from the launcher over SSH:
  ``{"manifest": [{"dest", "size", "sha256", "keep", "mode"}, ...], "bind": ADDRESS}``
      answered with a line ``{"present": [DEST, ...], "port": PORT}``: the files this host already placed and
      checked (``stage_receiver.is_verified``) and where it listens for its feed;
  ``{"stream": [I, ...], "want": [J, ...]}``: the manifest's files the stream holds, in order, and the positions
      in it of those this host keeps; an empty stream ends the program;
  ``{"accept": HEX}``: the secret of this host's feed from now on (the launcher's choice of feed: an older feed is
      hung up, and no other host's feed is taken);
  ``{"next": [[ADDRESS, PORT, HEX], ...]}``: the hosts to forward to from now on, each with its feed's secret
      (replaces the last list);
  ``{"data": OFFSET, "size": N}`` and N bytes: a piece of the stream, when the launcher feeds this host itself;
  ``{"end": true}``: every host is done; close and exit.
On stdout, a JSON line each: ``{"have": N}`` (the stream's first N bytes are here), ``{"placed": COUNT}`` (every
file checked against its sha256, those wanted placed) or ``{"failed": REASON}``.

A feed over TCP starts with a frame ``{"token": HEX}``, the secret the launcher gave this host for the feed it
assigned (on stdin, never on a command line; a new one with each new feed); this host answers with how many bytes
it has (8 bytes, big-endian) and then reads the stream from there. A byte that is here is never written again,
and each is hashed as it is written; a file counts only once its sha256 matches the launcher's manifest.
Standard library only, no annotations (Python 3.8 and newer).
"""
import fcntl
import hashlib
import hmac
import json
import os
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time

try:  # on the host the receiver's source comes first in the same script (launcher.run.relay.RELAY_SOURCE)
    read_frame, land, write_mark, is_verified, remove_stale_incoming  # noqa: B018
except NameError:
    from launcher.remote.stage_receiver import (is_verified, land, read_exact, read_frame, remove_stale_incoming,
                                                write_mark)

PIECE = 1 << 20
REPORT_EVERY_S = 0.2
HANDSHAKE_S = 10.0
HEARTBEAT_S = 1.0
HANDSHAKES = 8  # greetings being read at once; more are refused
PLACE_WAIT_S = 60.0


def say(line):
    with SAY_LOCK:
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()


SAY_LOCK = threading.Lock()


class Stream:
    """The stream's files in the incoming folder, written at any offset, read back by the forwarders, and hashed
    as their bytes first arrive (so a host has its digests when the last byte lands, with nothing to read again)."""

    def __init__(self, files, incoming):
        self.files, self.starts, self.fds = files, [], []
        self.hashes = [hashlib.sha256() for _ in files]
        start = 0
        for index, entry in enumerate(files):
            self.starts.append(start)
            start += entry["size"]
            path = os.path.join(incoming, str(index))
            self.fds.append(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        self.total, self.have = start, 0
        self.writing = threading.Lock()  # one writer at a time: what it writes is what it hashes
        self.changed = threading.Condition()
        self.last_report = 0.0

    def segments(self, begin, end):
        """(fd, offset in its file, length) covering the stream's bytes [begin, end)."""
        for fd, start, entry in zip(self.fds, self.starts, self.files):
            low, high = max(begin, start), min(end, start + entry["size"])
            if low < high:
                yield fd, low - start, high - low

    def write(self, offset, data):
        """Bytes at ``offset``, of which only those past what is here are written, and hashed as they are written:
        a byte, once here, is never written again (False: a gap after what is here, or past the end)."""
        with self.writing:
            if offset > self.have or offset + len(data) > self.total:
                return False
            new, at = data[self.have - offset:], self.have
            done = 0
            for fd, place, length in self.segments(at, at + len(new)):
                os.pwrite(fd, new[done: done + length], place)
                done += length
            self.hash(new, at)
            with self.changed:
                self.have = at + len(new)
                self.changed.notify_all()
        now = time.monotonic()
        if now - self.last_report >= REPORT_EVERY_S or self.have == self.total:
            self.last_report = now
            say({"have": self.have})
        return True


    def hash(self, data, at):
        """The stream's new bytes ``data``, from ``at``, into their files' digests."""
        done = 0
        for index, (start, entry) in enumerate(zip(self.starts, self.files)):
            low, high = max(at, start), min(at + len(data), start + entry["size"])
            if low < high:
                self.hashes[index].update(data[done: done + high - low])
                done += high - low


def hang_up(sock):
    """End a connection another thread may be blocked on (close alone does not wake it)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def recv_exact(sock, count, deadline):
    parts = []
    while count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise OSError("too slow")
        sock.settimeout(left)
        part = sock.recv(min(count, PIECE))
        if not part:
            raise OSError("the peer closed")
        parts.append(part)
        count -= len(part)
    return b"".join(parts)


class Feeds:
    """Where this host's stream comes from: the launcher on stdin, or hosts that connect with the token."""

    def __init__(self, bind):
        self.stream, self.token = None, b""  # the secret of the feed the launcher assigned (``expect``)
        self.ready = threading.Event()  # set once the launcher said what the stream holds
        self.server = socket.create_server((bind, 0))
        self.port = self.server.getsockname()[1]
        self.open = []
        self.lock = threading.Lock()
        self.greeting = threading.BoundedSemaphore(HANDSHAKES)
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            if self.greeting.acquire(blocking=False):
                threading.Thread(target=self.take, args=(conn,), daemon=True).start()
            else:
                conn.close()  # more unanswered greetings than a relay has hosts to route around

    def take(self, conn):
        try:
            try:
                deadline = time.monotonic() + HANDSHAKE_S  # for the whole greeting, however it trickles in
                length = struct.unpack(">I", recv_exact(conn, 4, deadline))[0]
                hello = json.loads(recv_exact(conn, length, deadline)) if length <= 4096 else {}
                given = str(hello.get("token", "")).encode()
                if not self.ready.wait(HANDSHAKE_S):
                    return
            finally:
                self.greeting.release()
            with self.lock:  # the assigned feed, connected again, replaces its older connection
                if not self.token or not hmac.compare_digest(given, self.token):
                    return
                for older in self.open:
                    hang_up(older)
                self.open = [conn]
            offset = self.stream.have
            conn.sendall(struct.pack(">Q", offset))
            conn.settimeout(None)
            self.read_feed(conn, offset)
        except (OSError, ValueError, AttributeError, RecursionError):
            pass  # not a feed of this relay: closed
        finally:
            conn.close()

    def read_feed(self, conn, offset):
        buffer = bytearray(PIECE)
        while offset < self.stream.total:
            count = conn.recv_into(buffer, min(PIECE, self.stream.total - offset))
            if not count or not self.stream.write(offset, bytes(buffer[:count])):
                return
            offset += count

    def start(self, stream):
        self.stream = stream
        self.ready.set()

    def expect(self, token):
        """From now on, only a feed with ``token`` (the launcher's secret for this host's current feed): the feed
        it replaced is hung up."""
        with self.lock:
            self.token = token.encode()
            for older in self.open:
                hang_up(older)
            self.open = []

    def close(self):
        self.server.close()
        with self.lock:
            for conn in self.open:
                hang_up(conn)


class Forward:
    """The stream, from what the host at ``address`` already has, as this host gets it."""

    def __init__(self, stream, address, port, token):
        self.stream, self.address, self.token = stream, (address, port), token
        self.stopped, self.sock = False, None
        threading.Thread(target=self.run, daemon=True).start()

    def connect(self):
        """A connection the next host took, and how much it has: tried again for HANDSHAKE_S (the next host may
        not have been told of this feed yet)."""
        deadline = time.monotonic() + HANDSHAKE_S
        while not self.stopped:
            try:
                self.sock = socket.create_connection(self.address, timeout=HANDSHAKE_S)
                hello = json.dumps({"token": self.token}).encode()
                self.sock.sendall(struct.pack(">I", len(hello)) + hello)
                return struct.unpack(">Q", recv_exact(self.sock, 8, time.monotonic() + 2 * HANDSHAKE_S))[0]
            except OSError:
                if self.sock is not None:
                    self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        raise OSError("stopped")

    def run(self):
        try:
            sent = self.connect()
            self.sock.settimeout(None)
            while sent < self.stream.total and not self.stopped:
                with self.stream.changed:
                    while self.stream.have <= sent and not self.stopped:
                        self.stream.changed.wait(1.0)
                    upto = self.stream.have
                for fd, at, length in self.stream.segments(sent, upto):
                    while length:
                        moved = os.sendfile(self.sock.fileno(), fd, at, length)
                        if not moved:
                            raise OSError("nothing more to send")
                        at, length = at + moved, length - moved
                sent = upto
        except (OSError, ValueError):
            pass  # the launcher sees the next host stall and routes around whichever end failed
        finally:
            if self.sock is not None:
                self.sock.close()

    def stop(self):
        self.stopped = True
        if self.sock is not None:
            hang_up(self.sock)


def check_and_place(stream, incoming, want):
    """Every file checked against its sha256; those wanted placed at their destinations (with their marks)."""
    for index in want:
        if stream.hashes[index].hexdigest() != stream.files[index]["sha256"]:
            return "checksum mismatch: " + stream.files[index]["dest"]
    for index in want:  # renamed while open: the forwarders go on reading the same file
        entry, path = stream.files[index], os.path.join(incoming, str(index))
        os.chmod(path, entry.get("mode", 0o600) & 0o777)
        os.makedirs(os.path.dirname(os.path.abspath(entry["dest"])), exist_ok=True)
        info = land(path, entry["dest"], entry["sha256"])
        if entry.get("keep"):
            write_mark(entry["dest"], entry["sha256"], info)
    return None


def place_when_whole(stream, incoming, want):
    with stream.changed:
        while stream.have < stream.total:
            stream.changed.wait(1.0)
    try:
        failed = check_and_place(stream, incoming, want)
    except BaseException as err:  # noqa: BLE001 - whatever stopped it is said, not lost with this thread
        failed = "placing the files failed: %s" % (err,)
    say({"failed": failed} if failed else {"placed": len(want)})


def heartbeat(stream):
    """What is here, once a second whatever happens: the launcher tells a waiting host from a stuck one by it."""
    while True:
        time.sleep(HEARTBEAT_S)
        say({"have": stream.have})


def serve(stream, feeds, incoming, want):
    """Act on the launcher's frames until its end frame (or its end of stdin)."""
    forwards = []
    placing = threading.Thread(target=place_when_whole, args=(stream, incoming, want), daemon=True)
    placing.start()
    threading.Thread(target=heartbeat, args=(stream,), daemon=True).start()
    while True:
        try:
            frame = read_frame()
        except SystemExit:
            return
        if "end" in frame:
            break
        if "accept" in frame:
            feeds.expect(frame["accept"])
        elif "next" in frame:
            for forward in forwards:
                forward.stop()
            forwards = [Forward(stream, address, port, token) for address, port, token in frame["next"]]
        elif "data" in frame:
            offset, size = frame["data"], frame["size"]
            while size:
                piece = read_exact(min(size, PIECE))
                if not stream.write(offset, piece):
                    sys.exit("the launcher's feed does not fit the stream")
                offset, size = offset + len(piece), size - len(piece)
    for forward in forwards:
        forward.stop()
    placing.join(PLACE_WAIT_S)  # a copy into place across file systems may still be running


def main(argv):
    root = argv[0]
    os.umask(0o077)
    os.makedirs(root, exist_ok=True)
    held = os.open(root, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_SH)  # as the receiver: mxft-launch clean waits while files arrive
    remove_stale_incoming(root)
    start = read_frame()
    manifest = start["manifest"]
    incoming, feeds = tempfile.mkdtemp(prefix=".incoming.", dir=root), None
    try:
        feeds = Feeds(start["bind"])  # an address this host cannot bind ends it: staging sends its files
        say({"present": [entry["dest"] for entry in manifest if is_verified(entry["dest"])], "port": feeds.port})
        route = read_frame()
        if not route["stream"]:
            return 0
        stream = Stream([manifest[index] for index in route["stream"]], incoming)
        feeds.start(stream)
        serve(stream, feeds, incoming, route["want"])
    finally:
        if feeds is not None:
            feeds.close()
        shutil.rmtree(incoming, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
