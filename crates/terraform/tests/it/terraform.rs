//! The driver against the real terraform CLI, with stacks of `terraform_data` resources,
//! `local-exec` provisioners, variables and outputs.

use std::sync::Mutex;

use nix::unistd::{Pid, getpgid};
use plinth_core::ErrorCode;
use plinth_terraform::{Exit, Invocation, PlanOutcome, PlanSummary, ResourceChange, Stream, Terraform, TerraformError};
use tokio::time::Instant;

use crate::{Harness, Sandbox, env, texts, wait_for_pid, wait_until_gone};

const TWO_RESOURCES: &str = r#"
resource "terraform_data" "a" {
  input = "a"
}
resource "terraform_data" "b" {}
output "greeting" {
  value = "hello"
}
"#;

const REPLACEABLE: &str = r#"
variable "v" {
  type = string
}
resource "terraform_data" "x" {
  triggers_replace = [var.v]
}
resource "terraform_data" "steady" {}
"#;

/// A stack whose apply writes the pid of a sleep to `pid` and then sleeps for 30 s.
const SLOW_APPLY: &str = r#"
resource "terraform_data" "slow" {
  provisioner "local-exec" {
    command = "echo $$ > pid; exec sleep 30"
  }
}
"#;

fn addresses(summary: &PlanSummary) -> Vec<&str> {
    summary.resources.iter().map(|r| r.address.as_str()).collect()
}

#[tokio::test]
async fn plan_apply_and_plan_again() {
    let sandbox = Sandbox::stack(TWO_RESOURCES);
    let tf = sandbox.terraform();
    let h = Harness::new();
    let dir = sandbox.dir();
    let ctx = h.at(&dir, &[]);
    let plan_file = sandbox.path("plan.tfplan");

    tf.init(&ctx).await.unwrap();
    assert_eq!(tf.plan(&ctx, &plan_file, false).await.unwrap(), PlanOutcome::Changes);
    let summary = tf.show_plan(&ctx, &plan_file).await.unwrap();
    assert_eq!((summary.add, summary.change, summary.destroy, summary.output_changes), (2, 0, 0, 1));
    assert_eq!(addresses(&summary), ["terraform_data.a", "terraform_data.b"]);
    assert!(summary.resources.iter().all(|r| r.actions == ["create"]));
    tf.apply(&ctx, &plan_file).await.unwrap();

    let outputs = tf.outputs(&ctx).await.unwrap();
    assert_eq!(outputs["greeting"]["value"], "hello");

    assert_eq!(tf.plan(&ctx, &plan_file, false).await.unwrap(), PlanOutcome::NoChanges);
    let summary = tf.show_plan(&ctx, &plan_file).await.unwrap();
    assert_eq!(summary, PlanSummary::default());

    assert_eq!(tf.plan(&ctx, &plan_file, true).await.unwrap(), PlanOutcome::Changes);
    let summary = tf.show_plan(&ctx, &plan_file).await.unwrap();
    assert_eq!((summary.add, summary.change, summary.destroy), (0, 0, 2));

    // Each command is announced, the summary is sent, and the plan's JSON is not.
    let lines = h.lines();
    let stdout = texts(&lines, Stream::Stdout);
    assert!(stdout.contains(&"$ terraform init -input=false -no-color"), "{stdout:#?}");
    let planned = format!("$ terraform plan -input=false -no-color -detailed-exitcode -out={}", plan_file.display());
    assert!(stdout.contains(&planned.as_str()), "{stdout:#?}");
    assert!(stdout.contains(&"Plan: 2 to add, 0 to change, 0 to destroy; 1 output changes."), "{stdout:#?}");
    assert!(stdout.iter().any(|l| l.starts_with("Apply complete!")), "{stdout:#?}");
    assert!(!stdout.iter().any(|l| l.contains("\"resource_changes\"") || l.contains("\"greeting\"")), "{stdout:#?}");
}

