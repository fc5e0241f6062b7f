//! The commands `ballot dev` takes, one per line, on its standard input or its control port:
//! parsing and the help text. Pure: what a command does is the supervisor's.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// SIGKILL, as in a crash (`--restart-dead` brings the node back).
    Kill(Vec<String>),
    /// SIGTERM and wait; the node stays down until `start`.
    Stop(Vec<String>),
    Start(Vec<String>),
    /// `stop` (if running), then `start`.
    Restart(Vec<String>),
    Status,
    Help,
    /// Stop every node and end `ballot dev`.
    Quit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    Unknown(String),
    /// A node command without a node name.
    NoNode(&'static str),
    UnknownNode {
        name: String,
        known: Vec<String>,
    },
    /// Words after a command that takes none.
    Unexpected {
        command: &'static str,
        word: String,
    },
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::Unknown(word) => write!(
                f,
                "unknown command '{word}'; commands: kill, stop, start, restart, status, help, quit"
            ),
            CommandError::NoNode(command) => {
                write!(
                    f,
                    "{command} needs one or more node names, e.g. '{command} n2'"
                )
            }
            CommandError::UnknownNode { name, known } => {
                write!(f, "no node '{name}'; nodes: {}", known.join(", "))
            }
            CommandError::Unexpected { command, word } => {
                write!(f, "{command} takes no arguments, got '{word}'")
            }
        }
    }
}

pub const HELP: &str = "\
commands (one per line, here or on the control port):
  kill NODE...     SIGKILL, as in a crash; with --restart-dead the node comes back by itself
  stop NODE...     SIGTERM and wait for it to exit; it stays down until 'start'
  start NODE...    start a stopped or dead node from its data directory
  restart NODE...  stop (if running), then start
  status           every node: pid, up or down, role and term, ports
  help             this text
  quit             stop every node and exit (as Ctrl-C or SIGTERM do)";

/// One line: `Ok(None)` for a blank line, else a command whose node names are all in `nodes`.
pub fn parse(line: &str, nodes: &[String]) -> Result<Option<Command>, CommandError> {
    let mut words = line.split_whitespace();
    let Some(verb) = words.next() else {
        return Ok(None);
    };
    let rest: Vec<&str> = words.collect();
    let names = |command: &'static str| -> Result<Vec<String>, CommandError> {
        if rest.is_empty() {
            return Err(CommandError::NoNode(command));
        }
        rest.iter()
            .map(|name| match nodes.iter().any(|known| known == name) {
                true => Ok(name.to_string()),
                false => Err(CommandError::UnknownNode {
                    name: name.to_string(),
                    known: nodes.to_vec(),
                }),
            })
            .collect()
    };
    let alone = |command: &'static str, parsed: Command| match rest.first() {
        None => Ok(parsed),
        Some(word) => Err(CommandError::Unexpected {
            command,
            word: word.to_string(),
        }),
    };
    let command = match verb {
        "kill" => Command::Kill(names("kill")?),
        "stop" => Command::Stop(names("stop")?),
        "start" => Command::Start(names("start")?),
        "restart" => Command::Restart(names("restart")?),
        "status" => alone("status", Command::Status)?,
        "help" => alone("help", Command::Help)?,
        "quit" => alone("quit", Command::Quit)?,
        other => return Err(CommandError::Unknown(other.to_string())),
    };
    Ok(Some(command))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes() -> Vec<String> {
        vec!["n1".into(), "n2".into(), "n3".into()]
    }

    #[test]
    fn node_commands_take_one_or_more_known_names() {
        assert_eq!(
            parse("kill n2", &nodes()),
            Ok(Some(Command::Kill(vec!["n2".into()])))
        );
        assert_eq!(
            parse("  restart n1   n3 ", &nodes()),
            Ok(Some(Command::Restart(vec!["n1".into(), "n3".into()])))
        );
        assert_eq!(parse("status", &nodes()), Ok(Some(Command::Status)));
        assert_eq!(parse("   ", &nodes()), Ok(None));
    }

    #[test]
    fn bad_lines_are_named() {
        assert_eq!(
            parse("stop n9", &nodes()).unwrap_err().to_string(),
            "no node 'n9'; nodes: n1, n2, n3"
        );
        assert_eq!(
            parse("frobnicate n1", &nodes()).unwrap_err().to_string(),
            "unknown command 'frobnicate'; commands: kill, stop, start, restart, status, help, quit"
        );
        assert_eq!(
            parse("start", &nodes()).unwrap_err().to_string(),
            "start needs one or more node names, e.g. 'start n2'"
        );
        assert_eq!(
            parse("status n1", &nodes()).unwrap_err().to_string(),
            "status takes no arguments, got 'n1'"
        );
        assert_eq!(
            parse("KILL n1", &nodes()),
            Err(CommandError::Unknown("KILL".into())),
            "commands are lower case, as printed"
        );
    }
}
