//! Where tests find the workspace's binaries: already built by cargo, never built from here.
//!
//! A library that runs `cargo build` from inside `cargo test` waits on the build lock that other
//! test binaries and builds hold, builds with its own profile and features instead of the
//! caller's, and hides a slow compile inside a test's timeout. `cargo test --workspace` already
//! builds every workspace binary (each package's integration tests make cargo build that
//! package's bins), so tests only look up what is there.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The workspace's binaries and the packages that build them, for the build command a missing
/// binary's error names.
pub const WORKSPACE_BINS: [(&str, &str); 8] = [
    ("modelfleet-operator", "modelfleet-operator"),
    ("modelfleet-node-agent", "modelfleet-node-agent"),
    ("modelfleet-server", "modelfleet-server"),
    ("modelfleet-loadgen", "modelfleet-server"),
    ("kubectl-modelfleet", "modelfleet-kubectl-plugin"),
    ("modelfleet-e2e", "modelfleet-e2e"),
    ("modelfleet-router", "modelfleet-router"),
    ("crdgen", "modelfleet-crds"),
];

/// The path of workspace binary `name` (`modelfleet-operator`, …): [`locate`] without a
/// compile-time path.
pub fn path(name: &str) -> Result<PathBuf> {
    locate(name, None)
}

/// The path of workspace binary `name`, looked up in this order:
///
/// 1. `$MODELFLEET_BIN_<NAME>` at run time (`NAME` upper-cased, `-` → `_`, e.g.
///    `MODELFLEET_BIN_MODELFLEET_OPERATOR`): a binary built elsewhere; an error if that file is
///    missing rather than a silent fallback to another build.
/// 2. `compiled`: what the caller's `option_env!("CARGO_BIN_EXE_<name>")` gave. Cargo sets that
///    only for the integration tests of the package that owns the binary.
/// 3. `<profile dir>/<name>` beside the running executable: `target/<profile>/` of a test
///    (`target/<profile>/deps/<test>-<hash>`), an example (`target/<profile>/examples/<name>`) or
///    a binary (`target/<profile>/<name>`), so the binary comes from the same profile and target
///    directory as the caller.
///
/// Otherwise an error that names the binary and the command that builds it
/// (`cargo build -p <package> --bin <name>`, or `cargo test --workspace`, which builds every bin).
pub fn locate(name: &str, compiled: Option<&str>) -> Result<PathBuf> {
    let var = env_var(name);
    if let Some(value) = std::env::var_os(&var) {
        let path = PathBuf::from(value);
        if path.is_file() {
            return Ok(path);
        }
        return Err(Error::Binary(format!(
            "${var} is {}, which is not a file",
            path.display()
        )));
    }
    if let Some(path) = compiled.map(PathBuf::from).filter(|p| p.is_file()) {
        return Ok(path);
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| profile_dir(&exe))
        .map(|dir| dir.join(name));
    match beside {
        Some(path) if path.is_file() => Ok(path),
        _ => Err(not_built(name, &var, beside.as_deref())),
    }
}

/// The package whose `cargo build -p` builds `name` (the name itself for unknown binaries: every
/// workspace binary but the server's load generator, the plugin and crdgen is named after its
/// package).
pub fn package_of(name: &str) -> &str {
    WORKSPACE_BINS
        .iter()
        .find(|(bin, _)| *bin == name)
        .map_or(name, |(_, package)| package)
}

/// `MODELFLEET_BIN_<NAME>`: the override variable of binary `name`.
pub fn env_var(name: &str) -> String {
    format!("MODELFLEET_BIN_{}", name.to_ascii_uppercase().replace('-', "_"))
}

/// `target/<profile>` of an executable cargo built: its directory, or the one above for tests
/// and build helpers (`deps/`) and examples (`examples/`).
pub fn profile_dir(exe: &Path) -> Option<PathBuf> {
    let dir = exe.parent()?;
    match dir.file_name()?.to_str()? {
        "deps" | "examples" => dir.parent().map(Path::to_path_buf),
        _ => Some(dir.to_path_buf()),
    }
}

fn not_built(name: &str, var: &str, looked_at: Option<&Path>) -> Error {
    let looked_at = looked_at.map_or_else(
        || "(no directory beside the running executable)".to_string(),
        |p| p.display().to_string(),
    );
    Error::Binary(format!(
        "{name} is not built: not at {looked_at} and ${var} is unset. Build it with \
         `cargo build -p {} --bin {name}` (or run `cargo test --workspace`, which builds every \
         binary of the workspace)",
        package_of(name)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_override_variable_is_the_upper_cased_name_with_underscores() {
        assert_eq!(
            env_var("modelfleet-node-agent"),
            "MODELFLEET_BIN_MODELFLEET_NODE_AGENT"
        );
        assert_eq!(env_var("crdgen"), "MODELFLEET_BIN_CRDGEN");
    }

    #[test]
    fn tests_examples_and_binaries_resolve_to_their_profile_directory() {
        let profile = Path::new("/w/target/debug");
        for exe in [
            "/w/target/debug/deps/reconcile-0123abcd",
            "/w/target/debug/examples/scale_bench",
            "/w/target/debug/modelfleet-e2e",
        ] {
            assert_eq!(profile_dir(Path::new(exe)).as_deref(), Some(profile), "{exe}");
        }
    }

    #[test]
    fn a_missing_binary_names_its_package_and_the_build_command() {
        let message = locate("kubectl-modelfleet-not-built-anywhere", None)
            .expect_err("no such binary")
            .to_string();
        assert!(
            message.contains("cargo build -p kubectl-modelfleet-not-built-anywhere --bin"),
            "{message}"
        );
        assert!(message.contains("cargo test --workspace"), "{message}");
        assert_eq!(package_of("modelfleet-loadgen"), "modelfleet-server");
    }

    #[test]
    fn a_compile_time_path_is_used_when_the_file_exists() {
        let exe = std::env::current_exe().expect("own path");
        let exe = exe.to_str().expect("UTF-8 path");
        let found = locate("a-name-with-no-override-set", Some(exe)).expect("found");
        assert_eq!(found, Path::new(exe));
    }
}
