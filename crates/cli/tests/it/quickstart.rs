//! The README's main command: `plinth quickstart` on a fresh directory.

use crate::plinth;

#[test]
fn quickstart_walks_through_change_detection() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("example");
    let run = plinth(dir.path(), &["quickstart", "--dir", target.to_str().unwrap()]).success();
    let out = &run.stdout;
    // Each step shows the stacks a user should expect, in order.
    let steps: Vec<&str> = out.split("\n== ").skip(1).collect();
    assert_eq!(steps.len(), 5, "{out}");
    assert!(steps[0].contains("3 stacks changed, in 2 waves"), "{}", steps[0]);
    assert!(steps[1].contains("1 stack changed") && steps[1].contains("app/stg"), "{}", steps[1]);
    assert!(!steps[1].contains("app/prd"), "{}", steps[1]);
    assert!(
        steps[2].contains("app/prd") && steps[2].contains("app/stg") && steps[2].contains("module"),
        "{}",
        steps[2]
    );
    assert!(steps[3].contains("No stack changed"), "{}", steps[3]);
    assert!(steps[4].contains("merge base") && steps[4].contains("shared/tags.json"), "{}", steps[4]);
    assert!(!steps[4].contains("common "), "main's own change must not show on the branch: {}", steps[4]);
    // The example repo is left for the user, and checks.
    plinth(&target, &["check"]).success();
    // A second run refuses to clobber it.
    let again = plinth(dir.path(), &["quickstart", "--dir", target.to_str().unwrap()]).failure();
    assert!(again.stderr.contains("quickstart.exists"), "{}", again.stderr);
}
