"""Every host sends BYTES to every other host over TCP at once, as a push+pull step's traffic does (a bench program).

    python tcp_mesh.py MY_ADDRESS PEER,PEER,... BYTES START_AT

Listens on MY_ADDRESS:5999, connects to each peer at the wall-clock time START_AT, sends BYTES
on each connection while receiving as many from each peer, and prints the seconds from
START_AT until the last byte in either direction: what the links deliver to plain TCP,
with no parameter server in the way.
"""
import socket
import sys
import threading
import time

PORT = 5999
TIMEOUT_S = 600


def main() -> None:
    me, peers, size, start_at = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), float(sys.argv[4])
    listener = socket.create_server((me, PORT), backlog=len(peers))
    finished: list[float] = []

    def receive(conn: socket.socket) -> None:
        with conn:
            while conn.recv(1 << 20):
                pass
        finished.append(time.time())

    def accept() -> None:
        for _ in peers:
            threading.Thread(target=receive, args=(listener.accept()[0],)).start()

    def send(peer: str) -> None:
        block = bytes(1 << 20)
        with connect(peer, deadline=start_at + 60) as conn:
            for offset in range(0, size, len(block)):
                conn.sendall(block[:min(len(block), size - offset)])
        finished.append(time.time())

    threading.Thread(target=accept).start()
    time.sleep(max(0.0, start_at - time.time()))
    senders = [threading.Thread(target=send, args=(peer,)) for peer in peers]
    for thread in senders:
        thread.start()
    while len(finished) < 2 * len(peers):
        if time.time() > start_at + TIMEOUT_S:
            sys.exit(f"tcp_mesh on {me}: {len(finished)} of {2 * len(peers)} transfers done in {TIMEOUT_S} s")
        time.sleep(0.01)
    print(f"{max(finished) - start_at:.3f}")


def connect(peer: str, *, deadline: float) -> socket.socket:
    """A connection to ``peer``'s listener, which may start a moment after this one (tried until ``deadline``)."""
    while True:
        try:
            conn = socket.create_connection((peer, PORT), timeout=5)
            conn.settimeout(None)
            return conn
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)


if __name__ == "__main__":
    main()
