//! The CLI builds the workspace binaries it runs (the operator, node agent, server) before the
//! testkit looks them up: `cargo run -p modelfleet-e2e -- up --with-operator` builds only this
//! package, and a person expects `up` to run the operator of the checkout, not a stale one. The
//! testkit itself never builds ([`modelfleet_testkit::bin`]); this is the CLI's convenience.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use modelfleet_testkit::bin;

/// Builds workspace binaries `names` with cargo into the profile and target directory this
/// executable runs from, so that [`bin::path`] finds them beside it. Does nothing when not
/// started by cargo (`$CARGO` unset: an installed binary runs what `$MODELFLEET_BIN_*` or its
/// own directory provides) or outside a cargo target directory. Blocking (it runs cargo).
pub fn workspace_bins(names: &[&str]) -> Result<(), String> {
    let Some(cargo) = std::env::var_os("CARGO") else {
        return Ok(());
    };
    let exe = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
    let Some((target, profile)) = target_and_profile(&exe) else {
        return Ok(());
    };
    let mut command = Command::new(cargo);
    command.args(["build", "--quiet", "--target-dir"]).arg(target);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            command.arg("--release");
        }
        other => {
            command.args(["--profile", other]);
        }
    }
    for name in names {
        command.args(["-p", bin::package_of(name), "--bin", name]);
    }
    let status = command
        .current_dir(modelfleet_testkit::operator_process::workspace_root())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| format!("run cargo build: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo build of {} failed ({status})", names.join(", ")))
    }
}

/// The target directory and profile directory name of an executable at
/// `<target>/<profile>/<name>`.
fn target_and_profile(exe: &Path) -> Option<(&Path, String)> {
    let profile_dir = exe.parent()?;
    let profile = profile_dir.file_name()?.to_str()?.to_string();
    Some((profile_dir.parent()?, profile))
}

/// Builds the binaries live pods run and returns them as the fleet's images.
pub async fn live_images() -> Result<modelfleet_testkit::live::runtime::LocalImages, String> {
    let names = modelfleet_testkit::live::LOCAL_BINARIES.map(|(_, name)| name);
    tokio::task::spawn_blocking(move || workspace_bins(&names))
        .await
        .map_err(|e| e.to_string())??;
    modelfleet_testkit::live::local_images().map_err(|e| e.to_string())
}
