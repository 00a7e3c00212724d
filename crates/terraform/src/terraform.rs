//! The [`Terraform`] driver: one method per terraform command plinth runs, each streaming
//! terraform's output to the caller and turning its exit into a typed result.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use plinth_core::redact::{Redactor, StreamRedactor};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::error::TerraformError;
use crate::plan::{PlanOutcome, PlanSummary};
use crate::process::{self, Ending, EnvNames, Exit, MAX_LINE, OutputLine, ProcessError, ProcessSpec, Sink, Stream};
use crate::validate::Validation;

/// A terraform binary and the environment every run of it gets (see [`crate::base_env`]).
#[derive(Clone)]
pub struct Terraform {
    binary: String,
    env: Vec<(String, String)>,
}

impl fmt::Debug for Terraform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Terraform").field("binary", &self.binary).field("env", &EnvNames(&self.env)).finish()
    }
}

/// Where and how one command runs: the stack directory, environment on top of the base one
/// (credentials, `TF_VAR_*`; later entries win), where output lines go, and how to stop it.
///
/// The futures of the calls that take it must be polled on a runtime's worker threads, never
/// in `spawn_blocking`: see [`process::run`].
pub struct Invocation<'a> {
    pub dir: &'a Path,
    pub extra_env: &'a [(String, String)],
    pub output: &'a UnboundedSender<OutputLine>,
    pub cancel: &'a CancellationToken,
    /// How long terraform gets to stop after SIGINT before its process group is killed.
    pub grace: Duration,
    /// Given the process group id of each terraform process as soon as it has started, before
    /// any of its output is read. If this process is killed mid-run, terraform dies with it but
    /// what terraform started (providers, provisioners) does not: record the id, forget it
    /// when the call returns, and pass the ones still recorded at start-up to
    /// [`crate::kill_group`]. Called on the thread that polls the call: keep it quick.
    pub on_spawn: Option<&'a (dyn Fn(u32) + Send + Sync)>,
    /// Masks secret values in everything sent to `output`, even when a value is split between
    /// two reads. The JSON that `show` and `output` capture is not masked: it is parsed, and
    /// what the caller shows of it is the caller's to mask.
    pub redactor: Option<&'a Redactor>,
}

impl fmt::Debug for Invocation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Invocation")
            .field("dir", &self.dir)
            .field("extra_env", &EnvNames(self.extra_env))
            .field("cancelled", &self.cancel.is_cancelled())
            .field("grace", &self.grace)
            .field("on_spawn", &self.on_spawn.is_some())
            .field("redactor", &self.redactor)
            .finish_non_exhaustive()
    }
}

/// Whether terraform's stdout goes to the output channel or is kept for parsing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stdout {
    Forward,
    Capture,
}

/// What a finished command left behind.
struct Ran {
    command: String,
    exit: Exit,
    interrupted: bool,
    lock: LockScan,
    stdout: Vec<u8>,
}

impl Terraform {
    /// `binary` is a name looked up on the `PATH` of `env`, or a path.
    pub fn new(binary: impl Into<String>, env: Vec<(String, String)>) -> Self {
        Self { binary: binary.into(), env }
    }

    pub fn binary(&self) -> &str {
        &self.binary
    }

    /// The terraform version, such as `1.11.4` (`terraform version -json`).
    pub async fn version(&self, ctx: &Invocation<'_>) -> Result<String, TerraformError> {
        let ran = self.run(ctx, &["version", "-json"], Stdout::Capture).await?;
        ran.check(&[0])?;
        let json: serde_json::Value = parse_json(&ran)?;
        match json.get("terraform_version").and_then(serde_json::Value::as_str) {
            Some(version) => Ok(version.to_owned()),
            None => {
                Err(TerraformError::BadJson { command: ran.command, reason: "no `terraform_version` field".into() })
            }
        }
    }

    /// `terraform init -input=false -no-color`.
    pub async fn init(&self, ctx: &Invocation<'_>) -> Result<(), TerraformError> {
        self.run(ctx, &["init", "-input=false", "-no-color"], Stdout::Forward).await?.check(&[0]).map(drop)
    }

    /// Selects the workspace `name`, creating it first if it does not exist.
    pub async fn select_workspace(&self, ctx: &Invocation<'_>, name: &str) -> Result<(), TerraformError> {
        let args = ["workspace", "select", "-or-create", "-no-color", "--", name];
        self.run(ctx, &args, Stdout::Forward).await?.check(&[0]).map(drop)
    }

