use std::fmt;

use rand::Rng;

/// The 6-digit PIN a participant types into Chrome Remote Desktop. A fresh one is drawn
/// from the operating system's CSPRNG for every assignment (classic used 123456 for all).
#[derive(Clone, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct Pin(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    #[error("PIN must be exactly 6 digits")]
    BadShape,
}

impl Pin {
    pub fn generate() -> Self {
        let n: u32 = rand::rngs::OsRng.gen_range(0..1_000_000);
        Self(format!("{n:06}"))
    }

    pub fn parse(s: &str) -> Result<Self, PinError> {
        if s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self(s.to_owned()))
        } else {
            Err(PinError::BadShape)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Pin {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Never print a PIN into a log by accident.
impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(******)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn generated_pins_are_six_digits_and_vary() {
        let pins: HashSet<String> = (0..200).map(|_| Pin::generate().as_str().to_owned()).collect();
        assert!(pins.iter().all(|p| Pin::parse(p).is_ok()));
        // 200 draws from a million values: a constant or a tiny range would collapse.
        assert!(pins.len() > 190, "only {} distinct PINs in 200 draws", pins.len());
        assert!(!pins.contains("123456") || pins.len() > 190);
    }

    #[test]
    fn bad_pins_are_refused() {
        for bad in ["", "12345", "1234567", "12a456", " 12345", "١٢٣٤٥٦"] {
            assert_eq!(Pin::parse(bad), Err(PinError::BadShape), "{bad:?}");
        }
        assert_eq!(Pin::parse("012345").unwrap().as_str(), "012345");
    }

    #[test]
    fn debug_output_hides_the_pin() {
        let p = Pin::parse("987654").unwrap();
        assert!(!format!("{p:?}").contains("987654"));
    }
}
