use chrono::{DateTime, Duration, Utc};

/// One timed phase of a VM's start-up (provisioning, cloud-init, image pull, container,
/// tutorial clone, startup script).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Phase {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimingsError {
    #[error("{field} is not an RFC 3339 timestamp like 2025-11-13T10:00:00Z")]
    BadTimestamp { field: &'static str },
    #[error("{phase} ends before it starts")]
    EndBeforeStart { phase: &'static str },
    #[error("{phase} lasts more than a day; check the clock of the VM")]
    TooLong { phase: &'static str },
    #[error("{phase} needs both a start and an end")]
    HalfPhase { phase: &'static str },
    #[error(
        "no timing fields given; expected start/end pairs of cloud_init, docker_pull, container, tutorial_clone or startup_script"
    )]
    Empty,
}

impl Phase {
    pub fn new(name: &'static str, start: DateTime<Utc>, end: DateTime<Utc>) -> Result<Self, TimingsError> {
        if end < start {
            return Err(TimingsError::EndBeforeStart { phase: name });
        }
        if end - start > Duration::days(1) {
            return Err(TimingsError::TooLong { phase: name });
        }
        Ok(Self { start, end })
    }

    pub fn seconds(&self) -> f64 {
        (self.end - self.start).num_milliseconds() as f64 / 1000.0
    }
}

/// The start-up timings a VM reports to `POST /api/vm-metrics/{hostname}` (seed 004
/// §3.3): cloud-init and container phases, and the workspace's image pull, tutorial
/// clone and startup script. Provisioning is recorded by the provisioner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartupTimings {
    pub cloud_init: Option<Phase>,
    pub image_pull: Option<Phase>,
    pub container: Option<Phase>,
    pub tutorial_clone: Option<Phase>,
    pub startup_script: Option<Phase>,
}

/// The classic payload, as the daemon sends it and the API reads it (one type, in
/// `lablink-wire`); `container_ready` is the classic name of the container's end, and
/// the classic `docker_pull_*` fields are the image pull.
pub use lablink_wire::RawTimings;

fn ts(field: &'static str, v: &Option<String>) -> Result<Option<DateTime<Utc>>, TimingsError> {
    match v.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| TimingsError::BadTimestamp { field }),
    }
}

fn phase(
    name: &'static str,
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
) -> Result<Option<Phase>, TimingsError> {
    match (start, end) {
        (None, None) => Ok(None),
        (Some(s), Some(e)) => Phase::new(name, s, e).map(Some),
        _ => Err(TimingsError::HalfPhase { phase: name }),
    }
}

impl StartupTimings {
    pub fn parse(raw: &RawTimings) -> Result<Self, TimingsError> {
        let cloud_init = phase(
            "cloud-init",
            ts("cloud_init_start", &raw.cloud_init_start)?,
            ts("cloud_init_end", &raw.cloud_init_end)?,
        )?;
        let image_pull = phase(
            "image pull",
            ts("docker_pull_start", &raw.docker_pull_start)?,
            ts("docker_pull_end", &raw.docker_pull_end)?,
        )?;
        let container = phase(
            "container",
            ts("container_start", &raw.container_start)?,
            ts("container_end", &raw.container_end)?,
        )?;
        let tutorial_clone = phase(
            "tutorial clone",
            ts("tutorial_clone_start", &raw.tutorial_clone_start)?,
            ts("tutorial_clone_end", &raw.tutorial_clone_end)?,
        )?;
        let startup_script = phase(
            "startup script",
            ts("startup_script_start", &raw.startup_script_start)?,
            ts("startup_script_end", &raw.startup_script_end)?,
        )?;
        let t = Self {
            cloud_init,
            image_pull,
            container,
            tutorial_clone,
            startup_script,
        };
        if t == Self::default() {
            return Err(TimingsError::Empty);
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(ci: (&str, &str), c: (&str, &str)) -> RawTimings {
        let o = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        RawTimings {
            cloud_init_start: o(ci.0),
            cloud_init_end: o(ci.1),
            container_start: o(c.0),
            container_end: o(c.1),
            ..RawTimings::default()
        }
    }

    #[test]
    fn the_classic_payload_parses() {
        let body = r#"{"cloud_init_start":"2025-11-13T10:00:00Z","cloud_init_end":"2025-11-13T10:05:30Z",
            "docker_pull_start":"2025-11-13T10:01:00Z","docker_pull_end":"2025-11-13T10:03:00Z",
            "container_start":"2025-11-13T10:03:00Z","container_ready":"2025-11-13T10:05:30Z"}"#;
        let raw: RawTimings = serde_json::from_str(body).unwrap();
        let t = StartupTimings::parse(&raw).unwrap();
        assert_eq!(t.cloud_init.unwrap().seconds(), 330.0);
        assert_eq!(t.container.unwrap().seconds(), 150.0);
        assert_eq!(t.image_pull.unwrap().seconds(), 120.0);
    }

    #[test]
    fn the_workspace_phases_parse_on_their_own() {
        let raw = RawTimings {
            tutorial_clone_start: Some("2025-11-13T10:03:01Z".into()),
            tutorial_clone_end: Some("2025-11-13T10:03:04.250Z".into()),
            startup_script_start: Some("2025-11-13T10:03:04.250Z".into()),
            startup_script_end: Some("2025-11-13T10:03:09Z".into()),
            ..RawTimings::default()
        };
        let t = StartupTimings::parse(&raw).unwrap();
        assert_eq!(t.tutorial_clone.unwrap().seconds(), 3.25);
        assert_eq!(t.startup_script.unwrap().seconds(), 4.75);
        assert_eq!((t.cloud_init, t.container, t.image_pull), (None, None, None));
        let half = RawTimings {
            startup_script_start: Some("2025-11-13T10:03:04Z".into()),
            ..RawTimings::default()
        };
        assert_eq!(
            StartupTimings::parse(&half),
            Err(TimingsError::HalfPhase {
                phase: "startup script"
            })
        );
    }

    #[test]
    fn bad_timings_are_refused_with_a_reason() {
        let e = StartupTimings::parse(&raw(("yesterday", "2025-11-13T10:00:00Z"), ("", ""))).unwrap_err();
        assert_eq!(
            e,
            TimingsError::BadTimestamp {
                field: "cloud_init_start"
            }
        );
        let e = StartupTimings::parse(&raw(("2025-11-13T10:00:00Z", "2025-11-13T09:00:00Z"), ("", "")))
            .unwrap_err();
        assert_eq!(e, TimingsError::EndBeforeStart { phase: "cloud-init" });
        let e = StartupTimings::parse(&raw(("", ""), ("2025-11-13T10:00:00Z", ""))).unwrap_err();
        assert_eq!(e, TimingsError::HalfPhase { phase: "container" });
        let e = StartupTimings::parse(&raw(("2025-11-10T10:00:00Z", "2025-11-13T10:00:00Z"), ("", "")))
            .unwrap_err();
        assert_eq!(e, TimingsError::TooLong { phase: "cloud-init" });
        assert_eq!(
            StartupTimings::parse(&RawTimings::default()),
            Err(TimingsError::Empty)
        );
        assert!(TimingsError::Empty.to_string().contains("startup_script"));
    }
}
