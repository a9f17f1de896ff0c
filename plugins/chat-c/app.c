// The chat room of plugins/chat, in C: names given at the handshake (`?name=NAME`,
// refused with 400 or 409 before the upgrade), every text message relayed to every
// other connection as JSON with the sender's name and colour, joins, leaves and renames
// announced, the last 50 messages kept in the key-value store and sent to newcomers,
// and the list of who is here sent to everyone every 3 seconds. Binary messages are
// relayed unchanged. The protocol is documented at the top of plugins/chat/src/lib.rs.
//
// The room lives in the host, not in this module's memory: each name is its
// connection's attachment, the history is in the store under `history/<sequence
// number>` and the presence timer is the host's. `snapshot`/`restore` carry nothing, so
// that a hot reload does not replay on-open (no second welcome).
//
// Bindings come from `wit-bindgen c` for the world plugin-handshake-state
// (plugin_handshake_state.h and .c); see plugins/README.md for the build. Exports own
// their arguments and free them with the generated *_free functions; what an export
// returns is freed by the bindings after the call (so it must be heap memory); what an
// import returns belongs to the caller, what it is given stays the caller's.
// Names keep ASCII letters, digits, '-', '_' and '.', and every non-ASCII character
// (the Rust plugin keeps only Unicode letters and digits there). Invalid UTF-8 that a
// percent escape produces is dropped. The welcome's history is the stored JSON text of
// each message, spliced in as it is.

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "plugin_handshake_state.h"

typedef wsplug_plugin_types_connection_id_t conn_id;
typedef plugin_handshake_state_string_t string_t;
typedef plugin_handshake_state_list_u8_t bytes_t;

#define MAX_NAME 24
#define NAME_BYTES (MAX_NAME * 4)  // MAX_NAME characters of up to 4 bytes
static const char *const COLORS[] = {"#e6194b", "#3cb44b", "#4363d8", "#f58231",
                                     "#911eb4", "#008080", "#9a6324", "#800000"};
#define COLOR_COUNT (sizeof COLORS / sizeof COLORS[0])
// Messages kept for newcomers.
#define HISTORY 50
#define HISTORY_PREFIX "history/"
#define HISTORY_PREFIX_LEN (sizeof HISTORY_PREFIX - 1)
// Longest `message` (its JSON, in bytes) kept in the history; longer ones are only relayed.
#define MAX_KEPT 4096
// The presence timer, and its period.
#define PRESENCE 1
#define PRESENCE_MS 3000
// How long a name admitted at a handshake stays reserved for its on-open, in ns.
#define RESERVATION_NS (10LL * 1000 * 1000 * 1000)

static string_t str(const char *s) { return (string_t){.ptr = (uint8_t *)s, .len = strlen(s)}; }

static void *xmalloc(size_t size) {
  void *p = malloc(size ? size : 1);
  if (p == NULL) abort();
  return p;
}

static void *copy(const void *bytes, size_t len) { return memcpy(xmalloc(len), bytes, len); }

// ---------------------------------------------------------------------------------
// JSON text

// A growable byte buffer for the JSON being written.
struct buf {
  char *ptr;
  size_t len, cap;
};

static void put(struct buf *b, const void *bytes, size_t len) {
  if (b->len + len > b->cap) {
    b->cap = (b->len + len) * 2 + 64;
    b->ptr = realloc(b->ptr, b->cap);
    if (b->ptr == NULL) abort();
  }
  memcpy(b->ptr + b->len, bytes, len);
  b->len += len;
}

static void put_str(struct buf *b, const char *s) { put(b, s, strlen(s)); }

// A JSON string literal, escaped as serde_json does: quotes, backslashes and control
// characters.
static void put_json_string(struct buf *b, const uint8_t *s, size_t len) {
  put_str(b, "\"");
  for (size_t i = 0; i < len; i++) {
    char escaped[8];
    switch (s[i]) {
      case '"': put_str(b, "\\\""); break;
      case '\\': put_str(b, "\\\\"); break;
      case '\n': put_str(b, "\\n"); break;
      case '\r': put_str(b, "\\r"); break;
      case '\t': put_str(b, "\\t"); break;
      case '\b': put_str(b, "\\b"); break;
      case '\f': put_str(b, "\\f"); break;
      default:
        if (s[i] < 0x20) {
          snprintf(escaped, sizeof escaped, "\\u%04x", s[i]);
          put(b, escaped, 6);
        } else {
          put(b, &s[i], 1);
        }
    }
  }
  put_str(b, "\"");
}

