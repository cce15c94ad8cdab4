"""The two ends of the reach check (``launcher.run.reach``), run on the hosts before any ps-lite process starts.

    python -c SOURCE listen ADDRESS PORT LIMIT_S    on the scheduler's host: bind the scheduler's address and
                                                    port, print "listening" (or "cannot listen: WHY", exit 3),
                                                    accept and close until stdin closes or LIMIT_S pass
    python -c SOURCE connect ADDRESS PORT TIMEOUT_S on every host: one TCP connection to it; prints "ok" or why not

This file's source runs on the host's own Python: standard library only, no annotations
(Python 3.6 and newer).
"""
import os
import select
import socket
import sys
import time


def listen(address, port, limit_s):
    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address, port))
    except OSError as err:
        print("cannot listen: %s" % (err.strerror or err), flush=True)
        return 3
    sock.listen(256)
    print("listening", flush=True)
    end = time.time() + limit_s
    while time.time() < end:
        ready, _, _ = select.select([sock, 0], [], [], 0.5)
        if 0 in ready and not os.read(0, 4096):
            break
        if sock in ready:
            sock.accept()[0].close()
    return 0


def connect(address, port, timeout_s):
    try:
        socket.create_connection((address, port), timeout=timeout_s).close()
        print("ok")
    except OSError as err:
        print(err.strerror or str(err) or type(err).__name__)
    return 0


def main(argv):
    action, address, port, seconds = argv[0], argv[1], int(argv[2]), float(argv[3])
    return (listen if action == "listen" else connect)(address, port, seconds)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
