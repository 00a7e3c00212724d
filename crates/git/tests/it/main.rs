//! plinth-git against real repositories built with the git CLI.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use plinth_core::changes::{ChangeKind, PathChange};
use plinth_core::modules::ModuleGraph;
use plinth_core::tree::Tree;
use plinth_git::{ChangedOptions, ModuleCache, Repo, changed};
use plinth_testkit::TestRepo;

fn open(repo: &TestRepo) -> Repo {
    Repo::discover(repo.path()).unwrap()
}

fn names(repo: &Repo, base: &str, head: &str) -> Vec<String> {
    let cmp = repo.compare(base, head).unwrap();
    let changes = repo.tree(Some(cmp.head)).unwrap().changes_from(&repo.tree(cmp.base).unwrap()).unwrap();
    changes.iter().map(|c| format!("{:?} {}", c.kind, c.path)).collect()
}

#[test]
fn revisions_follow_the_orb_rules() {
    let mut t = TestRepo::new();
    t.write("a.txt", "1");
    let first = t.commit("first");
    t.write("b.txt", "2");
    let second = t.commit("second");
    let r = open(&t);

    // A first commit compares against the empty tree.
    let cmp = r.compare(&first, &first).unwrap();
    assert_eq!(cmp.base, None);
    assert!(cmp.how.contains("empty tree"), "{}", cmp.how);

    // On the base branch itself: the head's first parent.
    let cmp = r.compare("main", "HEAD").unwrap();
    assert_eq!(cmp.base.unwrap().to_string(), first);
    assert_eq!(cmp.head.to_string(), second);

    // A feature branch: the merge base, not the tip of main.
    t.git(&["checkout", "-q", "-b", "feature"]);
    t.write("feature.txt", "f");
    t.commit("feature work");
    t.git(&["checkout", "-q", "main"]);
    t.write("main-only.txt", "m");
    t.commit("main moves on");
    let r = open(&t);
    let cmp = r.compare("main", "feature").unwrap();
    assert_eq!(cmp.base.unwrap().to_string(), second);
    assert_eq!(names(&r, "main", "feature"), ["Added feature.txt"]);
}

#[test]
fn merge_commits_compare_against_their_first_parent() {
    let mut t = TestRepo::new();
    t.write("a.txt", "1");
    t.commit("first");
    t.git(&["checkout", "-q", "-b", "feature"]);
    t.write("terraform/stg/main.tf", "# stg");
    t.commit("feature");
    t.git(&["checkout", "-q", "main"]);
    t.write("other.txt", "o");
    t.commit("main");
    t.git(&["merge", "-q", "--no-ff", "-m", "merge feature", "feature"]);
    let r = open(&t);
    // Building main after the merge: what the merge brought in.
    assert_eq!(names(&r, "main", "HEAD"), ["Added terraform/stg/main.tf"]);
}

#[test]
fn renames_deletions_and_odd_names_are_seen() {
    let mut t = TestRepo::new();
    t.write("dir with space/file name.tf", "x");
    t.write("日本語/ファイル.tf", "y");
    t.write("old/place.tf", "z\n".repeat(20).as_str());
    t.write("gone/x.tf", "g");
    t.commit("first");
    t.rename("old/place.tf", "new/place.tf");
    t.remove("gone");
    t.touch("dir with space/file name.tf");
    t.touch("日本語/ファイル.tf");
    t.commit("second");
    let r = open(&t);
    assert_eq!(
        names(&r, "main", "HEAD"),
        [
            "Modified dir with space/file name.tf",
            "Deleted gone/x.tf",
            "Added new/place.tf",
            "Deleted old/place.tf",
            "Modified 日本語/ファイル.tf",
        ]
    );
    // Like `git diff --name-only` with rename detection: the new path only.
    let cmp = r.compare("main", "HEAD").unwrap();
    let like_git = r.names_like_git_diff(r.tree_id(cmp.base).unwrap(), r.tree_id(Some(cmp.head)).unwrap()).unwrap();
    let git_says: Vec<String> = t
        .git(&["-c", "core.quotepath=false", "diff", "--name-only", &cmp.base.unwrap().to_string(), "HEAD"])
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(like_git, git_says);
    assert!(like_git.contains(&"new/place.tf".to_owned()) && !like_git.contains(&"old/place.tf".to_owned()));
}