#[tokio::test]
async fn a_replacement_counts_as_one_add_and_one_destroy() {
    let sandbox = Sandbox::stack(REPLACEABLE);
    let tf = sandbox.terraform();
    let h = Harness::new();
    let dir = sandbox.dir();
    let plan_file = sandbox.path("plan.tfplan");
    let first = env(&[("TF_VAR_v", "1")]);
    let ctx = h.at(&dir, &first);
    tf.init(&ctx).await.unwrap();
    tf.plan(&ctx, &plan_file, false).await.unwrap();
    tf.apply(&ctx, &plan_file).await.unwrap();

    let second = env(&[("TF_VAR_v", "2")]);
    let ctx = h.at(&dir, &second);
    assert_eq!(tf.plan(&ctx, &plan_file, false).await.unwrap(), PlanOutcome::Changes);
    let summary = tf.show_plan(&ctx, &plan_file).await.unwrap();
    assert_eq!(
        summary,
        PlanSummary {
            add: 1,
            change: 0,
            destroy: 1,
            resources: vec![ResourceChange {
                address: "terraform_data.x".into(),
                actions: vec!["delete".into(), "create".into()],
            }],
            output_changes: 0,
        }
    );
}

#[tokio::test]
async fn workspaces_are_created_then_selected() {
    let sandbox = Sandbox::stack(TWO_RESOURCES);
    let tf = sandbox.terraform();
    let h = Harness::new();
    let dir = sandbox.dir();
    let ctx = h.at(&dir, &[]);
    let current = || std::fs::read_to_string(sandbox.path(".terraform/environment")).unwrap_or_default();
    tf.init(&ctx).await.unwrap();

    tf.select_workspace(&ctx, "staging").await.unwrap();
    assert_eq!(current(), "staging");
    assert!(sandbox.path("terraform.tfstate.d/staging").is_dir());
    tf.select_workspace(&ctx, "default").await.unwrap();
    assert_eq!(current(), "default");
    tf.select_workspace(&ctx, "staging").await.unwrap();
    assert_eq!(current(), "staging");

    let stdout = texts(&h.lines(), Stream::Stdout).join("\n");
    assert_eq!(stdout.matches("Created and switched to workspace \"staging\"").count(), 1, "{stdout}");
    assert_eq!(stdout.matches("Switched to workspace \"staging\"").count(), 1, "{stdout}");

    // Applies in a workspace land in its own state.
    let plan_file = sandbox.path("plan.tfplan");
    tf.plan(&ctx, &plan_file, false).await.unwrap();
    tf.apply(&ctx, &plan_file).await.unwrap();
    assert!(sandbox.path("terraform.tfstate.d/staging/terraform.tfstate").is_file());
    assert!(!sandbox.path("terraform.tfstate").exists());
}

#[tokio::test]
async fn provisioner_output_and_errors_reach_the_channel() {
    let sandbox = Sandbox::stack(
        r#"
resource "terraform_data" "talk" {
  provisioner "local-exec" {
    command = "printf 'hello\\nmanifest=%s var=%s\\nno newline' \"$${CARGO_MANIFEST_DIR-unset}\" \"$TF_VAR_who\""
  }
}
resource "terraform_data" "fail" {
  depends_on = [terraform_data.talk]
  provisioner "local-exec" {
    command = "exit 3"
  }
}
"#,
    );
    let tf = sandbox.terraform();
    let h = Harness::new();
    let dir = sandbox.dir();
    // The test process has CARGO_MANIFEST_DIR; terraform and its provisioners must not.
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    let extra = env(&[("TF_VAR_who", "passed")]);
    let ctx = h.at(&dir, &extra);
    let plan_file = sandbox.path("plan.tfplan");
    tf.init(&ctx).await.unwrap();
    tf.plan(&ctx, &plan_file, false).await.unwrap();
    h.lines();

    let err = tf.apply(&ctx, &plan_file).await.unwrap_err();
    assert!(
        matches!(&err, TerraformError::Failed { exit: Exit::Code(1), command } if command.starts_with("terraform apply")),
        "{err:?}"
    );
    assert_eq!(err.code(), "terraform.failed");

    let lines = h.lines();
    let stdout = texts(&lines, Stream::Stdout);
    for want in ["hello", "manifest=unset var=passed", "no newline"] {
        let line = format!("terraform_data.talk (local-exec): {want}");
        assert!(stdout.contains(&line.as_str()), "missing {line:?} in {stdout:#?}");
    }
    let stderr = texts(&lines, Stream::Stderr);
    assert!(stderr.contains(&"Error: local-exec provisioner error"), "{stderr:#?}");
    // The user's CLI config is never read, so terraform never complains about it.
    assert!(!lines.iter().any(|l| l.text.contains("CLI configuration")), "{lines:#?}");
}