    /// Plans into `plan_file` (a plan to destroy everything if `destroy`), and says whether
    /// there is anything to do.
    pub async fn plan(
        &self,
        ctx: &Invocation<'_>,
        plan_file: &Path,
        destroy: bool,
    ) -> Result<PlanOutcome, TerraformError> {
        let out = format!("-out={}", plan_file.display());
        let mut args = vec!["plan", "-input=false", "-no-color", "-detailed-exitcode", &out];
        if destroy {
            args.push("-destroy");
        }
        let code = self.run(ctx, &args, Stdout::Forward).await?.check(&[0, 2])?;
        Ok(if code == 2 { PlanOutcome::Changes } else { PlanOutcome::NoChanges })
    }

    /// Reads a saved plan (`terraform show -json`). The JSON holds planned values, which may be
    /// sensitive, so it never reaches the output channel; a one-line summary does.
    pub async fn show_plan(&self, ctx: &Invocation<'_>, plan_file: &Path) -> Result<PlanSummary, TerraformError> {
        let file = plan_file.to_string_lossy();
        let ran = self.run(ctx, &["show", "-json", "-no-color", "--", &file], Stdout::Capture).await?;
        ran.check(&[0])?;
        let summary = crate::plan::summarize(&ran.stdout)
            .map_err(|e| TerraformError::BadJson { command: ran.command.clone(), reason: e.to_string() })?;
        let _ = ctx.output.send(OutputLine::stdout(summary.to_string()));
        Ok(summary)
    }

    /// Applies a saved plan. A saved plan is the approval, so no `-auto-approve` is needed.
    pub async fn apply(&self, ctx: &Invocation<'_>, plan_file: &Path) -> Result<(), TerraformError> {
        let file = plan_file.to_string_lossy();
        let args = ["apply", "-input=false", "-no-color", "--", &file];
        self.run(ctx, &args, Stdout::Forward).await?.check(&[0]).map(drop)
    }

    /// The root module's outputs as `terraform output -json` gives them: an object of
    /// `{ "value", "type", "sensitive" }` by name. Sensitive values are included, so none of
    /// it reaches the output channel.
    pub async fn outputs(&self, ctx: &Invocation<'_>) -> Result<serde_json::Value, TerraformError> {
        let ran = self.run(ctx, &["output", "-json", "-no-color"], Stdout::Capture).await?;
        ran.check(&[0])?;
        parse_json(&ran)
    }

    /// Rewrites the `.tf` files of the directory (not its subdirectories) in terraform's
    /// canonical layout (`terraform fmt -no-color -list=false`).
    pub async fn fmt(&self, ctx: &Invocation<'_>) -> Result<(), TerraformError> {
        self.run(ctx, &["fmt", "-no-color", "-list=false"], Stdout::Forward).await?.check(&[0]).map(drop)
    }

    /// Checks the configuration (`terraform validate -json -no-color`) after `init`. An invalid
    /// configuration is not an error here: the diagnostics are in the answer. The JSON is
    /// captured, not forwarded; a one-line verdict is.
    pub async fn validate(&self, ctx: &Invocation<'_>) -> Result<Validation, TerraformError> {
        let ran = self.run(ctx, &["validate", "-json", "-no-color"], Stdout::Capture).await?;
        ran.check(&[0, 1])?;
        let validation = crate::validate::parse_validation(&ran.stdout)
            .map_err(|e| TerraformError::BadJson { command: ran.command.clone(), reason: e.to_string() })?;
        let errors = validation.errors().count();
        let verdict = if validation.valid {
            "The configuration is valid.".to_owned()
        } else {
            format!("The configuration is not valid: {errors} error{}.", if errors == 1 { "" } else { "s" })
        };
        let _ = ctx.output.send(OutputLine::stdout(verdict));
        Ok(validation)
    }

    /// Releases the state lock `lock_id` (`terraform force-unlock -force`).
    pub async fn force_unlock(&self, ctx: &Invocation<'_>, lock_id: &str) -> Result<(), TerraformError> {
        let args = ["force-unlock", "-force", "-no-color", "--", lock_id];
        self.run(ctx, &args, Stdout::Forward).await?.check(&[0]).map(drop)
    }