#[test]
fn bad_revisions_and_missing_repos_are_clear() {
    let mut t = TestRepo::new();
    t.write("a", "1");
    t.commit("first");
    let r = open(&t);
    let e = r.compare("no-such-branch", "HEAD").unwrap_err();
    assert_eq!(plinth_core::ErrorCode::code(&e), "repo.unknown_revision");
    assert!(e.to_string().contains("no-such-branch"));
    let blob = t.git(&["rev-parse", "HEAD:a"]);
    let e = r.resolve(&blob).unwrap_err();
    assert_eq!(plinth_core::ErrorCode::code(&e), "repo.not_a_commit");
    let e = Repo::discover(std::path::Path::new("/nonexistent/plinth")).unwrap_err();
    assert_eq!(plinth_core::ErrorCode::code(&e), "repo.not_found");
    let empty = tempfile::tempdir().unwrap();
    assert!(Repo::discover(empty.path()).is_err());
}

#[test]
fn git_trees_read_like_the_files_on_disk() {
    let mut t = TestRepo::new();
    t.write("terraform/stg/main.tf", "module \"a\" { source = \"../../modules/a\" }");
    t.write("modules/a/main.tf", "");
    t.write("README.md", "hi");
    let head = t.commit("first");
    let r = open(&t);
    let tree = r.tree(Some(r.resolve(&head).unwrap())).unwrap();
    let fs = plinth_git::FsTree::new(t.path());
    for dir in ["", "terraform", "terraform/stg", "modules/a", "missing", "README.md"] {
        assert_eq!(tree.read_dir(dir).unwrap(), fs.read_dir(dir).unwrap(), "{dir}");
    }
    for file in ["README.md", "terraform/stg/main.tf", "missing.txt", "terraform"] {
        assert_eq!(tree.read_file(file).unwrap(), fs.read_file(file).unwrap(), "{file}");
    }
    assert_eq!(ModuleGraph::build(&tree).unwrap(), ModuleGraph::build(&fs).unwrap());
}

fn seed_000(t: &mut TestRepo) -> String {
    t.write(
        "plinth.toml",
        r#"
[environments.stg]
branches = ["main"]
[environments.prd]
branches = ["main"]
approval = true
[stacks.app]
path = "terraform/{env}"
environment = "{env}"
"#,
    );
    t.write("terraform/stg/main.tf", "module \"app\" {\n  source = \"../../modules/app\"\n}\n");
    t.write("terraform/prd/main.tf", "module \"app\" {\n  source = \"../../modules/app\"\n}\n");
    t.write("modules/app/main.tf", "resource \"terraform_data\" \"x\" {}\n");
    t.write("README.md", "seed 000\n");
    t.commit("seed 000 layout")
}

fn affected(repo: &Repo, base: &str, head: &str, cache: ModuleCache) -> Vec<String> {
    let options = ChangedOptions { base: base.into(), head: head.into(), with_dependents: false, cache };
    let report = changed(repo, &options).unwrap();
    report.stacks.iter().map(|s| s.stack.name.clone()).collect()
}

#[test]
fn a_bare_repo_works_without_a_checkout() {
    let mut t = TestRepo::new();
    seed_000(&mut t);
    t.touch("modules/app/main.tf");
    t.commit("module change");
    let (_keep, bare) = t.bare_clone();
    let r = Repo::discover(&bare).unwrap();
    assert!(r.workdir().is_none());
    assert_eq!(affected(&r, "main", "HEAD", ModuleCache::disabled()), ["app/prd", "app/stg"]);
}

