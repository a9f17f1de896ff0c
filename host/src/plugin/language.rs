//! Tells which language a plugin was written in, from the `producers` custom sections
//! that compilers and componentizers leave in a component and its core modules. Only
//! for logs: a plugin without them is simply "unknown".

use wasmparser::{KnownCustom, Name, Parser, Payload};

/// The source language of a plugin, as far as its producers sections say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Language {
    /// Rust (wit-bindgen).
    Rust,
    /// JavaScript (componentize-js; its engine is C++ and Rust inside).
    JavaScript,
    /// Python (componentize-py; its interpreter is C and Rust inside).
    Python,
    /// C (clang).
    C,
    /// C++ (clang).
    Cpp,
    /// No producers section names a language we know.
    Unknown,
}

impl Language {
    /// The memory cap of its instances unless the operator sets one: 64 MiB, and 128 MiB
    /// for JavaScript. StarlingMonkey's heap and its garbage collector need the room: an
    /// echo under sustained load (10 connections, 4 messages of 20 B in flight each,
    /// about 50,000 a second) ran out of memory during a collection about once per
    /// 90,000 messages at 64 MiB, and not once in 1.17 million at 96 MiB nor in 1.04
    /// million at 128 MiB. Python's echo did 2.6 million at 64 MiB without one.
    pub fn default_memory_bytes(self) -> usize {
        match self {
            Self::JavaScript => 128 << 20,
            _ => 64 << 20,
        }
    }

    /// The language's name, for logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rust => "Rust",
            Self::JavaScript => "JavaScript",
            Self::Python => "Python",
            Self::C => "C",
            Self::Cpp => "C++",
            Self::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for Language {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The tools and languages one `producers` section names.
#[derive(Default)]
struct Producers {
    languages: Vec<String>,
    tools: Vec<String>,
}

impl Producers {
    fn tool(&self, prefix: &str) -> bool {
        self.tools
            .iter()
            .any(|tool| tool.to_ascii_lowercase().starts_with(prefix))
    }

    /// The C-family language of a module clang compiled (`C11`, `C99`, `C_plus_plus_14`).
    fn c_family(&self) -> Option<Language> {
        self.languages.iter().find_map(|language| {
            if language.starts_with("C_plus_plus") || language.starts_with("C++") {
                Some(Language::Cpp)
            } else if language.starts_with('C') && language[1..].chars().all(|c| c.is_ascii_digit()) {
                Some(Language::C)
            } else {
                None
            }
        })
    }
}

/// Reads the producers sections of `bytes` (a component and every module in it) and
/// the names of its core modules. A JavaScript or Python component embeds its
/// engine, written in C, C++ and Rust, so the componentizer's mark decides first:
/// componentize-js names itself, componentize-py links `libpython`. Otherwise the
/// module that wit-bindgen made bindings for is the plugin's own code (the WASI
/// adapter, also Rust, has none). Malformed bytes give `Unknown`: the compiler
/// reports what is wrong with them.
pub fn detect(bytes: &[u8]) -> Language {
    let mut sections = Vec::new();
    let mut module_names = Vec::new();
    for payload in Parser::new(0).parse_all(bytes) {
        let Ok(Payload::CustomSection(section)) = payload else {
            continue;
        };
        match section.as_known() {
            KnownCustom::Producers(reader) => {
                let mut producers = Producers::default();
                for field in reader.into_iter().flatten() {
                    let values = field.values.into_iter().flatten().map(|value| value.name.to_owned());
                    match field.name {
                        "language" => producers.languages.extend(values),
                        "processed-by" => producers.tools.extend(values),
                        _ => {}
                    }
                }
                sections.push(producers);
            }
            KnownCustom::Name(reader) => {
                for name in reader.into_iter().flatten() {
                    if let Name::Module { name, .. } = name {
                        module_names.push(name.to_owned());
                    }
                }
            }
            _ => {}
        }
    }
    if sections
        .iter()
        .any(|s| s.tool("componentizejs") || s.tool("componentize-js") || s.languages.iter().any(|l| l == "JavaScript"))
    {
        return Language::JavaScript;
    }
    if sections.iter().any(|s| s.tool("componentize-py")) || module_names.iter().any(|n| n.starts_with("libpython")) {
        return Language::Python;
    }
    if sections.iter().any(|s| s.tool("wit-bindgen-rust")) {
        return Language::Rust;
    }
    sections
        .iter()
        .filter(|s| s.tool("wit-bindgen-c"))
        .find_map(Producers::c_family)
        .unwrap_or(Language::Unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A core module with one producers section holding `fields` (name, [values]).
    fn module_with_producers(fields: &[(&str, &[&str])]) -> Vec<u8> {
        fn leb(mut n: usize, out: &mut Vec<u8>) {
            loop {
                let byte = (n & 0x7f) as u8;
                n >>= 7;
                out.push(if n == 0 { byte } else { byte | 0x80 });
                if n == 0 {
                    break;
                }
            }
        }
        fn string(s: &str, out: &mut Vec<u8>) {
            leb(s.len(), out);
            out.extend_from_slice(s.as_bytes());
        }
        let mut body = Vec::new();
        string("producers", &mut body);
        leb(fields.len(), &mut body);
        for (name, values) in fields {
            string(name, &mut body);
            leb(values.len(), &mut body);
            for value in *values {
                string(value, &mut body);
                string("1.0", &mut body);
            }
        }
        let mut module = b"\0asm\x01\0\0\0".to_vec();
        module.push(0);
        leb(body.len(), &mut module);
        module.extend(body);
        module
    }

    /// (name, values) pairs of one producers section.
    type Fields<'a> = &'a [(&'a str, &'a [&'a str])];

    #[test]
    fn languages_are_read_from_producers_sections() {
        let cases: [(Fields, Language); 7] = [
            (
                &[("processed-by", &["wit-component", "wit-bindgen-rust"])],
                Language::Rust,
            ),
            (
                &[
                    ("language", &["C99"]),
                    ("processed-by", &["Debian clang 14", "wit-bindgen-c"]),
                ],
                Language::C,
            ),
            (
                &[
                    ("language", &["C_plus_plus_14"]),
                    ("processed-by", &["clang", "wit-bindgen-c"]),
                ],
                Language::Cpp,
            ),
            (
                &[
                    ("language", &["JavaScript"]),
                    ("processed-by", &["wit-component", "ComponentizeJS 0.23.0"]),
                ],
                Language::JavaScript,
            ),
            (&[("processed-by", &["componentize-py"])], Language::Python),
            // clang alone, without bindings: the adapter or a runtime, not the plugin.
            (
                &[("language", &["C11"]), ("processed-by", &["clang"])],
                Language::Unknown,
            ),
            (&[("processed-by", &["wit-component"])], Language::Unknown),
        ];
        for (fields, expected) in cases {
            assert_eq!(detect(&module_with_producers(fields)), expected, "{fields:?}");
        }
    }

    #[test]
    fn bytes_that_are_not_wasm_are_unknown() {
        assert_eq!(detect(b"not wasm at all"), Language::Unknown);
        assert_eq!(detect(b""), Language::Unknown);
    }
}
