//! Turns a plugin file into a ready-to-instantiate component: compiles it (or loads
//! the compiled code from the cache) and links it against the host's imports.

use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, InstancePre, Linker};
use wasmtime::error::Context as _;
use wasmtime::{Config, Engine};

use super::bindings::{ApiVersion, HostState, v1, v2, v2_optional, v3, v3_optional};
use super::deadline::EPOCH_TICK;
use super::language::{self, Language};
use crate::private_files;

/// A component linked against one version of the world, ready to instantiate.
pub enum Linked {
    /// Implements `wsplug:plugin@0.1.0`.
    V1(v1::PluginPre<HostState>),
    /// Implements `wsplug:plugin@0.2.0`, with the optional exports it has.
    V2 {
        /// The linked component.
        pre: InstancePre<HostState>,
        /// Where its required exports are.
        exports: v2::PluginIndices,
        /// Where `on-upgrade` is, if it has one.
        handshake: Option<v2_optional::handshake::GuestIndices>,
        /// Where `snapshot` and `restore` are, if it has them.
        state: Option<v2_optional::state::GuestIndices>,
    },
    /// Implements `wsplug:plugin@0.3.0`, with the optional exports it has.
    V3 {
        /// The linked component.
        pre: InstancePre<HostState>,
        /// Where its required exports are.
        exports: v3::PluginIndices,
        /// Where `on-upgrade` is, if it has one.
        handshake: Option<v3_optional::handshake::GuestIndices>,
        /// Where `snapshot` and `restore` are, if it has them.
        state: Option<v3_optional::state::GuestIndices>,
        /// Where `on-timer` is, if it has one.
        timer_events: Option<v3_optional::timer_events::GuestIndices>,
    },
}

impl Linked {
    /// The version of the world.
    pub fn api(&self) -> ApiVersion {
        match self {
            Self::V1(_) => ApiVersion::V0_1,
            Self::V2 { .. } => ApiVersion::V0_2,
            Self::V3 { .. } => ApiVersion::V0_3,
        }
    }

    /// Whether the plugin decides handshakes (`on-upgrade`).
    pub fn has_handshake(&self) -> bool {
        matches!(
            self,
            Self::V2 { handshake: Some(_), .. } | Self::V3 { handshake: Some(_), .. }
        )
    }

    /// Whether the plugin carries its state across reloads (`snapshot`, `restore`).
    pub fn has_state(&self) -> bool {
        matches!(self, Self::V2 { state: Some(_), .. } | Self::V3 { state: Some(_), .. })
    }

    /// Whether the plugin receives timer events (`on-timer`): every 0.2 plugin does.
    pub fn has_timer_events(&self) -> bool {
        matches!(
            self,
            Self::V2 { .. }
                | Self::V3 {
                    timer_events: Some(_),
                    ..
                }
        )
    }

    /// The optional exports it has, for the load report: `on-upgrade`, `snapshot/restore`,
    /// `on-timer` (of 0.3, where it is optional).
    pub fn optional_exports(&self) -> String {
        let mut names = Vec::new();
        if self.has_handshake() {
            names.push("on-upgrade");
        }
        if self.has_state() {
            names.push("snapshot+restore");
        }
        if matches!(
            self,
            Self::V3 {
                timer_events: Some(_),
                ..
            }
        ) {
            names.push("on-timer");
        }
        if names.is_empty() {
            "none".into()
        } else {
            names.join(",")
        }
    }