#[tokio::test]
async fn cancelling_an_apply_interrupts_terraform_and_its_provisioner() {
    let sandbox = Sandbox::stack(SLOW_APPLY);
    let tf = sandbox.terraform();
    let h = Harness::new();
    let dir = sandbox.dir();
    let ctx = h.at(&dir, &[]);
    let plan_file = sandbox.path("plan.tfplan");
    tf.init(&ctx).await.unwrap();
    tf.plan(&ctx, &plan_file, false).await.unwrap();

    let canceller = async {
        let pid = wait_for_pid(&sandbox.path("pid")).await;
        h.cancel.cancel();
        (pid, Instant::now())
    };
    let (result, (pid, cancelled_at)) = tokio::join!(tf.apply(&ctx, &plan_file), canceller);
    let took = cancelled_at.elapsed();
    assert!(took < ctx.grace, "took {took:?}");
    let err = result.unwrap_err();
    assert!(matches!(&err, TerraformError::Interrupted { .. }), "{err:?}");
    assert_eq!(err.code(), "terraform.interrupted");
    wait_until_gone(pid).await;

    let stdout = texts(&h.lines(), Stream::Stdout).join("\n");
    assert!(stdout.contains("Interrupt received."), "{stdout}");
    // Terraform stopped cleanly: it released its lock.
    assert!(!sandbox.path(".terraform.tfstate.lock.info").exists());

    // A cancelled token stops the next command before it starts.
    let err = tf.plan(&ctx, &plan_file, false).await.unwrap_err();
    assert!(matches!(&err, TerraformError::Interrupted { .. }), "{err:?}");
    assert!(h.lines().is_empty());
}

#[tokio::test]
async fn dropping_an_apply_kills_terraform_and_its_provisioner() {
    let sandbox = Sandbox::stack(
        r#"
resource "terraform_data" "slow" {
  provisioner "local-exec" {
    command = "echo $PPID > tfpid; echo $$ > pid; exec sleep 30"
  }
}
"#,
    );
    let tf = sandbox.terraform();
    let h = Harness::new();
    let dir = sandbox.dir();
    let ctx = h.at(&dir, &[]);
    let plan_file = sandbox.path("plan.tfplan");
    tf.init(&ctx).await.unwrap();
    tf.plan(&ctx, &plan_file, false).await.unwrap();

    let pid_file = sandbox.path("pid");
    let pid = tokio::select! {
        result = tf.apply(&ctx, &plan_file) => panic!("apply finished early: {result:?}"),
        pid = wait_for_pid(&pid_file) => pid,
    };
    let terraform_pid = wait_for_pid(&sandbox.path("tfpid")).await;
    wait_until_gone(pid).await;
    wait_until_gone(terraform_pid).await;
}

#[tokio::test]
async fn each_command_reports_the_group_its_provisioners_run_in() {
    let sandbox = Sandbox::stack(
        r#"
resource "terraform_data" "slow" {
  provisioner "local-exec" {
    command = "echo $PPID > tfpid; echo $$ > pid; exec sleep 30"
  }
}
"#,
    );
    let tf = sandbox.terraform();
    let h = Harness::new();
    let dir = sandbox.dir();
    let groups = Mutex::new(Vec::new());
    let record = |pgid: u32| groups.lock().unwrap().push(i32::try_from(pgid).unwrap());
    let ctx = Invocation { on_spawn: Some(&record), ..h.at(&dir, &[]) };
    let plan_file = sandbox.path("plan.tfplan");
    tf.init(&ctx).await.unwrap();
    tf.plan(&ctx, &plan_file, false).await.unwrap();
    assert_eq!(groups.lock().unwrap().len(), 2);

    let watcher = async {
        let sleep = wait_for_pid(&sandbox.path("pid")).await;
        let terraform = wait_for_pid(&sandbox.path("tfpid")).await;
        // Read while the provisioner runs; cancelling then ends the apply.
        let sleep_group = getpgid(Some(Pid::from_raw(sleep))).unwrap().as_raw();
        h.cancel.cancel();
        (terraform, sleep_group)
    };
    let (result, (terraform, sleep_group)) = tokio::join!(tf.apply(&ctx, &plan_file), watcher);
    assert!(matches!(result, Err(TerraformError::Interrupted { .. })), "{result:?}");
    let groups = groups.lock().unwrap();
    assert_eq!(groups.len(), 3);
    // Terraform leads the group it was reported as, and the provisioner's shell is in it.
    assert_eq!((groups[2], sleep_group), (terraform, terraform));
    assert!(groups[..2].iter().all(|&group| group > 1 && group != terraform), "{groups:?}");
}

