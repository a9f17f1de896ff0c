//! The settings' checks, defaults, merge and inheritance.
use std::path::PathBuf;
use std::time::Duration;

use super::*;

/// Validation checks that the plugin file exists; any existing file will do here.
const PLUGIN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");

fn parse(args: &[&str]) -> Options {
    Options::try_parse_from(std::iter::once("host").chain(args.iter().copied())).unwrap()
}

fn error_of(options: Options) -> String {
    options.validate().unwrap_err().to_string()
}

#[test]
fn defaults_follow_the_original_library() {
    let config = parse(&["--plugin", PLUGIN]).validate().unwrap();
    assert_eq!(config.listen, "127.0.0.1:9001".parse().unwrap());
    assert_eq!(config.server.handshake_timeout, Duration::from_secs(5));
    assert_eq!(config.server.idle_timeout, Duration::from_secs(5));
    let [route] = &config.routes[..] else {
        panic!("one route")
    };
    assert_eq!((route.name.as_str(), route.path.as_str()), (DEFAULT_ROUTE, "/*"));
    assert_eq!(route.max_message_size, 524_288);
    assert_eq!(route.outbound.max_messages, 100);
    assert_eq!(route.outbound.max_bytes, 1 << 20);
    // The plugin's language decides its memory cap unless it is set.
    assert_eq!(route.plugin.limits.memory_bytes, None);
    let set = parse(&["--plugin", PLUGIN, "--plugin-memory-mib", "64"])
        .validate()
        .unwrap();
    assert_eq!(set.routes[0].plugin.limits.memory_bytes, Some(64 << 20));
    assert!(config.server.prod && config.tls.is_none() && route.handshake.deflate.is_some() && route.plugin.watch);
    assert_eq!(config.log, "info");
    assert_eq!((config.log_format, config.metrics_listen), (LogFormat::Text, None));
}

#[test]
fn stateless_is_off_by_default_a_flag_or_a_route_key_and_refuses_plugin_dir() {
    let routes = |args: &[&str]| parse(args).validate().unwrap().routes;
    assert!(!routes(&["--plugin", PLUGIN])[0].plugin.stateless);
    assert!(routes(&["--plugin", PLUGIN, "--stateless"])[0].plugin.stateless);
    assert!(
        !routes(&["--plugin", PLUGIN, "--stateless", "false"])[0]
            .plugin
            .stateless
    );
    let file = Options::from_toml(&format!(
        "[[route]]\npath = \"/a\"\nplugin = \"{PLUGIN}\"\nstateless = true\n"
    ));
    assert!(file.unwrap().validate().unwrap().routes[0].plugin.stateless);
    let dir = env!("CARGO_MANIFEST_DIR");
    let error = error_of(parse(&["--plugin", PLUGIN, "--stateless", "--plugin-dir", dir]));
    assert!(error.contains("plugin_dir and stateless exclude each other"), "{error}");
}

#[test]
fn flags_override_the_file() {
    let file = Options::from_toml(
        &format!("plugin = \"{PLUGIN}\"\ntimeout = 7\nmax_payload_size = 1000\nprod = false\nallowed_origins = [\"https://a.example\"]\n"),
    )
    .unwrap();
    let config = parse(&["--max-payload-size", "2000", "--no-compression"])
        .merge(file)
        .validate()
        .unwrap();
    let route = &config.routes[0];
    assert_eq!(route.plugin.file, PathBuf::from(PLUGIN));
    assert_eq!(config.server.handshake_timeout, Duration::from_secs(7));
    assert_eq!(route.max_message_size, 2000);
    assert!(route.handshake.deflate.is_none());
    assert!(!config.server.prod);
    assert_eq!(config.log, "debug");
    assert_eq!(route.handshake.allowed_origins, ["https://a.example"]);
    let config = parse(&["--handshake-timeout", "2"])
        .merge(Options::from_toml(&format!("plugin = \"{PLUGIN}\"\ntimeout = 9")).unwrap());
    let config = config.validate().unwrap();
    assert_eq!(
        (
            config.server.handshake_timeout,
            config.server.idle_timeout,
            config.server.close_timeout
        ),
        (Duration::from_secs(2), Duration::from_secs(9), Duration::from_secs(9))
    );
}