    fn link(linker: &Linker<HostState>, component: &Component, interfaces: &Interfaces) -> wasmtime::Result<Self> {
        let pre = linker.instantiate_pre(component)?;
        // A component says which version it implements by the interfaces it imports
        // (and exports) by name; one that names none is tried as 0.2, then 0.1.
        let names: Vec<&String> = interfaces.imports.iter().chain(&interfaces.exports).collect();
        let claims = |version: &str| {
            let version = format!("@{version}");
            move |name: &&String| name.starts_with("wsplug:plugin/") && name.ends_with(&version)
        };
        // An optional interface is there or not; one exported but not whole is an
        // error, not "no hook" (which would let everyone in).
        let exported = |interface: &str| names.iter().any(|n| *n == interface);
        if names.iter().any(claims("0.3.0")) {
            let exported = |name: &str| exported(&format!("wsplug:plugin/{name}@0.3.0"));
            return Ok(Self::V3 {
                exports: v3::PluginIndices::new(&pre)?,
                handshake: exported("handshake")
                    .then(|| v3_optional::handshake::GuestIndices::new(&pre))
                    .transpose()?,
                state: exported("state")
                    .then(|| v3_optional::state::GuestIndices::new(&pre))
                    .transpose()?,
                timer_events: exported("timer-events")
                    .then(|| v3_optional::timer_events::GuestIndices::new(&pre))
                    .transpose()?,
                pre,
            });
        }
        if !names.iter().any(claims("0.1.0")) {
            match v2::PluginIndices::new(&pre) {
                Ok(exports) => {
                    let exported = |name: &str| exported(&format!("wsplug:plugin/{name}@0.2.0"));
                    return Ok(Self::V2 {
                        handshake: exported("handshake")
                            .then(|| v2_optional::handshake::GuestIndices::new(&pre))
                            .transpose()?,
                        state: exported("state")
                            .then(|| v2_optional::state::GuestIndices::new(&pre))
                            .transpose()?,
                        exports,
                        pre,
                    });
                }
                Err(error) if names.iter().any(claims("0.2.0")) => return Err(error),
                Err(_) => {}
            }
        }
        Ok(Self::V1(v1::PluginPre::new(pre)?))
    }
}

/// The names a component imports and exports (`wasi:io/streams@0.2.6`, `on-text`, ...).
#[derive(Clone, Debug, Default)]
pub struct Interfaces {
    /// What it needs from the host.
    pub imports: Vec<String>,
    /// What it offers.
    pub exports: Vec<String>,
}

impl Interfaces {
    fn of(component: &Component) -> Self {
        let ty = component.component_type();
        let engine = component.engine();
        Self {
            imports: ty.imports(engine).map(|(name, _)| name.to_owned()).collect(),
            exports: ty.exports(engine).map(|(name, _)| name.to_owned()).collect(),
        }
    }
}

/// A plugin file, compiled and linked.
pub struct Loaded {
    /// The file it came from.
    pub path: PathBuf,
    /// The plugin's name in logs: the file name without `.wasm`.
    pub name: Arc<str>,
    /// Ready to instantiate, as often as needed.
    pub linked: Linked,
    /// SHA-256 of the file's bytes.
    pub digest: [u8; 32],
    /// Size of the file in bytes.
    pub size: u64,
    /// The language it was written in, if its producers sections tell.
    pub language: Language,
    /// Time spent reading, compiling (or loading from the cache) and linking.
    pub load_time: Duration,
    /// Whether the compiled code came from the cache.
    pub cache_hit: bool,
    /// What it imports and exports.
    pub interfaces: Interfaces,
    /// When the load was asked for (for a reload: when the change was noticed).
    pub requested_at: Instant,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("api", &self.linked.api())
            .field("language", &self.language)
            .field("load_time", &self.load_time)
            .field("cache_hit", &self.cache_hit)
            .finish_non_exhaustive()
    }
}

/// Compiles and links plugins for one engine.
pub struct Loader {
    engine: Engine,
    linker: Linker<HostState>,
    cache_dir: Option<PathBuf>,
    /// Distinguishes cached code of engines with different settings or versions.
    engine_key: u64,
}

