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
//! Every test starts its own server, so connection ids are fresh; the tests read the ids
//! from the `welcome` messages rather than assume them. Names in the tests are ASCII, so
//! that "letters and digits" means the same in every language.

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
            closes_and_default_names,
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

/// At most this many messages may come before an expected one: after a reload, the
/// replayed `welcome` and `join`s of a two-person room, with room to spare.
const MAX_SKIPPED: usize = 6;

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

/// Reads the next message, which must be a text frame holding a JSON object.
fn recv_json(client: &mut Client) -> Value {
    let text = client.recv_text();
    let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
    assert!(value.is_object(), "not a JSON object: {text:?}");
    value
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

/// Reads messages until one of type `kind`, skipping at most [`MAX_SKIPPED`] others,
/// which must be of the types in `skippable`.
fn next_of_type(client: &mut Client, kind: &str, skippable: &[&str]) -> Value {
    for _ in 0..=MAX_SKIPPED {
        let message = recv_json(client);
        if message["type"] == kind {
            return message;
        }
        let skipped = message["type"].as_str().unwrap_or_default();
        assert!(skippable.contains(&skipped), "expected {kind:?}, got {message}");
    }
    panic!("no {kind:?} message among the next {} ones", MAX_SKIPPED + 1);
}

/// Opens a connection at `path` and reads its `welcome`, which must be the first
/// message (the host includes a connection in broadcasts only once the plugin has seen
/// its `on-open`); returns the member and the welcome's `users`, sorted by id.
fn connect(server: &Server, path: &str) -> (Member, Vec<User>) {
    let mut client = server.connect(path);
    let welcome = recv_json(&mut client);
    assert_eq!(
        welcome["type"], "welcome",
        "expected a \"welcome\" first, got {welcome}"
    );
    let mut users: Vec<User> = welcome["users"]
        .as_array()
        .unwrap_or_else(|| panic!("\"users\" is not an array in {welcome}"))
        .iter()
        .map(User::of)
        .collect();
    users.sort_by_key(|user| user.id);
    let user = User::of(&welcome);
    (Member { client, user }, users)
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

/// Sends a close 1000 and expects it echoed, skipping at most [`MAX_SKIPPED`] text
/// messages before it, which must be of the types in `skippable`.
fn close_skipping(client: &mut Client, skippable: &[&str]) {
    client.send_close(1000, "");
    for _ in 0..=MAX_SKIPPED {
        let (first, payload) = client.read_frame();
        if first == CLOSE {
            assert_eq!(
                payload.get(..2),
                Some(&1000u16.to_be_bytes()[..]),
                "the close was not echoed"
            );
            return;
        }
        assert_eq!(first, TEXT, "expected a text or close frame, got {first:#04x}");
        let message: Value = serde_json::from_slice(&payload).expect("a text message that is not JSON");
        let kind = message["type"].as_str().unwrap_or_default();
        assert!(skippable.contains(&kind), "expected the close echoed, got {message}");
    }
    panic!("the close was not echoed among the next {} frames", MAX_SKIPPED + 1);
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
    for field in [format!("language={language} "), format!("size={size} ")] {
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

fn closes_and_default_names(plugin: &str) {
    let server = Server::start(plugin, &[]);
    let [mut alice, mut bob, mut carol] = room(&server, ["alice", "bob", "carol"]);

    close(&mut alice.client, 4001, "bye");
    expect_about(&mut bob.client, "leave", &alice.user);
    expect_about(&mut carol.client, "leave", &alice.user);

    // A text message that is not UTF-8: the host closes with 1007.
    bob.client.send_frame(TEXT, b"caf\xC3 \xFF", true);
    assert_eq!(bob.client.recv_close().0, 1007);
    expect_about(&mut carol.client, "leave", &bob.user);

    // Without a name, a guest name; the room now holds carol only.
    let (guest, users) = connect(&server, "/");
    assert_eq!(guest.user.name, format!("guest-{}", guest.user.id));
    assert_eq!(users, [carol.user.clone()]);
    expect_about(&mut carol.client, "join", &guest.user);
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

    let partial = dir.join("plugin.wasm.partial");
    fs::write(&partial, &replacement).unwrap();
    fs::rename(&partial, &file).unwrap();
    server.wait_for_log("plugin reloaded");

    // The new instance got on-open again for both, so welcomes and joins may come first;
    // a `leave` would mean a connection was lost.
    alice.client.send_text("after reload");
    let message = next_of_type(&mut bob.client, "message", &["welcome", "join"]);
    let from = User::of(&message);
    assert_eq!((from.id, from.name.as_str()), (alice.user.id, "alice"), "in {message}");
    assert_eq!(message["text"], "after reload", "in {message}");

    close_skipping(&mut alice.client, &["welcome", "join"]);
    close_skipping(&mut bob.client, &["welcome", "join", "leave"]);
}

/// `component` with a custom section (id 0) appended: `name`, then `payload`.
fn with_custom_section(component: &[u8], name: &str, payload: &[u8]) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7F) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut contents = Vec::new();
    leb128(name.len(), &mut contents);
    contents.extend_from_slice(name.as_bytes());
    contents.extend_from_slice(payload);
    let mut bytes = component.to_vec();
    bytes.push(0x00);
    leb128(contents.len(), &mut bytes);
    bytes.extend_from_slice(&contents);
    bytes
}
