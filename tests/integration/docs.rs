//! The man pages render without warnings.

use std::process::Command;

use crate::harness::need;

#[test]
fn man_pages_lint_clean() {
    need("mandoc", "mandoc");
    let root = env!("CARGO_MANIFEST_DIR");
    for page in ["man/postern.8", "man/postern.conf.5", "man/posternctl.8"] {
        let out = Command::new("mandoc")
            .args(["-Tlint", "-W", "warning"])
            .arg(format!("{root}/{page}"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        let problems: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("outdated mandoc.db"))
            .collect();
        assert!(
            out.status.success() && problems.is_empty(),
            "{page}:\n{}",
            problems.join("\n")
        );
    }
}
