//! The help texts: what `plinth --help` lists is what each subcommand's help says.

/// The subcommands `plinth --help` lists, each with its description on one line.
fn listed(help: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let commands = help.lines().skip_while(|l| *l != "Commands:").skip(1).take_while(|l| !l.is_empty());
    for line in commands {
        // A name starts a new entry; a line without one continues the description above.
        let indent = line.len() - line.trim_start().len();
        match out.last_mut() {
            Some((_, about)) if indent > 2 => {
                about.push(' ');
                about.push_str(line.trim());
            }
            _ => {
                let (name, about) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
                out.push((name.to_owned(), about.trim().to_owned()));
            }
        }
    }
    out
}

#[test]
fn every_subcommand_describes_itself_as_the_list_does() {
    let dir = std::env::temp_dir();
    let top = crate::plinth(&dir, &["--help"]).success();
    let commands = listed(&top.stdout);
    assert!(commands.len() > 20, "{}", top.stdout);
    for (name, about) in commands.iter().filter(|(name, _)| name != "help") {
        let run = crate::plinth(&dir, &[name, "--help"]).success();
        // The description is the first paragraph, wrapped to the terminal's width.
        let first: Vec<&str> = run.stdout.lines().take_while(|l| !l.is_empty()).map(str::trim).collect();
        assert_eq!(&first.join(" "), about, "plinth {name} --help:\n{}", run.stdout);
    }
}
