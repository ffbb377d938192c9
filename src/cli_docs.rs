//! Shell completions and man pages, generated from each binary's clap
//! definition so they cannot drift from the real options.
//!
//! Every binary answers `--generate bash|zsh|fish` (as its only arguments)
//! by printing that completion file, and `--generate man DIR` by writing its
//! man pages (one per subcommand too) into DIR; `scripts/gen-cli-docs.sh`
//! fills `completions/` and `man/`, and a test checks the files are current.

use clap_complete::Shell;
use std::io::Write;

/// The kinds `--generate` takes.
pub const KINDS: [&str; 4] = ["bash", "zsh", "fish", "man"];

/// If the process was started as `BIN --generate KIND`, print that file for
/// the command `cmd()` builds and return true; otherwise return false so
/// `main` goes on. Checked before clap parses, so required arguments do not
/// get in the way.
pub fn generate_if_asked(cmd: impl FnOnce() -> clap::Command) -> bool {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (kind, dir) = match args.as_slice() {
        [flag, kind] if flag == "--generate" => (kind, None),
        [flag, kind, dir] if flag == "--generate" && kind == "man" => (kind, Some(dir)),
        _ => return false,
    };
    let mut cmd = cmd();
    let name = cmd.get_name().to_string();
    let mut out = Vec::new();
    let shell = match kind.as_str() {
        "bash" => Some(Shell::Bash),
        "zsh" => Some(Shell::Zsh),
        "fish" => Some(Shell::Fish),
        "man" => None,
        _ => {
            eprintln!("{name}: --generate takes one of {}", KINDS.join(", "));
            std::process::exit(1);
        }
    };
    let res = match (shell, dir) {
        (Some(shell), _) => {
            clap_complete::generate(shell, &mut cmd, &name, &mut out);
            Ok(())
        }
        (None, Some(dir)) => clap_mangen::generate_to(cmd, dir),
        (None, None) => Err(std::io::Error::other("--generate man takes a directory")),
    };
    // A closed pipe or a full disk: say so and fail, never panic.
    if let Err(e) = res.and_then(|()| std::io::stdout().write_all(&out)) {
        eprintln!("{name}: --generate {kind}: {e}");
        std::process::exit(1);
    }
    true
}