static string_t text_of(const struct buf *b) {
  return (string_t){.ptr = (uint8_t *)b->ptr, .len = b->len};
}

// ---------------------------------------------------------------------------------
// Names and users

// A person in the room: a connection and its attachment.
struct user {
  conn_id id;
  uint8_t *name;  // not NUL-terminated
  size_t name_len;
  const char *color;
};

struct users {
  struct user *items;
  size_t len;
};

// The length of the valid UTF-8 character at `s`, or 0 if there is none.
static size_t utf8_char(const uint8_t *s, size_t len) {
  uint8_t c = s[0];
  size_t width;
  uint32_t min, cp;
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) width = 2, min = 0x80, cp = c & 0x1F;
  else if (c >= 0xE0 && c <= 0xEF) width = 3, min = 0x800, cp = c & 0x0F;
  else if (c >= 0xF0 && c <= 0xF4) width = 4, min = 0x10000, cp = c & 0x07;
  else return 0;
  if (width > len) return 0;
  for (size_t i = 1; i < width; i++) {
    if ((s[i] & 0xC0) != 0x80) return 0;
    cp = cp << 6 | (s[i] & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return width;
}

static bool valid_utf8(const uint8_t *s, size_t len) {
  for (size_t i = 0, w; i < len; i += w)
    if ((w = utf8_char(s + i, len - i)) == 0) return false;
  return true;
}

// Keeps the allowed characters of `raw`, at most MAX_NAME of them, in `out` (NAME_BYTES
// long). Returns the length kept, 0 if none is left.
static size_t clean_name(const uint8_t *raw, size_t len, uint8_t out[NAME_BYTES]) {
  size_t kept = 0, n = 0;
  for (size_t i = 0; i < len && kept < MAX_NAME;) {
    uint8_t c = raw[i];
    size_t width = utf8_char(raw + i, len - i);
    if (width == 0) {  // invalid: Rust would see U+FFFD there, which it drops
      i++;
      continue;
    }
    bool ascii_ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '_' || c == '.';
    if (width > 1 || ascii_ok) {
      memcpy(out + n, raw + i, width);
      n += width;
      kept++;
    }
    i += width;
  }
  return n;
}

static int hex_digit(uint8_t c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// The value of query parameter `name` (the first one), cleaned, in `out`; returns its
// length, 0 if the parameter is missing or empty after cleaning. Decodes `%XX` escapes
// and `+` (a space) first; invalid escapes stay as they are.
static size_t name_from_query(const string_t *query, uint8_t out[NAME_BYTES]) {
  const uint8_t *q = query->ptr, *end = q + query->len;
  while (q <= end) {
    const uint8_t *amp = memchr(q, '&', (size_t)(end - q));
    const uint8_t *stop = amp ? amp : end;
    const uint8_t *eq = memchr(q, '=', (size_t)(stop - q));
    const uint8_t *key_end = eq ? eq : stop;
    if (key_end - q == 4 && memcmp(q, "name", 4) == 0) {
      const uint8_t *value = eq ? eq + 1 : stop;
      size_t len = (size_t)(stop - value), n = 0;
      uint8_t *decoded = xmalloc(len);
      for (size_t i = 0; i < len; i++) {
        int hi, lo;
        if (value[i] == '%' && i + 2 < len && (hi = hex_digit(value[i + 1])) >= 0 &&
            (lo = hex_digit(value[i + 2])) >= 0) {
          decoded[n++] = (uint8_t)(hi * 16 + lo);
          i += 2;
        } else {
          decoded[n++] = value[i] == '+' ? ' ' : value[i];
        }
      }
      size_t kept = clean_name(decoded, n, out);
      free(decoded);
      return kept;
    }
    if (amp == NULL) break;
    q = amp + 1;
  }
  return 0;
}

// The user `conn` is, from its attachment; false without a (UTF-8) one.
static bool user_of(conn_id conn, struct user *u) {
  bytes_t attachment;
  if (!wsplug_plugin_host_attachment(conn, &attachment)) return false;
  if (attachment.len == 0 || !valid_utf8(attachment.ptr, attachment.len)) {
    plugin_handshake_state_list_u8_free(&attachment);
    return false;
  }
  *u = (struct user){
      .id = conn,
      .name = attachment.ptr,
      .name_len = attachment.len,
      .color = COLORS[conn % COLOR_COUNT],
  };
  return true;
}

static void user_free(struct user *u) {
  bytes_t name = {.ptr = u->name, .len = u->name_len};
  plugin_handshake_state_list_u8_free(&name);
}

static int by_id(const void *a, const void *b) {
  conn_id x = *(const conn_id *)a, y = *(const conn_id *)b;
  return x < y ? -1 : x > y;
}

// Everyone in the room, by id.
static struct users users(void) {
  wsplug_plugin_host_list_connection_id_t conns;
  wsplug_plugin_host_connections(&conns);
  if (conns.len > 0) qsort(conns.ptr, conns.len, sizeof *conns.ptr, by_id);
  struct users all = {.items = xmalloc(conns.len * sizeof(struct user)), .len = 0};
  for (size_t i = 0; i < conns.len; i++)
    if (user_of(conns.ptr[i], &all.items[all.len])) all.len++;
  wsplug_plugin_host_list_connection_id_free(&conns);
  return all;
}

static void users_free(struct users *all) {
  for (size_t i = 0; i < all->len; i++) user_free(&all->items[i]);
  free(all->items);
}

// Names let in by on-upgrade whose on-open has not come yet, with when: two handshakes
// with one name, close together, must not both get in.
struct reservation {
  uint8_t name[NAME_BYTES];
  size_t len;
  int64_t at;
};
static struct reservation *admitted;
static size_t admitted_len, admitted_cap;

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static bool same(const uint8_t *a, size_t a_len, const uint8_t *b, size_t b_len) {
  return a_len == b_len && memcmp(a, b, a_len) == 0;
}

// Drops the reservations of `name` (if not NULL) and those made at or before
// `expired_before`, keeping the others in order.
static void unreserve(const uint8_t *name, size_t len, int64_t expired_before) {
  size_t kept = 0;
  for (size_t i = 0; i < admitted_len; i++) {
    struct reservation *r = &admitted[i];
    if (r->at <= expired_before || (name != NULL && same(r->name, r->len, name, len))) continue;
    admitted[kept++] = *r;
  }
  admitted_len = kept;
}

static bool name_taken(const uint8_t *name, size_t len) {
  unreserve(NULL, 0, now_ns() - RESERVATION_NS);
  for (size_t i = 0; i < admitted_len; i++)
    if (same(admitted[i].name, admitted[i].len, name, len)) return true;
  struct users all = users();
  bool taken = false;
  for (size_t i = 0; i < all.len && !taken; i++)
    taken = same(all.items[i].name, all.items[i].name_len, name, len);
  users_free(&all);
  return taken;
}

static void reserve(const uint8_t *name, size_t len) {
  if (admitted_len == admitted_cap) {
    admitted_cap = admitted_cap * 2 + 8;
    admitted = realloc(admitted, admitted_cap * sizeof *admitted);
    if (admitted == NULL) abort();
  }
  struct reservation *r = &admitted[admitted_len++];
  memcpy(r->name, name, len);
  r->len = len;
  r->at = now_ns();
}

// ---------------------------------------------------------------------------------
// Messages

// `"id":1,"name":"...","color":"..."`, the fields every message about a user has.
static void put_user_fields(struct buf *b, const struct user *u) {
  char id[40];
  snprintf(id, sizeof id, "\"id\":%llu,\"name\":", (unsigned long long)u->id);
  put_str(b, id);
  put_json_string(b, u->name, u->name_len);
  put_str(b, ",\"color\":\"");
  put_str(b, u->color);
  put_str(b, "\"");
}

// `[{user},...]`, leaving out `except` if it is not NULL.
static void put_users(struct buf *b, const struct users *all, const conn_id *except) {
  put_str(b, "[");
  for (size_t i = 0, listed = 0; i < all->len; i++) {
    if (except != NULL && all->items[i].id == *except) continue;
    if (listed++) put_str(b, ",");
    put_str(b, "{");
    put_user_fields(b, &all->items[i]);
    put_str(b, "}");
  }
  put_str(b, "]");
}

// Starts `{"type":"<type>",<user fields>`; the caller adds fields and the closing brace.
static struct buf message(const char *type, const struct user *u) {
  struct buf b = {0};
  put_str(&b, "{\"type\":\"");
  put_str(&b, type);
  put_str(&b, "\",");
  put_user_fields(&b, u);
  return b;
}

// Closes the object, broadcasts it to everyone but `except` (if not NULL), frees it.
static void broadcast(struct buf *b, conn_id *except) {
  put_str(b, "}");
  string_t text = text_of(b);
  wsplug_plugin_host_broadcast_text(&text, except);
  free(b->ptr);
}

// Closes the object, sends it to `conn`, frees it. A connection that is gone gets its
// on-close next: nothing to do.
static void send_to(conn_id conn, struct buf *b) {
  put_str(b, "}");
  string_t text = text_of(b);
  wsplug_plugin_host_error_t error;
  wsplug_plugin_host_send_text(conn, &text, &error);
  free(b->ptr);
}

// ---------------------------------------------------------------------------------
// History

// The history's keys, oldest first (none if the store cannot say).
static plugin_handshake_state_list_string_t history_keys(void) {
  plugin_handshake_state_list_string_t keys = {0};
  wsplug_plugin_store_store_error_t error;
  string_t prefix = str(HISTORY_PREFIX);
  if (!wsplug_plugin_store_list_keys(&prefix, NULL, 1000, &keys, &error)) {
    wsplug_plugin_types_store_error_free(&error);
    keys = (plugin_handshake_state_list_string_t){0};
  }
  return keys;
}

// The sequence number in `key` after the prefix, as Rust's `u64::from_str` reads it.
static bool sequence_of(const string_t *key, uint64_t *n) {
  if (key->len < HISTORY_PREFIX_LEN) return false;
  const uint8_t *s = key->ptr + HISTORY_PREFIX_LEN;
  size_t len = key->len - HISTORY_PREFIX_LEN;
  if (len > 0 && s[0] == '+') s++, len--;
  if (len == 0) return false;
  uint64_t value = 0;
  for (size_t i = 0; i < len; i++) {
    if (s[i] < '0' || s[i] > '9') return false;
    uint64_t digit = s[i] - '0';
    if (value > (UINT64_MAX - digit) / 10) return false;
    value = value * 10 + digit;
  }
  *n = value;
  return true;
}

// The number the next history message gets, once this instance has read the keys (0
// until then, and again after a write failed: the store may have lost it).
static uint64_t next_in_history = 0;

// The store key of history message number `n`, written in `out`.
static string_t history_key(uint64_t n, char out[HISTORY_PREFIX_LEN + 21]) {
  snprintf(out, HISTORY_PREFIX_LEN + 21, HISTORY_PREFIX "%020llu", (unsigned long long)n);
  return str(out);
}

// Deletes the history message numbered `n`, if it is there.
static void forget(uint64_t n) {
  char key_text[HISTORY_PREFIX_LEN + 21];
  string_t key = history_key(n, key_text);
  bool was_set;
  wsplug_plugin_store_store_error_t error;
  if (!wsplug_plugin_store_delete(&key, &was_set, &error)) wsplug_plugin_types_store_error_free(&error);
}

// Appends a `message` to the history, dropping the oldest beyond HISTORY. The first call
// of an instance reads the history's keys; later ones know the next number and the
// oldest to drop.
static void remember(const string_t *text) {
  if (text->len > MAX_KEPT) return;
  wsplug_plugin_store_store_error_t error;
  if (next_in_history == 0) {
    plugin_handshake_state_list_string_t keys = history_keys();
    uint64_t last;
    next_in_history = 1;
    if (keys.len > 0 && sequence_of(&keys.ptr[keys.len - 1], &last)) next_in_history = last + 1;
    size_t excess = keys.len + 1 > HISTORY ? keys.len + 1 - HISTORY : 0;
    for (size_t i = 0; i < excess; i++) {
      bool was_set;
      if (!wsplug_plugin_store_delete(&keys.ptr[i], &was_set, &error))
        wsplug_plugin_types_store_error_free(&error);
    }
    plugin_handshake_state_list_string_free(&keys);
  }
  uint64_t next = next_in_history;
  char key_text[HISTORY_PREFIX_LEN + 21];
  string_t key = history_key(next, key_text);
  bytes_t value = {.ptr = text->ptr, .len = text->len};
  if (!wsplug_plugin_store_set(&key, &value, NULL, &error)) {
    struct buf line = {0};
    put_str(&line, "history not stored: ");
    if (error.tag == WSPLUG_PLUGIN_TYPES_STORE_ERROR_TOO_LARGE) {
      put_str(&line, "StoreError::TooLarge");
    } else {
      put_str(&line, "StoreError::Unavailable(");
      put_json_string(&line, error.val.unavailable.ptr, error.val.unavailable.len);
      put_str(&line, ")");
    }
    string_t log_line = text_of(&line);
    wsplug_plugin_host_log(WSPLUG_PLUGIN_TYPES_LOG_LEVEL_WARN, &log_line);
    free(line.ptr);
    wsplug_plugin_types_store_error_free(&error);
    next_in_history = 0;
    return;
  }
  if (next > HISTORY) forget(next - HISTORY);
  next_in_history = next + 1;
}

// `[message,...]`: the kept messages, oldest first, as stored (JSON objects).
static void put_history(struct buf *b) {
  plugin_handshake_state_list_string_t keys = history_keys();
  put_str(b, "[");
  for (size_t i = 0, listed = 0; i < keys.len; i++) {
    plugin_handshake_state_option_list_u8_t value;
    wsplug_plugin_store_store_error_t error;
    if (!wsplug_plugin_store_get(&keys.ptr[i], &value, &error)) {
      wsplug_plugin_types_store_error_free(&error);
      continue;
    }
    if (!value.is_some) continue;
    const bytes_t *v = &value.val;
    // What this plugin stored: one JSON object (a light check, not a parse).
    if (v->len >= 2 && v->ptr[0] == '{' && v->ptr[v->len - 1] == '}') {
      if (listed++) put_str(b, ",");
      put(b, v->ptr, v->len);
    }
    plugin_handshake_state_option_list_u8_free(&value);
  }
  put_str(b, "]");
  plugin_handshake_state_list_string_free(&keys);
}

// ---------------------------------------------------------------------------------
// Exports

static void reject(wsplug_plugin_types_upgrade_decision_t *ret, uint16_t status, const struct buf *body) {
  plugin_handshake_state_tuple2_string_string_t *header = xmalloc(sizeof *header);
  // The bindings free what is returned after the call: heap copies, no literals.
  plugin_handshake_state_string_dup(&header->f0, "content-type");
  plugin_handshake_state_string_dup(&header->f1, "text/plain; charset=utf-8");
  ret->tag = WSPLUG_PLUGIN_TYPES_UPGRADE_DECISION_REJECT;
  ret->val.reject = (wsplug_plugin_types_reject_t){
      .status = status,
      .headers = {.ptr = header, .len = 1},
      .body = {.ptr = copy(body->ptr, body->len), .len = body->len},
  };
}

void exports_wsplug_plugin_handshake_on_upgrade(exports_wsplug_plugin_handshake_upgrade_request_t *request,
                                                exports_wsplug_plugin_handshake_upgrade_decision_t *ret) {
  uint8_t name[NAME_BYTES];
  size_t len = request->query.is_some ? name_from_query(&request->query.val, name) : 0;
  exports_wsplug_plugin_handshake_upgrade_request_free(request);
  struct buf body = {0};
  if (len == 0) {
    put_str(&body, "a name is required: connect with ?name=NAME\n");
    reject(ret, 400, &body);
  } else if (name_taken(name, len)) {
    put_str(&body, "the name ");
    put(&body, name, len);
    put_str(&body, " is taken\n");
    reject(ret, 409, &body);
  } else {
    reserve(name, len);
    ret->tag = WSPLUG_PLUGIN_TYPES_UPGRADE_DECISION_ACCEPT;
    ret->val.accept = (wsplug_plugin_types_accept_t){
        .subprotocol = {.is_some = false},
        .attachment = {.is_some = true, .val = {.ptr = copy(name, len), .len = len}},
        .groups = {.ptr = NULL, .len = 0},
    };
  }
  free(body.ptr);
}

void exports_plugin_handshake_state_on_open(conn_id conn) {
  struct user me;
  if (!user_of(conn, &me)) {
    // Let in before this version decided handshakes: no name to go by.
    string_t reason = str("a name is required: reconnect with ?name=NAME");
    wsplug_plugin_host_error_t error;
    wsplug_plugin_host_close(conn, 4000, &reason, &error);
    return;
  }
  unreserve(me.name, me.name_len, INT64_MIN);

  struct users all = users();
  struct buf welcome = message("welcome", &me);
  put_str(&welcome, ",\"users\":");
  put_users(&welcome, &all, &conn);
  put_str(&welcome, ",\"history\":");
  put_history(&welcome);
  send_to(conn, &welcome);
  users_free(&all);

  struct buf join = message("join", &me);
  broadcast(&join, &conn);
  if (!wsplug_plugin_timers_timer_pending(PRESENCE)) {
    uint32_t repeat = PRESENCE_MS;
    wsplug_plugin_timers_error_t error;
    wsplug_plugin_timers_set_timer(PRESENCE, PRESENCE_MS, &repeat, &error);
  }
  user_free(&me);
}

static void refuse(conn_id conn, const char *why) {
  struct buf b = {0};
  put_str(&b, "{\"type\":\"error\",\"text\":");
  put_json_string(&b, (const uint8_t *)why, strlen(why));
  send_to(conn, &b);
}

static void rename_user(conn_id conn, struct user *me, const string_t *requested) {
  uint8_t name[NAME_BYTES];
  size_t len = clean_name(requested->ptr, requested->len, name);
  if (len == 0) {
    refuse(conn, "a name needs a letter or a digit");
  } else if (!same(name, len, me->name, me->name_len) && name_taken(name, len)) {
    refuse(conn, "that name is taken");
  } else {
    bytes_t attachment = {.ptr = name, .len = len};
    wsplug_plugin_host_error_t error;
    wsplug_plugin_host_set_attachment(conn, &attachment, &error);
    struct user renamed = *me;
    renamed.name = name;
    renamed.name_len = len;
    struct buf b = message("rename", &renamed);
    put_str(&b, ",\"old\":");
    put_json_string(&b, me->name, me->name_len);
    broadcast(&b, NULL);
  }
}

void exports_plugin_handshake_state_on_text(conn_id conn, string_t *text) {
  static const char command[] = "/name ";
  const size_t command_len = sizeof command - 1;
  struct user me;
  if (user_of(conn, &me)) {
    if (text->len >= command_len && memcmp(text->ptr, command, command_len) == 0) {
      string_t requested = {.ptr = text->ptr + command_len, .len = text->len - command_len};
      rename_user(conn, &me, &requested);
    } else {
      struct buf b = message("message", &me);
      put_str(&b, ",\"text\":");
      put_json_string(&b, text->ptr, text->len);
      put_str(&b, "}");
      string_t relayed = text_of(&b);
      wsplug_plugin_host_broadcast_text(&relayed, &conn);
      remember(&relayed);
      free(b.ptr);
    }
    user_free(&me);
  }
  plugin_handshake_state_string_free(text);
}

void exports_plugin_handshake_state_on_binary(conn_id conn, bytes_t *data) {
  wsplug_plugin_host_broadcast_binary(data, &conn);
  plugin_handshake_state_list_u8_free(data);
}

void exports_plugin_handshake_state_on_close(conn_id conn, uint16_t code, string_t *reason) {
  (void)code;
  plugin_handshake_state_string_free(reason);
  // The attachment is still readable during on-close.
  struct user me;
  if (!user_of(conn, &me)) return;
  struct buf b = message("leave", &me);
  broadcast(&b, &conn);
  user_free(&me);
}

void exports_plugin_handshake_state_on_timer(wsplug_plugin_types_timer_id_t id) {
  if (id != PRESENCE) return;
  struct users all = users();
  if (all.len == 0) {
    wsplug_plugin_timers_cancel_timer(PRESENCE);
  } else {
    struct buf b = {0};
    put_str(&b, "{\"type\":\"presence\",\"users\":");
    put_users(&b, &all, NULL);
    broadcast(&b, NULL);
  }
  users_free(&all);
}

// The room is in the host: nothing to carry, but having these exports means a reload
// takes over without replaying on-open (and a second welcome).
bool exports_wsplug_plugin_state_snapshot(bytes_t *ret, string_t *err) {
  (void)err;
  *ret = (bytes_t){.ptr = NULL, .len = 0};
  return true;
}

bool exports_wsplug_plugin_state_restore(bytes_t *state, string_t *err) {
  (void)err;
  plugin_handshake_state_list_u8_free(state);
  return true;
}