#[tokio::test]
async fn a_held_state_lock_is_reported_with_its_id() {
    let sandbox = Sandbox::stack(SLOW_APPLY);
    let tf = sandbox.terraform();
    let h = Harness::new();
    let dir = sandbox.dir();
    let ctx = h.at(&dir, &[]);
    let plan_file = sandbox.path("plan.tfplan");
    tf.init(&ctx).await.unwrap();
    tf.plan(&ctx, &plan_file, false).await.unwrap();

    // A second caller with its own channel and token plans while the apply holds the lock.
    let other = Harness::new();
    let other_ctx = other.at(&dir, &[]);
    let second = async {
        wait_for_pid(&sandbox.path("pid")).await;
        let info = std::fs::read_to_string(sandbox.path(".terraform.tfstate.lock.info")).unwrap();
        let held: serde_json::Value = serde_json::from_str(&info).unwrap();
        let planned = tf.plan(&other_ctx, &sandbox.path("other.tfplan"), false).await;
        let unlocked = match &planned {
            Err(TerraformError::StateLocked { lock_id: Some(id) }) => Some(tf.force_unlock(&other_ctx, id).await),
            _ => None,
        };
        h.cancel.cancel();
        (held, planned, unlocked)
    };
    let (applied, (held, planned, unlocked)) = tokio::join!(tf.apply(&ctx, &plan_file), second);
    assert!(matches!(applied, Err(TerraformError::Interrupted { .. })), "{applied:?}");

    let err = planned.unwrap_err();
    let TerraformError::StateLocked { lock_id: Some(id) } = &err else { panic!("{err:?}") };
    assert_eq!(held["ID"], id.as_str());
    assert_eq!(err.code(), "terraform.state_locked");
    assert_eq!(err.http_status(), 423);
    assert!(err.help().contains(id.as_str()), "{}", err.help());

    // The local backend refuses to unlock a lock another live process holds.
    let unlock_err = unlocked.unwrap().unwrap_err();
    assert!(matches!(unlock_err, TerraformError::Failed { exit: Exit::Code(1), .. }), "{unlock_err:?}");
}

#[tokio::test]
async fn failures_carry_the_command_and_exit_code() {
    let sandbox = Sandbox::stack("resource \"terraform_data\" \"broken\" {\n");
    let tf = sandbox.terraform();
    let h = Harness::new();
    let dir = sandbox.dir();
    let ctx = h.at(&dir, &[]);

    let err = tf.init(&ctx).await.unwrap_err();
    assert!(
        matches!(&err, TerraformError::Failed { command, exit: Exit::Code(1) } if command == "terraform init -input=false -no-color"),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "`terraform init -input=false -no-color` failed with exit code 1");
    let stderr = texts(&h.lines(), Stream::Stderr).join("\n");
    assert!(stderr.contains("Unclosed configuration block"), "{stderr}");

    // A stack that initializes but does not plan: -detailed-exitcode gives 1 for errors.
    sandbox.write("main.tf", "output \"x\" {\n  value = var.missing\n}\n");
    tf.init(&ctx).await.unwrap();
    let err = tf.plan(&ctx, &sandbox.path("plan.tfplan"), false).await.unwrap_err();
    assert!(matches!(&err, TerraformError::Failed { exit: Exit::Code(1), .. }), "{err:?}");
    assert!(!sandbox.path("plan.tfplan").exists());

    // Reading a plan that does not exist fails the same way, not as bad JSON.
    let err = tf.show_plan(&ctx, &sandbox.path("plan.tfplan")).await.unwrap_err();
    assert!(matches!(&err, TerraformError::Failed { exit: Exit::Code(1), .. }), "{err:?}");
}

