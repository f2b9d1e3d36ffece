//! The admin console's pages. Every state-changing form carries the session's CSRF
//! token (`csrf`) and, where it starts a job, a fresh idempotency key (`job_id`), so a
//! double-submitted form makes one job.

use maud::{DOCTYPE, Markup, PreEscaped, html};

const CSS: &str = r#"
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f5f6f8;color:#1d2330;line-height:1.45}
header{background:#1d2330;color:#fff;padding:.6rem 1rem;display:flex;gap:1rem;align-items:center;flex-wrap:wrap}
header a{color:#fff;text-decoration:none;padding:.2rem .4rem;border-radius:.3rem}
header a.here{background:#3a4356}
header .who{margin-left:auto;font-size:.9rem;opacity:.85}
header form{margin:0}
header button{margin:0;padding:.3rem .8rem;background:#3a4356}
main{max-width:72rem;margin:0 auto;padding:1.2rem 1rem}
h1{font-size:1.5rem;margin:.2rem 0 1rem}
.card{background:#fff;border-radius:.6rem;padding:1rem 1.2rem;box-shadow:0 1px 3px rgba(0,0,0,.12);margin-bottom:1rem}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(9rem,1fr));gap:.8rem}
.stat{background:#fff;border-radius:.6rem;padding:.8rem;box-shadow:0 1px 3px rgba(0,0,0,.12)}
.stat b{display:block;font-size:1.6rem}
label{display:block;font-weight:600;margin:.8rem 0 .3rem}
input[type=text],input[type=password],input[type=number],input[type=search]{padding:.5rem;border:1px solid #b8bfcc;border-radius:.4rem;font:inherit;width:100%;max-width:24rem}
button{margin-top:.8rem;padding:.55rem 1.2rem;border:0;border-radius:.4rem;background:#2456d6;color:#fff;font:inherit;font-weight:600;cursor:pointer}
button.danger{background:#b42318}
button:disabled{opacity:.5;cursor:not-allowed}
table{border-collapse:collapse;width:100%;font-size:.92rem}
th,td{text-align:left;padding:.4rem .5rem;border-bottom:1px solid #e3e6ec;vertical-align:middle}
th{font-size:.8rem;text-transform:uppercase;color:#5a6275}
.error{background:#fdecec;border:1px solid #e3a1a1;color:#8a1c1c;padding:.7rem;border-radius:.4rem}
.ok{background:#e9f7ef;border:1px solid #9fd3b3;color:#14532d;padding:.7rem;border-radius:.4rem}
.hint{color:#5a6275;font-size:.88rem}
.pill{display:inline-block;padding:.05rem .5rem;border-radius:1rem;font-size:.8rem;font-weight:600;background:#e3e6ec}
.pill.running,.pill.succeeded,.pill.Healthy{background:#d1f0dc;color:#14532d}
.pill.initializing,.pill.queued{background:#fdf1c7;color:#6b4e00}
.pill.error,.pill.failed,.pill.Unhealthy,.pill.unreachable{background:#fbd5d5;color:#8a1c1c}
.pill.done{background:#d1f0dc;color:#14532d}
.pill.waiting,.pill.uploading{background:#fdf1c7;color:#6b4e00}
.pill.unknown{background:#e3e6ec}
pre.log{background:#11151c;color:#d8dee9;padding:.8rem;border-radius:.4rem;height:32rem;overflow:auto;font-size:.82rem;white-space:pre-wrap;word-break:break-all;margin:0}
code{font-family:ui-monospace,Menlo,Consolas,monospace}
.row{display:flex;gap:1rem;align-items:center;flex-wrap:wrap}
.legend span{display:inline-block;width:.8rem;height:.8rem;border-radius:.15rem;margin:0 .25rem 0 .8rem;vertical-align:middle}
"#;

/// The nav entry a page belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Home,
    Create,
    Instances,
    Delete,
    None,
}

/// Who is logged in, and the CSRF token for this session's forms.
pub struct Session<'a> {
    pub user: &'a str,
    pub csrf: &'a str,
}

fn layout(title: &str, nav: Nav, session: Option<&Session<'_>>, body: Markup) -> Markup {
    let link = |href: &str, label: &str, me: Nav| {
        html! { a href=(href) class=[(nav == me).then_some("here")] { (label) } }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · LabLink admin" }
                style { (PreEscaped(CSS)) }
            }
            body {
                header {
                    strong { "LabLink admin" }
                    @if let Some(s) = session {
                        (link("/admin", "Dashboard", Nav::Home))
                        (link("/admin/create", "Launch", Nav::Create))
                        (link("/admin/instances", "Instances", Nav::Instances))
                        (link("/admin/instances/delete", "Destroy", Nav::Delete))
                        span.who { "signed in as " (s.user) }
                        form method="post" action="/admin/logout" {
                            input type="hidden" name="csrf" value=(s.csrf);
                            button type="submit" #logout { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

pub fn login_page(error: Option<&str>, csrf: &str, next: &str, user: &str) -> Markup {
    layout(
        "Log in",
        Nav::None,
        None,
        html! {
            h1 { "Admin log in" }
            form.card method="post" action="/admin/login" {
                @if let Some(e) = error { p.error role="alert" #login-error { (e) } }
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="next" value=(next);
                label for="user" { "User" }
                input #user type="text" name="user" required autocomplete="username" value=(user);
                label for="password" { "Password" }
                input #password type="password" name="password" required autocomplete="current-password";
                div { button type="submit" { "Log in" } }
            }
        },
    )
}

/// One row of the recent jobs.
pub struct JobRow<'a> {
    pub id: &'a str,
    pub label: String,
    pub state: &'a str,
    pub requested_by: &'a str,
    pub created_at: String,
}

pub struct Home<'a> {
    pub session: Session<'a>,
    pub message: Option<(bool, &'a str)>,
    pub counts: &'a [(&'a str, i64)],
    pub free: i64,
    pub max_vms: u32,
    /// Which identity launches VMs, e.g. "arn:aws:iam::1234:role/x (the provisioner's role)".
    pub identity: &'a str,
    pub stored_credentials: bool,
    pub jobs: &'a [JobRow<'a>],
    pub workshop: Workshop<'a>,
    /// Live sessions of this admin (this one included).
    pub live_sessions: i64,
    /// When the fleet is destroyed (`YYYY-MM-DD HH:MM` UTC) and who set it.
    pub fleet_end: Option<(String, String)>,
    /// Minutes until then (negative: overdue, the destroy job is on its way).
    pub fleet_end_minutes: Option<i64>,
}

/// The workshop's gate as the dashboard shows and edits it.
pub struct Workshop<'a> {
    pub access_code: Option<&'a str>,
    /// One entry per line.
    pub participants: &'a str,
    pub participant_count: usize,
    pub seats_per_address: u32,
    pub window_minutes: u32,
    /// Set on the dashboard (else: the deployment's defaults).
    pub from_dashboard: bool,
}

pub fn home_page(h: &Home<'_>) -> Markup {
    layout(
        "Dashboard",
        Nav::Home,
        Some(&h.session),
        html! {
            h1 { "Dashboard" }
            @if let Some((ok, m)) = h.message {
                p class=(if ok { "ok" } else { "error" }) role="status" #message { (m) }
            }
            div.grid {
                div.stat { "Free seats" b #free { (h.free) } }
                @for (name, n) in h.counts {
                    div.stat { (name) b id={ "count-" (name) } { (n) } }
                }
                div.stat { "Fleet limit" b { (h.max_vms) } }
            }
            div.card style="margin-top:1rem" {
                h2 style="font-size:1.1rem;margin-top:0" { "Provisioning identity" }
                p #identity { code { (h.identity) } }
                @if h.stored_credentials {
                    form method="post" action="/api/admin/unset-aws-credentials" {
                        input type="hidden" name="csrf" value=(h.session.csrf);
                        button type="submit" { "Forget the stored credentials (use the provisioner's role)" }
                    }
                } @else {
                    details {
                        summary { "Use other AWS credentials for launching (e.g. another account)" }
                        form method="post" action="/api/admin/set-aws-credentials" autocomplete="off" {
                            input type="hidden" name="csrf" value=(h.session.csrf);
                            label for="aws_access_key_id" { "Access key id" }
                            input #aws_access_key_id type="text" name="aws_access_key_id" required;
                            label for="aws_secret_access_key" { "Secret access key" }
                            input #aws_secret_access_key type="password" name="aws_secret_access_key" required;
                            label for="aws_token" { "Session token (optional)" }
                            input #aws_token type="password" name="aws_token";
                            p.hint { "They are checked with AWS STS, stored encrypted and forgotten after 12 hours." }
                            button type="submit" { "Check and store" }
                        }
                    }
                }
            }
            div.card #fleet-end {
                h2 style="font-size:1.1rem;margin-top:0" { "When the fleet ends" }
                @match (&h.fleet_end, h.fleet_end_minutes) {
                    (Some((at, by)), Some(m)) => {
                        p #fleet-end-line {
                            "The fleet is destroyed at " b #fleet-end-at { (at) } " UTC"
                            @if m >= 0 { " (in " (m / 60) " h " (m % 60) " min)" } @else { " (now: its destroy job is on its way)" }
                            ", set by " (by) ". Participants see a notice shortly before."
                        }
                    }
                    _ => { p.hint #fleet-end-line { "No end is set: a launch sets one (its form's hours, by default the deployment's)." } }
                }
                form method="post" action="/api/admin/fleet-end" #fleet-end-form {
                    input type="hidden" name="csrf" value=(h.session.csrf);
                    label for="ends_in_hours" { "End the fleet in (hours from now)" }
                    input #ends_in_hours type="number" name="ends_in_hours" min="1" max="168" required value="2";
                    button type="submit" { "Set the end" }
                }
            }
            (workshop_card(&h.workshop, h.session.csrf))
            (export_card())
            div.card #sessions {
                h2 style="font-size:1.1rem;margin-top:0" { "Sessions" }
                p { "Live admin sessions: " b #live-sessions { (h.live_sessions) } " (this browser's included)." }
                form method="post" action="/admin/logout" {
                    input type="hidden" name="csrf" value=(h.session.csrf);
                    input type="hidden" name="everywhere" value="1";
                    button type="submit" { "Log out everywhere" }
                }
                p.hint { "Ends every session of the admin at once, in every browser. A new password or session key (the admin secret) ends them too, within a minute." }
            }
            div.card {
                h2 style="font-size:1.1rem;margin-top:0" { "Recent jobs" }
                @if h.jobs.is_empty() { p.hint { "No jobs yet. " a href="/admin/create" { "Launch VMs" } "." } }
                @else {
                    table #jobs {
                        thead { tr { th { "Job" } th { "What" } th { "State" } th { "By" } th { "Created" } } }
                        tbody {
                            @for j in h.jobs {
                                tr {
                                    td { a href={ "/admin/jobs/" (j.id) } { code { (j.id) } } }
                                    td { (j.label) }
                                    td { span class={ "pill " (j.state) } { (j.state) } }
                                    td { (j.requested_by) }
                                    td { (j.created_at) }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// Who may take a seat: the access code, the participant list (pasted, or read from a
/// CSV file by the page's script), and the limit of new seats per address.
fn workshop_card(w: &Workshop<'_>, csrf: &str) -> Markup {
    html! {
        div.card #workshop {
            h2 style="font-size:1.1rem;margin-top:0" { "Who may take a seat" }
            p.hint #workshop-source {
                @if w.from_dashboard { "Set on this dashboard." }
                @else { "The deployment's defaults (its parameters) until you save here." }
                " Access code: " b #workshop-code-state { @if w.access_code.is_some() { "required" } @else { "none" } }
                "; participant list: " b #workshop-list-state {
                    @if w.participant_count > 0 { (w.participant_count) " entries" } @else { "anyone" }
                }
                "; at most " b { (w.seats_per_address) } " new seats per network address every " (w.window_minutes) " minutes."
            }
            form method="post" action="/api/admin/workshop" #workshop-form autocomplete="off" {
                input type="hidden" name="csrf" value=(csrf);
                label for="access_code" { "Access code (empty: none)" }
                input #access_code type="text" name="access_code" maxlength="128" spellcheck="false" value=(w.access_code.unwrap_or(""));
                label for="participants" { "Participant list: emails and @domains, one per line (empty: anyone)" }
                textarea #participants name="participants" rows="5" spellcheck="false" { (w.participants) }
                label for="participants_csv" { "…or read a CSV file into the list (its email cells are kept)" }
                input #participants_csv type="file" accept=".csv,text/csv,text/plain";
                label for="seats_per_address" { "New seats per network address" }
                input #seats_per_address type="number" name="seats_per_address" min="1" max="100000" value=(w.seats_per_address);
                label for="window_minutes" { "…within minutes" }
                input #window_minutes type="number" name="window_minutes" min="1" max="1440" value=(w.window_minutes);
                div {
                    button type="submit" name="action" value="save" { "Save" }
                    " "
                    button type="submit" name="action" value="defaults" { "Back to the deployment's defaults" }
                }
            }
            script { (PreEscaped(CSV_JS)) }
        }
    }
}

// The file is read in the browser: the route takes the list as text, as pasted.
const CSV_JS: &str = r#"
(function(){var f=document.getElementById('participants_csv'),t=document.getElementById('participants');
f.addEventListener('change',function(){var file=f.files[0];if(!file){return;}
var r=new FileReader();r.onload=function(){t.value=(t.value?t.value+'\n':'')+r.result;};r.readAsText(file);});})();
"#;

/// The "Export data" button: a GET form to the classic `/api/scp-client`, which starts an
/// export (or joins the running one) and leads to its job page.
fn export_card() -> Markup {
    html! {
        div.card {
            h2 style="font-size:1.1rem;margin-top:0" { "Data export" }
            p.hint { "Collects the participants' result files from every assigned VM into one zip, "
                     "with a manifest. VMs that do not answer in time are listed as unreachable." }
            form method="get" action="/api/scp-client" #export-form {
                button type="submit" { "Export data" }
            }
            script { (PreEscaped(ONCE_JS)) }
        }
    }
}

pub struct Create<'a> {
    pub session: Session<'a>,
    pub job_id: &'a str,
    pub max_vms: u32,
    pub current: i64,
    pub error: Option<&'a str>,
    /// The deployment's VM settings, as (label, value) pairs shown on the form.
    pub defaults: &'a [(&'a str, String)],
    /// The deployment's instance type, client image and tutorial repository (the
    /// override fields' placeholders).
    pub instance_type: &'a str,
    pub client_image: &'a str,
    pub tutorial_repo: &'a str,
    /// The deployment's default life of a fleet, in hours (`LABLINK_FLEET_HOURS`).
    pub fleet_hours: u32,
}

pub fn create_page(c: &Create<'_>) -> Markup {
    let room = (c.max_vms as i64 - c.current).max(0);
    layout(
        "Launch VMs",
        Nav::Create,
        Some(&c.session),
        html! {
            h1 { "Launch VMs" }
            form.card method="post" action="/api/launch" #launch-form {
                @if let Some(e) = c.error { p.error role="alert" { (e) } }
                input type="hidden" name="csrf" value=(c.session.csrf);
                input type="hidden" name="job_id" value=(c.job_id);
                p { "The fleet has " strong #current { (c.current) } " VM(s); the limit is " strong { (c.max_vms) } "." }
                label for="num_vms" { "How many more" }
                input #num_vms type="number" name="num_vms" min="1" max=(room.max(1)) value="1" required;
                label for="ends_in_hours" { "Destroy the fleet after (hours)" }
                input #ends_in_hours type="number" name="ends_in_hours" min="1" max="168" value=(c.fleet_hours) required;
                p.hint { "So a forgotten fleet stops costing. The dashboard can extend it; a launch never shortens an end already set." }
                @if !c.defaults.is_empty() {
                    h2 style="font-size:1.05rem" { "The deployment's VM settings" }
                    dl #vm-settings {
                        @for (label, value) in c.defaults { dt { (label) } dd { code { (value) } } }
                    }
                }
                details #overrides {
                    summary { "Change them for this launch" }
                    label for="instance_type" { "Instance type" }
                    input #instance_type type="text" name="instance_type" placeholder=(c.instance_type) autocomplete="off";
                    label for="client_image" { "Client image" }
                    input #client_image type="text" name="client_image" placeholder=(c.client_image) autocomplete="off";
                    label for="tutorial_repo" { "Tutorial repository" }
                    input #tutorial_repo type="text" name="tutorial_repo" placeholder=(c.tutorial_repo) autocomplete="off";
                    p.hint { "Empty: the deployment's setting. What you choose is kept on the job and shown on its page." }
                }
                p.hint { "Launching runs as a job: you will see its progress. VMs report " em { "running" } " a few minutes after they boot." }
                button type="submit" disabled[room == 0] { "Launch" }
            }
            script { (PreEscaped(ONCE_JS)) }
        },
    )
}

/// Disable a form's button once submitted (the idempotency key makes a second submit
/// harmless anyway).
const ONCE_JS: &str = r#"
document.querySelectorAll('form').forEach(function(f){f.addEventListener('submit',function(){
var b=f.querySelector('button[type=submit]');if(b){setTimeout(function(){b.disabled=true},0);}});});
"#;

/// One VM on the instances page.
pub struct VmRow<'a> {
    pub hostname: &'a str,
    pub status: &'a str,
    pub reason: Option<&'a str>,
    pub healthy: Option<&'a str>,
    pub in_use: bool,
    pub email: Option<&'a str>,
    pub provision_s: Option<f64>,
    pub cloud_init_s: Option<f64>,
    pub image_pull_s: Option<f64>,
    pub container_s: Option<f64>,
    pub tutorial_clone_s: Option<f64>,
    pub startup_script_s: Option<f64>,
    pub total_s: Option<f64>,
    /// How the last start-host run ended: ok, exit code, its last lines (no code, no PIN).
    pub start_host: Option<(bool, Option<i32>, &'a str)>,
    /// While `initializing`: minutes since it was launched.
    pub initializing_min: Option<i64>,
    /// Where the seat stands, when assigned: "code on its way", "connected",
    /// "code refused"...
    pub seat: Option<&'a str>,
    /// Fresh codes the current seat took.
    pub code_changes: i32,
    /// A release's reset is not done yet.
    pub reset_pending: bool,
    /// The admin's last actions on this VM, newest first: (action, who, detail, when).
    pub actions: Vec<(&'a str, &'a str, &'a str, String)>,
}

impl VmRow<'_> {
    fn phases(&self) -> [Option<f64>; 6] {
        [
            self.provision_s,
            self.cloud_init_s,
            self.image_pull_s,
            self.container_s,
            self.tutorial_clone_s,
            self.startup_script_s,
        ]
    }
}

const BAR_COLORS: [(&str, &str); 6] = [
    ("provision", "#2456d6"),
    ("cloud-init", "#e08a00"),
    ("image pull", "#8e44ad"),
    ("container", "#1f9d55"),
    ("tutorial clone", "#00a3a3"),
    ("startup script", "#c0392b"),
];

/// A small bar: the start-up phases laid end to end (provision, cloud-init, image pull,
/// container, tutorial clone, startup script), scaled to `scale` seconds. Phases may
/// overlap in time (the daemon prepares the workspace while cloud-init ends), so the
/// total beside the bar, the real span, can be shorter than the bar's sum.
pub fn timing_bar(v: &VmRow<'_>, scale: f64) -> Markup {
    let w = 160.0;
    let parts = v.phases();
    // Each present phase's segment: (name, color, seconds, x, width), laid end to end.
    let mut x = 0.0;
    let segments: Vec<(&str, &str, f64, f64, f64)> = BAR_COLORS
        .iter()
        .zip(parts)
        .filter_map(|(&(name, color), p)| {
            let s = p?;
            let width = if scale > 0.0 {
                (s / scale * w).max(1.0)
            } else {
                0.0
            };
            let seg = (name, color, s, x, width);
            x += width;
            Some(seg)
        })
        .collect();
    html! {
        svg.timing width="160" height="14" viewBox="0 0 160 14" role="img" aria-label={ "startup timings of " (v.hostname) } {
            rect x="0" y="0" width="160" height="14" fill="#eef0f4" {}
            @for (name, color, s, x, width) in segments {
                rect x=(format!("{x:.1}")) y="0" width=(format!("{width:.1}")) height="14" fill=(color) {
                    title { (name) ": " (format!("{s:.1}")) " s" }
                }
            }
        }
    }
}

pub fn instances_page(session: &Session<'_>, vms: &[VmRow<'_>]) -> Markup {
    let scale = vms
        .iter()
        .map(|v| v.phases().iter().flatten().sum::<f64>())
        .fold(0.0, f64::max);
    layout(
        "Instances",
        Nav::Instances,
        Some(session),
        html! {
            h1 { "Instances" }
            div.card {
                div.row {
                    span.hint #refreshed { "Refreshes every 5 s." }
                    span.legend.hint {
                        @for (name, color) in BAR_COLORS { span style={ "background:" (color) } {} (name) }
                    }
                }
                div #fleet {
                    @if vms.is_empty() { p.hint { "No VMs. " a href="/admin/create" { "Launch some" } "." } }
                    @else {
                        table {
                            thead { tr { th { "Hostname" } th { "Status" } th { "GPU" } th { "In use" } th { "Assigned to" } th { "Startup" } th {} } }
                            tbody {
                                @for v in vms {
                                    tr data-hostname=(v.hostname) {
                                        td { code { (v.hostname) } }
                                        td {
                                            span class={ "pill " (v.status) } { (v.status) }
                                            @if let Some(m) = v.initializing_min { " " span.hint.since { "for " (m) " min" } }
                                            @if let Some(r) = v.reason { br; span.hint { (r) } }
                                            @if let Some((ok, code, output)) = v.start_host {
                                                br;
                                                span.hint.start-host title=(output) {
                                                    "start-host: "
                                                    @if ok { "ok" } @else {
                                                        "failed"
                                                        @if let Some(c) = code { " (exit " (c) ")" }
                                                        @if !output.is_empty() { ": " (output.lines().last().unwrap_or_default()) }
                                                    }
                                                }
                                            }
                                        }
                                        td { @match v.healthy { Some(h) => span class={ "pill " (h) } { (h) }, None => span.hint { "–" } } }
                                        td { @if v.in_use { "yes" } @else { span.hint { "no" } } }
                                        td {
                                            @match v.email { Some(e) => (e), None => span.hint { "free" } }
                                            @if let Some(seat) = v.seat { br; span.hint.seat { (seat) } }
                                            @if v.code_changes > 0 { br; span.hint { (v.code_changes) " fresh code(s)" } }
                                            @if v.reset_pending { br; span.hint.resetting { "resetting after a release" } }
                                        }
                                        td {
                                            (timing_bar(v, scale))
                                            @if let Some(t) = v.total_s { " " span.hint { (format!("{t:.0} s")) } }
                                        }
                                        td {
                                            a href={ "/admin/logs/" (v.hostname) } { "logs" }
                                            (vm_actions(session, v))
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            (export_card())
            script { (PreEscaped(REFRESH_JS)) }
        },
    )
}

/// A VM's actions (release, reassign, replace; each a form with the session's CSRF
/// token) and what was done to it.
fn vm_actions(session: &Session<'_>, v: &VmRow<'_>) -> Markup {
    let base = format!("/api/admin/vms/{}", v.hostname);
    html! {
        details.vm-actions {
            summary { "actions" }
            form method="post" action={ (base) "/release" }
                onsubmit={ "return confirm('Release " (v.hostname) "? Its workspace is reset: the desktop registration and, unless kept, the files go.')" } {
                input type="hidden" name="csrf" value=(session.csrf);
                label.inline { input type="checkbox" name="keep_files" value="on"; " keep the participant's files for the next export" }
                button type="submit" title="Free the seat; the VM resets its workspace and rejoins the pool" { "Release" }
            }
            form method="post" action={ (base) "/reassign" } {
                input type="hidden" name="csrf" value=(session.csrf);
                input type="email" name="email" required placeholder="new participant's email" aria-label={ "reassign " (v.hostname) " to" };
                button type="submit" title="Move the seat, desktop and files as they are, to another email" { "Reassign" }
            }
            form method="post" action={ (base) "/replace" }
                onsubmit={ "return confirm('Replace " (v.hostname) "? Its instance is terminated, with everything on it.')" } {
                input type="hidden" name="csrf" value=(session.csrf);
                button.danger type="submit" title="Terminate this instance and launch one in its place" { "Replace" }
            }
        }
        @if !v.actions.is_empty() {
            ul.hint.actions {
                @for (action, who, detail, at) in &v.actions {
                    li { (action) " by " (who) " at " (at) @if !detail.is_empty() { " (" (detail) ")" } }
                }
            }
        }
    }
}

/// Every 5 s the fleet table is fetched again, except while the admin is using one of
/// its forms (an open actions box, a focused field): that would wipe what they type.
const REFRESH_JS: &str = r#"
(function(){setInterval(function(){var f=document.getElementById('fleet');
if(f.querySelector('details[open]')||f.contains(document.activeElement)&&document.activeElement!==document.body)return;
fetch(location.href,{cache:'no-store',credentials:'same-origin'})
.then(function(r){return r.ok?r.text():null}).then(function(t){if(!t)return;
var d=new DOMParser().parseFromString(t,'text/html');var n=d.getElementById('fleet');
if(n){document.getElementById('fleet').replaceWith(n);
document.getElementById('refreshed').textContent='Updated '+new Date().toLocaleTimeString();}}).catch(function(){});},5000);})();
"#;

pub struct Delete<'a> {
    pub session: Session<'a>,
    pub job_id: &'a str,
    pub deployment: &'a str,
    pub total: i64,
    pub error: Option<&'a str>,
}

pub fn delete_page(d: &Delete<'_>) -> Markup {
    layout(
        "Destroy the fleet",
        Nav::Delete,
        Some(&d.session),
        html! {
            h1 { "Destroy the fleet" }
            form.card method="post" action="/destroy" #destroy-form {
                @if let Some(e) = d.error { p.error role="alert" { (e) } }
                input type="hidden" name="csrf" value=(d.session.csrf);
                input type="hidden" name="job_id" value=(d.job_id);
                p { "This terminates " strong #total { (d.total) } " VM(s) of deployment " code { (d.deployment) }
                    " and forgets them, with their logs and assignments. Participants lose their desktops." }
                label for="confirm" { "Type the deployment name, " code { (d.deployment) } ", to confirm" }
                input #confirm type="text" name="confirm" required autocomplete="off";
                div { button.danger type="submit" { "Destroy every VM" } }
            }
            script { (PreEscaped(ONCE_JS)) }
        },
    )
}

pub fn job_page(session: &Session<'_>, job_id: &str) -> Markup {
    layout(
        "Job",
        Nav::None,
        Some(session),
        html! {
            h1 { "Job " code { (job_id) } }
            div.card #job data-job=(job_id) {
                p { "State: " span.pill #state { "loading" } " " span.hint #what {} }
                p.error #error hidden {}
                h2 style="font-size:1.05rem" { "Progress" }
                ol #events {}
                div #vms {}
                div #export {}
            }
            p { a href="/admin" { "Back to the dashboard" } " · " a href="/admin/instances" { "Instances" } }
            script { (PreEscaped(JOB_JS)) }
        },
    )
}

const JOB_JS: &str = r#"
(function(){var id=document.getElementById('job').dataset.job;
function text(el,t){el.textContent=t;}
function poll(){fetch('/api/jobs/'+encodeURIComponent(id),{cache:'no-store',credentials:'same-origin'})
.then(function(r){return r.ok?r.json():null}).then(function(j){if(!j)return;
var s=document.getElementById('state');text(s,j.state);s.className='pill '+j.state;
text(document.getElementById('what'),j.kind==='launch'?('launch '+j.num_vms+' VM(s)'):j.kind==='export'?'export the participants\' data':j.kind==='replace'?('replace VM '+j.hostname):'destroy the fleet');
var ol=document.getElementById('events');ol.innerHTML='';
(j.events||[]).forEach(function(e){var li=document.createElement('li');
li.textContent=new Date(e.at).toLocaleTimeString()+' '+e.message;ol.appendChild(li);});
var err=document.getElementById('error');if(j.error){err.hidden=false;text(err,j.error);}
var v=document.getElementById('vms');v.innerHTML='';
var o=j.overrides||{},set=[['instance type',o.instance_type],['client image',o.client_image],['tutorial repository',o.tutorial_repo],['image',j.image_id]].filter(function(x){return x[1]});
if(set.length){var p=document.createElement('p');p.id='launch-settings';
p.textContent='Settings: '+set.map(function(x){return x[0]+' '+x[1]}).join(', ');v.appendChild(p);}
if((j.vms||[]).length){var t=document.createElement('p');
t.textContent='VMs: '+j.vms.map(function(x){return x.hostname+' ('+x.instance_id+')'}).join(', ');v.appendChild(t);}
var ex=document.getElementById('export');ex.innerHTML='';
if(j.kind==='export'){var t=document.createElement('table');t.id='export-vms';
var h=t.createTHead().insertRow();['VM','Participant','State','Files','Bytes','Note'].forEach(function(c){var th=document.createElement('th');th.textContent=c;h.appendChild(th);});
var b=t.createTBody();(j.export_vms||[]).forEach(function(v){var r=b.insertRow();r.dataset.hostname=v.hostname;
[v.hostname,v.email||'',v.state.replace('_',' '),String(v.files),String(v.bytes),v.detail||(v.skipped?v.skipped+' skipped':'')].forEach(function(c,i){
var td=r.insertCell();if(i===2){var s=document.createElement('span');s.className='pill '+v.state;s.textContent=c;td.appendChild(s);}else{td.textContent=c;}});});
ex.appendChild(t);if(j.download_url&&j.export){var p=document.createElement('p');var a=document.createElement('a');
a.href=j.download_url;a.id='download';a.textContent='Download '+j.export.file;p.appendChild(a);
p.appendChild(document.createTextNode(' ('+j.export.files+' files, '+j.export.zip_bytes+' bytes)'));ex.appendChild(p);}}
if(j.state!=='succeeded'&&j.state!=='failed'){setTimeout(poll,1500);}}).catch(function(){setTimeout(poll,3000);});}
poll();})();
"#;

pub fn logs_page(session: &Session<'_>, hostname: &str, status: &str) -> Markup {
    layout(
        "Logs",
        Nav::Instances,
        Some(session),
        html! {
            h1 { "Logs of " code #hostname { (hostname) } }
            div.card {
                div.row {
                    span { "Status: " span class={ "pill " (status) } #vm-status { (status) } }
                    label style="margin:0;font-weight:normal" { input #follow type="checkbox" checked; " follow" }
                    input #filter type="search" placeholder="filter lines" aria-label="filter lines";
                    span.hint #log-note {}
                }
            }
            pre.log #log data-hostname=(hostname) {}
            script { (PreEscaped(LOGS_JS)) }
        },
    )
}

const LOGS_JS: &str = r#"
(function(){var pre=document.getElementById('log');var host=pre.dataset.hostname;
var after=0;var lines=[];var follow=document.getElementById('follow');var filter=document.getElementById('filter');
var note=document.getElementById('log-note');var status=document.getElementById('vm-status');
function render(){var f=filter.value.toLowerCase();
var shown=f?lines.filter(function(l){return l.toLowerCase().indexOf(f)>=0}):lines;
pre.textContent=shown.join('\n');if(follow.checked){pre.scrollTop=pre.scrollHeight;}}
filter.addEventListener('input',render);follow.addEventListener('change',render);
function poll(){fetch('/api/vm-logs/'+encodeURIComponent(host)+'?after='+after+'&limit=2000',{cache:'no-store',credentials:'same-origin'})
.then(function(r){if(r.status===503){note.textContent='No logs yet: the VM is still starting.';return null;}
if(!r.ok){note.textContent='Cannot read logs ('+r.status+')';return null;}return r.json();})
.then(function(j){if(j){note.textContent=j.dropped>0?(j.dropped+' older lines were dropped (each VM keeps its newest 200,000).'):'';status.textContent=j.status;status.className='pill '+j.status;
if(j.lines&&j.lines.length){j.lines.forEach(function(l){lines.push(l.message)});after=j.next;
if(lines.length>20000){lines=lines.slice(-20000);}render();}}
setTimeout(poll,j&&j.lines&&j.lines.length===2000?100:2000);}).catch(function(){setTimeout(poll,5000);});}
poll();})();
"#;

/// A plain admin message page (errors of job routes shown to a browser).
pub fn message_page(session: Option<&Session<'_>>, title: &str, message: &str, link: (&str, &str)) -> Markup {
    layout(
        title,
        Nav::None,
        session,
        html! {
            h1 { (title) }
            p.card.error role="alert" #message { (message) }
            p { a href=(link.0) { (link.1) } }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_carry_csrf_and_idempotency_keys() {
        let s = Session {
            user: "admin",
            csrf: "tok<en",
        };
        let page = create_page(&Create {
            session: Session {
                user: "admin",
                csrf: "tok<en",
            },
            job_id: "J",
            max_vms: 10,
            current: 3,
            error: None,
            defaults: &[("Instance type", "g4dn.xlarge".into())],
            instance_type: "g4dn.xlarge",
            client_image: "img:1",
            tutorial_repo: "none",
            fleet_hours: 12,
        })
        .into_string();
        assert!(page.contains(r#"name="csrf" value="tok&lt;en""#));
        assert!(page.contains(r#"name="job_id" value="J""#));
        assert!(page.contains(r#"max="7""#));
        let page = instances_page(
            &s,
            &[VmRow {
                hostname: "vm-1",
                status: "running",
                reason: None,
                healthy: Some("Healthy"),
                in_use: false,
                email: Some("<x@y>"),
                provision_s: Some(30.0),
                cloud_init_s: Some(60.0),
                image_pull_s: None,
                container_s: None,
                tutorial_clone_s: None,
                startup_script_s: None,
                total_s: Some(90.0),
                start_host: Some((false, Some(1), "line one\nOAuth <refused>")),
                initializing_min: Some(7),
                seat: Some("code refused: waiting for a new one"),
                code_changes: 2,
                reset_pending: false,
                actions: vec![(
                    "reassign",
                    "admin",
                    "from <a@b> to x@y",
                    "2026-12-02 10:00 UTC".into(),
                )],
            }],
        )
        .into_string();
        assert!(page.contains("&lt;x@y&gt;"));
        assert!(
            page.contains("start-host: failed (exit 1): OAuth &lt;refused&gt;"),
            "{page}"
        );
        assert!(page.contains("for 7 min"), "{page}");
        assert!(page.contains("<svg") && page.contains("provision: 30.0 s"));
        assert!(page.contains(r#"width="53.3""#), "30 of 90 s on 160 px");
        // The per-VM actions post to the JSON routes with the session's CSRF token.
        for action in ["release", "reassign", "replace"] {
            assert!(
                page.contains(&format!(r#"action="/api/admin/vms/vm-1/{action}""#)),
                "{action}"
            );
        }
        assert!(page.contains("code refused: waiting for a new one") && page.contains("2 fresh code(s)"));
        // The destructive ones ask first.
        assert!(
            page.contains("return confirm('Release vm-1? Its workspace is reset"),
            "{page}"
        );
        assert!(
            page.contains("Replace vm-1? Its instance is terminated"),
            "{page}"
        );
        assert!(
            page.contains("reassign by admin at 2026-12-02 10:00 UTC (from &lt;a@b&gt; to x@y)"),
            "{page}"
        );
    }
}
