"""Send the launcher the files it names from one folder of a host: regular files only, each with its size and sha256.

The launcher brings worker 0's checkpoints and result.json back with this program instead of
``tar``: unpacking a host's tar stream trusts the host with the launcher's paths (links,
long names, CVE-2025-4517), while here the launcher asks for names it chose and takes
nothing else (``launcher.run.stage.fetch_files`` reads the other end).

    python -c SOURCE FOLDER NAME [NAME ...]

On stdout, for each name in the order given: a frame with ``{"name", "size", "sha256"}``
and then exactly ``size`` bytes; after the last one a frame ``{"end": COUNT}``. A frame is
a 4-byte big-endian length and that many bytes of JSON. A name that is not a regular file
in FOLDER (missing, a link, a folder, a pipe) ends the stream with ``{"error": TEXT}`` and
exit 1: a link is not followed, since it could point anywhere on the host.

This file's source runs on the host's own Python: standard library only, no annotations
(Python 3.6 and newer).
"""
import hashlib
import json
import os
import stat
import struct
import sys

CHUNK = 1 << 20


def frame(header):
    body = json.dumps(header).encode()
    return struct.pack(">I", len(body)) + body


def open_regular(folder, name):
    """An open descriptor of FOLDER/NAME and its stat, if it is a regular file; OSError otherwise (links are not
    followed; a pipe does not block the open)."""
    fd = os.open(os.path.join(folder, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise OSError("not a regular file")
    return fd, info


def chunks(fd, size, doing):
    """The file's bytes in order, CHUNK at a time; OSError if it ends before ``size`` (it shrank while ``doing``)."""
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(CHUNK, size - offset), offset)
        if not chunk:
            raise OSError("it shrank while it was " + doing)
        offset += len(chunk)
        yield chunk


def sha256_of(fd, size):
    digest = hashlib.sha256()
    for chunk in chunks(fd, size, "read"):
        digest.update(chunk)
    return digest.hexdigest()


def send_bytes(fd, size, out):
    for chunk in chunks(fd, size, "sent"):
        out.write(chunk)


def send(folder, names, out):
    """Write every named file's frame and bytes to ``out``, then the end frame; 0, or 1 after an error frame."""
    for name in names:
        try:
            fd, info = open_regular(folder, name)
        except OSError as err:
            out.write(frame({"error": "%s: %s" % (name, err.strerror or err)}))
            return 1
        try:
            out.write(frame({"name": name, "size": info.st_size, "sha256": sha256_of(fd, info.st_size)}))
            send_bytes(fd, info.st_size, out)
        except OSError as err:  # the launcher sees a short stream or a wrong digest, and says which file
            sys.stderr.write("%s: %s\n" % (name, err.strerror or err))
            return 1
        finally:
            os.close(fd)
    out.write(frame({"end": len(names)}))
    return 0


def main(argv):
    out = sys.stdout.buffer
    code = send(argv[0], argv[1:], out)
    out.flush()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
