"""A test plugin (tests/runtime.rs): "print TEXT" writes TEXT to stdout and to
stderr, then answers "ok"; any other text is echoed. Shows that a Python plugin's
output reaches the host's log."""

import sys

import wit_world
from wit_world.imports import host
from componentize_py_types import Err


class WitWorld(wit_world.WitWorld):
    def on_open(self, conn: int) -> None:
        pass

    def on_text(self, conn: int, text: str) -> None:
        answer = text
        if text.startswith("print "):
            line = text[len("print "):]
            print(line, flush=True)
            print(line, file=sys.stderr, flush=True)
            answer = "ok"
        # The only possible error: the connection is gone.
        try:
            host.send_text(conn, answer)
        except Err:
            pass

    def on_binary(self, conn: int, data: bytes) -> None:
        pass

    def on_close(self, conn: int, code: int, reason: str) -> None:
        pass