#[test]
fn bad_values_name_the_key_the_value_and_what_is_allowed() {
    let with = |extra: &str| Options::from_toml(&format!("plugin = \"{PLUGIN}\"\n{extra}")).unwrap();
    assert_eq!(
        error_of(with("timeout = 0")),
        "invalid timeout = 0: expected 1 to 3600 seconds"
    );
    assert_eq!(
        error_of(with("max_payload_size = 0")),
        "invalid max_payload_size = 0: expected 1 to 4294967296 bytes"
    );
    assert!(error_of(with("listen = \"nowhere\"")).starts_with("invalid listen = nowhere: expected ADDRESS:PORT"));
    assert!(error_of(with("server_max_window_bits = 8")).starts_with("invalid server_max_window_bits = 8"));
    assert!(error_of(with("allowed_origins = [\"example.com\"]")).contains("scheme://host"));
    assert!(error_of(with("write_masked = true")).contains("RFC 6455 section 5.1 forbids"));
    assert!(error_of(with("ssl = true")).starts_with("ssl = true needs cert_file"));
    assert!(
        error_of(with("cert_file = \"/nonexistent.pem\"\nssl = true"))
            .starts_with("invalid cert_file = /nonexistent.pem")
    );
    assert!(error_of(with("static = \"/nonexistent\"")).starts_with("invalid static = /nonexistent"));
    assert!(error_of(Options::default()).starts_with("no plugin"));
    assert!(error_of(with("log_format = \"xml\"")).starts_with("invalid log_format = \"xml\""));
    assert_eq!(
        error_of(with("threads = 0")),
        "invalid threads = 0: expected 1 to 1024 threads"
    );
    assert!(error_of(with("metrics_listen = \"x\"")).starts_with("invalid metrics_listen = x"));
    let unknown = Options::from_toml("plugin = \"p\"\nmax_payload = 3")
        .unwrap_err()
        .to_string();
    assert!(
        unknown.starts_with("invalid max_payload = 3 (line 2): unknown field `max_payload`"),
        "{unknown}"
    );
    assert!(!unknown.contains('\n'));
    let wrong_type = Options::from_toml("timeout = \"soon\"").unwrap_err().to_string();
    assert!(
        wrong_type.starts_with("invalid timeout = \"soon\" (line 1): invalid type"),
        "{wrong_type}"
    );
    let missing = parse(&["--plugin", "/nonexistent/p.wasm"])
        .validate()
        .unwrap_err()
        .to_string();
    assert!(missing.starts_with("invalid plugin = /nonexistent/p.wasm"), "{missing}");
}

#[test]
fn cluster_needs_a_redis_url_and_a_plain_name() {
    let config = parse(&["--plugin", PLUGIN]).validate().unwrap();
    assert_eq!(config.cluster, None);
    let config = parse(&["--plugin", PLUGIN, "--cluster", "redis://127.0.0.1:6390"])
        .validate()
        .unwrap();
    assert_eq!(
        config.cluster,
        Some(crate::cluster::ClusterConfig::new("redis://127.0.0.1:6390", "wsplug"))
    );
    let file = Options::from_toml(&format!(
        "plugin = \"{PLUGIN}\"\ncluster = \"redis://a:6379\"\ncluster_name = \"chat-eu-1\""
    ))
    .unwrap();
    let config = parse(&["--cluster-name", "chat_2"]).merge(file).validate().unwrap();
    assert_eq!(config.cluster.unwrap().name, "chat_2");
    let error = error_of(parse(&["--plugin", PLUGIN, "--cluster", "http://:pw@x"]));
    assert!(
        error.starts_with("invalid cluster = \"http://***@x\": a redis:// URL"),
        "{error}"
    );
    assert!(!error.contains("pw"), "{error}");
    let tls = parse(&["--plugin", PLUGIN, "--cluster", "rediss://x:6380"])
        .validate()
        .unwrap();
    assert_eq!(tls.cluster.unwrap().url, "rediss://x:6380");
    // A route's cluster is NAME.ROUTE: a dot in a cluster's name could make two meet.
    for name in ["", "a b", "a:b", "chat.eu", &"x".repeat(65)] {
        let error = error_of(parse(&[
            "--plugin",
            PLUGIN,
            "--cluster",
            "redis://x",
            "--cluster-name",
            name,
        ]));
        assert!(error.starts_with("invalid cluster_name"), "{error}");
    }
    let error = error_of(parse(&["--plugin", PLUGIN, "--cluster-name", "chat"]));
    assert!(error.contains("needs cluster"), "{error}");
}

