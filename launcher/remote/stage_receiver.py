"""The host's end of staging (``launcher.run.stage``): answer an offer, take a stream of framed files, place them.

    python -c SOURCE ROOT

On stdin: a frame ``{"offer": [DEST, ...]}``, answered on stdout with one line
``{"present": [DEST, ...]}`` (those this receiver placed and checked before, unchanged
since); then for each file a frame ``{"dest", "size", "sha256", "keep", "mode"}`` and its
bytes, and a frame ``{"end": COUNT}``. A frame is a 4-byte big-endian length and that many
bytes of JSON. Files go into a private ``.incoming.*`` folder under ROOT first; only when
every one matched its sha256 and the end frame came are they renamed into place, so a copy
that dies halfway leaves nothing a later launch would trust. ``keep`` files (content-
addressed) get a ``.NAME.verified`` mark beside them: their sha256 and identity.

The receiver holds a shared lock on ROOT while it runs, so ``mxft-launch clean`` (which
takes it exclusively) never removes what a copy is answering for, and removes the incoming
folders of copies killed over an hour ago. This file's source runs on the host's own Python:
standard library only, no annotations (Python 3.8 and newer; ``splice`` needs 3.10 and a
pipe, else it copies in 1 MiB reads).
"""
import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
import struct
import sys
import tempfile
import time

F_SETPIPE_SZ = 1031
STALE_S = 3600  # an incoming folder untouched this long belongs to a copy that was killed


def newest_mtime(path):
    newest = os.lstat(path).st_mtime
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                newest = max(newest, os.lstat(os.path.join(folder, name)).st_mtime)
            except OSError:
                pass
    return newest


def remove_stale_incoming(root):
    """The incoming folders of copies killed halfway (a live one wrote within the hour)."""
    for name in os.listdir(root):
        try:
            if name.startswith(".incoming.") and time.time() - newest_mtime(os.path.join(root, name)) > STALE_S:
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        except OSError:
            pass


def read_exact(count):
    parts = []
    while count:
        part = os.read(0, min(count, 1 << 20))
        if not part:
            sys.exit("the stream ended early (the sender stopped)")
        parts.append(part)
        count -= len(part)
    return b"".join(parts)


def read_frame():
    return json.loads(read_exact(struct.unpack(">I", read_exact(4))[0]))


def copy_to(out, count):
    """``count`` bytes of stdin into ``out``, moved by the kernel where it can (splice), else read and written."""
    while count:
        try:
            moved = os.splice(0, out, count)
        except (AttributeError, OSError):
            moved = os.write(out, read_exact(min(count, 1 << 20)))
        if not moved:
            sys.exit("the stream ended early (the sender stopped)")
        count -= moved


def sha256_of(path):
    """A block at a time into one buffer: the memory does not grow with the file (a mapping would count in full)."""
    digest, block = hashlib.sha256(), bytearray(1 << 20)
    view = memoryview(block)
    with open(path, "rb", buffering=0) as handle:
        got = handle.readinto(block)
        while got:
            digest.update(view[:got])
            got = handle.readinto(block)
    return digest.hexdigest()


def beside(dest, suffix):
    folder, name = os.path.split(os.path.abspath(dest))
    return os.path.join(folder, "." + name + suffix)


def identity(info):
    return [info.st_ino, info.st_size, info.st_mtime_ns]


def is_verified(dest):
    """Present means: this receiver put it there after checking its sha256, and it is unchanged since."""
    try:
        info = os.lstat(dest)
        with open(beside(dest, ".verified")) as handle:
            mark = json.load(handle)
    except (OSError, ValueError):
        return False
    return stat.S_ISREG(info.st_mode) and isinstance(mark, dict) and mark.get("file") == identity(info)


def write_mark(dest, digest, info):
    part = beside(dest, "." + os.urandom(8).hex() + ".partial")
    with open(part, "x") as handle:
        json.dump({"sha256": digest, "file": identity(info)}, handle)
    os.replace(part, beside(dest, ".verified"))


def land(path, dest, digest):
    """Rename the checked file to dest; on another file system, via a copy beside dest, checked again."""
    info = os.stat(path)
    try:
        os.replace(path, dest)
        return info
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
    part = beside(dest, "." + os.urandom(8).hex() + ".partial")
    try:
        shutil.copyfile(path, part)
        shutil.copymode(path, part)
        if sha256_of(part) != digest:
            sys.exit("checksum mismatch after copying: " + dest)
        info = os.stat(part)
        os.replace(part, dest)
    finally:
        if os.path.lexists(part):
            os.remove(part)
    return info


def answer_offer():
    offer = read_frame()["offer"]
    sys.stdout.write(json.dumps({"present": [dest for dest in offer if is_verified(dest)]}) + "\n")
    sys.stdout.flush()


def receive(incoming):
    """Every file of the stream into ``incoming``, each checked: [(path, dest, sha256, keep)]."""
    received = []
    while True:
        header = read_frame()
        if "end" in header:
            break
        path = os.path.join(incoming, str(len(received)))
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            copy_to(out, header["size"])
        finally:
            os.close(out)
        if sha256_of(path) != header["sha256"]:
            sys.exit("checksum mismatch: " + header["dest"])
        os.chmod(path, header.get("mode", 0o600) & 0o777)  # the sender's mode: a 0600 file stays 0600
        received.append((path, header["dest"], header["sha256"], header.get("keep", False)))
    if header["end"] != len(received):
        sys.exit("the stream ended with %d of %d files" % (len(received), header["end"]))
    return received


def place(received):
    for path, dest, digest, keep in received:
        os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
        info = land(path, dest, digest)
        if keep:  # content-addressed: offered again by later launches
            write_mark(dest, digest, info)


def main(argv):
    root = argv[0]
    os.umask(0o077)  # the work folder and what lands in it are the user's alone
    try:
        fcntl.fcntl(0, F_SETPIPE_SZ, 1 << 20)  # 1 MiB, not 64 KiB, per wake-up from sshd
    except OSError:
        pass
    os.makedirs(root, exist_ok=True)
    held = os.open(root, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_SH)  # held until exit: mxft-launch clean (LOCK_EX) waits, or keeps data and code
    remove_stale_incoming(root)
    incoming = tempfile.mkdtemp(prefix=".incoming.", dir=root)
    try:
        answer_offer()
        place(receive(incoming))
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
