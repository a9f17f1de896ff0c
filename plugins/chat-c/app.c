// The chat room of plugins/chat, in C: every text message is relayed to every other
// connection as JSON with the sender's name and colour; joins, leaves and renames are
// announced; binary messages are relayed unchanged. The protocol is documented at the
// top of plugins/chat/src/lib.rs.
//
// Bindings come from `wit-bindgen c` (plugin.h, plugin.c); see plugins/README.md for the
// build. Exports own their arguments and free them with the generated *_free functions.
// Names keep ASCII letters, digits, '-', '_' and '.', and every non-ASCII character
// (the Rust plugin keeps only Unicode letters and digits there).

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plugin.h"

typedef wsplug_plugin_types_connection_id_t conn_id;

#define MAX_NAME 24
static const char *const COLORS[] = {"#e6194b", "#3cb44b", "#4363d8", "#f58231",
                                     "#911eb4", "#008080", "#9a6324", "#800000"};

struct user {
  conn_id id;
  char name[MAX_NAME * 4 + 1];  // MAX_NAME characters of up to 4 bytes
  const char *color;
};

// Everyone in the room, in arrival order.
static struct user *users;
static size_t user_count, user_capacity;

static struct user *find_user(conn_id id) {
  for (size_t i = 0; i < user_count; i++)
    if (users[i].id == id) return &users[i];
  return NULL;
}

// A growable byte buffer for the JSON being written.
struct buf {
  char *ptr;
  size_t len, cap;
};

static void put(struct buf *b, const char *bytes, size_t len) {
  if (b->len + len > b->cap) {
    b->cap = (b->len + len) * 2 + 64;
    b->ptr = realloc(b->ptr, b->cap);
    if (b->ptr == NULL) abort();
  }
  memcpy(b->ptr + b->len, bytes, len);
  b->len += len;
}

static void put_str(struct buf *b, const char *s) { put(b, s, strlen(s)); }

// A JSON string literal: quotes, backslashes and control characters escaped.
static void put_json_string(struct buf *b, const uint8_t *s, size_t len) {
  put_str(b, "\"");
  for (size_t i = 0; i < len; i++) {
    char escaped[8];
    if (s[i] == '"' || s[i] == '\\') {
      escaped[0] = '\\';
      escaped[1] = (char)s[i];
      put(b, escaped, 2);
    } else if (s[i] < 0x20) {
      snprintf(escaped, sizeof escaped, "\\u%04x", s[i]);
      put(b, escaped, 6);
    } else {
      put(b, (const char *)&s[i], 1);
    }
  }
  put_str(b, "\"");
}

