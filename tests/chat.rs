//! The chat protocol (documented at the top of `plugins/chat/src/lib.rs`), run against
//! every language's chat plugin: the real `host` binary, a raw WebSocket client, and
//! the JSON messages parsed and compared field by field (never by key order or spacing).
//!
//! Each `chat_suite!(module, "plugin", "Language")` line below expands into a module with one
//! `#[test]` per scenario (listed once, in the macro), each calling the scenario's
//! function with the plugin's name; so `cargo test --test chat rust::` runs one language
//! and `cargo test --test chat rename` one scenario in every language. To add a language,
//! add its line. A plugin that is not built fails its tests with the "run `make plugins`"
//! message of [`plugin_path`]: nothing is skipped.
//!
//! Every test starts its own server (with a store of its own), so connection ids are
//! fresh and the history empty; the tests read the ids from the `welcome` messages
//! rather than assume them. Names in the tests are ASCII, so that "letters and digits"
//! means the same in every language. `presence` messages come every 3 s whatever a test
//! does: [`recv_json`] passes over them, and one scenario checks them.

mod common;

use std::fs;

use common::*;
use serde_json::Value;

macro_rules! chat_suite {
    ($lang:ident, $plugin:literal, $language:literal) => {
        chat_suite!(@tests $lang, $plugin, $language, [
            welcome_join_and_leave,
            text_is_broadcast_to_the_others,
            rename_is_announced_to_everyone_with_a_cleaned_name,
            binary_is_relayed_unchanged_to_the_others,
            closes_and_refused_names,
            rename_to_a_taken_or_empty_name_is_refused,
            history_is_sent_to_newcomers_and_survives_a_restart,
            presence_lists_everyone_every_few_seconds,
            hot_reload_keeps_the_room,
        ]);
    };
    (@tests $lang:ident, $plugin:literal, $language:literal, [$($scenario:ident),* $(,)?]) => {
        mod $lang {
            #[test]
            fn load_is_reported_with_the_language() {
                super::load_is_reported_with_the_language($plugin, $language);
            }
            $(
                #[test]
                fn $scenario() {
                    super::$scenario($plugin);
                }
            )*
        }
    };
}

chat_suite!(rust, "chat", "Rust");
chat_suite!(javascript, "chat-js", "JavaScript");
chat_suite!(python, "chat-py", "Python");
chat_suite!(c, "chat-c", "C");

/// Messages kept for newcomers.
const HISTORY: usize = 50;

/// A person in the room, as the messages about them describe them.
#[derive(Clone, Debug, PartialEq)]
struct User {
    id: u64,
    name: String,
    color: String,
}

impl User {
    /// The `id`, `name` and `color` fields of `message`.
    fn of(message: &Value) -> User {
        let field = |key: &str| &message[key];
        let text = |key: &str| {
            field(key)
                .as_str()
                .unwrap_or_else(|| panic!("{key:?} is not a string in {message}"))
                .to_owned()
        };
        let user = User {
            id: field("id")
                .as_u64()
                .unwrap_or_else(|| panic!("\"id\" is not an unsigned integer in {message}")),
            name: text("name"),
            color: text("color"),
        };
        assert!(!user.color.is_empty(), "empty color in {message}");
        user
    }
}

/// A connection and who it is in the room.
struct Member {
    client: Client,
    user: User,
}

/// Reads the next message other than `presence`, which must be a text frame holding a
/// JSON object.
fn recv_json(client: &mut Client) -> Value {
    loop {
        let value = recv_any_json(client);
        if value["type"] != "presence" {
            return value;
        }
    }
}

/// Reads the next message, which must be a text frame holding a JSON object.
fn recv_any_json(client: &mut Client) -> Value {
    let text = client.recv_text();
    let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
    assert!(value.is_object(), "not a JSON object: {text:?}");
    value
}

/// The `users` array of `message`, in its order.
fn users_of(message: &Value) -> Vec<User> {
    message["users"]
        .as_array()
        .unwrap_or_else(|| panic!("\"users\" is not an array in {message}"))
        .iter()
        .map(User::of)
        .collect()
}

/// Reads the next message, which must be of type `kind`.
fn expect(client: &mut Client, kind: &str) -> Value {
    let message = recv_json(client);
    assert_eq!(message["type"], kind, "expected a {kind:?} message, got {message}");
    message
}

/// Reads the next message, which must be of type `kind` and about `user`.
fn expect_about(client: &mut Client, kind: &str, user: &User) -> Value {
    let message = expect(client, kind);
    assert_eq!(User::of(&message), *user, "in {message}");
    message
}

/// Reads the next message, which must be a `message` from `from` saying `text`.
fn expect_message(client: &mut Client, from: &User, text: &str) {
    let message = expect_about(client, "message", from);
    assert_eq!(message["text"], text, "in {message}");
}

