// Echoes text as text and binary as binary to the connection that sent it.
// Exports own their arguments: free them with the generated *_free functions.
#include "plugin.h"

void exports_plugin_on_open(wsplug_plugin_types_connection_id_t conn) { (void)conn; }

void exports_plugin_on_text(wsplug_plugin_types_connection_id_t conn, plugin_string_t *text) {
  wsplug_plugin_host_error_t error;  // only "gone": nothing to do
  wsplug_plugin_host_send_text(conn, text, &error);
  plugin_string_free(text);
}

void exports_plugin_on_binary(wsplug_plugin_types_connection_id_t conn, plugin_list_u8_t *data) {
  wsplug_plugin_host_error_t error;
  wsplug_plugin_host_send_binary(conn, data, &error);
  plugin_list_u8_free(data);
}

void exports_plugin_on_close(wsplug_plugin_types_connection_id_t conn, uint16_t code, plugin_string_t *reason) {
  (void)conn;
  (void)code;
  plugin_string_free(reason);
}
