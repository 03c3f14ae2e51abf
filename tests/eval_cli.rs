//! `multimix eval`'s flags: bad values exit nonzero with one clear line before anything is
//! loaded; good ones run the opt-in attacks and detectors and write the plots.

use std::process::{Command, Output};

fn multimix(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_multimix"))
        .args(args)
        .output()
        .expect("the multimix binary runs")
}

fn one_error_line(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    lines[0].to_string()
}

#[test]
fn bad_flags_are_named_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().to_str().unwrap();
    let cases: [(&[&str], &[&str]); 6] = [
        (&["--eps", "1/255,2"], &["--eps `2`", "outside [0, 1]"]),
        (&["--eps", "-0.1"], &["--eps `-0.1`", "outside [0, 1]"]),
        (&["--eps", "8/0"], &["--eps `8/0`", "division by zero"]),
        (&["--fgsm-eps", "abc"], &["--fgsm-eps `abc`"]),
        (
            &["--detectors", "msp,foo"],
            &["unknown detector `foo`", "mahalanobis"],
        ),
        (&["--attack", "cw"], &["unknown attack `cw`", "fgsm, pgd"]),
    ];
    for (flags, expected) in cases {
        let mut args = vec!["eval", "--checkpoint", run];
        args.extend_from_slice(flags);
        let line = one_error_line(&multimix(&args));
        for e in expected {
            assert!(line.contains(e), "{flags:?}: `{line}` lacks `{e}`");
        }
    }
    // Nothing was written into the directory.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
