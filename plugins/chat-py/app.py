"""The chat room of plugins/chat, in Python: every text message is relayed to every
other connection as JSON with the sender's name and colour; joins, leaves and renames
are announced; binary messages are relayed unchanged. The protocol is documented at
the top of plugins/chat/src/lib.rs.

Built by componentize-py against wit/ (see the Makefile's `plugins-py`).
"""

import json

import wit_world
from wit_world.imports import host
from componentize_py_types import Err

COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#008080", "#9a6324", "#800000"]
MAX_NAME = 24

# Everyone in the room: connection id -> {"id", "name", "color"}.
users: dict[int, dict] = {}


def clean_name(raw: str) -> str | None:
    """Keeps letters, digits, `-`, `_` and `.`, at most MAX_NAME of them."""
    name = "".join(c for c in raw if c.isalnum() or c in "-_.")[:MAX_NAME]
    return name or None


def name_from_query(conn: int) -> str | None:
    conn_info = host.info(conn)
    if conn_info is None or conn_info.query is None:
        return None
    for pair in conn_info.query.split("&"):
        if pair.startswith("name="):
            return clean_name(pair[len("name="):])
    return None


def message(kind: str, user: dict, **extra) -> str:
    return json.dumps({"type": kind, **user, **extra}, ensure_ascii=False, separators=(",", ":"))


class WitWorld(wit_world.WitWorld):
    def on_open(self, conn: int) -> None:
        user = {
            "id": conn,
            "name": name_from_query(conn) or f"guest-{conn}",
            "color": COLORS[conn % len(COLORS)],
        }
        others = list(users.values())
        users[conn] = user
        try:
            host.send_text(conn, message("welcome", user, users=others))
        except Err:
            return  # already gone: its on-close comes next
        host.broadcast_text(message("join", user), conn)

    def on_text(self, conn: int, text: str) -> None:
        user = users.get(conn)
        if user is None:
            return
        if text.startswith("/name "):
            name = clean_name(text[len("/name "):])
            if name is None:
                return
            old, user["name"] = user["name"], name
            host.broadcast_text(message("rename", user, old=old), None)
            return
        host.broadcast_text(message("message", user, text=text), conn)

    def on_binary(self, conn: int, data: bytes) -> None:
        host.broadcast_binary(data, conn)

    def on_close(self, conn: int, code: int, reason: str) -> None:
        user = users.pop(conn, None)
        if user is not None:
            host.broadcast_text(message("leave", user), conn)
