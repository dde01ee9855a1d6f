"""Free TCP ports on localhost for rendezvous.

A leaf module (socket only) so that both ``backend/`` (a process group started outside a launcher)
and ``launch/`` (the local elastic rendezvous) can use it without ``backend`` importing ``launch``.
"""

import socket


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
