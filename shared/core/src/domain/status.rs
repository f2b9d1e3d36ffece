use std::fmt;

/// Lifecycle of a VM as its daemon reports it (seed 003 §6a: initializing → running →
/// error). Classic also accepted "available", "assigned" and "unknown"; those are
/// derived from other columns here, so we parse them for compatibility and map them
/// to the state they imply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmStatus {
    Initializing,
    Running,
    Error,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown VM status {0:?}; expected one of initializing, running, error")]
pub struct VmStatusError(pub String);

impl VmStatus {
    pub const ALL: [VmStatus; 4] = [Self::Initializing, Self::Running, Self::Error, Self::Unknown];

    pub fn parse(s: &str) -> Result<Self, VmStatusError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "initializing" => Ok(Self::Initializing),
            // A VM that is available or assigned is up and serving.
            "running" | "available" | "assigned" => Ok(Self::Running),
            "error" => Ok(Self::Error),
            "unknown" => Ok(Self::Unknown),
            _ => Err(VmStatusError(s.chars().take(40).collect())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Initializing => "initializing",
            Self::Running => "running",
            Self::Error => "error",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for VmStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// GPU health as `nvidia-smi` reports it. On the wire (seed 004 `/api/gpu_health`) a
/// daemon sends `true`, `false` or `"N/A"`; in the database and on admin pages the
/// classic strings `Healthy`, `Unhealthy`, `N/A` are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GpuHealth {
    Healthy,
    Unhealthy,
    NotAvailable,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("gpu_status must be true, false or \"N/A\" (got {0})")]
pub struct GpuHealthError(pub String);

impl GpuHealth {
    /// Accepts the wire forms (JSON `true`/`false`/`"N/A"`) and the stored strings.
    pub fn from_json(v: &serde_json::Value) -> Result<Self, GpuHealthError> {
        match v {
            serde_json::Value::Bool(true) => Ok(Self::Healthy),
            serde_json::Value::Bool(false) => Ok(Self::Unhealthy),
            serde_json::Value::String(s) => Self::parse(s),
            other => Err(GpuHealthError(other.to_string().chars().take(40).collect())),
        }
    }

    pub fn parse(s: &str) -> Result<Self, GpuHealthError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "healthy" | "true" => Ok(Self::Healthy),
            "unhealthy" | "false" => Ok(Self::Unhealthy),
            "n/a" | "na" => Ok(Self::NotAvailable),
            _ => Err(GpuHealthError(format!(
                "{:?}",
                s.chars().take(40).collect::<String>()
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "Healthy",
            Self::Unhealthy => "Unhealthy",
            Self::NotAvailable => "N/A",
        }
    }

    /// The classic wire value.
    pub fn to_json(self) -> serde_json::Value {
        match self {
            Self::Healthy => serde_json::Value::Bool(true),
            Self::Unhealthy => serde_json::Value::Bool(false),
            Self::NotAvailable => serde_json::Value::String("N/A".into()),
        }
    }

    /// `gpu_status` as a daemon sends it: `true`, `false` or `"N/A"`.
    pub fn to_wire(self) -> lablink_wire::GpuStatus {
        match self {
            Self::Healthy => lablink_wire::GpuStatus::Bool(true),
            Self::Unhealthy => lablink_wire::GpuStatus::Bool(false),
            Self::NotAvailable => lablink_wire::GpuStatus::not_available(),
        }
    }

    /// `gpu_status` as received: the wire forms and the stored strings (as [`Self::from_json`]).
    pub fn from_wire(v: &lablink_wire::GpuStatus) -> Result<Self, GpuHealthError> {
        match v {
            lablink_wire::GpuStatus::Bool(true) => Ok(Self::Healthy),
            lablink_wire::GpuStatus::Bool(false) => Ok(Self::Unhealthy),
            lablink_wire::GpuStatus::Text(s) => Self::parse(s),
        }
    }
}

impl fmt::Display for GpuHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn statuses_round_trip_and_classic_aliases_map() {
        for s in VmStatus::ALL {
            assert_eq!(VmStatus::parse(s.as_str()), Ok(s));
        }
        assert_eq!(VmStatus::parse("Available"), Ok(VmStatus::Running));
        let err = VmStatus::parse("rebooting").unwrap_err().to_string();
        assert!(
            err.contains("expected one of initializing, running, error"),
            "{err}"
        );
    }

    #[test]
    fn gpu_health_accepts_the_wire_forms() {
        assert_eq!(GpuHealth::from_json(&json!(true)), Ok(GpuHealth::Healthy));
        assert_eq!(GpuHealth::from_json(&json!(false)), Ok(GpuHealth::Unhealthy));
        assert_eq!(GpuHealth::from_json(&json!("N/A")), Ok(GpuHealth::NotAvailable));
        assert_eq!(GpuHealth::from_json(&json!("Healthy")), Ok(GpuHealth::Healthy));
        for g in [GpuHealth::Healthy, GpuHealth::Unhealthy, GpuHealth::NotAvailable] {
            assert_eq!(GpuHealth::parse(g.as_str()), Ok(g));
            assert_eq!(GpuHealth::from_json(&g.to_json()), Ok(g));
        }
        let err = GpuHealth::from_json(&json!(3)).unwrap_err().to_string();
        assert!(err.contains("true, false or \"N/A\""), "{err}");
        assert!(GpuHealth::from_json(&json!(null)).is_err());
        assert!(GpuHealth::parse("melted").is_err());
    }

    #[test]
    fn gpu_health_goes_through_the_wire_type_as_through_json() {
        for g in [GpuHealth::Healthy, GpuHealth::Unhealthy, GpuHealth::NotAvailable] {
            let wire = g.to_wire();
            assert_eq!(serde_json::to_value(&wire).unwrap(), g.to_json());
            assert_eq!(GpuHealth::from_wire(&wire), Ok(g));
        }
        let text = |s: &str| lablink_wire::GpuStatus::Text(s.into());
        assert_eq!(GpuHealth::from_wire(&text("Healthy")), Ok(GpuHealth::Healthy));
        assert!(GpuHealth::from_wire(&text("melted")).is_err());
    }
}