#[test]
fn cluster_secrets_passwords_and_shared_headers() {
    let with = |extra: &[&str]| {
        let mut args = vec!["--plugin", PLUGIN, "--cluster", "redis://x"];
        args.extend_from_slice(extra);
        parse(&args)
    };
    let config = with(&[]).validate().unwrap().cluster.unwrap();
    assert_eq!(config.secret, None);
    assert_eq!(config.shared_headers, crate::cluster::DEFAULT_SHARED_HEADERS);
    assert!(!config.share_query);
    let short = error_of(with(&["--cluster-secret", "short"]));
    assert!(short.contains("at least 16") && !short.contains("short\""), "{short}");
    let secret = "0123456789abcdef";
    let config = with(&["--cluster-secret", secret, "--cluster-shared-header", "X-User"])
        .validate()
        .unwrap()
        .cluster
        .unwrap();
    assert_eq!(config.secret, Some(crate::cluster::Secret(secret.into())));
    assert_eq!(config.shared_headers, ["x-user"]);
    assert!(!format!("{config:?}").contains(secret));
    // From a file, its line end dropped; not both.
    let file = std::env::temp_dir().join(format!("wsplug-secret-test-{}", std::process::id()));
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    let path = file.to_str().unwrap();
    let config = with(&["--cluster-secret-file", path])
        .validate()
        .unwrap()
        .cluster
        .unwrap();
    assert_eq!(config.secret, Some(crate::cluster::Secret(secret.into())));
    let both = error_of(with(&["--cluster-secret-file", path, "--cluster-secret", secret]));
    assert!(both.contains("exclude each other"), "{both}");
    std::fs::remove_file(&file).unwrap();
    assert!(error_of(with(&["--cluster-ca-file", PLUGIN])).contains("needs a rediss://"));
    assert!(error_of(with(&["--cluster-shared-header", "a b"])).starts_with("invalid cluster_shared_headers"));
    let lonely = error_of(parse(&["--plugin", PLUGIN, "--cluster-secret", secret]));
    assert!(lonely.starts_with("cluster_secret needs cluster"), "{lonely}");
}

#[test]
fn routes_take_the_top_level_keys_as_defaults_and_must_not_collide() {
    let config = Options::from_toml(&format!(
        "plugin = \"{PLUGIN}\"\nmax_payload_size = 1000\nplugin_deadline_ms = 50\n\
         [[route]]\npath = \"/chat\"\nplugin = \"{PLUGIN}\"\nmax_connections = 5\n\
         [[route]]\npath = \"/api/v1/*\"\nplugin = \"{PLUGIN}\"\nmax_payload_size = 64\ncompression = false\n"
    ))
    .unwrap()
    .validate()
    .unwrap();
    let summary: Vec<_> = config
        .routes
        .iter()
        .map(|r| {
            (
                r.name.as_str(),
                r.path.as_str(),
                r.max_message_size,
                r.max_connections,
                r.handshake.deflate.is_some(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("chat", "/chat", 1000, Some(5), true),
            ("api.v1", "/api/v1/*", 64, None, false),
            (DEFAULT_ROUTE, "/*", 1000, None, true),
        ]
    );
    assert!(
        config
            .routes
            .iter()
            .all(|r| r.plugin.limits.deadline == Duration::from_millis(50))
    );

    let routes = |tables: &str| {
        Options::from_toml(tables)
            .map_err(|e| e.to_string())
            .and_then(|o| o.validate().map_err(|e| e.to_string()))
    };
    let route = |path: &str| format!("[[route]]\npath = \"{path}\"\nplugin = \"{PLUGIN}\"\n");
    let error = routes(&format!("{}{}", route("/a"), route("/a"))).unwrap_err();
    assert!(error.contains("two routes are named \"a\""), "{error}");
    let error = routes(&format!("{}name = \"b\"\n{}", route("/a"), route("/a"))).unwrap_err();
    assert!(error.contains("two routes serve \"/a\""), "{error}");
    for bad in ["chat", "/a*", "/a/*/b", "/a?x", "/a b", "/%41"] {
        let error = routes(&route(bad)).unwrap_err();
        assert!(error.starts_with("[[route]] 1: invalid path"), "{bad}: {error}");
    }
    let error = routes(&route("/")).unwrap_err();
    assert!(error.contains("give it a name"), "{error}");
    let error = routes("[[route]]\npath = \"/a\"\n").unwrap_err();
    assert!(error.contains("needs plugin"), "{error}");
    let error = routes(&format!("{}max_payload = 1\n", route("/a"))).unwrap_err();
    assert!(error.contains("unknown field `max_payload`"), "{error}");
}
