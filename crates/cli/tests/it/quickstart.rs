//! The README's main command: `plinth quickstart`, which starts a server on an example repo and
//! walks through what it does with a few commits.

use crate::plinth;

#[test]
fn quickstart_plans_applies_and_approves() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("example");
    let run = plinth(
        dir.path(),
        &[
            "quickstart",
            "--dir",
            target.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--proxy-listen",
            "127.0.0.1:0",
            "--no-serve",
        ],
    )
    .success();
    let out = &run.stdout;
    let steps: Vec<&str> = out.split("\n== ").skip(1).collect();
    assert_eq!(steps.len(), 9, "{out}");
    // 1. The layout: change detection shows both stacks; stg applies, prd waits.
    assert!(steps[0].contains("2 stacks changed"), "{}", steps[0]);
    assert!(steps[0].lines().any(|l| l.contains("app/stg") && l.contains("applied")), "{}", steps[0]);
    assert!(steps[0].lines().any(|l| l.contains("app/prd") && l.contains("awaiting_approval")), "{}", steps[0]);
    assert!(steps[0].contains("Apply complete!"), "{}", steps[0]);
    // 2. Nothing to change is a success.
    assert!(steps[1].lines().any(|l| l.contains("app/stg") && l.contains("no_changes")), "{}", steps[1]);
    // 3. The approval applies prd.
    assert!(steps[2].lines().any(|l| l.contains("app/prd") && l.contains("applied")), "{}", steps[2]);
    // 4. v1 of the demo service answers through the proxy.
    assert!(steps[3].contains("succeeded") && steps[3].trim_end().ends_with("v1"), "{}", steps[3]);
    // 5. v2 rolls out under load without a failed request.
    assert!(steps[4].contains("succeeded") && steps[4].contains(", 0 failed; answers went v1 -> v2"), "{}", steps[4]);
    // 6. The broken v3 rolls back by itself; v2 keeps serving, still without a failure.
    assert!(steps[5].contains("failed: ") && steps[5].contains("did not become healthy"), "{}", steps[5]);
    assert!(steps[5].contains(", 0 failed; it still answers v2"), "{}", steps[5]);
    // 7. An environment from the sandbox template, with its own network.
    assert!(steps[6].contains("shop-dev1 is ready: network 10.20.0.0/24"), "{}", steps[6]);
    assert!(steps[6].contains("\"app\":\"shop-dev1-shop\""), "{}", steps[6]);
    // 8. The pushed branch's review environment serves the branch's release.
    assert!(steps[7].contains("review-feature-demo is ready (Terraform workspace `feature-demo`)"), "{}", steps[7]);
    assert!(steps[7].contains("succeeded") && steps[7].trim_end().ends_with("feature-demo"), "{}", steps[7]);
    // 9. Deleting the branch destroys it, and the host is gone from the proxy.
    assert!(steps[8].contains("review-feature-demo is destroyed: branch `feature/demo` was deleted"), "{}", steps[8]);
    assert!(steps[8].contains("404 proxy.unknown_host"), "{}", steps[8]);
    // What to try next, with the URL and the token.
    assert!(out.contains("PLINTH_TOKEN=plinth_"), "{out}");
    assert!(out.contains("plinth server --repo"), "{out}");
    // The example repo is left for the user, and checks.
    plinth(&target.join("repo"), &["check"]).success();
    let token = std::fs::read_to_string(target.join("data/admin.token")).unwrap();
    assert!(out.contains(token.trim()));
    // A second run refuses to clobber it.
    let again = plinth(dir.path(), &["quickstart", "--dir", target.to_str().unwrap(), "--no-serve"]).failure();
    assert!(again.stderr.contains("quickstart.exists"), "{}", again.stderr);
}