// `"id":1,"name":"...","color":"..."`, the fields every message about a user has.
static void put_user_fields(struct buf *b, const struct user *u) {
  char id[32];
  snprintf(id, sizeof id, "\"id\":%llu,\"name\":", (unsigned long long)u->id);
  put_str(b, id);
  put_json_string(b, (const uint8_t *)u->name, strlen(u->name));
  put_str(b, ",\"color\":\"");
  put_str(b, u->color);
  put_str(b, "\"");
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

static plugin_string_t finish(struct buf *b) {
  put_str(b, "}");
  return (plugin_string_t){.ptr = (uint8_t *)b->ptr, .len = b->len};
}

static void broadcast(struct buf *b, conn_id *except) {
  plugin_string_t text = finish(b);
  wsplug_plugin_host_broadcast_text(&text, except);
  free(b->ptr);
}

// Keeps the allowed characters of `raw`, at most MAX_NAME of them, in `out`.
// Returns false if none is left.
static bool clean_name(const uint8_t *raw, size_t len, char out[MAX_NAME * 4 + 1]) {
  size_t kept = 0, n = 0;
  for (size_t i = 0; i < len && kept < MAX_NAME;) {
    uint8_t c = raw[i];
    size_t width = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
    if (i + width > len) break;
    bool ascii_ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '_' || c == '.';
    if (width > 1 || ascii_ok) {
      memcpy(out + n, raw + i, width);
      n += width;
      kept++;
    }
    i += width;
  }
  out[n] = '\0';
  return n > 0;
}

// The `name` parameter of the connection's query string, cleaned, if there is one.
static bool name_from_query(conn_id conn, char out[MAX_NAME * 4 + 1]) {
  wsplug_plugin_host_connection_info_t info;
  if (!wsplug_plugin_host_info(conn, &info)) return false;
  bool found = false;
  if (info.query.is_some) {
    const uint8_t *q = info.query.val.ptr, *end = q + info.query.val.len;
    while (q < end && !found) {
      const uint8_t *amp = memchr(q, '&', (size_t)(end - q));
      const uint8_t *stop = amp ? amp : end;
      if (stop - q >= 5 && memcmp(q, "name=", 5) == 0)
        found = clean_name(q + 5, (size_t)(stop - q - 5), out);
      q = stop + 1;
    }
  }
  wsplug_plugin_types_connection_info_free(&info);
  return found;
}

void exports_plugin_on_open(conn_id conn) {
  if (user_count == user_capacity) {
    user_capacity = user_capacity * 2 + 8;
    users = realloc(users, user_capacity * sizeof *users);
    if (users == NULL) abort();
  }
  struct user *u = &users[user_count++];
  u->id = conn;
  u->color = COLORS[conn % (sizeof COLORS / sizeof COLORS[0])];
  if (!name_from_query(conn, u->name))
    snprintf(u->name, sizeof u->name, "guest-%llu", (unsigned long long)conn);

  struct buf welcome = message("welcome", u);
  put_str(&welcome, ",\"users\":[");
  for (size_t i = 0, listed = 0; i + 1 < user_count; i++) {
    if (listed++) put_str(&welcome, ",");
    put_str(&welcome, "{");
    put_user_fields(&welcome, &users[i]);
    put_str(&welcome, "}");
  }
  put_str(&welcome, "]");
  plugin_string_t text = finish(&welcome);
  wsplug_plugin_host_error_t error;
  bool sent = wsplug_plugin_host_send_text(conn, &text, &error);
  free(welcome.ptr);
  if (!sent) return;  // already gone: its on-close comes next

  struct buf join = message("join", u);
  broadcast(&join, &conn);
}

void exports_plugin_on_text(conn_id conn, plugin_string_t *text) {
  struct user *u = find_user(conn);
  static const char rename[] = "/name ";
  if (u == NULL) {
    // Not in the room: nothing to do.
  } else if (text->len >= sizeof rename - 1 && memcmp(text->ptr, rename, sizeof rename - 1) == 0) {
    char name[MAX_NAME * 4 + 1], old[MAX_NAME * 4 + 1];
    if (clean_name(text->ptr + sizeof rename - 1, text->len - (sizeof rename - 1), name)) {
      memcpy(old, u->name, sizeof old);
      memcpy(u->name, name, sizeof name);
      struct buf b = message("rename", u);
      put_str(&b, ",\"old\":");
      put_json_string(&b, (const uint8_t *)old, strlen(old));
      broadcast(&b, NULL);
    }
  } else {
    struct buf b = message("message", u);
    put_str(&b, ",\"text\":");
    put_json_string(&b, text->ptr, text->len);
    broadcast(&b, &conn);
  }
  plugin_string_free(text);
}

void exports_plugin_on_binary(conn_id conn, plugin_list_u8_t *data) {
  wsplug_plugin_host_broadcast_binary(data, &conn);
  plugin_list_u8_free(data);
}

void exports_plugin_on_close(conn_id conn, uint16_t code, plugin_string_t *reason) {
  (void)code;
  plugin_string_free(reason);
  struct user *u = find_user(conn);
  if (u == NULL) return;
  struct user gone = *u;
  *u = users[--user_count];  // order does not matter beyond the welcome list
  struct buf b = message("leave", &gone);
  broadcast(&b, &conn);
}
