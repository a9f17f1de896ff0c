"""The chat room of plugins/chat, in Python: names given at the handshake
(`?name=NAME`, refused with 400 or 409 before the upgrade), every text message relayed
to every other connection as JSON with the sender's name and colour, joins, leaves and
renames announced, the last 50 messages kept in the key-value store and sent to
newcomers, and the list of who is here sent to everyone every 3 seconds. Binary
messages are relayed unchanged. The protocol is documented at the top of
plugins/chat/src/lib.rs.

The room lives in the host, not in this module's memory: each name is its connection's
attachment, the history is in the store under `history/<sequence number>` and the
presence timer is the host's. `snapshot`/`restore` carry nothing, so that a hot reload
does not replay on-open (no second welcome).

Built by componentize-py against wit/ (world plugin-handshake-state; see the Makefile's
`plugins-py`). An import that returns a WIT result raises `Err` on an error.
"""

import json
import re
import time

import wit_world
from wit_world import exports
from wit_world.imports import host, store, timers
from wit_world.imports.types import (
    Accept,
    LogLevel,
    Reject,
    StoreError,
    StoreError_Unavailable,
    UpgradeDecision,
    UpgradeDecision_Accept,
    UpgradeDecision_Reject,
    UpgradeRequest,
)
from componentize_py_types import Err

COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#008080", "#9a6324", "#800000"]
MAX_NAME = 24
# Messages kept for newcomers.
HISTORY = 50
HISTORY_PREFIX = "history/"
# Longest `message` (its JSON, in bytes) kept in the history; longer ones are only relayed.
MAX_KEPT = 4096
# The presence timer, and its period.
PRESENCE = 1
PRESENCE_MS = 3000
# How long a name admitted at a handshake stays reserved for its on-open, in seconds.
RESERVATION = 10.0

# Names let in by on_upgrade whose on_open has not come yet, with when: two handshakes
# with one name, close together, must not both get in.
admitted: list[tuple[str, float]] = []


def clean_name(raw: str) -> str | None:
    """Keeps letters, digits, `-`, `_` and `.`, at most MAX_NAME of them."""
    name = "".join(c for c in raw if c.isalnum() or c in "-_.")[:MAX_NAME]
    return name or None


HEX = "0123456789abcdefABCDEF"


def percent_decode(text: str) -> str:
    """Decodes `%XX` escapes and `+`; invalid escapes stay as they are, invalid UTF-8 is
    replaced."""
    data = text.encode()
    out = bytearray()
    i = 0
    while i < len(data):
        b = data[i]
        if b == 0x25 and i + 2 < len(data) and chr(data[i + 1]) in HEX and chr(data[i + 2]) in HEX:
            out.append(int(data[i + 1 : i + 3], 16))
            i += 3
            continue
        out.append(0x20 if b == 0x2B else b)
        i += 1
    return out.decode("utf-8", errors="replace")


def query_param(query: str | None, name: str) -> str | None:
    """The value of query parameter `name`, percent-decoded (`+` is a space), if present."""
    if query is None:
        return None
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if key == name:
            return percent_decode(value)
    return None


def user(conn: int, attachment: bytes | None) -> dict | None:
    """The user a connection is, from its attachment; None without a (UTF-8) one."""
    if attachment is None:
        return None
    try:
        name = bytes(attachment).decode("utf-8")
    except UnicodeDecodeError:
        return None
    return {"id": conn, "name": name, "color": COLORS[conn % len(COLORS)]}


def users() -> list[dict]:
    """Everyone in the room, by id."""
    everyone = (user(c, host.attachment(c)) for c in sorted(host.connections()))
    return [u for u in everyone if u is not None]


def name_taken(name: str) -> bool:
    now = time.monotonic()
    admitted[:] = [(n, at) for n, at in admitted if now - at < RESERVATION]
    return any(n == name for n, _ in admitted) or any(u["name"] == name for u in users())


def message(kind: str, **fields) -> str:
    return json.dumps({"type": kind, **fields}, ensure_ascii=False, separators=(",", ":"))


def list_history() -> list[str]:
    try:
        return store.list_keys(HISTORY_PREFIX, None, 1000)
    except Err:
        return []


def describe(error: StoreError) -> str:
    """A store error as the Rust plugin logs it (its Debug form)."""
    if isinstance(error, StoreError_Unavailable):
        return f"StoreError::Unavailable({json.dumps(error.value, ensure_ascii=False)})"
    return "StoreError::TooLarge"


# The number the next history message gets, once this instance has read the keys (None
# until then, and again after a write failed: the store may have lost it).
next_in_history: int | None = None


