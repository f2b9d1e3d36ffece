//! Reading typed settings from the environment (and, for the local runner, from a map
//! loaded out of a TOML file). A reader collects every problem before failing, so a
//! process that cannot start names all of its bad settings in one line, never panics.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// One bad setting: which variable, what is wrong, what is expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    pub name: String,
    pub problem: String,
    pub expected: String,
}

/// Every bad setting of one process.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError(pub Vec<SettingError>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: ")?;
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, "; ")?;
            }
            write!(f, "{} {} (expected {})", e.name, e.problem, e.expected)?;
        }
        Ok(())
    }
}

/// Where settings come from.
pub struct Settings {
    values: HashMap<String, String>,
    errors: Vec<SettingError>,
}

impl Settings {
    /// The process environment.
    pub fn from_env() -> Self {
        Self::from_map(std::env::vars().collect())
    }

    /// From literal pairs (tests, and the local runner's file).
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        Self::from_map(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    pub fn from_map(values: HashMap<String, String>) -> Self {
        Self {
            values,
            errors: Vec::new(),
        }
    }

    /// The raw value, if set and not empty.
    pub fn raw(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    pub fn report(&mut self, name: &str, problem: impl Into<String>, expected: impl Into<String>) {
        self.errors.push(SettingError {
            name: name.to_owned(),
            problem: problem.into(),
            expected: expected.into(),
        });
    }

    /// A required value parsed with `parse`; a missing or bad one is recorded and
    /// `None` returned so reading can go on and report everything at once.
    pub fn required_with<T, E: fmt::Display>(
        &mut self,
        name: &str,
        expected: &str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Option<T> {
        match self.raw(name).map(str::to_owned) {
            None => {
                self.report(name, "is not set", expected);
                None
            }
            Some(v) => match parse(v.trim()) {
                Ok(t) => Some(t),
                Err(e) => {
                    self.report(name, format!("is invalid: {e}"), expected);
                    None
                }
            },
        }
    }

    pub fn required<T: FromStr>(&mut self, name: &str, expected: &str) -> Option<T>
    where
        T::Err: fmt::Display,
    {
        self.required_with(name, expected, T::from_str)
    }

    /// An optional value; `Ok(None)` when unset, recorded error when set but bad.
    pub fn optional_with<T, E: fmt::Display>(
        &mut self,
        name: &str,
        expected: &str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Option<T> {
        let v = self.raw(name)?.trim().to_owned();
        match parse(&v) {
            Ok(t) => Some(t),
            Err(e) => {
                self.report(name, format!("is invalid: {e}"), expected);
                None
            }
        }
    }

    pub fn optional<T: FromStr>(&mut self, name: &str, expected: &str) -> Option<T>
    where
        T::Err: fmt::Display,
    {
        self.optional_with(name, expected, T::from_str)
    }

    /// A value with a default, checked against an inclusive range.
    pub fn ranged<T>(&mut self, name: &str, default: T, min: T, max: T) -> T
    where
        T: FromStr + PartialOrd + fmt::Display + Copy,
        T::Err: fmt::Display,
    {
        let expected = format!("a number from {min} to {max}");
        match self.optional::<T>(name, &expected) {
            Some(v) if v < min || v > max => {
                self.report(name, format!("is {v}, out of range"), expected);
                default
            }
            Some(v) => v,
            None => default,
        }
    }

    pub fn flag(&mut self, name: &str, default: bool) -> bool {
        self.optional_with(name, "true or false", |v| match v.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err("not a boolean"),
        })
        .unwrap_or(default)
    }

    /// Finish reading: every recorded problem, or the built settings.
    pub fn finish<T>(self, build: impl FnOnce() -> T) -> Result<T, ConfigError> {
        if self.errors.is_empty() {
            Ok(build())
        } else {
            Err(ConfigError(self.errors))
        }
    }

    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }
}

/// For binaries: print the reason in one line and exit non-zero.
pub fn exit_on_error<T>(process: &str, r: Result<T, ConfigError>) -> T {
    match r {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{process}: cannot start: {e}");
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        Settings::from_pairs(pairs)
    }

    #[test]
    fn every_problem_is_reported_at_once_naming_the_variable() {
        let mut s = settings(&[("PORT", "eighty"), ("WAIT", "99999"), ("LEGACY", "maybe")]);
        let port: Option<u16> = s.required("PORT", "a TCP port number");
        let url: Option<String> = s.required("URL", "an http(s) URL");
        let wait = s.ranged::<u64>("WAIT", 25, 1, 900);
        let legacy = s.flag("LEGACY", false);
        assert_eq!((port, url, wait, legacy), (None, None, 25, false));
        let err = s.finish(|| ()).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.0.len(), 4, "{msg}");
        for needle in [
            "PORT is invalid",
            "URL is not set",
            "WAIT is 99999, out of range",
            "LEGACY is invalid",
            "expected a TCP port number",
        ] {
            assert!(msg.contains(needle), "{needle:?} not in {msg}");
        }
        assert!(!msg.contains('\n'), "one line");
    }

    #[test]
    fn good_settings_build() {
        let mut s = settings(&[("PORT", " 8080 "), ("LEGACY", "on"), ("EMPTY", "  ")]);
        let port: Option<u16> = s.required("PORT", "a port");
        let legacy = s.flag("LEGACY", false);
        let empty: Option<String> = s.optional("EMPTY", "anything");
        let built = s.finish(|| (port, legacy, empty)).unwrap();
        assert_eq!(built, (Some(8080), true, None));
    }
}
