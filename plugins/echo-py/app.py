"""Echoes text as text and binary as binary to the connection that sent it."""

import wit_world
from wit_world.imports import host
from componentize_py_types import Err


class WitWorld(wit_world.WitWorld):
    def on_open(self, conn: int) -> None:
        pass

    # An import that returns result<_, error> raises Err on an error; the only one
    # possible here is that the connection is gone, so there is nothing to do.
    def on_text(self, conn: int, text: str) -> None:
        try:
            host.send_text(conn, text)
        except Err:
            pass

    def on_binary(self, conn: int, data: bytes) -> None:
        try:
            host.send_binary(conn, data)
        except Err:
            pass

    def on_close(self, conn: int, code: int, reason: str) -> None:
        pass