    async fn run(&self, ctx: &Invocation<'_>, args: &[&str], stdout: Stdout) -> Result<Ran, TerraformError> {
        let command = self.command_line(args);
        if ctx.cancel.is_cancelled() {
            return Err(TerraformError::Interrupted { command });
        }
        let _ = ctx.output.send(OutputLine::stdout(format!("$ {command}")));
        debug!(command = %command, dir = %ctx.dir.display(), "Running terraform.");

        let spec = ProcessSpec {
            program: self.binary.clone(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            dir: ctx.dir.to_owned(),
            env: self.env.iter().chain(ctx.extra_env).cloned().collect(),
        };
        let redacting = ctx.redactor.filter(|r| !r.is_empty()).map(|r| [RedactedLines::new(r), RedactedLines::new(r)]);
        let mut sink =
            TerraformSink { output: ctx.output, stdout, captured: Vec::new(), lock: LockScan::default(), redacting };
        let finished = process::run_with(&spec, &mut sink, ctx.cancel, ctx.grace, ctx.on_spawn).await;
        // Whatever was held back waiting to see if it was a secret goes out now, masked.
        sink.finish();
        let finished = finished.map_err(|e| match e {
            ProcessError::NotFound { program } => TerraformError::NotFound { binary: program },
            ProcessError::NoDir { dir } => TerraformError::NoDir { dir },
            e @ (ProcessError::Spawn { .. } | ProcessError::Wait { .. }) => {
                TerraformError::Start { command: command.clone(), reason: e.to_string() }
            }
        })?;
        debug!(command = %command, exit = %finished.exit, ending = ?finished.ending, "Terraform finished.");
        if finished.ending == Ending::Killed {
            return Err(TerraformError::Killed { command, grace: ctx.grace });
        }
        Ok(Ran {
            command,
            exit: finished.exit,
            interrupted: finished.ending == Ending::Interrupted,
            lock: sink.lock,
            stdout: sink.captured,
        })
    }

    /// The command as a person would type it, for logs and errors.
    fn command_line(&self, args: &[&str]) -> String {
        let name = Path::new(&self.binary)
            .file_name()
            .map_or_else(|| self.binary.clone(), |n| n.to_string_lossy().into_owned());
        std::iter::once(name.as_str()).chain(args.iter().copied()).map(shell_quote).collect::<Vec<_>>().join(" ")
    }
}

impl Ran {
    /// The exit code if it is one of `ok`. An exit code that means success wins over an
    /// interrupt that came too late to stop the work.
    fn check(&self, ok: &[i32]) -> Result<i32, TerraformError> {
        match self.exit {
            Exit::Code(code) if ok.contains(&code) => Ok(code),
            _ if self.interrupted => Err(TerraformError::Interrupted { command: self.command.clone() }),
            _ if self.lock.locked => Err(TerraformError::StateLocked { lock_id: self.lock.lock_id.clone() }),
            exit => Err(TerraformError::Failed { command: self.command.clone(), exit }),
        }
    }
}

fn parse_json(ran: &Ran) -> Result<serde_json::Value, TerraformError> {
    serde_json::from_slice(&ran.stdout)
        .map_err(|e| TerraformError::BadJson { command: ran.command.clone(), reason: e.to_string() })
}

/// Quotes a word for a shell if it needs it, so logged commands can be pasted.
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_=./:,@+%".contains(&b));
    if plain { word.to_owned() } else { format!("'{}'", word.replace('\'', r"'\''")) }
}

/// Sends terraform's output on (masked, when there are secrets), keeps stdout when it is JSON
/// to parse, and watches stderr for the state-lock error.
struct TerraformSink<'a> {
    output: &'a UnboundedSender<OutputLine>,
    stdout: Stdout,
    captured: Vec<u8>,
    lock: LockScan,
    /// One per stream: stdout, stderr.
    redacting: Option<[RedactedLines<'a>; 2]>,
}

impl TerraformSink<'_> {
    fn send(output: &UnboundedSender<OutputLine>, lock: &mut LockScan, stream: Stream, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes).into_owned();
        if stream == Stream::Stderr {
            lock.line(&text);
        }
        let _ = output.send(OutputLine { stream, text });
    }

    fn finish(&mut self) {
        let (output, lock) = (self.output, &mut self.lock);
        if let Some(redacting) = &mut self.redacting {
            for (lines, stream) in redacting.iter_mut().zip([Stream::Stdout, Stream::Stderr]) {
                lines.finish(&mut |bytes| Self::send(output, lock, stream, bytes));
            }
        }
    }
}

