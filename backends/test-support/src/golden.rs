//! Golden files: what a backend renders for each scenario, kept in the crate's
//! `tests/golden/`, so that every change of output shows in review and an unintended one
//! fails a test.

use std::path::PathBuf;

/// One crate's golden files, `<scenario>.<extension>` under its `tests/golden/`.
pub struct GoldenFiles {
    dir: PathBuf,
    extension: &'static str,
}

impl GoldenFiles {
    /// The golden files of the crate at `manifest_dir`: the caller passes its own
    /// `env!("CARGO_MANIFEST_DIR")`, since each crate keeps its files next to its tests.
    pub fn new(manifest_dir: &str, extension: &'static str) -> Self {
        GoldenFiles {
            dir: PathBuf::from(manifest_dir).join("tests/golden"),
            extension,
        }
    }

    /// The file of the scenario `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.{}", self.extension))
    }

    /// Fails unless each file holds exactly its rendered text, listing every mismatch at
    /// once; with `UPDATE_GOLDEN` set it (re)writes the files instead. `what` names the
    /// texts in the failure message ("scripts", "inputs").
    #[track_caller]
    pub fn assert_match(&self, rendered: impl IntoIterator<Item = (PathBuf, String)>, what: &str) {
        let update = std::env::var_os("UPDATE_GOLDEN").is_some();
        let mut mismatched = Vec::new();
        for (path, text) in rendered {
            if update {
                std::fs::write(&path, &text).unwrap();
                continue;
            }
            let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
                    path.display()
                )
            });
            if want != text {
                mismatched.push(format!("{}:\n{text}", path.display()));
            }
        }
        assert!(
            mismatched.is_empty(),
            "rendered {what} differ from golden files (UPDATE_GOLDEN=1 regenerates):\n{}",
            mismatched.join("\n")
        );
    }

    /// Fails on a file in the directory that is not one of `known` (the rendered ones):
    /// a removed or renamed scenario must not leave a file nothing checks.
    #[track_caller]
    pub fn assert_none_stale(&self, known: impl IntoIterator<Item = PathBuf>) {
        let known: Vec<PathBuf> = known.into_iter().collect();
        for entry in std::fs::read_dir(&self.dir).unwrap() {
            let path = entry.unwrap().path();
            assert!(
                known.contains(&path),
                "stale golden file {}",
                path.display()
            );
        }
    }
}