/// Opens a connection at `path` and reads its `welcome`, which must be the first
/// message (the host includes a connection in broadcasts only once the plugin has seen
/// its `on-open`); returns the member and the welcome's `users`, sorted by id.
fn connect(server: &Server, path: &str) -> (Member, Vec<User>) {
    let (member, welcome) = connect_welcome(server, path);
    let mut users = users_of(&welcome);
    users.sort_by_key(|user| user.id);
    (member, users)
}

/// Like [`connect`], returning the whole `welcome`.
fn connect_welcome(server: &Server, path: &str) -> (Member, Value) {
    let mut client = server.connect(path);
    let welcome = recv_json(&mut client);
    assert_eq!(
        welcome["type"], "welcome",
        "expected a \"welcome\" first, got {welcome}"
    );
    let user = User::of(&welcome);
    (Member { client, user }, welcome)
}

/// The texts of a welcome's `history`, checking that each entry is a `message` object.
fn history_texts(welcome: &Value) -> Vec<String> {
    let history = welcome["history"]
        .as_array()
        .unwrap_or_else(|| panic!("\"history\" is not an array in {welcome}"));
    history
        .iter()
        .map(|entry| {
            assert_eq!(
                entry["type"], "message",
                "a history entry that is not a message: {entry}"
            );
            User::of(entry);
            entry["text"].as_str().expect("a message's text").to_owned()
        })
        .collect()
}

/// Asks for `path` and expects the handshake refused with `status`, a body saying
/// `body_has`, and the connection closed.
fn expect_refused(server: &Server, path: &str, status: u16, body_has: &str) {
    let response = http_request(server.addr, upgrade_request(path, &[]).as_bytes());
    assert_eq!(response.status, status, "{path}: {response:?}");
    let body = String::from_utf8_lossy(&response.body);
    assert!(
        body.contains(body_has),
        "{path}: the body {body:?} does not say {body_has:?}"
    );
}

/// Opens one connection per name, in order, each with `?name=`; checks that each one is
/// welcomed with its name and the others already in, and that those get its `join`.
fn room<const N: usize>(server: &Server, names: [&str; N]) -> [Member; N] {
    let mut members: Vec<Member> = Vec::new();
    for name in names {
        let (member, users) = connect(server, &format!("/?name={name}"));
        assert_eq!(member.user.name, name);
        let mut before: Vec<User> = members.iter().map(|m| m.user.clone()).collect();
        before.sort_by_key(|user| user.id);
        assert_eq!(users, before, "the welcome of {name} lists the wrong users");
        for other in &mut members {
            expect_about(&mut other.client, "join", &member.user);
        }
        members.push(member);
    }
    members.try_into().unwrap_or_else(|_| unreachable!())
}

/// Sends a close frame and expects it echoed with the same code.
fn close(client: &mut Client, code: u16, reason: &str) {
    client.send_close(code, reason);
    assert_eq!(client.recv_close().0, code, "the close was not echoed");
}

// ---------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------

/// The host's load report names the plugin's language (read from the component), its
/// size, its load time and whether the compiled code came from the cache.
fn load_is_reported_with_the_language(plugin: &str, language: &str) {
    let server = Server::start(plugin, &[]);
    server.wait_for_log("plugin loaded");
    let line = server
        .log_lines(|line| line.contains("plugin loaded"))
        .pop()
        .expect("no \"plugin loaded\" line");
    let size = fs::metadata(plugin_path(plugin)).unwrap().len();
    // The Rust chat is built with the SDK, on the newest API; the others on 0.2, where
    // on-timer is not optional.
    let (api, exports) = match language {
        "Rust" => ("0.3.0", "on-upgrade,snapshot+restore,on-timer"),
        _ => ("0.2.0", "on-upgrade,snapshot+restore"),
    };
    for field in [
        format!("language={language} "),
        format!("size={size} "),
        format!("api={api} "),
        format!("exports={exports} "),
    ] {
        assert!(line.contains(&field), "no {field:?} in {line:?}");
    }
    assert!(line.contains("load_ms=") && line.contains("cache_hit="), "{line:?}");
}

fn welcome_join_and_leave(plugin: &str) {
    let server = Server::start(plugin, &[]);
    let (mut alice, users) = connect(&server, "/?name=alice");
    assert_eq!(alice.user.name, "alice");
    assert_eq!(users, []);

    let (mut bob, users) = connect(&server, "/?name=bob");
    assert_eq!(bob.user.name, "bob");
    assert_ne!(bob.user.id, alice.user.id);
    assert_eq!(users, [alice.user.clone()]);
    expect_about(&mut alice.client, "join", &bob.user);

    close(&mut bob.client, 1000, "");
    expect_about(&mut alice.client, "leave", &bob.user);
}