def history_key(n: int) -> str:
    return f"{HISTORY_PREFIX}{n:020}"


def remember(text: str) -> None:
    """Appends a `message` to the history, dropping the oldest beyond HISTORY. The first
    call of an instance reads the history's keys; later ones know the next number and the
    oldest to drop."""
    global next_in_history
    data = text.encode()
    if len(data) > MAX_KEPT:
        return
    if next_in_history is None:
        keys = list_history()
        for old in keys[: max(0, len(keys) + 1 - HISTORY)]:
            try:
                store.delete(old)
            except Err:
                pass
        last = keys[-1][len(HISTORY_PREFIX):] if keys else ""
        next_in_history = int(last) + 1 if re.fullmatch(r"\+?[0-9]+", last) and int(last) < 2**64 else 1
    sequence = next_in_history
    try:
        store.set(history_key(sequence), data, None)
    except Err as error:
        host.log(LogLevel.WARN, f"history not stored: {describe(error.value)}")
        next_in_history = None
        return
    if sequence > HISTORY:
        try:
            store.delete(history_key(sequence - HISTORY))
        except Err:
            pass
    next_in_history = sequence + 1


def history() -> list:
    """The kept messages, oldest first."""
    kept = []
    for key in list_history():
        try:
            value = store.get(key)
            if value is not None:
                kept.append(json.loads(bytes(value).decode("utf-8")))
        except (Err, ValueError):
            pass
    return kept


def reject(status: int, body: str) -> UpgradeDecision:
    return UpgradeDecision_Reject(
        Reject(status, [("content-type", "text/plain; charset=utf-8")], body.encode())
    )


class Handshake(exports.Handshake):
    def on_upgrade(self, request: UpgradeRequest) -> UpgradeDecision:
        raw = query_param(request.query, "name")
        name = None if raw is None else clean_name(raw)
        if name is None:
            return reject(400, "a name is required: connect with ?name=NAME\n")
        if name_taken(name):
            return reject(409, f"the name {name} is taken\n")
        admitted.append((name, time.monotonic()))
        return UpgradeDecision_Accept(Accept(subprotocol=None, attachment=name.encode(), groups=[]))


class State(exports.State):
    # The room is in the host: nothing to carry, but having these exports means a
    # reload takes over without replaying on_open (and a second welcome).
    def snapshot(self) -> bytes:
        return b""

    def restore(self, state: bytes) -> None:
        pass


class WitWorld(wit_world.WitWorld):
    def on_open(self, conn: int) -> None:
        me = user(conn, host.attachment(conn))
        if me is None:
            # Let in before this version decided handshakes: no name to go by.
            try:
                host.close(conn, 4000, "a name is required: reconnect with ?name=NAME")
            except Err:
                pass
            return
        admitted[:] = [(n, at) for n, at in admitted if n != me["name"]]
        others = [u for u in users() if u["id"] != conn]
        try:
            host.send_text(conn, message("welcome", **me, users=others, history=history()))
        except Err:
            pass
        host.broadcast_text(message("join", **me), conn)
        if not timers.timer_pending(PRESENCE):
            try:
                timers.set_timer(PRESENCE, PRESENCE_MS, PRESENCE_MS)
            except Err:
                pass

    def on_text(self, conn: int, text: str) -> None:
        me = user(conn, host.attachment(conn))
        if me is None:
            return
        if text.startswith("/name "):
            name = clean_name(text[len("/name "):])
            if name is None:
                refusal = "a name needs a letter or a digit"
            elif name != me["name"] and name_taken(name):
                refusal = "that name is taken"
            else:
                try:
                    host.set_attachment(conn, name.encode())
                except Err:
                    pass
                host.broadcast_text(message("rename", **{**me, "name": name}, old=me["name"]), None)
                return
            try:
                host.send_text(conn, message("error", text=refusal))
            except Err:
                pass
            return
        relayed = message("message", **me, text=text)
        host.broadcast_text(relayed, conn)
        remember(relayed)

    def on_binary(self, conn: int, data: bytes) -> None:
        host.broadcast_binary(data, conn)

    def on_close(self, conn: int, code: int, reason: str) -> None:
        # The attachment is still readable during on_close.
        me = user(conn, host.attachment(conn))
        if me is not None:
            host.broadcast_text(message("leave", **me), conn)

    def on_timer(self, id: int) -> None:
        if id != PRESENCE:
            return
        everyone = users()
        if not everyone:
            timers.cancel_timer(PRESENCE)
            return
        host.broadcast_text(message("presence", users=everyone), None)
