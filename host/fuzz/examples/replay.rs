//! Runs a target's checks on input files without libFuzzer, e.g. to debug a crash:
//! `cargo run --manifest-path host/fuzz/Cargo.toml --example replay -- protocol artifacts/protocol/crash-*`
//! (a directory runs every file in it).

fn main() {
    let mut args = std::env::args().skip(1);
    let target = args.next().expect("usage: replay TARGET FILE_OR_DIR...");
    let mut files = Vec::new();
    for arg in args {
        let path = std::path::PathBuf::from(arg);
        if path.is_dir() {
            let mut entries: Vec<_> = std::fs::read_dir(&path)
                .expect("read dir")
                .map(|e| e.expect("entry").path())
                .collect();
            entries.sort();
            files.extend(entries);
        } else {
            files.push(path);
        }
    }
    for file in &files {
        let data = std::fs::read(file).expect("read input");
        eprintln!("{target}: {} ({} bytes)", file.display(), data.len());
        assert!(
            wsplug_fuzz::run_target(&target, &data),
            "unknown target {target}; targets: {:?}",
            wsplug_fuzz::TARGETS
        );
    }
    eprintln!("{target}: {} inputs ran without a failed check", files.len());
}