#[tokio::test]
async fn a_missing_binary_is_named() {
    let sandbox = Sandbox::new();
    let tf = Terraform::new("plinth-no-such-terraform", sandbox.env.clone());
    let h = Harness::new();
    let dir = sandbox.dir();
    let err = tf.version(&h.at(&dir, &[])).await.unwrap_err();
    assert!(matches!(&err, TerraformError::NotFound { binary } if binary == "plinth-no-such-terraform"), "{err:?}");
    assert_eq!(err.code(), "terraform.not_found");
    assert!(err.to_string().contains("plinth-no-such-terraform"));
    assert!(err.help().contains("plinth.toml") && err.help().contains("PATH"));

    let tf = sandbox.terraform();
    let missing = sandbox.path("nope");
    let err = tf.init(&h.at(&missing, &[])).await.unwrap_err();
    assert!(matches!(&err, TerraformError::NoDir { dir } if *dir == missing), "{err:?}");
}

#[tokio::test]
async fn the_version_is_read_from_json() {
    let sandbox = Sandbox::new();
    let tf = sandbox.terraform();
    let h = Harness::new();
    let dir = sandbox.dir();
    let version = tf.version(&h.at(&dir, &[])).await.unwrap();
    assert!(version.starts_with("1."), "{version}");
    assert_eq!(texts(&h.lines(), Stream::Stdout), ["$ terraform version -json"]);

    // A binary that prints something else is caught.
    let fake = Terraform::new("echo", sandbox.env.clone());
    let err = fake.version(&h.at(&dir, &[])).await.unwrap_err();
    assert!(matches!(&err, TerraformError::BadJson { .. }), "{err:?}");
}

/// Prints the secret in two writes of one line, and in base64. (Terraform drops provisioner
/// lines longer than 64 KiB itself, so a value split at the reader's piece boundary is covered by
/// the unit tests of the sink.)
const PRINTS_A_SECRET: &str = r#"
resource "terraform_data" "leak" {
  provisioner "local-exec" {
    command = "printf 'half=%s' \"$(printf %s \"$TOKEN\" | cut -c1-9)\"; printf '%s-end\\n' \"$(printf %s \"$TOKEN\" | cut -c10-)\"; printf %s \"$TOKEN\" | base64"
  }
}
"#;

#[tokio::test]
async fn a_redactor_masks_secrets_even_across_reads() {
    // No hex digits: terraform_data ids are random UUIDs, and a five-character run of a hex
    // secret turns up in one of them now and then (`-abcd` did), failing the check below for
    // a leak that is not one.
    const TOKEN: &str = "tok-ghijklmnop-qrstuv";
    let sandbox = Sandbox::stack(PRINTS_A_SECRET);
    let tf = sandbox.terraform();
    let h = Harness::new();
    let dir = sandbox.dir();
    let extra = env(&[("TOKEN", TOKEN)]);
    let redactor = plinth_core::redact::Redactor::new([TOKEN]).unwrap();
    let ctx = Invocation { redactor: Some(&redactor), ..h.at(&dir, &extra) };
    let plan_file = sandbox.path("plan.tfplan");
    tf.init(&ctx).await.unwrap();
    tf.plan(&ctx, &plan_file, false).await.unwrap();
    tf.apply(&ctx, &plan_file).await.unwrap();

    let lines = h.lines();
    let out = texts(&lines, Stream::Stdout);
    assert!(out.iter().any(|l| l.ends_with("(local-exec): half=***-end")), "{out:?}");
    assert!(out.iter().any(|l| l.ends_with("(local-exec): ***")), "the base64 line: {out:?}");
    for line in &lines {
        for window in TOKEN.as_bytes().windows(5) {
            let fragment = std::str::from_utf8(window).unwrap();
            assert!(!line.text.contains(fragment), "`{fragment}` of the secret shows in {:?}", line.text);
        }
    }
}
