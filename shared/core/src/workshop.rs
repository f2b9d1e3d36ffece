//! Who may take a seat: the workshop's gate. An optional access code every participant
//! types, an optional list of allowed emails and email domains, and a limit on new
//! seats per client address. The admin sets them on the dashboard; the deployment's
//! parameters give the defaults until then. Pure rules: the values are stored by
//! `lablink-db`, checked by the request route.

use std::fmt;

use crate::config::Settings;
use crate::credential::constant_time_eq;
use crate::domain::Email;

/// Longest access code (it is typed by people).
pub const MAX_ACCESS_CODE: usize = 128;
/// Most entries on a participant list.
pub const MAX_PARTICIPANTS: usize = 10_000;

/// The gate's settings.
#[derive(Clone, PartialEq, Eq)]
pub struct Gate {
    /// Participants must type this (compared in constant time). `None`: no code.
    pub access_code: Option<String>,
    /// Allowed emails and domains. `None`: anyone.
    pub participants: Option<ParticipantList>,
    /// New seats one client address may take within `window_minutes`.
    pub seats_per_address: u32,
    pub window_minutes: u32,
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The code is a shared secret of the room: never in a log line.
        f.debug_struct("Gate")
            .field("access_code", &self.access_code.as_ref().map(|_| "<set>"))
            .field(
                "participants",
                &self.participants.as_ref().map(ParticipantList::len),
            )
            .field("seats_per_address", &self.seats_per_address)
            .field("window_minutes", &self.window_minutes)
            .finish()
    }
}

/// Defaults: no code, anyone, 100 new seats per address per 10 minutes (a class
/// behind one NAT fits).
pub const DEFAULT_SEATS_PER_ADDRESS: u32 = 100;
pub const DEFAULT_WINDOW_MINUTES: u32 = 10;

impl Default for Gate {
    fn default() -> Self {
        Self {
            access_code: None,
            participants: None,
            seats_per_address: DEFAULT_SEATS_PER_ADDRESS,
            window_minutes: DEFAULT_WINDOW_MINUTES,
        }
    }
}

/// Why the gate refuses a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No code typed while one is required, or the wrong one.
    AccessCode,
    /// The email is not on the participant list.
    NotListed,
}

impl Gate {
    /// The deployment's defaults: `LABLINK_WORKSHOP_ACCESS_CODE`,
    /// `LABLINK_WORKSHOP_PARTICIPANTS` (emails and domains, separated by commas, spaces
    /// or new lines), `LABLINK_SEATS_PER_ADDRESS` (1..100000, default 100),
    /// `LABLINK_SEATS_WINDOW_MINUTES` (1..1440, default 10).
    pub fn read(s: &mut Settings) -> Self {
        let access_code = s.optional_with(
            "LABLINK_WORKSHOP_ACCESS_CODE",
            "1 to 128 visible characters",
            |v| parse_access_code(v).map(|c| c.unwrap_or_default()),
        );
        let participants = s.optional_with(
            "LABLINK_WORKSHOP_PARTICIPANTS",
            "emails and domains (name@example.org, @example.org) separated by commas or spaces",
            ParticipantList::parse,
        );
        Self {
            access_code: access_code.filter(|c| !c.is_empty()),
            participants: participants.filter(|p| !p.is_empty()),
            seats_per_address: s.ranged("LABLINK_SEATS_PER_ADDRESS", DEFAULT_SEATS_PER_ADDRESS, 1, 100_000),
            window_minutes: s.ranged("LABLINK_SEATS_WINDOW_MINUTES", DEFAULT_WINDOW_MINUTES, 1, 1440),
        }
    }

    /// Whether this participant may ask for a seat at all (before any limit).
    pub fn admits(&self, typed_code: &str, email: &Email) -> Result<(), Refusal> {
        if let Some(code) = &self.access_code
            && !constant_time_eq(typed_code.trim().as_bytes(), code.as_bytes())
        {
            return Err(Refusal::AccessCode);
        }
        if let Some(list) = &self.participants
            && !list.contains(email)
        {
            return Err(Refusal::NotListed);
        }
        Ok(())
    }

    /// Whether the form must show the access code field.
    pub fn wants_code(&self) -> bool {
        self.access_code.is_some()
    }
}

/// An access code as the admin typed it: trimmed, visible characters and spaces only.
/// Empty: no code.
pub fn parse_access_code(v: &str) -> Result<Option<String>, String> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(None);
    }
    if v.chars().count() > MAX_ACCESS_CODE {
        return Err(format!(
            "the access code is longer than {MAX_ACCESS_CODE} characters"
        ));
    }
    if v.chars().any(char::is_control) {
        return Err("the access code must not contain control characters".into());
    }
    Ok(Some(v.to_owned()))
}

/// Allowed participants: whole emails (`name@example.org`) and domains (`@example.org`:
/// every address at exactly that domain; the `@` is required, so a CSV's other columns,
/// such as an affiliation `example.org`, never open a whole domain). Lower-case,
/// sorted, unique.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParticipantList(Vec<String>);