impl Loader {
    /// An engine with epoch interruption (its epoch advances every [`EPOCH_TICK`] on a
    /// thread of its own) and a linker with WASI and the `wsplug:plugin` imports.
    /// Compiled components are cached in `cache_dir`, if given.
    pub fn new(cache_dir: Option<PathBuf>) -> wasmtime::Result<Self> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        super::wasi_io::add_to_linker(&mut linker)?;
        v3::Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)?;
        v3_optional::wsplug::plugin::timers::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)?;
        v2::Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)?;
        v1::Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)?;

        let ticker = engine.weak();
        thread::Builder::new().name("plugin-epoch".into()).spawn(move || {
            while let Some(engine) = ticker.upgrade() {
                engine.increment_epoch();
                drop(engine);
                thread::sleep(EPOCH_TICK);
            }
        })?;

        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        Ok(Self {
            engine,
            linker,
            cache_dir: cache_dir.filter(|dir| usable_cache(dir)),
            engine_key: hasher.finish(),
        })
    }

    /// The engine every instance runs in.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Reads, compiles and links the component at `path`.
    ///
    /// The error says which file and why: unreadable, not a component, or not an
    /// implementation of the `wsplug:plugin` world (a missing export, an unknown import).
    pub fn load(&self, path: &Path, requested_at: Instant) -> wasmtime::Result<Loaded> {
        let bytes = fs::read(path).with_context(|| format!("cannot read plugin {}", path.display()))?;
        self.load_bytes(path, &bytes, requested_at)
    }

    /// Like [`Loader::load`], for bytes already read from `path`.
    pub fn load_bytes(&self, path: &Path, bytes: &[u8], requested_at: Instant) -> wasmtime::Result<Loaded> {
        let started = Instant::now();
        let digest = digest(bytes);
        let (component, cache_hit) = self.compile(path, bytes, &digest)?;
        let interfaces = Interfaces::of(&component);
        let linked = Linked::link(&self.linker, &component, &interfaces).with_context(|| {
            format!(
                "plugin {} does not implement the wsplug:plugin world (0.1.0, 0.2.0 or 0.3.0)",
                path.display()
            )
        })?;
        let name = path.file_stem().map_or("plugin".into(), |s| s.to_string_lossy().into());
        Ok(Loaded {
            path: path.to_owned(),
            name,
            linked,
            digest,
            size: bytes.len() as u64,
            language: language::detect(bytes),
            load_time: started.elapsed(),
            cache_hit,
            interfaces,
            requested_at,
        })
    }

    fn compile(&self, path: &Path, bytes: &[u8], digest: &[u8; 32]) -> wasmtime::Result<(Component, bool)> {
        let cached = self.cache_dir.as_ref().map(|dir| {
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            dir.join(format!("{hex}-{:016x}.cwasm", self.engine_key))
        });
        if let Some(file) = cached.as_ref()
            && let Ok(metadata) = fs::metadata(file)
        {
            match private_files::check_trusted(&metadata) {
                // SAFETY: only this user can write the file and its directory (checked
                // when the loader was made), and the file name binds it to these exact
                // plugin bytes and this engine's settings.
                Ok(()) => match unsafe { Component::deserialize_file(&self.engine, file) } {
                    Ok(component) => return Ok((component, true)),
                    Err(error) => {
                        tracing::warn!(file = %file.display(), "ignoring unusable cached plugin code: {error}")
                    }
                },
                Err(why) => tracing::warn!(file = %file.display(), "ignoring cached plugin code: {why}"),
            }
        }
        let component = Component::new(&self.engine, bytes)
            .with_context(|| format!("{} is not a valid WebAssembly component", path.display()))?;
        if let Some(file) = cached
            && let Err(error) = store_in_cache(&component, &file)
        {
            tracing::warn!(file = %file.display(), "cannot cache compiled plugin: {}", super::one_line(&error));
        }
        Ok((component, false))
    }
}

/// Writes compiled code next to its final name, then renames it, so that a reader
/// never sees half a file.
fn store_in_cache(component: &Component, file: &Path) -> wasmtime::Result<()> {
    let code = component.serialize()?;
    let partial = file.with_extension(format!("tmp{}", std::process::id()));
    private_files::create_file(&partial)?.write_all(&code)?;
    fs::rename(&partial, file)?;
    Ok(())
}

/// Whether `dir` may hold compiled plugins, which run as native code outside the
/// sandbox: it is created (0700) if missing, and refused, with a warning, if another
/// user could put code in it.
fn usable_cache(dir: &Path) -> bool {
    let checked = private_files::create_dir(dir)
        .and_then(|()| fs::metadata(dir))
        .map_err(|error| error.to_string())
        .and_then(|metadata| private_files::check_trusted(&metadata).map_err(|why| why.to_string()));
    match checked {
        Ok(()) => true,
        Err(why) => {
            tracing::warn!(dir = %dir.display(), "not caching compiled plugins in this directory: {why}");
            false
        }
    }
}

/// SHA-256 of a plugin file: identifies a version for the cache and for reloads.
pub fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The default cache directory: `$XDG_CACHE_HOME/wsplug` or `~/.cache/wsplug`.
pub fn default_cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .map(|dir| dir.join("wsplug"))
}