fn text_is_broadcast_to_the_others(plugin: &str) {
    let server = Server::start(plugin, &[]);
    let [mut a, mut b, mut c] = room(&server, ["alice", "bob", "carol"]);
    for text in ["hello", "héllo ✓ 🎉", "a\"b\\c\nd\u{1}e\t</script>"] {
        a.client.send_text(text);
        expect_message(&mut b.client, &a.user, text);
        expect_message(&mut c.client, &a.user, text);
    }
    // The plugin handles events in order: had it sent alice her own messages, they
    // would come before bob's.
    b.client.send_text("from bob");
    expect_message(&mut a.client, &b.user, "from bob");
    expect_message(&mut c.client, &b.user, "from bob");
}

fn rename_is_announced_to_everyone_with_a_cleaned_name(plugin: &str) {
    let server = Server::start(plugin, &[]);
    let mut members = room(&server, ["alice", "bob", "dave"]);
    let renames = [
        ("carol", "carol"),
        ("x!y", "xy"),
        // Letters, digits, '-', '_' and '.', at most 24 of them.
        ("The.Quick-Brown_Fox!Jumps#Over*The*Lazy", "The.Quick-Brown_FoxJumps"),
    ];
    for (requested, cleaned) in renames {
        let old = members[0].user.clone();
        members[0].client.send_text(&format!("/name {requested}"));
        let renamed = User {
            name: cleaned.to_owned(),
            ..old.clone()
        };
        for member in &mut members {
            let message = expect_about(&mut member.client, "rename", &renamed);
            assert_eq!(message["old"], old.name.as_str(), "in {message}");
        }
        members[0].user = renamed;
    }
    // Later messages carry the new name.
    let [alice, bob, _] = &mut members;
    alice.client.send_text("renamed");
    expect_message(&mut bob.client, &alice.user, "renamed");
}

fn binary_is_relayed_unchanged_to_the_others(plugin: &str) {
    let server = Server::start(plugin, &[]);
    let [mut a, mut b, mut c] = room(&server, ["alice", "bob", "carol"]);
    let mut large = pseudo_random_bytes(70_000);
    large[0] = 0x00;
    large[69_999] = 0xFF;
    for data in [vec![0x00, 0xFF, 0x00, 0x80, 0x7F], large] {
        a.client.send_binary(&data);
        assert!(b.client.recv_binary() == data, "bob got other bytes");
        assert!(c.client.recv_binary() == data, "carol got other bytes");
    }
    // Had alice got her own bytes back, they would come before bob's text.
    b.client.send_text("after binary");
    expect_message(&mut a.client, &b.user, "after binary");
    expect_message(&mut c.client, &b.user, "after binary");
}

fn closes_and_refused_names(plugin: &str) {
    let server = Server::start(plugin, &[]);
    let [mut alice, mut bob, mut carol] = room(&server, ["alice", "bob", "carol"]);

    close(&mut alice.client, 4001, "bye");
    expect_about(&mut bob.client, "leave", &alice.user);
    expect_about(&mut carol.client, "leave", &alice.user);

    // A text message that is not UTF-8: the host closes with 1007.
    bob.client.send_frame(TEXT, b"caf\xC3 \xFF", true);
    assert_eq!(bob.client.recv_close().0, 1007);
    expect_about(&mut carol.client, "leave", &bob.user);

    // Names are decided at the handshake: none, an empty one after cleaning, or one
    // in the room are refused before the upgrade; alice's and bob's are free again.
    expect_refused(&server, "/", 400, "name is required");
    expect_refused(&server, "/?name=", 400, "name is required");
    expect_refused(&server, "/?name=%21%21", 400, "name is required");
    expect_refused(&server, "/?name=carol", 409, "carol is taken");
    expect_refused(&server, "/?name=car%21ol", 409, "carol is taken");
    let (dave, users) = connect(&server, "/?name=alice");
    assert_eq!(dave.user.name, "alice");
    assert_eq!(users, [carol.user.clone()]);
    // The refused ones never joined: the next thing carol hears is the new alice.
    expect_about(&mut carol.client, "join", &dave.user);
}

fn rename_to_a_taken_or_empty_name_is_refused(plugin: &str) {
    let server = Server::start(plugin, &[]);
    let [mut alice, mut bob] = room(&server, ["alice", "bob"]);
    for (requested, why) in [("bob", "taken"), ("!!", "letter or a digit")] {
        alice.client.send_text(&format!("/name {requested}"));
        let error = expect(&mut alice.client, "error");
        let text = error["text"].as_str().unwrap_or_default();
        assert!(
            text.contains(why),
            "the error for {requested:?} does not say {why:?}: {error}"
        );
    }
    // Nobody else heard of it, and alice is still alice.
    alice.client.send_text("still alice");
    expect_message(&mut bob.client, &alice.user, "still alice");
}

