"""Plugin API 0.2 as a stock client sees it (Python `websockets`): the plugin's own
handshake refusals, its 503 when the hook fails, its choice of subprotocol, and the chat's
names decided before the upgrade."""

import asyncio
import json

import pytest
import websockets
from websockets.exceptions import InvalidStatus


async def refused(url, **kwargs):
    """Opens `url` expecting the handshake refused; returns the HTTP response."""
    with pytest.raises(InvalidStatus) as refusal:
        async with websockets.connect(url, **kwargs):
            pass
    return refusal.value.response


async def test_the_plugins_refusal_reaches_the_client(api_host):
    response = await refused(f"{api_host.url}/reject?status=401&body=token+expired")
    assert response.status_code == 401
    assert response.headers["x-plugin"] == "api"
    assert response.body == b"token expired"
    # It never got on-open: this connection is the first.
    async with websockets.connect(f"{api_host.url}/") as ws:
        await ws.send("opens")
        assert await ws.recv() == "1"


async def test_a_hook_past_its_deadline_is_a_503_and_others_are_served(api_host):
    async with websockets.connect(f"{api_host.url}/") as bystander:
        spinning = [asyncio.create_task(refused(f"{api_host.url}/spin")) for _ in range(3)]
        for n in range(10):
            await bystander.send(f"echo {n}")
            assert await bystander.recv() == str(n)
        for response in await asyncio.gather(*spinning):
            assert response.status_code == 503


async def test_the_hook_picks_one_of_the_offered_subprotocols(api_host):
    async with websockets.connect(f"{api_host.url}/protocol?pick=v2", subprotocols=["v1", "v2"]) as ws:
        assert ws.subprotocol == "v2"
        await ws.send("echo ok")
        assert await ws.recv() == "ok"
    response = await refused(f"{api_host.url}/protocol?pick=v3", subprotocols=["v1", "v2"])
    assert response.status_code == 503


async def next_event(ws):
    """The next chat message other than the periodic `presence`."""
    while True:
        message = json.loads(await ws.recv())
        if message["type"] != "presence":
            return message


async def test_chat_names_are_decided_before_the_upgrade(chat_host):
    response = await refused(f"{chat_host.url}/chat")
    assert response.status_code == 400
    assert b"name is required" in response.body
    async with websockets.connect(f"{chat_host.url}/chat?name=alice") as alice:
        welcome = await next_event(alice)
        assert (welcome["type"], welcome["name"], welcome["users"]) == ("welcome", "alice", [])
        response = await refused(f"{chat_host.url}/chat?name=alice")
        assert response.status_code == 409
        async with websockets.connect(f"{chat_host.url}/chat?name=bob") as bob:
            welcome = await next_event(bob)
            assert [u["name"] for u in welcome["users"]] == ["alice"]
            joined = await next_event(alice)
            assert (joined["type"], joined["name"]) == ("join", "bob")
