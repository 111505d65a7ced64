//! The xtask binary as a user may run it directly (not through `cargo xtask`).

use std::process::Command;

#[test]
fn runs_without_library_path_and_logs_plain_text() {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("--help")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run xtask");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("fetch-data"));
    // An unknown dataset goes through the log and the error path: no colour codes when
    // the output is not a terminal.
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["fetch-data", "no_such_dataset"])
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("NO_COLOR")
        .output()
        .expect("run xtask");
    assert!(!out.status.success());
    let all = [out.stdout, out.stderr].concat();
    assert!(!all.contains(&0x1b), "{}", String::from_utf8_lossy(&all));
}

#[test]
fn a_dataset_name_cannot_leave_the_data_folder() {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["fetch-data", "../../escape", "--hf-dataset", "user/repo"])
        .output()
        .expect("run xtask");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("'../../escape' is not a plain name"), "{err}");
}