fn history_is_sent_to_newcomers_and_survives_a_restart(plugin: &str) {
    let store = TempDir::new("chat-store");
    let args = ["--store-dir", store.arg()];
    let sent: Vec<String> = (1..=HISTORY + 5).map(|n| format!("message {n}")).collect();
    {
        let server = Server::start(plugin, &args);
        let (alice, welcome) = connect_welcome(&server, "/?name=alice");
        assert_eq!(
            history_texts(&welcome),
            Vec::<String>::new(),
            "a new room has no history"
        );
        let [mut alice, mut bob] = [alice, connect(&server, "/?name=bob").0];
        expect_about(&mut alice.client, "join", &bob.user);
        for text in &sent {
            alice.client.send_text(text);
            expect_message(&mut bob.client, &alice.user, text);
        }
        // Binary messages are not kept, nor messages over 4 KiB of JSON (relayed all the same).
        bob.client.send_binary(b"not kept");
        assert_eq!(alice.client.recv_binary(), b"not kept");
        let long = "x".repeat(4096);
        bob.client.send_text(&long);
        expect_message(&mut alice.client, &bob.user, &long);
        let (carol, welcome) = connect_welcome(&server, "/?name=carol");
        assert_eq!(
            history_texts(&welcome),
            sent[5..],
            "the last {HISTORY} messages, oldest first"
        );
        let first = &welcome["history"][0];
        assert_eq!(User::of(first), alice.user, "in {first}");
        drop(carol);
        // Dropping the server kills it with SIGKILL: what the store acknowledged must
        // be on disk already.
    }
    // A new host on the same store: the room is empty, its history is not.
    let server = Server::start(plugin, &args);
    let (_dave, welcome) = connect_welcome(&server, "/?name=dave");
    assert_eq!(
        history_texts(&welcome),
        sent[5..],
        "the history did not survive a restart"
    );
}

fn presence_lists_everyone_every_few_seconds(plugin: &str) {
    let server = Server::start(plugin, &[]);
    let [mut alice, bob] = room(&server, ["alice", "bob"]);
    // The first one may have gone out before bob's join: wait for one that lists both.
    let expected = vec![alice.user.clone(), bob.user.clone()];
    for _ in 0..3 {
        let message = recv_any_json(&mut alice.client);
        assert_eq!(message["type"], "presence", "expected only presence, got {message}");
        if users_of(&message) == expected {
            return;
        }
    }
    panic!("three presence messages, none listing alice and bob");
}

fn hot_reload_keeps_the_room(plugin: &str) {
    let original = fs::read(plugin_path(plugin)).unwrap();
    // Same code, another digest: the watcher must load it as a new version.
    let replacement = with_custom_section(&original, "reload", &1u32.to_le_bytes());
    let dir = TempDir::new("chat");
    let file = dir.join("plugin.wasm");
    // A start waits a minute for its compile, a reload only 10 s, and a large component
    // (JavaScript, Python) can take longer on a busy machine: a first host compiles the
    // replacement into the compile cache, so that the reload measures the swap only.
    fs::write(&file, &replacement).unwrap();
    drop(Server::start_file(&file, &[]));
    fs::write(&file, &original).unwrap();
    // No idle pings (the raw client does not answer them) however long the swap takes.
    let server = Server::start_file(&file, &["--idle-timeout", "60"]);
    let [mut alice, mut bob] = room(&server, ["alice", "bob"]);
    alice.client.send_text("before reload");
    expect_message(&mut bob.client, &alice.user, "before reload");

    let partial = dir.join("plugin.wasm.partial");
    fs::write(&partial, &replacement).unwrap();
    fs::rename(&partial, &file).unwrap();
    server.wait_for_log("plugin reloaded");

    // The new version took over through snapshot/restore: no replayed on-open, so no
    // second welcome or join comes first; the names are attachments, kept by the host.
    let line = server
        .log_lines(|line| line.contains("plugin reloaded"))
        .pop()
        .expect("no \"plugin reloaded\" line");
    assert!(line.contains("state=\"restored 0 bytes\""), "{line}");
    alice.client.send_text("after reload");
    expect_message(&mut bob.client, &alice.user, "after reload");
    bob.client.send_text("back");
    expect_message(&mut alice.client, &bob.user, "back");
    // The history is in the store, not in the instance.
    let (carol, welcome) = connect_welcome(&server, "/?name=carol");
    assert_eq!(history_texts(&welcome), ["before reload", "after reload", "back"]);
    expect_about(&mut alice.client, "join", &carol.user);
    expect_about(&mut bob.client, "join", &carol.user);

    close(&mut alice.client, 1000, "");
    expect_about(&mut bob.client, "leave", &alice.user);
    close(&mut bob.client, 1000, "");
}