impl Sink for TerraformSink<'_> {
    fn chunk(&mut self, stream: Stream, bytes: &[u8], newline: bool) {
        if stream == Stream::Stdout && self.stdout == Stdout::Capture {
            self.captured.extend_from_slice(bytes);
            if newline {
                self.captured.push(b'\n');
            }
            return;
        }
        let (output, lock) = (self.output, &mut self.lock);
        match &mut self.redacting {
            Some(redacting) => {
                let lines = &mut redacting[usize::from(stream == Stream::Stderr)];
                lines.feed(bytes, newline, &mut |bytes| Self::send(output, lock, stream, bytes));
            }
            None => Self::send(output, lock, stream, bytes),
        }
    }
}

/// A stream's lines, masked: bytes go through a [`StreamRedactor`] and come out as lines again
/// (a line longer than [`MAX_LINE`] in pieces, as [`process`] hands them over).
struct RedactedLines<'r> {
    redactor: StreamRedactor<&'r Redactor>,
    line: Vec<u8>,
}

impl<'r> RedactedLines<'r> {
    fn new(redactor: &'r Redactor) -> Self {
        RedactedLines { redactor: StreamRedactor::new(redactor), line: Vec::new() }
    }

    fn feed(&mut self, bytes: &[u8], newline: bool, emit: &mut dyn FnMut(&[u8])) {
        let mut out = self.redactor.push(bytes);
        if newline {
            out.extend(self.redactor.push(b"\n"));
        }
        self.take(&out, emit);
    }

    fn finish(&mut self, emit: &mut dyn FnMut(&[u8])) {
        let out = self.redactor.finish();
        self.take(&out, emit);
        if !self.line.is_empty() {
            emit(&std::mem::take(&mut self.line));
        }
    }

    fn take(&mut self, out: &[u8], emit: &mut dyn FnMut(&[u8])) {
        let mut parts = out.split(|b| *b == b'\n').peekable();
        while let Some(part) = parts.next() {
            self.line.extend_from_slice(part);
            while self.line.len() > MAX_LINE {
                let mut cut = MAX_LINE;
                cut -= process::incomplete_utf8_tail(&self.line[..cut]);
                let rest = self.line.split_off(cut);
                emit(&std::mem::replace(&mut self.line, rest));
            }
            if parts.peek().is_some() {
                emit(&std::mem::take(&mut self.line));
            }
        }
    }
}

/// Recognizes terraform's "Error acquiring the state lock" diagnostic and the lock ID in the
/// "Lock Info:" block that follows it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct LockScan {
    pub(crate) locked: bool,
    pub(crate) lock_id: Option<String>,
}