#[test]
fn the_module_cache_gives_the_same_answers_as_a_cold_walk() {
    let mut t = TestRepo::new();
    let first = seed_000(&mut t);
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = || ModuleCache::at(cache_dir.path());
    let r = open(&t);
    // Warm the cache at the first commit.
    assert_eq!(affected(&r, &first, &first, cache()), ["app/prd", "app/stg"]);

    // stg stops using the module; prd keeps it. The cached graph must be updated, not reused.
    t.write("terraform/stg/main.tf", "resource \"terraform_data\" \"own\" {}\n");
    t.commit("stg goes its own way");
    t.touch("modules/app/main.tf");
    t.commit("module change");
    let r = open(&t);
    for cache in [cache(), ModuleCache::disabled(), cache()] {
        assert_eq!(affected(&r, "main", "HEAD", cache), ["app/prd"]);
    }
    let names = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(cache_dir.path())
            .unwrap()
            .map(|e| e.unwrap().path().extension().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    // Neither side of that comparison was cached: the head's graph was built and kept whole.
    assert_eq!(names(), ["bin", "bin"]);

    // The next head's graph is kept as the directories it re-read over its base's whole graph,
    // and the one after as a patch over that patch: stg comes back to the module, through a
    // new one in between.
    t.write("modules/wrap/main.tf", "module \"app\" { source = \"../app\" }\n");
    t.write("terraform/stg/main.tf", "module \"wrap\" { source = \"../../modules/wrap\" }\n");
    t.commit("stg wraps the module");
    let r = open(&t);
    assert_eq!(affected(&r, "HEAD~1", "HEAD", cache()), ["app/stg"]);
    assert_eq!(names(), ["bin", "bin", "patch"]);
    t.touch("modules/app/main.tf");
    t.commit("another module change");
    let r = open(&t);
    for cache in [cache(), ModuleCache::disabled(), cache()] {
        assert_eq!(affected(&r, "HEAD~1", "HEAD", cache), ["app/prd", "app/stg"]);
    }
    assert_eq!(names(), ["bin", "bin", "patch", "patch"]);

    // A damaged cache entry is ignored, not trusted: a damaged header when it is opened, a
    // damaged body when a lookup reads it.
    let entries: Vec<std::path::PathBuf> =
        std::fs::read_dir(cache_dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    for path in &entries {
        let mut bytes = std::fs::read(path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(path, bytes).unwrap();
    }
    assert_eq!(affected(&r, "HEAD~1", "HEAD", cache()), ["app/prd", "app/stg"]);
    for path in &entries {
        std::fs::write(path, b"garbage").unwrap();
    }
    assert_eq!(affected(&r, "HEAD~1", "HEAD", cache()), ["app/prd", "app/stg"]);
}

#[test]
fn path_changes_are_sorted_and_typed() {
    let mut t = TestRepo::new();
    t.write("b", "1").write("a/x", "1");
    t.commit("one");
    t.touch("b");
    t.remove("a/x");
    t.write("c", "new");
    t.commit("two");
    let r = open(&t);
    let cmp = r.compare("main", "HEAD").unwrap();
    let changes = r.tree(Some(cmp.head)).unwrap().changes_from(&r.tree(cmp.base).unwrap()).unwrap();
    assert_eq!(
        changes,
        [
            PathChange::new("a/x", ChangeKind::Deleted),
            PathChange::new("b", ChangeKind::Modified),
            PathChange::new("c", ChangeKind::Added),
        ]
    );
}

/// The tree diff agrees with `git diff --no-renames --name-status` on awkward changes: a file
/// that becomes a directory and back, executable bits, symlinks, names that sort differently as
/// directories, and whole trees appearing and vanishing.
#[test]
fn the_tree_diff_agrees_with_git() {
    let mut t = TestRepo::new();
    t.write("a/b.txt", "1").write("a.txt", "2").write("a-b/c", "3").write("x/y/z.tf", "4").write("run.sh", "echo\n");
    t.commit("first");
    type Step = Box<dyn Fn(&TestRepo)>;
    let steps: Vec<Step> = vec![
        Box::new(|t| {
            t.remove("a.txt");
            t.write("a.txt/inner", "now a directory");
            t.git(&["update-index", "--chmod=+x", "run.sh"]);
        }),
        Box::new(|t| {
            t.remove("x");
            t.write("x", "now a file");
            std::os::unix::fs::symlink("a-b/c", t.path().join("link")).unwrap();
            t.write("new/deep/tree/file.tf", "added");
        }),
        Box::new(|t| {
            t.remove("link");
            std::os::unix::fs::symlink("run.sh", t.path().join("link")).unwrap();
            t.touch("a-b/c");
            t.remove("new");
        }),
    ];
    for step in steps {
        step(&t);
        t.commit("step");
        let r = open(&t);
        let head = r.resolve("HEAD").unwrap();
        let base = r.first_parent(head).unwrap();
        let ours: Vec<String> = r
            .tree(Some(head))
            .unwrap()
            .changes_from(&r.tree(base).unwrap())
            .unwrap()
            .iter()
            .map(|c| {
                format!(
                    "{}\t{}",
                    match c.kind {
                        ChangeKind::Added => "A",
                        ChangeKind::Deleted => "D",
                        ChangeKind::Modified => "M",
                    },
                    c.path
                )
            })
            .collect();
        let mut git: Vec<String> = t
            .git(&["diff", "--no-renames", "--name-status", "HEAD~1", "HEAD"])
            .lines()
            .map(|l| l.replace("T\t", "M\t"))
            .collect();
        git.sort_by(|a, b| a[2..].cmp(&b[2..]).then(a.cmp(b)));
        let mut ours_sorted = ours.clone();
        ours_sorted.sort_by(|a, b| a[2..].cmp(&b[2..]).then(a.cmp(b)));
        assert_eq!(ours_sorted, git);
    }
}

#[test]
fn a_commit_exports_with_modes_and_links() {
    use std::os::unix::fs::PermissionsExt;
    let mut t = TestRepo::new();
    t.write("terraform/stg/main.tf", "resource \"terraform_data\" \"x\" {}\n");
    t.write("scripts/run.sh", "#!/bin/sh\necho hi\n");
    std::fs::set_permissions(t.path().join("scripts/run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("../scripts/run.sh", t.path().join("terraform/run")).unwrap();
    t.write("dir with space/日本.txt", "x");
    let head = t.commit("export me");
    let r = open(&t);
    let tree = r.tree(Some(r.resolve(&head).unwrap())).unwrap();
    let dest = tempfile::tempdir().unwrap();
    let out = dest.path().join("ws");
    let files = tree.export(&out).unwrap();
    assert_eq!(files, 3);
    assert_eq!(
        std::fs::read_to_string(out.join("terraform/stg/main.tf")).unwrap(),
        "resource \"terraform_data\" \"x\" {}\n"
    );
    assert_eq!(std::fs::read_to_string(out.join("dir with space/日本.txt")).unwrap(), "x");
    let mode = std::fs::metadata(out.join("scripts/run.sh")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(std::fs::read_link(out.join("terraform/run")).unwrap(), std::path::Path::new("../scripts/run.sh"));
    assert!(!out.join(".git").exists());
}

#[test]
fn a_partial_export_writes_the_paths_asked_for_and_what_their_symlinks_point_at() {
    let mut t = TestRepo::new();
    t.write("terraform/stg/main.tf", "# stg\n");
    t.write("terraform/stg/files/a.txt", "a");
    t.write("terraform/prd/main.tf", "# prd\n");
    t.write("shared/providers.tf", "# providers\n");
    t.write("shared/other.tf", "# other\n");
    t.write("templates/x/y.tpl", "y");
    t.write("plinth.toml", "");
    std::os::unix::fs::symlink("../../shared/providers.tf", t.path().join("terraform/stg/providers.tf")).unwrap();
    std::os::unix::fs::symlink("../../templates/x", t.path().join("terraform/stg/tpl")).unwrap();
    std::os::unix::fs::symlink("../../../outside", t.path().join("terraform/stg/escape")).unwrap();
    std::os::unix::fs::symlink(".", t.path().join("terraform/stg/self")).unwrap();
    let head = t.commit("layout");
    let r = open(&t);
    let tree = r.tree(Some(r.resolve(&head).unwrap())).unwrap();
    let dest = tempfile::tempdir().unwrap();
    let out = dest.path().join("ws");
    let paths: Vec<String> =
        ["plinth.toml", "terraform/stg", "terraform/stg/files", "modules/gone"].map(String::from).to_vec();
    let files = tree.export_paths(&out, &paths).unwrap();
    assert_eq!(files, 5, "main.tf, a.txt, plinth.toml, providers.tf and y.tpl");
    assert_eq!(std::fs::read_to_string(out.join("terraform/stg/providers.tf")).unwrap(), "# providers\n");
    assert_eq!(std::fs::read_to_string(out.join("terraform/stg/tpl/y.tpl")).unwrap(), "y");
    assert_eq!(std::fs::read_to_string(out.join("terraform/stg/files/a.txt")).unwrap(), "a");
    assert!(!out.join("terraform/prd").exists());
    assert!(!out.join("shared/other.tf").exists());
    assert!(!out.join("modules").exists());
    assert!(std::fs::symlink_metadata(out.join("terraform/stg/escape")).unwrap().file_type().is_symlink());
}

#[tokio::test]
async fn the_mirror_follows_branches_and_new_commits() {
    use plinth_git::Mirror;
    use std::time::Duration;
    let mut t = TestRepo::new();
    t.write("a", "1");
    let first = t.commit("first");
    let data = tempfile::tempdir().unwrap();
    let mirror =
        Mirror::open_or_clone(&t.path().display().to_string(), &data.path().join("repo.git"), Duration::from_secs(30))
            .await
            .unwrap();
    assert_eq!(mirror.branches().await.unwrap().get("main"), Some(&first));

    // Two commits on main, a feature branch with a commit, then a merge.
    t.write("b", "2");
    let second = t.commit("second");
    t.write("c", "3");
    let third = t.commit("third");
    t.git(&["checkout", "-q", "-b", "feature"]);
    t.write("f", "f");
    let feature = t.commit("feature work");
    t.git(&["checkout", "-q", "main"]);
    t.git(&["merge", "-q", "--no-ff", "-m", "merge", "feature"]);
    let merge = t.head();
    mirror.fetch().await.unwrap();
    let branches = mirror.branches().await.unwrap();
    assert_eq!(branches["main"], merge);
    assert_eq!(branches["feature"], feature);

    // Main's new commits follow first parents: the merge is one commit.
    assert_eq!(
        mirror.new_commits(&merge, std::slice::from_ref(&first)).await.unwrap(),
        [second.clone(), third.clone(), merge.clone()]
    );
    // A new branch's commits stop at what other branches already have.
    assert_eq!(
        mirror.new_commits(&feature, std::slice::from_ref(&third)).await.unwrap(),
        std::slice::from_ref(&feature)
    );
    // A branch made at a known commit, before its first commit of its own, brings nothing:
    // not the whole history of the commit it starts at.
    assert!(mirror.new_commits(&third, &[third.clone(), first.clone()]).await.unwrap().is_empty());
    assert!(mirror.is_ancestor(&first, &merge).await.unwrap());
    assert!(!mirror.is_ancestor(&merge, &first).await.unwrap());

    // A known head that no longer exists (force-push, gc) is ignored, not an error.
    let gone = "0123456789012345678901234567890123456789".to_owned();
    assert_eq!(mirror.new_commits(&second, &[gone, first.clone()]).await.unwrap(), std::slice::from_ref(&second));

    // Deleted branches disappear on fetch.
    t.git(&["branch", "-q", "-D", "feature"]);
    mirror.fetch().await.unwrap();
    assert!(!mirror.branches().await.unwrap().contains_key("feature"));

    let bad = Mirror::open_or_clone("/nonexistent/repo", &data.path().join("bad.git"), Duration::from_secs(30)).await;
    assert!(matches!(bad, Err(plinth_git::MirrorError::Failed { .. })));
}