impl ParticipantList {
    /// A pasted list or a CSV's text: entries separated by commas, semicolons, tabs,
    /// spaces or new lines; quotes are dropped; cells without an `@` (a header, names,
    /// numbers, affiliations in a CSV's other columns) are skipped. A cell with an `@`
    /// that is not a valid email or `@domain` is an error naming it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for cell in text.split([',', ';', '\t', ' ', '\n', '\r']) {
            let cell = cell.trim().trim_matches(['"', '\'']).trim();
            if cell.is_empty() {
                continue;
            }
            if let Some(domain) = cell.strip_prefix('@') {
                out.push(format!("@{}", parse_domain(domain).ok_or_else(|| bad(cell))?));
            } else if cell.contains('@') {
                out.push(Email::parse(cell).map_err(|_| bad(cell))?.as_str().to_owned());
            }
        }
        out.sort();
        out.dedup();
        if out.len() > MAX_PARTICIPANTS {
            return Err(format!(
                "the list has {} entries, more than {MAX_PARTICIPANTS}",
                out.len()
            ));
        }
        Ok(Self(out))
    }

    /// From stored entries (already normalised by [`parse`](Self::parse)).
    pub fn from_stored(entries: Vec<String>) -> Self {
        Self(entries)
    }

    pub fn entries(&self) -> &[String] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The email itself, or its domain, is on the list.
    pub fn contains(&self, email: &Email) -> bool {
        let e = email.as_str();
        let domain = e
            .rsplit_once('@')
            .map(|(_, d)| format!("@{d}"))
            .unwrap_or_default();
        self.0.binary_search_by(|x| x.as_str().cmp(e)).is_ok()
            || self.0.binary_search_by(|x| x.as_str().cmp(&domain)).is_ok()
    }

    /// One entry per line (the dashboard's text box).
    pub fn to_text(&self) -> String {
        self.0.join("\n")
    }
}

fn bad(cell: &str) -> String {
    let shown: String = cell.chars().take(80).collect();
    format!("{shown:?} is neither an email (name@example.org) nor a domain (@example.org)")
}

/// A domain as email addresses use it: labels of letters, digits and dashes.
fn parse_domain(d: &str) -> Option<String> {
    let d = d.trim().to_lowercase();
    let ok = !d.is_empty()
        && d.len() <= 253
        && d.contains('.')
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    ok.then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email(s: &str) -> Email {
        Email::parse(s).unwrap()
    }

    #[test]
    fn a_csv_export_becomes_emails_and_domains() {
        let csv = "Name,Email,Score,Affiliation\n\"Dr. Ada L\",ADA@Uni.edu,3.5,uni.edu\nBob,bob@lab.org,4\n@staff.example.org\n@Partner.org\n";
        let list = ParticipantList::parse(csv).unwrap();
        assert_eq!(
            list.entries(),
            ["@partner.org", "@staff.example.org", "ada@uni.edu", "bob@lab.org"]
        );
        assert!(
            !list.contains(&email("eve@uni.edu")),
            "a bare domain cell opens nothing"
        );
        assert!(list.contains(&email("Ada@uni.edu")));
        assert!(list.contains(&email("anyone@partner.org")));
        assert!(
            !list.contains(&email("anyone@sub.partner.org")),
            "exactly that domain"
        );
        assert!(!list.contains(&email("eve@uni.edu")));
    }

    #[test]
    fn a_malformed_entry_is_named() {
        let err = ParticipantList::parse("ok@lab.org, broken@@x").unwrap_err();
        assert!(err.contains("broken@@x"), "{err}");
        assert!(ParticipantList::parse("@not_a_domain").is_err());
        assert!(ParticipantList::parse("").unwrap().is_empty());
    }

    #[test]
    fn the_gate_checks_code_then_list() {
        let gate = Gate {
            access_code: Some("sleap-2026".into()),
            participants: Some(ParticipantList::parse("@lab.org").unwrap()),
            ..Gate::default()
        };
        assert_eq!(gate.admits("", &email("a@lab.org")), Err(Refusal::AccessCode));
        assert_eq!(
            gate.admits("sleap-2025", &email("a@lab.org")),
            Err(Refusal::AccessCode)
        );
        assert_eq!(
            gate.admits(" sleap-2026 ", &email("a@x.org")),
            Err(Refusal::NotListed)
        );
        assert_eq!(gate.admits("sleap-2026", &email("a@lab.org")), Ok(()));
        assert_eq!(Gate::default().admits("", &email("a@x.org")), Ok(()));
        assert!(
            !format!("{gate:?}").contains("sleap"),
            "the code never reaches a log"
        );
    }

    #[test]
    fn defaults_come_from_the_deployment() {
        let mut s = Settings::from_pairs(&[
            ("LABLINK_WORKSHOP_ACCESS_CODE", " room 4 "),
            ("LABLINK_WORKSHOP_PARTICIPANTS", "a@lab.org @uni.edu"),
            ("LABLINK_SEATS_PER_ADDRESS", "30"),
        ]);
        let g = Gate::read(&mut s);
        assert!(!s.has_errors());
        assert_eq!(g.access_code.as_deref(), Some("room 4"));
        assert_eq!(g.participants.unwrap().len(), 2);
        assert_eq!((g.seats_per_address, g.window_minutes), (30, 10));
        let mut s = Settings::from_pairs(&[("LABLINK_SEATS_PER_ADDRESS", "0")]);
        Gate::read(&mut s);
        assert!(s.has_errors());
    }
}