impl LockScan {
    pub(crate) fn line(&mut self, line: &str) {
        if !self.locked {
            self.locked = line.contains("Error acquiring the state lock");
            return;
        }
        if self.lock_id.is_some() {
            return;
        }
        // With colour, diagnostic lines start with a box-drawing bar.
        let line = line.trim_start_matches(|c: char| c == '│' || c.is_whitespace());
        if let Some(id) = line.strip_prefix("ID:") {
            let id = id.trim();
            if !id.is_empty() {
                self.lock_id = Some(id.to_owned());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_can_be_spawned_on_a_multi_thread_runtime() {
        // Futures that are never polled start nothing.
        fn send<T: Send>(_: T) {}
        let tf = Terraform::new("terraform", vec![]);
        let (output, _rx) = tokio::sync::mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let on_spawn = |_: u32| {};
        let ctx = Invocation {
            dir: Path::new("."),
            extra_env: &[],
            output: &output,
            cancel: &cancel,
            grace: Duration::ZERO,
            on_spawn: Some(&on_spawn),
            redactor: None,
        };
        send(tf.plan(&ctx, Path::new("p"), false));
        send(tf.apply(&ctx, Path::new("p")));
        let spec = ProcessSpec { program: "true".into(), args: vec![], dir: ".".into(), env: vec![] };
        send(process::run(&spec, &output, &cancel, Duration::ZERO, Some(&on_spawn)));
    }

    /// Feeds `pieces` (bytes, newline) through a `RedactedLines` and returns the lines it emits.
    fn redacted(redactor: &Redactor, pieces: &[(&[u8], bool)]) -> Vec<Vec<u8>> {
        let mut lines = RedactedLines::new(redactor);
        let mut out = Vec::new();
        for (bytes, newline) in pieces {
            lines.feed(bytes, *newline, &mut |line| out.push(line.to_vec()));
        }
        lines.finish(&mut |line| out.push(line.to_vec()));
        out
    }

    #[test]
    fn a_value_across_the_piece_boundary_of_a_long_line_is_masked() {
        let secret = "tok-0123456789-abcdef";
        let redactor = Redactor::new([secret]).unwrap();
        // The reader hands a long line over in MAX_LINE pieces; put the value across the cut.
        for at in 1..secret.len() {
            let mut line = vec![b'a'; MAX_LINE - at];
            line.extend_from_slice(secret.as_bytes());
            line.extend_from_slice(b" tail");
            let (first, second) = line.split_at(MAX_LINE);
            let out = redacted(&redactor, &[(first, false), (second, true)]);
            let joined: Vec<u8> = out.concat();
            let expected = [vec![b'a'; MAX_LINE - at], b"*** tail".to_vec()].concat();
            assert_eq!(joined, expected, "value at {at} bytes before the cut");
            assert!(out.iter().all(|l| l.len() <= MAX_LINE));
        }
    }

    #[test]
    fn lines_without_a_pending_value_come_out_at_once_and_in_order() {
        let redactor = Redactor::new(["tok-0123456789"]).unwrap();
        let mut lines = RedactedLines::new(&redactor);
        let mut out: Vec<Vec<u8>> = Vec::new();
        lines.feed(b"one", true, &mut |l| out.push(l.to_vec()));
        assert_eq!(out, [b"one".to_vec()]);
        lines.feed(b"a tok-0123456789 b", true, &mut |l| out.push(l.to_vec()));
        lines.feed(b"last, no newline", false, &mut |l| out.push(l.to_vec()));
        lines.finish(&mut |l| out.push(l.to_vec()));
        assert_eq!(out, [b"one".to_vec(), b"a *** b".to_vec(), b"last, no newline".to_vec()]);
    }

    fn scan(text: &str) -> LockScan {
        let mut scan = LockScan::default();
        for line in text.lines() {
            scan.line(line);
        }
        scan
    }

    #[test]
    fn the_lock_error_and_its_id_are_recognized() {
        let plain = "\nError: Error acquiring the state lock\n\nError message: resource temporarily unavailable\n\
                     Lock Info:\n  ID:        99a30959-9265-1326-0343-58a6c9d4dea1\n  Path:      terraform.tfstate\n\
                     Operation: OperationTypeApply\n";
        assert_eq!(
            scan(plain),
            LockScan { locked: true, lock_id: Some("99a30959-9265-1326-0343-58a6c9d4dea1".into()) }
        );
        let boxed = "╷\n│ Error: Error acquiring the state lock\n│ \n│ Lock Info:\n│   ID:        abc\n╵\n";
        assert_eq!(scan(boxed), LockScan { locked: true, lock_id: Some("abc".into()) });
        // A lock error without an info block (some backends) still counts.
        assert_eq!(scan("Error: Error acquiring the state lock\n"), LockScan { locked: true, lock_id: None });
        // An `ID:` before the error is not a lock ID.
        assert_eq!(scan("ID: x\nError: something else\n"), LockScan::default());
    }

    #[test]
    fn command_lines_can_be_pasted() {
        let tf = Terraform::new("/usr/local/bin/terraform", vec![]);
        assert_eq!(
            tf.command_line(&["plan", "-out=/tmp/a b/p.tfplan", "--", "it's"]),
            r"terraform plan '-out=/tmp/a b/p.tfplan' -- 'it'\''s'"
        );
    }

    #[test]
    fn debug_hides_environment_values() {
        let tf = Terraform::new("terraform", vec![("TF_VAR_password".into(), "hunter2".into())]);
        let shown = format!("{tf:?}");
        assert!(shown.contains("TF_VAR_password") && !shown.contains("hunter2"), "{shown}");
    }
}
