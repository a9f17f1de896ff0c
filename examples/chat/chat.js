// The chat page: asks for a name, then opens one WebSocket to the same host that
// served the page (ws:// or wss:// to match) at /chat?name=NAME; JSON messages from
// the chat plugin, plain text to it. The protocol is documented at the top of
// plugins/chat/src/lib.rs.
//
// The plugin decides the name at the handshake: a missing name is refused with HTTP
// 400, a taken one with 409. A browser is not told the status, only that the socket
// closed without ever opening; the page then says so and asks for another name.
// `?name=NAME` in the page's URL joins at once with that name.
"use strict";

const log = document.getElementById("log");
const usersList = document.getElementById("users");
const statusLine = document.getElementById("status");
const joinForm = document.getElementById("join");
const nameInput = document.getElementById("name");
const joinButton = document.getElementById("join-button");
const joinError = document.getElementById("join-error");
const sendForm = document.getElementById("send");
const input = document.getElementById("message");
const submit = document.getElementById("submit");

const users = new Map(); // id -> {id, name, color}
let me = null;
let socket = null;

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

/** Shows the name form (joining) or the message form (joined). */
function showJoined(joined) {
  joinForm.hidden = joined;
  nameInput.disabled = joinButton.disabled = joined;
  input.disabled = submit.disabled = !joined;
  (joined ? input : nameInput).focus();
}

function askForName(problem) {
  joinError.textContent = problem ?? "";
  showJoined(false);
  nameInput.select();
}

function join(name) {
  if (socket) return;
  if (name === "") {
    askForName("Choose a name first.");
    return;
  }
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const url = `${scheme}//${location.host}/chat?name=${encodeURIComponent(name)}`;
  const ws = new WebSocket(url);
  socket = ws;
  let opened = false;
  joinError.textContent = "";
  statusLine.textContent = "connecting…";
  nameInput.disabled = joinButton.disabled = true;

  ws.addEventListener("open", () => {
    opened = true;
    statusLine.textContent = "connected";
  });
  ws.addEventListener("close", (event) => {
    socket = null;
    me = null;
    users.clear();
    renderUsers();
    if (!opened) {
      // The handshake was refused (400: no usable name, 409: taken), or the server
      // could not be reached; the browser does not say which.
      statusLine.textContent = "not connected";
      askForName(`Could not join as “${name}”: the name is missing or taken. Choose another.`);
      return;
    }
    statusLine.textContent = `disconnected (${event.code})`;
    addLine("notice", null, event.reason ? `Connection closed: ${event.reason}` : "Connection closed.");
    askForName();
  });
  ws.addEventListener("message", (event) => {
    if (typeof event.data !== "string") return;
    const msg = JSON.parse(event.data);
    switch (msg.type) {
      case "welcome":
        me = { id: msg.id, name: msg.name, color: msg.color };
        nameInput.value = me.name;
        users.clear();
        users.set(me.id, me);
        for (const u of msg.users) users.set(u.id, u);
        if (msg.history?.length) {
          addLine("notice", null, "Earlier messages:");
          for (const m of msg.history) addLine("message history", m, m.text);
        }
        addLine("notice", null, `Welcome, ${me.name}.`);
        showJoined(true);
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
        if (me && msg.id === me.id) {
          me = { id: msg.id, name: msg.name, color: msg.color };
          nameInput.value = me.name;
        }
        addLine("notice", null, `${msg.old} is now ${msg.name}`);
        break;
      case "presence":
        users.clear();
        for (const u of msg.users) users.set(u.id, u);
        break;
      case "message":
        addLine("message", msg, msg.text);
        break;
      case "error":
        addLine("error", null, msg.text);
        break;
    }
    renderUsers();
  });
}

joinForm.addEventListener("submit", (event) => {
  event.preventDefault();
  join(nameInput.value.trim());
});

sendForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = input.value.trim();
  if (!text || !me || socket?.readyState !== WebSocket.OPEN) return;
  socket.send(text);
  // The plugin relays messages to the others; show our own at once.
  if (!text.startsWith("/name ")) addLine("message", me, text);
  input.value = "";
});

const wanted = new URLSearchParams(location.search).get("name");
if (wanted) {
  nameInput.value = wanted;
  join(wanted.trim());
} else {
  askForName();
}
