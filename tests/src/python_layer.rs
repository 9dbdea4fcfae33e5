//! A Python function on the layer, as Lambda runs one: a temporary `/opt` holding `python/makenaide_core/` as
//! `layer-build/build.sh` packs it (`layer-build/mkzip.py pack` with build.sh's directory entry, then
//! `mkzip.py unpack`, modes kept as Lambda does) and `extensions/makenaide-core` (a link to the binary given: the
//! binary's own packing is checked by tests/deploy/test_build.py, and deflating a 30 MB debug build would cost
//! seconds per test); the function's code in its own directory
//! (Lambda's `/var/task`), run by AWS's `awslambdaric` through `tests/python/bootstrap` with `PYTHONPATH` = the
//! layer's `python/` (Lambda puts `/opt/python` on `sys.path`). Used by tests/tests/python_layer.rs and the
//! benchmark's variant (e).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{HarnessError, Result};
use crate::lambda_env::{bins, EnvConfig, EXTENSION};

/// The Python client's folder, in the repository and in the layer zip alike.
pub const PYTHON_PACKAGE: &str = "python/makenaide_core";
/// The data collector moved onto the layer (its `lambda_function.py`).
pub const EXAMPLE_COLLECTOR: &str = "examples/python/data_collector";
/// Its handler, as Lambda's `Handler` setting names it.
pub const EXAMPLE_HANDLER: &str = "lambda_function.lambda_handler";
/// The interpreter with awslambdaric, pytest and mypy (read by `tests/python/bootstrap`).
pub const PYTHON_ENV: &str = "MAKENAIDE_TEST_PYTHON";

/// The venv interpreter: `$MAKENAIDE_TEST_PYTHON`, else `<repo>/.venv-python-tests/bin/python` (scripts/setup.sh
/// makes it from tests/python/requirements.txt).
pub fn test_python() -> Result<PathBuf> {
    let python = std::env::var_os(PYTHON_ENV)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| bins::workspace_root().join(".venv-python-tests/bin/python"));
    if python.is_file() {
        Ok(python)
    } else {
        Err(HarnessError::State(format!(
            "no Python at {}: run scripts/setup.sh (it creates .venv-python-tests from tests/python/requirements.txt) \
             or set {PYTHON_ENV}",
            python.display()
        )))
    }
}

/// A temporary `/opt` holding the unpacked layer. Removed on drop.
pub struct UnpackedLayer {
    dir: tempfile::TempDir,
}

impl UnpackedLayer {
    /// The repository's Python client packed and unpacked, and `extension` (any build: the static release one or
    /// target/debug's) in `extensions/`.
    pub fn assemble(extension: &Path) -> Result<Self> {
        let root = bins::workspace_root();
        let dir = tempfile::Builder::new().prefix("mk-opt-").tempdir()?;
        let zip = dir.path().join("layer.zip");
        let opt = dir.path().join("opt");
        let mkzip = root.join("layer-build/mkzip.py");
        let package = format!("{PYTHON_PACKAGE}/={}/", root.join(PYTHON_PACKAGE).display());
        run(Command::new("python3").arg(&mkzip).arg("pack").arg(&zip).arg(package))?;
        run(Command::new("python3").arg(&mkzip).arg("unpack").arg(&zip).arg(&opt))?;
        std::fs::create_dir_all(opt.join("extensions"))?;
        std::os::unix::fs::symlink(
            std::fs::canonicalize(extension)?,
            opt.join("extensions").join(EXTENSION),
        )?;
        Ok(Self { dir })
    }

    /// The layer from the extension the harness would run (`target/<profile>/makenaide-core`).
    pub fn with_built_extension() -> Result<Self> {
        Self::assemble(&bins::locate(EXTENSION)?)
    }

    /// The unpacked tree (`/opt`).
    pub fn opt(&self) -> PathBuf {
        self.dir.path().join("opt")
    }

    /// `/opt/extensions/makenaide-core`.
    pub fn extension(&self) -> PathBuf {
        self.opt().join("extensions").join(EXTENSION)
    }

    /// `/opt/python`.
    pub fn python_path(&self) -> PathBuf {
        self.opt().join("python")
    }

    /// A Python function (`handler` in `task_root`) with this layer's extension, under awslambdaric.
    pub fn python_function(&self, python: &Path, task_root: &Path, handler: &str) -> EnvConfig {
        let bootstrap = bins::workspace_root().join("tests/python/bootstrap");
        let mut cfg = EnvConfig::new(bootstrap.display().to_string())
            .extension(self.extension().display().to_string())
            .env(PYTHON_ENV, python.display().to_string())
            .env("MAKENAIDE_TEST_TASK_ROOT", task_root.display().to_string())
            .env("MAKENAIDE_TEST_HANDLER", handler)
            .env("PYTHONPATH", self.python_path().display().to_string())
            // The environment is cleared (as on Lambda): the bootstrap's shell needs PATH. /opt is read-only on
            // Lambda, so no byte code is cached between cold starts: none here either.
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("LANG", "C.UTF-8");
        cfg.function_name = "makenaide-data-collector-python".into();
        cfg
    }

    /// The example data collector (examples/python/data_collector) on this layer.
    pub fn example_collector(&self, python: &Path) -> EnvConfig {
        self.python_function(python, &bins::workspace_root().join(EXAMPLE_COLLECTOR), EXAMPLE_HANDLER)
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(HarnessError::State(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}
