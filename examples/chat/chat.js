// The chat page: one WebSocket to the same host that served the page (ws:// or
// wss:// to match), JSON messages from the chat plugin, plain text to it.
"use strict";

const log = document.getElementById("log");
const usersList = document.getElementById("users");
const statusLine = document.getElementById("status");
const form = document.getElementById("send");
const input = document.getElementById("message");
const submit = document.getElementById("submit");

const users = new Map(); // id -> {name, color}
let me = null;

function addLine(kind, user, text) {
  const li = document.createElement("li");
  li.className = kind;
  if (user) {
    const name = document.createElement("span");
    name.className = "name";
    name.style.color = user.color;
    name.textContent = user.name;
    li.append(name);
  }
  li.append(document.createTextNode(text));
  log.append(li);
  log.scrollTop = log.scrollHeight;
}

function renderUsers() {
  usersList.replaceChildren(...[...users.values()].map((u) => {
    const li = document.createElement("li");
    li.style.color = u.color;
    li.textContent = u.id === me?.id ? `${u.name} (you)` : u.name;
    return li;
  }));
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const params = new URLSearchParams(location.search);
  const query = params.get("name") ? `?name=${encodeURIComponent(params.get("name"))}` : "";
  const socket = new WebSocket(`${scheme}//${location.host}/chat${query}`);

  socket.addEventListener("open", () => {
    statusLine.textContent = "connected";
    input.disabled = submit.disabled = false;
    input.focus();
  });
  socket.addEventListener("close", (event) => {
    statusLine.textContent = `disconnected (${event.code})`;
    input.disabled = submit.disabled = true;
    addLine("notice", null, "Connection closed.");
  });
  socket.addEventListener("message", (event) => {
    if (typeof event.data !== "string") return;
    const msg = JSON.parse(event.data);
    switch (msg.type) {
      case "welcome":
        me = { id: msg.id, name: msg.name, color: msg.color };
        users.clear();
        users.set(me.id, me);
        for (const u of msg.users) users.set(u.id, u);
        addLine("notice", null, `Welcome, ${me.name}.`);
        break;
      case "join":
        users.set(msg.id, msg);
        addLine("notice", msg, "joined");
        break;
      case "leave":
        users.delete(msg.id);
        addLine("notice", msg, "left");
        break;
      case "rename":
        users.set(msg.id, msg);
        if (me && msg.id === me.id) me = msg;
        addLine("notice", null, `${msg.old} is now ${msg.name}`);
        break;
      case "message":
        addLine("message", msg, msg.text);
        break;
    }
    renderUsers();
  });

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || socket.readyState !== WebSocket.OPEN) return;
    socket.send(text);
    // The plugin relays messages to the others; show our own at once.
    if (!text.startsWith("/name ")) addLine("message", me, text);
    input.value = "";
  });
}

connect();
